"""The core of ``experiments/hapo_fork.py``: the fork task's reward, the fork statistics, the clip flags and buckets,
and the loss instrumentation against TRL's own clip metric on a two-step off-policy run."""

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


def test_reward_function_reads_token_ids():
    from trl_ext.tiny_models import build_char_tokenizer

    tokenizer = build_char_tokenizer(alphabet=bench.ALPHABET)
    reward = bench.make_reward(tokenizer, 3)
    ids = [tokenizer.convert_tokens_to_ids(c) for c in "456"]
    eos = tokenizer.eos_token_id
    rows = [
        ids + [eos],
        ids,
        [ids[0], tokenizer.pad_token_id, ids[2], eos],
        [tokenizer.convert_tokens_to_ids("2"), eos],
    ]
    values = reward(prompts=None, completions=None, completion_ids=rows, digit=[3, 3, 3, 3])
    assert values == pytest.approx([4 / 4, 3 / 4, 1 / 4, 1 / 4])


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
    assert stats["p_up"] == pytest.approx(1.0)


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
    options = argparse.Namespace(chain=3, sft_steps=5, sft_lr=3e-3, lr=0.05, steps=2, steps_per_generation=2)
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
