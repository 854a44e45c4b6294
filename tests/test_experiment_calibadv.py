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
    assert search.ARM_SWITCHES["random_steps"] == (True, True)  # same switches; the estimator moves the penalties
    assert set(ablation.ARMS) <= set(ablation.ALL_ARMS) <= set(search.ARM_SWITCHES)


def test_random_placement_keeps_the_penalties_of_the_batch_and_moves_them():
    scores = [[1.0, 0.0], [0.5, 0.0, 0.0], None, [1.0], [0.0, 1.0]]
    advantages = [-1.0, -0.5, -0.2, 0.8, -0.3]
    num_runs = [3, 4, 2, 2, 4]  # row 4's segments do not match its steps: the soft penalty cannot act there
    seen = set()
    for draw in range(200):
        placed, counts = ablation.place_at_random(scores, advantages, num_runs, random.Random(draw))
        assert placed[2] is None and placed[3] == [1.0] and placed[4] == [0.0, 1.0]  # not candidates: unchanged
        values = placed[0] + placed[1]
        assert sorted(values) == [0.0, 0.0, 0.0, 0.5, 1.0]  # the same spared fractions, matched per batch
        assert counts["slots"] == 5 and counts["spared"] == 2
        moved = sum(v > 0 and old == 0 for v, old in zip(values, scores[0] + scores[1], strict=True))
        assert counts["moved_to_wrong"] == moved
        seen.add(tuple(values))
    assert len(seen) == 20  # every arrangement of the five slots (5! / 3! distinct) is drawn
    assert scores == [[1.0, 0.0], [0.5, 0.0, 0.0], None, [1.0], [0.0, 1.0]]  # the input is not modified


# ---------------------------------------------------------------------------------------------------------------
# The pre-registered verdict (experiments/preregistered/calibadv_ablation.py) on hand-made result tables


def _curve(level: float) -> list[dict]:
    return [{"step": 0, "reward": 0.8}] + [
        {"step": step, "reward": level + (0.02 if step == 40 else -0.02 if step == 10 else 0.0)}
        for step in (10, 20, 30, 40)
    ]


def _report(gain=0.1, random_gain=0.1, *, noise=0.01, grpo=0.4, tn=20, fp=5, fn=2, tp=300, seeds=None):
    from preregistered import calibadv_ablation as prereg

    seeds = prereg.SEEDS if seeds is None else seeds
    arms: dict = {arm: {} for arm in prereg.ARMS}
    for seed in seeds:
        jitter = noise * (1 if seed % 2 else -1)  # a paired difference that varies by seed
        arms["grpo"][str(seed)] = {"eval": _curve(grpo + jitter / 2)}
        arms["calibadv"][str(seed)] = {"eval": _curve(grpo + gain + jitter)}
        arms["random_steps"][str(seed)] = {"eval": _curve(grpo + gain - random_gain)}
    samples = {str(s): {"judgement": {"all": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}}} for s in seeds}
    return {"runs": {"initial_eval": {"reward": 0.8}, "samples": samples, "arms": arms}}


def _judge(report):
    from preregistered import calibadv_ablation as prereg

    return prereg.judge(report)


def test_preregistered_stability_verdict_shown_contradicted_and_not_shown():
    from trl_ext.compare.evidence import CONTRADICTED, NOT_SHOWN, SHOWN

    judged = _judge(_report())
    assert judged["registered_seeds"] and judged["summary"]["stability"] == SHOWN
    effect = judged["stability"]["effects"]["calibadv - grpo"]
    assert effect["n"] == 8 and effect["mean"] == pytest.approx(0.1) and effect["in_favour"] == 8
    # the whole curve counts, not its end: the primary metric is the mean after step 0
    from preregistered import calibadv_ablation as prereg

    assert prereg.curve_mean(_curve(0.4)) == pytest.approx(0.4)
    # beating grpo is not enough: the weaker comparison (against random placement) decides
    judged = _judge(_report(random_gain=0.0, noise=0.001))
    assert judged["stability"]["verdicts"] == {"calibadv - grpo": SHOWN, "calibadv - random_steps": CONTRADICTED}
    assert judged["summary"]["stability"] == CONTRADICTED
    assert _judge(_report(gain=0.05, random_gain=0.05, noise=0.1))["summary"]["stability"] == NOT_SHOWN


def test_preregistered_stability_verdict_at_the_minimum_effect():
    from trl_ext.compare.evidence import CONTRADICTED, SHOWN

    # No noise: the interval is the point; exactly the minimum effect counts, just below it is ruled out.
    # (grpo at 0.5: 0.55 - 0.5 is 0.05 in floating point, not 0.04999...)
    assert _judge(_report(gain=0.05, random_gain=0.05, noise=0.0, grpo=0.5))["summary"]["stability"] == SHOWN
    assert (
        _judge(_report(gain=0.0499, random_gain=0.0499, noise=0.0, grpo=0.5))["summary"]["stability"] == CONTRADICTED
    )


def test_preregistered_regime_control_grpo_must_degrade():
    from preregistered import calibadv_ablation as prereg

    # warm start 0.8: grpo's curve at 0.70 is exactly the minimum drop (0.10), just above it is not enough
    assert _judge(_report(grpo=0.70, noise=0.0))["stability"]["control"]["held"]
    assert _judge(_report(grpo=0.7001, noise=0.0))["summary"]["stability"] == prereg.REGIME_NOT_REACHED
    assert _judge(_report(grpo=0.70, noise=0.01))["summary"]["stability"] == prereg.REGIME_NOT_REACHED  # interval
    assert not _judge(_report(seeds=(100, 101)))["registered_seeds"]


def test_preregistered_judgement_thresholds():
    from preregistered import calibadv_ablation as prereg

    from trl_ext.compare.evidence import CONTRADICTED, NOT_SHOWN, SHOWN

    # a judge calling every step correct: agreement at the base rate, kappa 0, specificity 0
    judged = _judge(_report(tp=300, fn=0, tn=0, fp=10))
    assert judged["judgement"]["pooled"]["agreement"] == pytest.approx(300 / 310)
    assert judged["judgement"]["pooled"]["kappa"] == 0.0 and judged["judgement"]["pooled"]["specificity"] == 0.0
    assert judged["summary"]["judgement"] == CONTRADICTED
    assert _judge(_report(tp=300, fn=0, tn=30, fp=0))["summary"]["judgement"] == SHOWN
    # identical seeds: the interval is the point. Specificity exactly at 0.5 counts, below it is ruled out
    assert _judge(_report(tp=300, fn=0, tn=4, fp=4))["judgement"]["pooled"]["specificity"] == 0.5
    assert _judge(_report(tp=300, fn=0, tn=4, fp=4))["summary"]["judgement"] == SHOWN
    assert _judge(_report(tp=300, fn=0, tn=4, fp=5))["summary"]["judgement"] == CONTRADICTED
    # kappa at the threshold (0.4 up to rounding; specificity 0.71) and just below it (0.3999; specificity 0.53)
    assert prereg.kappa_specificity({"tp": 300, "fp": 4, "fn": 22, "tn": 10})["kappa"] == pytest.approx(0.4)
    assert _judge(_report(tp=300, fp=4, fn=22, tn=10))["summary"]["judgement"] == SHOWN
    assert _judge(_report(tp=300, fp=7, fn=14, tn=8))["summary"]["judgement"] == CONTRADICTED
    # too few not-useful steps to test the judge: 8 seeds x 3 = 24 < 30
    assert _judge(_report(tn=2, fp=1))["summary"]["judgement"] == prereg.REGIME_NOT_REACHED
    assert _judge(_report(tn=3, fp=1))["judgement"]["control"]["held"]  # 32
    # seeds that differ: the seed bootstrap gives an interval that straddles a threshold
    report = _report()
    for seed in ("0", "1", "2", "3"):
        report["runs"]["samples"][seed]["judgement"]["all"] = {"tp": 300, "fp": 10, "fn": 0, "tn": 2}
    assert _judge(report)["summary"]["judgement"] == NOT_SHOWN


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
