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
        assert hints == [f"{a}+{b}={a + b}"]  # the intermediate sum, one step; the answer needs "+ c" still
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
    assert variant["prompt"] == bench.hinted_prompt("5+3+7=", ["5+3=8"]) == "5+3=8=5+3+7="
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


def test_reward_records_accuracy_by_kind_and_zero_signal_groups(bench):
    log = []
    reward = bench.make_reward(log, {"p": "1+2+3=", "q": "0+0+1="}, 2)
    prompts = ["1+2+3=", "1+2+3=", "1+2=3=1+2+3=", "1+2=3=1+2+3=", "0+0+1=", "0+0+1=", "1+0+0=", "1+0+0="]
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


def test_completions_to_and_speedup(bench):
    completions = [0, 128, 256, 384, 512]
    accuracy = [0.0, 0.3, 0.3, 0.3, 0.6]  # trailing 3-mean: 0, .15, .2, .3, .4
    assert bench.completions_to(0.2, completions, accuracy) == 256
    assert bench.completions_to(0.4, completions, accuracy) == 512
    assert bench.completions_to(0.5, completions, accuracy) is None
    assert bench.mean_speedup({"0.2": 400, "0.4": None}, {"0.2": 200, "0.4": 100}) == 2.0
    assert bench.mean_speedup({"0.2": None}, {"0.2": 200}) is None


def _entry(final, zero, to):
    return {
        "final_accuracy": final,
        "zero_signal_mean": zero,
        "zero_signal_first_half": zero,
        "completions_to": to,
        "train_accuracy": {},
        "speedup_vs_grpo16": None,
        "seconds": 1.0,
    }


def test_verdict_applies_the_control_and_the_falsifier(bench):
    def per_seed(diva_to, grpo8_zero):
        entry = {
            "grpo8": _entry(0.3, grpo8_zero, {"0.2": 300, "0.3": None, "0.4": None}),
            "grpo16": _entry(0.3, 0.5, {"0.2": 200, "0.3": 400, "0.4": None}),
            "diva_responses": _entry(0.3, 0.3, diva_to),
        }
        for stats in entry.values():
            stats["speedup_vs_grpo16"] = bench.mean_speedup(entry["grpo16"]["completions_to"], stats["completions_to"])
            stats["thresholds_reached"] = sum(v is not None for v in stats["completions_to"].values())
        return entry

    def run(diva_to, grpo8_zero=0.8):
        seeds = {str(s): per_seed(diva_to, grpo8_zero) for s in range(3)}
        overall = {
            arm: {
                "zero_signal_mean": {"mean": seeds["0"][arm]["zero_signal_mean"]},
                "zero_signal_first_half": {"mean": seeds["0"][arm]["zero_signal_first_half"]},
            }
            for arm in seeds["0"]
        }
        return bench.verdict(seeds, overall)

    assert run({"0.2": 200, "0.3": 400, "0.4": None})["diva_responses"]["verdict"] == "falsified"  # same speed
    assert run({"0.2": 100, "0.3": None, "0.4": None})["diva_responses"]["verdict"] == "falsified"  # fewer reached
    assert run({"0.2": 100, "0.3": 200, "0.4": 300})["diva_responses"]["verdict"] == "supported"
    assert run({"0.2": 180, "0.3": 360, "0.4": None})["diva_responses"]["verdict"] == "inconclusive"  # 1.11x
    failed = run({"0.2": 100, "0.3": 200, "0.4": 300}, grpo8_zero=0.3)
    assert failed["control_passed"] is False and failed["diva_responses"]["verdict"].startswith("inconclusive")
