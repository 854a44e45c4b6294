"""The core of ``experiments/diva_hard.py``: the task, the hint DIVA builds, the exact evaluation and the verdict."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location("diva_hard_bench", EXPERIMENTS / "diva_hard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(EXPERIMENTS))


@pytest.fixture(scope="module")
def tokenizer(bench):
    from trl_ext.tiny_models import build_char_tokenizer

    return build_char_tokenizer(alphabet=bench.ALPHABET)


def test_task_rows_are_the_512_unique_three_digit_sums(bench):
    rows = bench.problem_rows()
    assert len(rows["id"]) == len(set(rows["id"])) == 8**3
    for prompt, answer, hints, variants in zip(rows["prompt"], rows["answer"], rows["hints"], rows["variants"]):
        a, b, c = (int(x) for x in prompt.rstrip("=").split("+"))
        assert answer == str((a + b + c) % 10)
        assert hints == [f"{a + b}+{c}"]  # the first step done (s = a+b); the answer still needs s + c
        for variant in variants:  # rewordings keep the answer
            assert sum(int(x) for x in variant.rstrip("=").split("+")) % 10 == int(answer)
        assert set(prompt + "".join(hints) + "".join(variants)) <= set(bench.ALPHABET)


def test_builtin_generator_builds_the_hint_the_benchmark_counts(bench):
    """At the benchmark's initial level 7 (V = 1) DIVA builds a hint variant; the reward log classifies it as such."""
    from datasets import Dataset

    from trl_ext.curriculum.variants import resolve_variant_generator

    generator = resolve_variant_generator(None, hint_template=bench.HINT_TEMPLATE, min_difficulty=1, max_difficulty=9)
    row = Dataset.from_dict(bench.problem_rows())[5 * 64 + 3 * 8 + 7]
    ((variant, level),) = generator(dict(row), bench.DIVA_FIELDS["diva_initial_difficulty"], 1, random.Random(0))
    assert variant["prompt"] == bench.hinted_prompt("5+3+7=", ["8+7"]) == "5+3+7=8+7="
    assert level == 5
    assert bench.prompt_kind(variant["prompt"], row["prompt"]) == "hint"
    assert bench.prompt_kind("3+5+7=", row["prompt"]) == "rewording"
    assert bench.prompt_kind("5+3+7=", row["prompt"]) == "original"
    # At level 5 (after learning) the variant is a copy or a rewording, never a hint.
    kinds = {
        bench.prompt_kind(generator(dict(row), 5, 1, random.Random(s))[0][0]["prompt"], row["prompt"])
        for s in range(40)
    }
    assert kinds == {"original", "rewording"}
    # The copy-variant arm: the original problem, unchanged, at the problem's own level.
    ((copy, copy_level),) = bench.copy_variants(dict(row), 7, 1, random.Random(0))
    assert copy == dict(row) and copy is not row and copy_level == 7
    assert bench.prompt_kind(copy["prompt"], row["prompt"]) == "original"


def test_reward_records_accuracy_by_kind_and_zero_signal_groups(bench):
    log = []
    reward = bench.make_reward(log, {"p": "1+2+3=", "q": "0+0+1="}, 2)
    prompts = ["1+2+3=", "1+2+3=", "1+2+3=3+3=", "1+2+3=3+3=", "0+0+1=", "0+0+1=", "1+0+0=", "1+0+0="]
    completions = ["6", "6", "5", "6", "7", "7", "7", "2"]
    out = reward(prompts, completions, ["6"] * 4 + ["1"] * 4, ["p"] * 4 + ["q"] * 4)
    assert out == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    (entry,) = log
    assert entry["original"] == [4, 2.0] and entry["hint"] == [2, 1.0] and entry["rewording"] == [2, 0.0]
    assert entry["hinted_problems"] == [1, 1.0, 0.5]  # problem p: original 2/2, hint 1/2
    assert entry["groups_constant"] == 0.75 and entry["groups_all_wrong"] == 0.5  # prompt groups of 2
    assert entry["problems_constant"] == 0.5 and entry["problems_all_wrong"] == 0.5  # p mixed, q all wrong
    assert bench.paired_hint_accuracy([[1, 1.0, 0.5], [3, 0.5, 1.5]]) == {
        "hinted_problem_batches": 4,
        "hinted_original_accuracy": 0.375,
        "hinted_hint_accuracy": 0.5,
    }


def test_correct_table_follows_trl_decoding(bench, tokenizer):
    table = bench.correct_table(tokenizer)
    ids = {ch: tokenizer.convert_tokens_to_ids(ch) for ch in "0123456789+="}
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert table[7, ids["7"], eos]  # "7" then <eos>
    assert table[7, pad, ids["7"]]  # special tokens are skipped when decoding
    assert not table[7, ids["7"], ids["7"]]  # "77"
    assert not table[7, eos, ids["7"]]  # the completion ends at the first <eos>: empty
    assert not table[7, ids["7"], ids["+"]]
    assert int(table.sum()) == 10 * (1 + 2 * 2)  # per digit: d<eos>, d<pad>, d<unk>, <pad>d, <unk>d


def test_exact_expected_accuracy_matches_sampling(bench, tokenizer):
    """The exact T = 1 expectation agrees with Monte Carlo sampling from `generate` (TRL's decoding)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        initializer_range=0.5,
    )
    model = Qwen2ForCausalLM(config).eval()
    prompts = ["1+2+3=", "9+9+9=", "0+4+5=", "7+1+8="]
    prompt_ids = torch.tensor([tokenizer(p)["input_ids"] for p in prompts])
    answers = torch.tensor([6, 7, 9, 6])
    table = bench.correct_table(tokenizer)
    exact = bench.expected_accuracy(model, prompt_ids, answers, table)
    with torch.no_grad():
        out = model.generate(
            prompt_ids.repeat_interleave(1500, dim=0),
            do_sample=True,
            max_new_tokens=2,
            top_k=0,
            temperature=1.0,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    hits = []
    for row, answer in zip(out[:, prompt_ids.shape[1] :].tolist(), answers.repeat_interleave(1500).tolist()):
        cut = row[: row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row
        hits.append(tokenizer.decode(cut, skip_special_tokens=True).strip() == str(answer))
    sampled = sum(hits) / len(hits)
    assert 0.005 < exact < 0.95
    assert abs(sampled - exact) < 4 * (exact * (1 - exact) / len(hits)) ** 0.5 + 1e-3


def test_accuracy_area_is_the_mean_accuracy_over_completions(bench):
    area = bench.prereg.accuracy_area
    assert area([0, 128, 256], [0.0, 0.5, 0.5]) == pytest.approx((0.25 + 0.5) / 2)
    assert area([0, 100], [0.3, 0.3]) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        area([0], [0.1])


def test_warm_start_is_seeded_and_cached(bench, tmp_path, monkeypatch):
    """Two builds with the same seed and settings give the same weights; the second is the cached directory."""
    from trl_ext.tiny_models import build_tiny_checkpoint

    monkeypatch.setattr(bench.tempfile, "gettempdir", lambda: str(tmp_path))
    base = build_tiny_checkpoint(tmp_path / "base", alphabet=bench.ALPHABET, hidden_size=16, num_layers=1, seed=3)
    settings = {**bench.WARM_START, "steps": 2, "batch": 4}
    first = bench.warm_start(base, 3, settings)
    assert bench.warm_start(base, 3, settings) == first and first != base
    other = bench.warm_start(base, 4, settings)
    from safetensors.torch import load_file

    weights = [load_file(f"{directory}/model.safetensors") for directory in (first, other)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# The pre-registered verdict on hand-made result tables
def _report(bench, areas: dict, *, start_gap=0.3, zero=0.8, train_gap=0.3, seeds=range(8)):
    """A stored-report stand-in: per arm and seed an accuracy curve whose area is `areas[arm][i]` (a flat curve),
    the starting accuracies, the zero-signal log and the hinted-problem log the controls read."""
    prereg = bench.prereg
    runs = {}
    for arm in prereg.ARMS:
        runs[arm] = {}
        for i, seed in enumerate(seeds):
            value = areas[arm][i] if isinstance(areas[arm], list) else areas[arm]
            runs[arm][str(seed)] = {
                "eval_steps": [0, prereg.STEPS], "eval_completions": [0, prereg.STEPS * prereg.COMPLETIONS_PER_STEP],
                "eval_accuracy": [value, value], "problems_constant": [zero, zero, 0.0, 0.0],
                "hinted_problems": [[2, 0.0, 2 * train_gap], [2, 0.0, 2 * train_gap], [1, 0.0, 0.0]],
            }  # fmt: skip
    start = {str(seed): {"original": 0.0, "hint": start_gap} for seed in seeds}
    return {"runs": runs, "start": start}


def _areas(diva, copy=0.0, grpo=0.0):
    return {"grpo4": grpo, "grpo8": grpo, "grpo16": grpo, "diva": diva, "diva_copy": copy}


def test_verdict_at_each_threshold_of_the_minimum_effect(bench):
    prereg = bench.prereg
    judge = prereg.judge
    claim, mechanism = prereg.CLAIMS
    least = prereg.MIN_EFFECT
    # Every seed's difference exactly at the minimum effect: the interval is that point, "at or above" -> shown.
    shown = judge(_report(bench, _areas(least)))
    assert shown["summary"] == {claim: "shown", mechanism: "shown"}
    assert shown["controls"]["held"] and shown["registered_seeds"]
    # Just below it on every seed: an effect as large as the minimum is ruled out.
    below = judge(_report(bench, _areas(0.99 * least)))
    assert below["summary"] == {claim: "contradicted at this scale", mechanism: "contradicted at this scale"}
    # Noisy around it: the interval holds the minimum effect.
    noisy = judge(_report(bench, _areas([0.0, 3 * least] * 4)))
    assert noisy["summary"][claim] == "not shown at this scale"
    effect = noisy["effects"]["diva - grpo8"]
    assert effect["mean"] == pytest.approx(1.5 * least) and effect["in_favour"] == 4 and effect["n"] == 8
    # DIVA worse than its copy arm but better than every GRPO: claim 1 shown, claim 2 contradicted.
    split = judge(_report(bench, _areas(0.1, copy=0.2)))
    assert split["summary"] == {claim: "shown", mechanism: "contradicted at this scale"}


def test_verdict_is_the_weakest_over_the_grpo_baselines(bench):
    areas = _areas(0.1, grpo=0.0)
    areas["grpo4"] = 0.1 - bench.prereg.MIN_EFFECT / 2  # the best baseline: diva leads it by half the minimum effect
    judged = bench.prereg.judge(_report(bench, areas))
    assert judged["verdicts"]["diva - grpo8"] == judged["verdicts"]["diva - grpo16"] == "shown"
    assert judged["verdicts"]["diva - grpo4"] == "contradicted at this scale"
    assert judged["summary"][bench.prereg.CLAIMS[0]] == "contradicted at this scale"


@pytest.mark.parametrize(
    ("control", "held", "failed"),
    [
        ({"start_gap": 0.2}, {"start_gap": 0.2}, {"start_gap": 0.19}),
        ({"zero": 0.5}, {"zero": 0.5}, {"zero": 0.49}),
        ({"train_gap": 0.1}, {"train_gap": 0.1}, {"train_gap": 0.09}),
    ],
)
def test_each_control_at_its_threshold(bench, control, held, failed):
    """A control at its threshold holds; just below, the verdict is "regime not reached" whatever the comparison."""
    prereg = bench.prereg
    at = prereg.judge(_report(bench, _areas(0.1), **held))
    assert at["controls"]["held"] and at["summary"][prereg.CLAIMS[0]] == "shown"
    under = prereg.judge(_report(bench, _areas(0.1), **failed))
    assert not under["controls"]["held"]
    assert set(under["summary"].values()) == {prereg.REGIME_NOT_REACHED}
    assert under["verdicts"]["diva - grpo8"] == "shown"  # the comparison is still reported


def test_a_pilot_is_not_the_registered_run(bench):
    assert not bench.prereg.judge(_report(bench, _areas(0.1), seeds=range(100, 108)))["registered_seeds"]
    short = _report(bench, _areas(0.1))
    short["runs"]["grpo8"]["0"]["eval_steps"] = [0, 60]
    assert not bench.prereg.judge(short)["registered_seeds"]
