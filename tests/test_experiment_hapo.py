"""The core of ``experiments/hapo_fork.py``: the fork task's reward and its exact expectation, the warm start's rows,
the fork statistics, the clip flags and buckets, the loss instrumentation against TRL's own clip metric on a two-step
off-policy run, and the pre-registered verdict (experiments/preregistered/hapo_fork.py) on hand-made result tables."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))

import hapo_fork as bench  # noqa: E402


def test_targets_count_both_ways_modulo_ten():
    assert bench.target(3, 1, 10) == "4567890123"
    assert bench.target(3, -1, 10) == "2109876543"
    assert bench.target(0, -1, 3) == "987"


@pytest.mark.parametrize(
    ("digit", "text", "ended", "expected"),
    [
        (3, "4567890123", True, 11),  # up, complete, stopped
        (3, "2109876543", True, 11),  # down, equally good
        (3, "4567890123", False, 10),  # no EOS: the stop is not credited
        (3, "45678901234", False, 10),  # ran past L
        (3, "4567", True, 4),  # stopped early
        (3, "4560", True, 3),  # wrong at position 4
        (3, "2345", True, 1),  # chose down, then counted up: only the fork is right
        (3, "5678901234", True, 0),  # invalid first token
        (3, "", True, 0),
        (3, "?567890123", True, 0),  # a non-digit token
    ],
)
def test_fork_reward(digit, text, ended, expected):
    assert bench.fork_reward(digit, text, ended, 10) == pytest.approx(expected / 11)


def test_fork_reward_values_the_branches():
    """The easy branch (count up) is worth ``easy_reward``, the better one (count down) 1."""
    assert (bench.EASY, bench.BETTER) == (1, -1)
    assert bench.fork_reward(3, "456789", True, 6, 0.7) == pytest.approx(0.7)
    assert bench.fork_reward(3, "210987", True, 6, 0.7) == pytest.approx(1.0)
    assert bench.fork_reward(3, "2109", True, 6, 0.7) == pytest.approx(4 / 7)
    assert bench.fork_reward(3, "45", True, 6, 0.7) == pytest.approx(0.7 * 2 / 7)


def test_expected_reward_is_the_mean_reward_of_the_autoregressive_policy():
    """The closed form from teacher-forced probabilities equals the reward averaged over every completion of a
    random autoregressive policy over {correct, wrong} tokens (exhaustive for L = 2)."""
    generator = torch.Generator().manual_seed(0)
    length, easy_reward = 2, 0.7
    # p[b, t]: probability of the correct token at position t of branch b given a correct prefix; the fork splits
    # between the branches (p_easy at t = 0 of the easy row, p_better of the better row; the rest of the mass invalid)
    p = torch.rand(1, 2, length + 1, generator=generator, dtype=torch.float64) * 0.5 + 0.25
    expected = bench.expected_reward(p.log(), length, easy_reward)
    total = 0.0
    for branch, value in ((0, easy_reward), (1, 1.0)):
        # outcomes after the fork: a correct prefix of k more targets (k = 0..L), then the first wrong token or the end
        for k in range(length + 1):
            prob = p[0, branch, 0].item()
            for t in range(1, k + 1):
                prob *= p[0, branch, t].item()
            if k < length:
                prob *= 1 - p[0, branch, k + 1].item()
            total += prob * value * (1 + k) / (length + 1)
    assert expected["reward"] == pytest.approx(total)
    assert expected["reward"] == pytest.approx(expected["reward_easy"] + expected["reward_better"])
    assert expected["chain_better"] == pytest.approx(float(p[0, 1, 1:].prod()))


def test_teaching_rows_label_the_better_branch_partly():
    from trl_ext.tiny_models import build_char_tokenizer

    tokenizer = build_char_tokenizer(alphabet=bench.ALPHABET)
    rows, labels = bench.teaching_rows(tokenizer, 6, 3)
    assert rows.shape == (20, 2 + 6 + 1) and labels.shape == rows.shape
    text = lambda ids: "".join(tokenizer.convert_ids_to_tokens(int(i)) for i in ids)  # noqa: E731
    assert text(rows[0, :8]) == "0=123456" and text(rows[1, :8]) == "0=987654"
    assert (labels[:, :2] == -100).all()
    assert torch.equal(labels[0, 2:], rows[0, 2:])  # easy: every completion token, EOS included
    assert torch.equal(labels[1, 2:5], rows[1, 2:5]) and (labels[1, 5:] == -100).all()  # better: first 3 only


def test_reward_function_reads_token_ids():
    from trl_ext.tiny_models import build_char_tokenizer

    tokenizer = build_char_tokenizer(alphabet=bench.ALPHABET)
    reward = bench.make_reward(tokenizer, 3, 0.5)
    ids = [tokenizer.convert_tokens_to_ids(c) for c in "456"]
    eos = tokenizer.eos_token_id
    rows = [
        ids + [eos],
        ids,
        [ids[0], tokenizer.pad_token_id, ids[2], eos],
        [tokenizer.convert_tokens_to_ids("2"), eos],
    ]
    values = reward(prompts=None, completions=None, completion_ids=rows, digit=[3, 3, 3, 3])
    assert values == pytest.approx([0.5 * 4 / 4, 0.5 * 3 / 4, 0.5 * 1 / 4, 1 / 4])  # up: easy (0.5); down: better


def test_fork_statistics_balanced_and_collapsed():
    digit_ids = list(range(3, 13))  # the character tokenizer's digit ids
    vocab = 14
    balanced = torch.zeros(10, vocab)
    collapsed = torch.zeros(10, vocab)
    for d in range(10):
        balanced[d, digit_ids[(d + 1) % 10]] = 0.5
        balanced[d, digit_ids[(d - 1) % 10]] = 0.5
        collapsed[d, digit_ids[(d + 1) % 10]] = 1.0
    stats = bench.fork_statistics(balanced, list(range(10)), digit_ids)
    assert stats["fork_entropy"] == pytest.approx(math.log(2))
    assert stats["direction_entropy"] == pytest.approx(math.log(2))
    assert stats["valid"] == pytest.approx(1.0)
    stats = bench.fork_statistics(collapsed, list(range(10)), digit_ids)
    assert stats["fork_entropy"] == pytest.approx(0.0)
    assert stats["direction_entropy"] == pytest.approx(0.0)
    assert stats["p_better"] == pytest.approx(0.0)  # the easy branch (up) took the fork
    assert stats["p_better_per_prompt"] == pytest.approx([0.0] * 10)


def test_clip_flags_mark_only_the_gradient_zeroing_side():
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1, 12.0]])
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0, 1.0, -1.0]])
    clipped, dual = bench.clip_flags(ratio, adv, 0.2, 0.28, 10.0)
    assert clipped.tolist() == [[True, False, True, False, False, False]]
    assert dual.tolist() == [[False, False, False, False, False, True]]
    # per-token bounds (adaptive clip): a wider upper bound unclips the first token
    high = torch.tensor([[0.6, 0.28, 0.28, 0.28, 0.28, 0.28]])
    clipped, dual = bench.clip_flags(ratio, adv, 0.2, high, None)
    assert clipped.tolist() == [[False, False, True, False, False, False]]
    assert not dual.any()


def test_bucket_masks():
    entropies = torch.tensor([[0.7, 0.01, 0.02, 0.9], [0.6, 0.03, 0.04, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    buckets = bench.bucket_masks(entropies, mask)
    assert buckets["fork"].sum() == 2 and buckets["chain"].sum() == 5
    # 7 valid entropies, pivot = sorted[round(0.8 * 6)] = sorted[5] = 0.7: only 0.9 is above it
    assert buckets["high"].tolist() == [[False, False, False, True], [False, False, False, False]]
    assert (buckets["high"] | buckets["low"]).sum() == 7
    assert not (buckets["high"] & buckets["low"]).any()


def test_instrumentation_matches_trl_clip_metric(tmp_path, monkeypatch):
    """Two optimizer steps on one generation batch at a high lr: the second is off-policy and clips; the recorder's
    clip fraction over all loss tokens equals TRL's ``clip_ratio/region_mean`` for the dapo baseline."""
    monkeypatch.setattr(bench.tempfile, "gettempdir", lambda: str(tmp_path))
    options = argparse.Namespace(
        chain=3, sft_steps=5, sft_lr=3e-3, lr=0.05, steps=2, steps_per_generation=2, easy_reward=0.7, better_known=2
    )
    torch.manual_seed(0)
    checkpoint = bench.warm_start(0, options)
    run = bench.train_run("dapo", checkpoint, 0, options)
    assert len(run["loss_side"]) == 2
    first, second = run["loss_side"]
    assert "all_tokens" not in first  # on-policy micro-batch: no ratio, not counted
    assert second["all_tokens"] > 0
    assert run["clip_region_trl"][0] == 0.0
    assert second["all_clipped"] / second["all_tokens"] == pytest.approx(run["clip_region_trl"][1], abs=1e-6)
    assert second["all_clipped"] > 0, "lr 0.05 should move ratios out of the clip range"
    assert [f["step"] for f in run["fork"]] == [0]
    assert 0.0 <= run["fork"][0]["fork_entropy"] <= math.log(14) + 1e-6
    assert 0.0 <= run["fork"][0]["reward"] <= 1.0 and len(run["fork"][0]["p_better_per_prompt"]) == 10


# ---------------------------------------------------------------------------------------------------------------
# The pre-registered verdict (experiments/preregistered/hapo_fork.py) on hand-made result tables


def _run(reward, *, entropy_start=0.6, entropy_end=0.05, easy_prompts=4, clip=0.03, high_clip=0.1, steps=160):
    """A run as the script stores it: fork records every 4 steps (reward constant in the second half) and one
    loss-side record per step."""
    points = range(0, steps + 1, 4)
    fork = []
    for i, step in enumerate(points):
        last_quarter = i >= len(points) - len(points) // 4
        per_prompt = [0.1] * easy_prompts + [0.9] * (10 - easy_prompts)
        fork.append({
            "step": step, "reward": reward if step > steps / 2 else 0.0,
            "direction_entropy": entropy_start if step == 0 else (entropy_end if last_quarter else entropy_start),
            "p_better_per_prompt": per_prompt,
        })  # fmt: skip
    loss_side = [{"all_tokens": 100.0, "all_clipped": 100 * clip, "high_tokens": 20.0, "high_clipped": 20 * high_clip}]
    return {"fork": fork, "loss_side": loss_side * steps}


def _report(gains=None, *, positive=0.05, noise=0.01, seeds=None, **baseline):
    """Seeds 0-9: ``dapo`` at reward 0.7 (+ ``baseline`` overrides), each treatment at 0.7 + gain + a +-noise
    jitter, the positive control at 0.7 + positive + jitter."""
    from preregistered import hapo_fork as prereg

    gains = {"hapo_reference": 0.05, "hapo_signed": 0.05, **(gains or {})}
    runs = {arm: {} for arm in prereg.ARMS}
    for seed in seeds if seeds is not None else prereg.SEEDS:
        jitter = noise * (1 if seed % 2 else -1)
        runs["dapo"][str(seed)] = _run(0.7, **baseline)
        for arm, gain in gains.items():
            runs[arm][str(seed)] = _run(0.7 + gain + jitter)
        runs["dapo_entropy"][str(seed)] = _run(0.7 + positive + jitter)
    return {"runs": runs}


def _judge(report):
    from preregistered import hapo_fork as prereg

    return prereg.judge(report)


def test_preregistered_hapo_verdict_shown_contradicted_and_not_shown():
    from trl_ext.compare.evidence import CONTRADICTED, NOT_SHOWN, SHOWN

    judged = _judge(_report())
    assert judged["registered_seeds"] and judged["controls"]["held"]
    assert judged["summary"] == {"hapo_reference": SHOWN, "hapo_signed": SHOWN}
    effect = judged["effects"]["hapo_signed"]
    assert effect["n"] == 10 and effect["mean"] == pytest.approx(0.05) and effect["in_favour"] == 10
    judged = _judge(_report({"hapo_reference": 0.0}, noise=0.001))  # each mode is judged on its own
    assert judged["summary"] == {"hapo_reference": CONTRADICTED, "hapo_signed": SHOWN}
    assert _judge(_report({"hapo_signed": 0.03}, noise=0.05))["summary"]["hapo_signed"] == NOT_SHOWN


def test_preregistered_hapo_verdict_at_the_minimum_effect():
    from trl_ext.compare.evidence import CONTRADICTED, SHOWN

    # No noise: the interval is the point; exactly the minimum effect counts, just below it is ruled out.
    judged = _judge(_report({"hapo_reference": 0.03, "hapo_signed": 0.0299}, noise=0.0))
    assert judged["summary"] == {"hapo_reference": SHOWN, "hapo_signed": CONTRADICTED}


def test_preregistered_hapo_secondary_measures():
    """Secondary differences are reported against ``dapo`` (here the baseline keeps its fork more open, clips more and
    has fewer prompts on the better branch than the treatments) and never enter the verdict."""
    judged = _judge(_report(entropy_start=0.7, high_clip=0.2, easy_prompts=6))
    secondary = judged["secondary"]["hapo_signed"]
    # run mean of the direction entropy: (30 points of 0.6 or 0.7, 10 of 0.05) / 40 after the start
    assert secondary["direction_entropy_mean"]["mean"] == pytest.approx(-0.1 * 30 / 40)
    assert secondary["clip_high"]["mean"] == pytest.approx(-0.1)
    assert secondary["better_share_end"]["mean"] == pytest.approx(0.2)
    assert judged["summary"]["hapo_signed"] == "shown"


def test_preregistered_hapo_controls_decide_whether_the_regime_was_reached():
    from preregistered import hapo_fork as prereg

    def held(**kwargs):
        judged = _judge(_report(**kwargs))
        not_reached = set(judged["summary"].values()) == {prereg.REGIME_NOT_REACHED}
        assert not_reached != judged["controls"]["held"]
        return judged["controls"]["held"]

    assert held(clip=0.01) and not held(clip=0.0099)  # clipping acts: >= 1% of the baseline's off-policy tokens
    assert not held(entropy_end=0.3)  # collapse: last quarter < 0.5 x start (0.6), so 0.3 is not a collapse
    assert held(entropy_end=0.2999)
    assert held(easy_prompts=2) and not held(easy_prompts=1)  # >= 20% of (seed, prompt) pairs on the easy branch
    assert not held(positive=0.0, noise=0.001)  # the positive control's interval must lie above 0
    assert held(positive=0.002, noise=0.001)
    assert not _judge(_report(seeds=(100, 101)))["registered_seeds"]
