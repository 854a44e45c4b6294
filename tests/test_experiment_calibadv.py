"""The core of ``experiments/calibadv_ablation.py``: the ground truth of a search step, its comparison with CalibAdv's
step judgement, and the arms' switches (not a re-run of the experiment)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))

import calibadv_ablation as ablation  # noqa: E402
import calibadv_search as search  # noqa: E402


def test_gold_new_counts_counts_each_supporting_document_once():
    steps = [("film", ["F", "X"]), ("film again", ["F", "Y"]), ("person", ["P", "F"]), ("none", [])]
    assert ablation.gold_new_counts(steps, ["F", "P"]) == [1, 0, 1, 0]
    assert ablation.gold_new_counts([{"think": "a", "docs": ["F", "F"]}], ("F",)) == [1]


def test_judge_batch_confusion_and_causes():
    # Group of 3. Row 0 answers right after reading F (+ distractor X) and P (+ distractor Y): silver = {F, X, P, Y}.
    supporting = [["F", "P", "C"]] * 3
    steps = [
        [("film", ["F", "X"]), ("person", ["P", "Y"])],
        # row 1 (failed): an off-chain step finding only the distractor X (false positive), then a useful step whose
        # think text repeats the first one (false negative, think repeat), then a step finding C, which no best
        # trajectory retrieved (false negative, missing from the silver set)
        [("what film", ["X", "Z"]), ("what film", ["F", "Q"]), ("city", ["C", "R"])],
        # row 2: format-invalid, never judged (its useful step counts as unjudged)
        [("film", ["F", "X"])],
    ]
    f1, valid = [1.0, 0.0, 0.0], [True, True, False]
    advantages = [1.1547, -0.5774, -0.5774]
    out = ablation.judge_batch(f1, valid, steps, supporting, advantages, group=3)
    c = out["all"]
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (2, 1, 2, 0)
    assert (c["fp_off_chain"], c["fp_resupporting"]) == (1, 0)
    assert c["fn_think_repeat"] == 1 and c["fn_missing_from_silver"] == 1 and c["fn_doc_repeat"] == 0
    f = out["failed"]
    assert (f["tp"], f["fp"], f["fn"], f["tn"]) == (0, 1, 2, 0)
    assert out["steps_total"] == 6 and out["steps_unjudged"] == 1 and out["unjudged_useful"] == 1
    rates = ablation.confusion_rates(c)
    assert rates["agreement"] == pytest.approx(2 / 5)
    assert rates["precision"] == pytest.approx(2 / 3) and rates["recall"] == pytest.approx(2 / 4)
    assert rates["cohen_kappa"] == pytest.approx((0.4 - 0.56) / 0.44)  # chance: 3/5 * 4/5 + 2/5 * 1/5


def test_silver_equal_to_supporting_agrees_by_construction():
    # When the best trajectory retrieved exactly the supporting documents, every non-repeat step agrees.
    supporting = [["F", "P"]] * 2
    steps = [[("film", ["F"]), ("person", ["P"])], [("a", ["F"]), ("b", ["Z"]), ("c", ["P"])]]
    out = ablation.judge_batch([1.0, 0.0], [True, True], steps, supporting, [0.7, -0.7], group=2)
    assert ablation.confusion_rates(out["all"])["agreement"] == 1.0
    assert ablation.confusion_rates(out["all"])["score_exact_rate"] == 1.0


def test_no_silver_group_is_not_judged():
    out = ablation.judge_batch([0.0, 0.5], [True, True], [[("a", ["F"])], [("b", ["P"])]], [["F", "P"]] * 2, [0, 0], 2)
    assert out["steps_unjudged"] == 2 and ablation.confusion_rates(out["all"])["agreement"] is None


def test_arm_switches():
    assert search.ARM_SWITCHES["grpo"] == (False, False)
    assert search.ARM_SWITCHES["calibadv"] == (True, True)
    assert {search.ARM_SWITCHES[a] for a in ablation.ARMS} == {
        (False, False),
        (True, False),
        (False, True),
        (True, True),
    }


def test_expert_transcripts_use_the_supporting_doc_ids_as_keys():
    """The real rollout + BM25 on the expert's turns: the retrieved keys are the task's document ids (the top one is
    the searched entity's document), so every expert search is useful by the ground truth."""
    from trl_ext.data.deepsearch import DEEPSEARCH_ALPHABET, build_deepsearch_world, deepsearch_corpus
    from trl_ext.retrieval import BM25Retriever
    from trl_ext.tiny_models import build_char_tokenizer

    tokenizer = build_char_tokenizer(alphabet=DEEPSEARCH_ALPHABET)
    world = build_deepsearch_world(search.WORLD_SEED)
    questions = [world.questions[i] for i in (0, 3, 200)]  # 2-hop, 3-hop, novel
    rng = random.Random(0)
    plans = [search.expert_turns(q, rng, 0.0, {}) for q in questions]
    rollout = search.make_rollout(BM25Retriever(deepsearch_corpus(search.WORLD_SEED)))
    prompt_ids = rollout.encode_prompts([search.question_prompt(q.question) for q in questions], tokenizer)
    out = rollout.run(
        prompt_ids,
        tokenizer,
        search.ScriptedTurns(tokenizer, plans),
        max_completion_length=search.MAX_COMPLETION_LENGTH,
    )
    for q, steps in zip(questions, out["calibadv_steps"], strict=True):
        assert [s["docs"][0] for s in steps] == list(q.supporting_doc_ids)
        assert all(n == 1 for n in ablation.gold_new_counts(steps, q.supporting_doc_ids))
