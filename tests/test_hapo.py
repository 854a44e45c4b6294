"""HAPO (specs/hapo.md): the worked examples of §5 in both sign modes, the identities and degenerate inputs of the
TLGA, the rollout temperature and its logits processor, exact parity with `grpo` when every component is off, the
checkpointed rollout statistics, and end-to-end runs in 1 and 2 processes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from harness import NUM_GENERATIONS, generate, loss_grads_metrics, make_trainer
from twoproc import launch_two_processes

import trl_ext.trainers.hapo  # noqa: F401  (registers "hapo", "hapo_tlga" and the "hapo" objective)
from trl_ext import BaseGRPOConfig, BaseGRPOTrainer, get_advantage_estimator, get_policy_objective, get_trainer
from trl_ext.advantages.base import AdvantageBatch
from trl_ext.advantages.grpo import grpo_advantages
from trl_ext.advantages.hapo import TokenLevelGroupAdvantage, tlga_advantages
from trl_ext.objectives import functional as F
from trl_ext.objectives.base import LossContext
from trl_ext.objectives.hapo import (
    HAPOObjective,
    adaptive_clip_bounds,
    dual_clip_surrogate,
    entropy_statistics,
    normalized_entropy,
    redistribute_advantages,
)
from trl_ext.rollout.temperature import (
    AdaptiveTemperatureLogitsProcessor,
    RolloutTemperatureState,
    TemperatureStatistics,
    logits_entropy,
    pop_temperature_summary,
    record_temperature_summary,
    record_temperatures,
    rollout_temperatures,
)
from trl_ext.trainers.hapo import HAPOConfig, HAPOTrainer
from trl_ext.trainers.persistence import STATE_FILE

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4
ALL_OFF = dict(
    hapo_adaptive_temperature=False,
    hapo_token_level_advantage=False,
    hapo_adaptive_advantage=False,
    hapo_adaptive_clip=False,
    hapo_dual_clip_c=None,
)

# §5.2: rows of valid entropies (padding excluded).
ENTROPY_ROWS = [[0.05, 0.9, 1.5, 0.3, 0.02, 2.5], [0.7, 0.01, 0.4, 1.1], [0.2, 3.0, 0.6, 0.08, 0.5], [1.8, 0.03]]
H_TABLE = {
    "reference": [
        [0.6788, 0.1019, 0, 0.3212, 0.8617, 0.7370],
        [0.1521, 1.0000, 0.2638, 0.0619],
        [0.4021, 1.0000, 0.1829, 0.5850, 0.2193],
        [0.2630, 0.7807],
    ],
    "signed": [
        [-0.6788, -0.1019, 0, -0.3212, -0.8617, 0.7370],
        [-0.1521, -1.0000, -0.2638, -0.0619],
        [-0.4021, 1.0000, -0.1829, -0.5850, -0.2193],
        [0.2630, -0.7807],
    ],
}


def padded(rows, fill=7.0):
    """(B, T) values and mask from ragged rows; padding holds a large entropy that must not matter."""
    width = max(len(r) for r in rows)
    values = torch.full((len(rows), width), fill, dtype=torch.float64)
    mask = torch.zeros(len(rows), width)
    for i, row in enumerate(rows):
        values[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        mask[i, : len(row)] = 1
    return values, mask


def objective_args(**overrides):
    """What HAPOObjective reads from a config, without building a full GRPOConfig."""
    fields = dict(
        epsilon=0.2,
        epsilon_high=0.2,
        loss_type="bnpo",
        delta=None,
        importance_sampling_level="token",
        hapo_entropy_sign_mode="signed",
        hapo_entropy_pivot=0.8,
        hapo_adaptive_advantage=True,
        hapo_adv_beta=1.0,
        hapo_adaptive_clip=True,
        hapo_clip_alpha=1.0,
        hapo_dual_clip_c=10.0,
    )
    fields.update(overrides)
    return SimpleNamespace(**fields)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Entropy normalisation (§5.2), clip bounds (§5.3), redistribution (§5.4)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["signed", "reference"])
def test_entropy_statistics_and_h_table(mode):
    values, mask = padded(ENTROPY_ROWS)
    stats = entropy_statistics(values[mask.bool()], 0.8, mode)
    assert stats.num_tokens == 17
    assert float(stats.pivot) == pytest.approx(math.log(1.5), abs=1e-6)  # index round(12.8) = 13 of 17
    assert float(stats.pivot) == pytest.approx(0.405465, abs=1e-6)
    assert float(stats.scale) == pytest.approx(2.318309, abs=1e-6)
    assert float(stats.scale_pos) == pytest.approx(3.344613, abs=1e-6)
    assert float(stats.scale_neg) == pytest.approx(-0.462678 if mode == "reference" else 0.462678, abs=1e-6)
    h = normalized_entropy(values, mask, stats)
    expected, _ = padded(H_TABLE[mode], fill=0.0)
    torch.testing.assert_close(h, expected, atol=TOL, rtol=0)
    assert h.min() >= -1 - 1e-9 and h.max() <= 1 + 1e-9
    if mode == "reference":
        assert (h >= 0).all()


def test_entropy_statistics_degenerate_inputs():
    assert entropy_statistics(torch.zeros(0), 0.8, "signed") is None
    values, mask = padded(ENTROPY_ROWS)
    assert torch.equal(normalized_entropy(values, torch.zeros_like(mask), None), torch.zeros_like(values))
    # One-hot logits (H = 0) and a single token: finite, no token on one side gives the 1e-8 floor.
    for entropies in (torch.zeros(5), torch.tensor([0.3]), torch.tensor([0.0, 1.0, 2.0])):
        for mode in ("signed", "reference"):
            stats = entropy_statistics(entropies, 0.8, mode)
            h = normalized_entropy(entropies, torch.ones_like(entropies), stats)
            assert all(math.isfinite(float(v)) for v in stats[:4]) and torch.isfinite(h).all()
            assert h.abs().max() <= 1 + 1e-6


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("reference", [(0.2, 0.3723), (0.2, 0.3474)]), ("signed", [(0.3723, 0.2), (0.2, 0.3474)])],
)
def test_clip_bounds_table(mode, expected):
    values, mask = padded(ENTROPY_ROWS)
    stats = entropy_statistics(values[mask.bool()], 0.8, mode)
    h = normalized_entropy(values, mask, stats)
    low, high = adaptive_clip_bounds(h, 0.2, 0.2, 1.0)
    # H = 0.02 is row 0 token 4, H = 2.5 is row 0 token 5.
    for (row, col), (eps_low, eps_high) in zip([(0, 4), (0, 5)], expected, strict=True):
        assert float(low[row, col]) == pytest.approx(eps_low, abs=TOL)
        assert float(high[row, col]) == pytest.approx(eps_high, abs=TOL)
    if mode == "reference":  # eps_low is never adapted
        assert torch.equal(low[mask.bool()], torch.full_like(low[mask.bool()], 0.2))


@pytest.mark.parametrize(
    ("mode", "pairs", "expected"),
    [
        ("reference", [(0.8, 1.25), (0.8, 1.02), (0.0, 1.02), (0.5, 0.85)], [1.8, 1.0, 1.0, 1.5]),
        ("signed", [(0.8, 1.25), (-0.6, 1.02), (-0.6, 0.80), (0.0, 1.05)], [1.8, 0.4, 1.0, 1.0]),
    ],
)
def test_redistribution_examples(mode, pairs, expected):
    h = torch.tensor([[p[0] for p in pairs]], dtype=torch.float64)
    ratio = torch.tensor([[p[1] for p in pairs]], dtype=torch.float64)
    low, high = adaptive_clip_bounds(h, 0.2, 0.2, 1.0)
    reshaped, _ = redistribute_advantages(torch.ones(1, 1, dtype=torch.float64), h, ratio, low, high, 1.0)
    torch.testing.assert_close(reshaped, torch.tensor([expected], dtype=torch.float64), atol=TOL, rtol=0)


def test_reference_mode_on_policy_redistribution_is_a_no_op():
    generator = torch.Generator().manual_seed(0)
    entropies = torch.rand(6, 9, generator=generator) * 3
    mask = (torch.rand(6, 9, generator=generator) > 0.2).float()
    stats = entropy_statistics(entropies[mask.bool()], 0.8, "reference")
    h = normalized_entropy(entropies, mask, stats)
    low, high = adaptive_clip_bounds(h, 0.2, 0.28, 1.0)
    advantages = torch.randn(6, 1, generator=generator)
    reshaped, _ = redistribute_advantages(advantages, h, torch.ones_like(h), low, high, 1.0)
    assert torch.equal(reshaped, advantages.expand_as(reshaped))
    # ... while in signed mode r = 1 damps every low-entropy token by (1 + beta h).
    stats = entropy_statistics(entropies[mask.bool()], 0.8, "signed")
    h = normalized_entropy(entropies, mask, stats)
    low, high = adaptive_clip_bounds(h, 0.2, 0.28, 1.0)
    reshaped, _ = redistribute_advantages(advantages, h, torch.ones_like(h), low, high, 1.0)
    torch.testing.assert_close(reshaped, advantages * torch.where(h <= 0, 1 + h, torch.ones_like(h)))


# ----------------------------------------------------------------------------------------------------------------------
# 2. Policy loss (§5.5) through the objective's hooks, and the dual clip
# ----------------------------------------------------------------------------------------------------------------------
LOSS_ENTROPIES = [0.05, 0.5, 1.0, 2.0, 4.0]
LOSS_RATIOS = [1.3, 1.02, 0.85, 1.25, 12.0]
LOSS_TABLE = {
    ("reference", 1): (
        [2, 1, 1.1879, 1, 2],
        [-2.6, -1.02, -1.0097, -1.2, -2.8],
        [-2.6, -1.02, -1.0097, 0, 0],
        -1.7259,
    ),
    ("reference", -1): (
        [-2, -1, -1.1879, -1, -2],
        [2.6, 1.02, 1.0097, 1.25, 20.0],
        [2.6, 1.02, 1.0097, 1.25, 0],
        5.1759,
    ),
    ("signed", 1): ([1, 0.6242, 1, 1, 2], [-1.2, -0.6367, -0.85, -1.2, -2.8], [0, -0.6367, -0.85, 0, 0], -1.3373),
    ("signed", -1): ([-1, -0.6242, -1, -1, -2], [1.3, 0.6367, 0.85, 1.25, 20.0], [1.3, 0.6367, 0.85, 1.25, 0], 4.8073),
}


def run_objective_pipeline(objective, entropies, ratios, advantage, mask=None):
    """The loss pipeline's hooked steps (reshape -> ratio -> clip bounds -> surrogate) in float64."""
    entropies = torch.tensor([entropies], dtype=torch.float64)
    mask = torch.ones_like(entropies) if mask is None else mask
    logps = torch.zeros_like(entropies, requires_grad=True)
    ctx = LossContext(inputs={}, mode="train", mask=mask)
    ctx.logps, ctx.entropies = logps, entropies
    ctx.old_logps = -torch.log(torch.tensor([ratios], dtype=torch.float64))  # r = exp(0 - old) = ratios
    ctx.advantages = torch.full((1, 1), float(advantage), dtype=torch.float64)
    reshaped = objective.reshape_advantages(ctx)
    if reshaped is not None:
        ctx.advantages = reshaped
    ctx.ratio = torch.exp(ctx.logps - ctx.old_logps)
    bounds = objective.clip_bounds(ctx)
    ctx.clip_low, ctx.clip_high = (0.2, 0.2) if bounds is None else bounds
    per_token = objective.surrogate(ctx)
    per_token.sum().backward()
    return ctx, per_token.detach(), logps.grad


@pytest.mark.parametrize(("mode", "advantage"), list(LOSS_TABLE))
def test_policy_loss_table(mode, advantage):
    objective = HAPOObjective(objective_args(hapo_entropy_sign_mode=mode))
    ctx, per_token, grad = run_objective_pipeline(objective, LOSS_ENTROPIES, LOSS_RATIOS, advantage)
    stats = ctx.extras["hapo_stats"]
    assert float(stats.pivot) == pytest.approx(0.693147, abs=1e-6) and float(stats.scale) == pytest.approx(
        1.81607, abs=1e-5
    )
    assert float(stats.scale_pos) == pytest.approx(2.620035, abs=1e-6)
    assert abs(float(stats.scale_neg)) == pytest.approx(0.492309, abs=1e-6)
    reshaped, losses, grads, mean_loss = LOSS_TABLE[(mode, advantage)]
    torch.testing.assert_close(ctx.advantages, torch.tensor([reshaped], dtype=torch.float64), atol=TOL, rtol=0)
    torch.testing.assert_close(per_token, torch.tensor([losses], dtype=torch.float64), atol=TOL, rtol=0)
    torch.testing.assert_close(grad, torch.tensor([grads], dtype=torch.float64), atol=TOL, rtol=0)
    # Token mean (loss_type="bnpo") over the five valid tokens.
    assert float(F.aggregate_loss(per_token, ctx.mask, "bnpo", max_completion_length=5)) == pytest.approx(
        mean_loss, abs=TOL
    )


def test_dual_clip_equals_trl_delta_value_and_gradient():
    generator = torch.Generator().manual_seed(1)
    ratio_leaf = torch.exp(torch.randn(8, 12, generator=generator, dtype=torch.float64) * 1.5)
    advantages = torch.randn(8, 1, generator=generator, dtype=torch.float64)
    h = torch.rand(8, 12, generator=generator, dtype=torch.float64) * 2 - 1
    low, high = adaptive_clip_bounds(h, 0.2, 0.28, 1.0)
    results = []
    for use_delta in (False, True):
        ratio = ratio_leaf.clone().requires_grad_(True)
        if use_delta:
            loss, _ = F.clipped_surrogate(ratio, advantages, low, high, delta=3.0)
        else:
            loss = dual_clip_surrogate(ratio, advantages, low, high, 3.0)
        loss.sum().backward()
        results.append((loss.detach(), ratio.grad))
    assert (ratio_leaf > 3.0).any() and (advantages < 0).any()  # the dual clip acts somewhere
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-12, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-12, rtol=0)


def test_no_valid_token_gives_the_base_loss():
    objective = HAPOObjective(objective_args())
    ctx, per_token, _ = run_objective_pipeline(objective, LOSS_ENTROPIES, [1.0] * 5, 1.0, mask=torch.zeros(1, 5))
    assert ctx.extras["hapo_stats"] is None and torch.equal(ctx.extras["hapo_h"], torch.zeros(1, 5))
    assert torch.equal(ctx.advantages, torch.ones(1, 5, dtype=torch.float64))
    assert torch.equal(per_token, torch.full((1, 5), -1.0, dtype=torch.float64))


def test_objective_all_off_returns_none_everywhere():
    objective = HAPOObjective(
        objective_args(hapo_adaptive_advantage=False, hapo_adaptive_clip=False, hapo_dual_clip_c=None)
    )
    ctx = LossContext(inputs={}, mode="train", mask=torch.ones(1, 3))
    assert objective.reshape_advantages(ctx) is None and objective.clip_bounds(ctx) is None
    assert objective.surrogate(ctx) is None and objective.metrics(ctx) == {}


# ----------------------------------------------------------------------------------------------------------------------
# 3. TLGA (§5.1) and its identities
# ----------------------------------------------------------------------------------------------------------------------
def test_tlga_worked_example():
    advantages, fell_back = tlga_advantages(torch.tensor([1.0, -1.0, 1.0, -1.0]), torch.tensor([6, 4, 5, 2]), 2)
    torch.testing.assert_close(advantages, torch.tensor([0.8165, -1.2247, 0.6325, -1.5811]), atol=TOL, rtol=0)
    assert not fell_back.any()
    # Plain GRPO gives +-0.7071 for both groups.
    grpo, _ = grpo_advantages(torch.tensor([[1.0], [-1.0], [1.0], [-1.0]]), torch.ones(1), 2)
    torch.testing.assert_close(grpo.abs(), torch.full((4,), 0.7071), atol=TOL, rtol=0)


def test_tlga_token_mass_cancels_and_equal_length_identity():
    generator = torch.Generator().manual_seed(0)
    groups, size = 64, 8
    rewards = torch.randn(groups * size, generator=generator)
    lengths = torch.randint(1, 50, (groups * size,), generator=generator)
    advantages, fell_back = tlga_advantages(rewards, lengths, size, fallback_threshold=1e9)
    assert not fell_back.any()
    token_mass = (lengths * advantages.double()).view(groups, size).sum(1)
    torch.testing.assert_close(token_mass, torch.zeros(groups, dtype=torch.float64), atol=1e-4, rtol=0)
    # Equal lengths: A = A_GRPO(unbiased) * sqrt(G / (G - 1)).
    equal, _ = tlga_advantages(rewards, torch.full_like(lengths, 7), size, fallback_threshold=1e9)
    grouped = rewards.double().view(groups, size)
    unbiased = ((grouped - grouped.mean(1, keepdim=True)) / grouped.std(1, keepdim=True)).reshape(-1)
    torch.testing.assert_close(equal.double(), unbiased * math.sqrt(size / (size - 1)), atol=1e-5, rtol=0)


def test_tlga_fallback_example():
    rewards = torch.tensor([1.0] + [-1.0] * 15)
    lengths = torch.tensor([3] + [20] * 15)
    unclipped, _ = tlga_advantages(rewards, lengths, 16, fallback_threshold=1e9)
    assert float(unclipped[0]) == pytest.approx(10.0, abs=1e-3)
    advantages, fell_back = tlga_advantages(rewards, lengths, 16)
    assert fell_back.tolist() == [True]
    torch.testing.assert_close(advantages, torch.tensor([3.75] + [-0.25] * 15), atol=TOL, rtol=0)


@pytest.mark.parametrize(
    ("mode", "lengths", "expected"),
    [("valid", [4, 4], 1.0), ("reference", [4, 4], 0.7071), ("valid", [8, 8], 1.0), ("reference", [8, 8], 1.0)],
)
def test_tlga_phantom_example(mode, lengths, expected):
    advantages, _ = tlga_advantages(
        torch.tensor([1.0, 0.9]), torch.tensor(lengths), 2, fallback_mode=mode, max_completion_length=8
    )
    torch.testing.assert_close(advantages, torch.tensor([expected, -expected]), atol=TOL, rtol=0)


def test_tlga_degenerate_rows_and_groups():
    nan = float("nan")
    rewards = torch.tensor([1.0, 0.0, nan, 1.0, nan, nan, 5.0, 5.0, 2.0, 0.0, 0.5, 0.5, 3.0, 1.0])
    lengths = torch.tensor([0, 3, 4, 2, 2, 2, 3, 3, 0, 0, 4, 4, 4, 4])
    advantages, fell_back = tlga_advantages(rewards, lengths, 2)
    assert torch.isfinite(advantages).all()
    # (1, len 0 | 0, len 3): the zero-length row gets 0; the other is alone among rows with tokens -> 0.
    # (nan | 1): one scorable row -> 0.  (nan | nan) -> 0.  uniform (5, 5) -> 0.  sum L = 0 -> 0.
    assert advantages[:10].tolist() == [0.0] * 10 and not fell_back.any()
    torch.testing.assert_close(advantages[10:12], torch.zeros(2), atol=0, rtol=0)
    torch.testing.assert_close(advantages[12:], torch.tensor([1.0, -1.0]), atol=1e-5, rtol=0)
    for mode in ("valid", "reference"):  # uniform group also 0 via the reference's phantom fallback
        uniform, _ = tlga_advantages(
            torch.full((4,), 0.3), torch.tensor([1, 2, 3, 4]), 4, fallback_mode=mode, max_completion_length=9
        )
        assert torch.equal(uniform, torch.zeros(4))


def test_tlga_estimator_on_a_gathered_batch():
    args = SimpleNamespace(
        max_completion_length=8, multi_objective_aggregation="sum_then_normalize", scale_rewards="group"
    )
    estimator = TokenLevelGroupAdvantage(args)
    assert estimator.requires == frozenset({"completion_lengths"})
    rewards = torch.tensor([[1.0, 0.0], [0.0, float("nan")], [float("nan"), float("nan")], [1.0, 1.0]])
    batch = AdvantageBatch(
        rewards_per_func=rewards,
        reward_weights=torch.tensor([1.0, 0.5]),
        reward_func_names=["a", "b"],
        num_generations=4,
        completion_lengths=torch.tensor([3, 2, 5, 4]),
    )
    output = estimator(batch)
    # Combined R = [1, 0, nan, 1.5] with weights L = [3, 2, 0, 4]; the unscorable row gets 0.
    expected, _ = tlga_advantages(torch.tensor([1.0, 0.0, float("nan"), 1.5]), torch.tensor([3, 2, 5, 4]), 4)
    torch.testing.assert_close(output.advantages, expected, atol=0, rtol=0)
    assert output.advantages[2] == 0 and output.advantages.abs().sum() > 0
    assert output.metrics == {"hapo/tlga_fallback_frac": 0.0}
    # Off: TRL's GRPO advantage, bit for bit, and no gathered lengths.
    off = TokenLevelGroupAdvantage(SimpleNamespace(**vars(args), hapo_token_level_advantage=False))
    assert off.requires == frozenset()
    grpo, _ = grpo_advantages(rewards, batch.reward_weights, 4)
    assert torch.equal(off(batch).advantages, grpo)


# ----------------------------------------------------------------------------------------------------------------------
# 4. Rollout temperature (§5.6) and the logits processor
# ----------------------------------------------------------------------------------------------------------------------
ROLLOUT_LOGITS = torch.tensor([[8.0, 0, 0, 0], [1, 0.8, 0.5, 0], [2, 1, 0, 0]])
ROLLOUT_TABLE = {
    ("reference", 1.0): [1.0500, 1.0012, 1.0036],
    ("signed", 1.0): [0.9500, 0.9988, 0.9964],
    ("reference", 0.7): [0.7350, 0.7009, 0.7025],
    ("signed", 0.7): [0.6650, 0.6991, 0.6975],
}


def section_5_2_stats(mode):
    values, mask = padded(ENTROPY_ROWS)
    return TemperatureStatistics.from_entropies(values[mask.bool()], 0.8, mode)


@pytest.mark.parametrize(("mode", "base"), list(ROLLOUT_TABLE))
def test_rollout_temperature_table(mode, base):
    torch.testing.assert_close(
        logits_entropy(ROLLOUT_LOGITS), torch.tensor([0.0090, 1.3261, 1.0487]), atol=TOL, rtol=0
    )
    temperatures = rollout_temperatures(ROLLOUT_LOGITS, section_5_2_stats(mode), 0.05, base)
    torch.testing.assert_close(temperatures, torch.tensor(ROLLOUT_TABLE[(mode, base)]), atol=TOL, rtol=0)
    # tau = 0 or no statistics: exactly T0.
    for stats, tau in ((section_5_2_stats(mode), 0.0), (None, 0.05)):
        assert torch.equal(rollout_temperatures(ROLLOUT_LOGITS, stats, tau, base), torch.full((3,), base))


def test_rollout_temperatures_are_the_plain_expressions_bit_for_bit():
    # rollout_temperatures works in place on its own intermediate tensors (the vLLM processor calls it at every
    # decoding step); the result must be the bits of the plain out-of-place expressions of §2.5, for T0 = 1 (whose
    # last product it skips) and other T0, with and without reused buffers, and the caller's logits stay untouched.
    def plain(logits, stats, tau, base):
        entropy = logits_entropy(logits)
        z = (torch.log(entropy.clamp(min=1e-6)) - stats.pivot) / (stats.scale + 1e-6)
        h = torch.where(z > 0, z * stats.scale_pos, z * stats.scale_neg).clamp(-1.0, 1.0)
        return base * (1.0 + tau * h)

    generator = torch.Generator().manual_seed(0)
    workspace: list[torch.Tensor] = []
    for index in range(40):
        logits = torch.randn(1 + index % 7, 500, generator=generator) * (0.2 + index % 5)
        logits[0, : 10 * index] = float("-inf")
        before = logits.clone()
        signs = torch.randn(4, generator=generator).tolist()
        stats = TemperatureStatistics(signs[0], abs(signs[1]), abs(signs[2]) + 0.1, signs[3])
        for tau, base in ((0.05, 1.0), (0.5, 1.0), (0.3, 0.7), (0.9, 1.3)):
            expected = plain(logits, stats, tau, base)
            assert torch.equal(rollout_temperatures(logits, stats, tau, base), expected)
            assert torch.equal(rollout_temperatures(logits, stats, tau, base, workspace), expected)
            assert not torch.equal(expected, torch.full_like(expected, base))  # the temperatures do vary
        assert torch.equal(logits, before)


def test_recorded_temperatures_pop_as_the_per_step_summaries():
    # The vLLM processor records each decoding step's temperatures as they are and the summary is taken when popped;
    # it must be the bits of summarising every step at once ([min, max, sum, count], then combined), rows finishing
    # (shorter steps) included.
    generator = torch.Generator().manual_seed(0)
    steps = [0.5 + torch.rand(16 - index // 3, generator=generator) for index in range(40)]
    for values in steps:
        record_temperatures("deferred", values)
        count = torch.tensor(float(values.numel()))
        record_temperature_summary("at-once", torch.stack([values.min(), values.max(), values.sum(), count]))
    deferred = pop_temperature_summary("deferred")
    assert torch.equal(deferred, pop_temperature_summary("at-once"))
    low, high, total, count = deferred.tolist()
    values = torch.cat(steps).double()
    assert count == values.numel() and low == values.min().item() and high == values.max().item()
    assert math.isclose(total, values.sum().item(), rel_tol=1e-6)
    assert pop_temperature_summary("deferred") is None  # popped once


def test_logits_entropy_matches_the_float64_definition_on_a_real_vocabulary():
    # The one-exp-pass entropy against -sum p log p in float64, on SmolLM2's vocabulary size: ordinary, very peaked
    # (H ~ 0), flat (H = log V), shifted by a large constant, half masked with -inf (0 log 0 = 0), bf16 input.
    generator = torch.Generator().manual_seed(0)
    vocab = 49152
    logits = torch.randn(6, vocab, generator=generator) * 3
    logits[1] *= 60
    logits[2] = 0.0
    logits[3] += 1e4
    logits[4, : vocab // 2] = float("-inf")
    logits[5, 7] = 40.0
    probs = torch.softmax(logits.double(), dim=-1)
    expected = torch.special.entr(probs).sum(dim=-1)
    got = logits_entropy(logits)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)
    assert got[2].item() == pytest.approx(math.log(vocab), abs=1e-5)
    bf16 = logits[:3].bfloat16()
    torch.testing.assert_close(
        logits_entropy(bf16).double(),
        torch.special.entr(torch.softmax(bf16.double(), -1)).sum(-1),
        atol=2e-5,
        rtol=1e-5,
    )


def test_logits_entropy_workspace_is_reused_and_changes_nothing():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5000, generator=generator) * 4
    logits[1, :100] = float("-inf")
    workspace: list[torch.Tensor] = []
    first = logits_entropy(logits, workspace)
    pointers = [buffer.data_ptr() for buffer in workspace]
    assert len(workspace) == 2 and torch.equal(first, logits_entropy(logits))
    second = logits_entropy(logits * 0.5, workspace)  # the next decoding step: same buffers, no allocation
    assert [buffer.data_ptr() for buffer in workspace] == pointers
    assert torch.equal(second, logits_entropy(logits * 0.5))
    smaller = logits_entropy(logits[:2], workspace)  # another shape: new buffers
    assert workspace[0].shape == (2, 5000) and torch.equal(smaller, first[:2])


def test_rollout_temperature_range_and_masked_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(256, 50, generator=generator) * torch.rand(256, 1, generator=generator) * 20
    logits[:8, 1:] = -float("inf")  # one-hot after filtering: H = 0, no NaN
    for mode, (low, high) in (("signed", (0.95, 1.05)), ("reference", (1.0, 1.05))):
        temperatures = rollout_temperatures(logits, section_5_2_stats(mode), 0.05, 1.0)
        assert torch.isfinite(temperatures).all()
        assert temperatures.min() >= low - 1e-6 and temperatures.max() <= high + 1e-6
        assert temperatures.max() - temperatures.min() > 0.04


@pytest.mark.parametrize("filters", [dict(top_k=5, top_p=0.9, min_p=0.05), dict(top_k=0, top_p=1.0, min_p=None)])
def test_processor_with_tau_zero_equals_transformers_warpers(filters):
    from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(16, 40, generator=generator) * 3
    input_ids = torch.zeros(16, 3, dtype=torch.long)
    expected = TemperatureLogitsWarper(0.7)(input_ids, scores)
    if filters["top_k"]:
        expected = TopKLogitsWarper(filters["top_k"])(input_ids, expected)
    if filters["top_p"] < 1:
        expected = TopPLogitsWarper(filters["top_p"])(input_ids, expected)
    if filters["min_p"] is not None:
        expected = MinPLogitsWarper(filters["min_p"])(input_ids, expected)
    processor = AdaptiveTemperatureLogitsProcessor(section_5_2_stats("signed"), 0.0, 0.7, **filters)
    assert torch.equal(processor(input_ids, scores), expected)
    # With tau > 0: the same filters applied to l / T_t.
    adaptive = AdaptiveTemperatureLogitsProcessor(section_5_2_stats("signed"), 0.3, 0.7, **filters)
    temperatures = rollout_temperatures(scores, section_5_2_stats("signed"), 0.3, 0.7)
    assert temperatures.std() > 0
    divided = scores / temperatures.unsqueeze(1)
    for warper in adaptive.warpers:
        divided = warper(input_ids, divided)
    assert torch.equal(adaptive(input_ids, scores), divided)


@pytest.fixture(scope="module")
def spread_checkpoint(tmp_path_factory):
    """A tiny model whose next-token entropies vary (initializer_range 0.1)."""
    from trl_ext.tiny_models import build_tiny_checkpoint

    return build_tiny_checkpoint(str(tmp_path_factory.mktemp("hapo-spread")), initializer_range=0.1)


def test_processor_in_generate_samples_high_entropy_steps_hotter(spread_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spread_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(spread_checkpoint).eval()
    prompts = [f"{a}+{b}=" for a in range(8) for b in range(4)]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    neutral = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_new_tokens=6)
    returned = dict(output_scores=True, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        torch.manual_seed(0)
        first = model.generate(**inputs, **neutral, **returned)
        raw = torch.cat(first.logits)
        stats = TemperatureStatistics.from_entropies(logits_entropy(raw), 0.5, "signed")
        processor = AdaptiveTemperatureLogitsProcessor(stats, 0.3, 0.8, top_k=20, keep_history=True)
        torch.manual_seed(0)
        out = model.generate(**inputs, **neutral, **returned, logits_processor=[processor])
    assert len(out.scores) == len(processor.history) > 1
    entropy, temperature = [], []
    for step_logits, step_scores, record in zip(out.logits, out.scores, processor.history, strict=True):
        # What the sampler saw is the warped l / T_t, with T_t from the raw logits' entropy.
        expected_t = rollout_temperatures(step_logits, stats, 0.3, 0.8)
        torch.testing.assert_close(record["temperature"], expected_t, atol=0, rtol=0)
        expected = processor.warpers[0](None, step_logits / expected_t.unsqueeze(1))
        assert torch.equal(step_scores, expected)
        entropy.append(record["entropy"][record["active"]])
        temperature.append(record["temperature"][record["active"]])
    entropy, temperature = torch.cat(entropy), torch.cat(temperature)
    above = torch.log(entropy) > stats.pivot
    # Signed mode: steps above the pivot entropy sample hotter than T0, steps below colder, monotonically in H.
    assert above.any() and (~above).any()
    assert (temperature[above] > 0.8).all() and (temperature[~above] <= 0.8).all()
    order = torch.argsort(entropy)
    assert (temperature[order].diff() >= -1e-6).all()
    assert temperature.max() - temperature.min() > 0.1


def test_temperature_state_round_trip():
    state = RolloutTemperatureState()
    assert state.advance() is None and state.state_dict() == {"current": None, "pending": None, "updates": 0}
    state.pending, state.updates = section_5_2_stats("signed"), 1
    restored = RolloutTemperatureState()
    restored.load_state_dict(state.state_dict())
    assert restored.pending == state.pending and restored.current is None and restored.updates == 1
    assert restored.advance() == state.pending and restored.pending is None


def test_statistics_subsample_is_seeded():
    values = torch.rand(10_000, generator=torch.Generator().manual_seed(0)) * 3
    a = TemperatureStatistics.from_entropies(values, 0.8, "signed", max_tokens=500, seed=3)
    b = TemperatureStatistics.from_entropies(values, 0.8, "signed", max_tokens=500, seed=3)
    exact = TemperatureStatistics.from_entropies(values, 0.8, "signed")
    assert a == b and a.num_tokens == 500 and exact.num_tokens == 10_000
    assert a.pivot == pytest.approx(exact.pivot, abs=0.1)


# ----------------------------------------------------------------------------------------------------------------------
# 5. Config
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"hapo_entropy_sign_mode": "both"}, "hapo_entropy_sign_mode"),
        ({"hapo_entropy_pivot": 1.5}, "hapo_entropy_pivot"),
        ({"hapo_temperature_tau": 1.0}, "hapo_temperature_tau"),
        ({"hapo_temperature_tau": -0.1}, "hapo_temperature_tau"),
        ({"hapo_temperature_stats_max_tokens": 0}, "hapo_temperature_stats_max_tokens"),
        ({"hapo_tlga_fallback_threshold": 0.0}, "hapo_tlga_fallback_threshold"),
        ({"hapo_tlga_fallback_mode": "phantom"}, "hapo_tlga_fallback_mode"),
        ({"hapo_adv_beta": -1.0}, "hapo_adv_beta"),
        ({"hapo_adv_beta": 1.5}, "hapo_adv_beta"),
        ({"hapo_clip_alpha": -0.5}, "hapo_clip_alpha"),
        ({"hapo_dual_clip_c": 1.0}, "hapo_dual_clip_c"),
        ({"hapo_dual_clip_c": 3.0, "delta": 4.0}, "hapo_dual_clip_c"),
        ({"hapo_advantage_eps": 0.0}, "hapo_advantage_eps"),
        ({"loss_type": "cispo"}, "loss_type"),
        ({"hapo_adaptive_clip": "yes"}, "hapo_adaptive_clip"),
        ({"use_transformers_continuous_batching": True}, "hapo_adaptive_temperature"),
    ],
)
def test_config_rejects_bad_settings(tmp_path, overrides, field_name):
    with pytest.raises(ValueError, match=field_name):
        HAPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **overrides)


def test_config_defaults_and_registry(tmp_path):
    args = HAPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert (args.advantage_estimator, args.policy_objective) == ("hapo_tlga", "hapo")
    assert args.hapo_entropy_sign_mode == "signed" and args.hapo_entropy_pivot == 0.8
    assert (args.hapo_temperature_tau, args.hapo_dual_clip_c, args.hapo_tlga_fallback_threshold) == (0.05, 10.0, 5.0)
    assert get_trainer("hapo") == (HAPOTrainer, HAPOConfig)
    assert get_advantage_estimator("hapo_tlga") is TokenLevelGroupAdvantage
    assert get_policy_objective("hapo") is HAPOObjective
    assert HAPOTrainer._paper["id"] == "2509.16591" and "hapo" in HAPOTrainer._tag_names
    # vLLM with every component, adaptive temperature included (a vLLM logits processor; tests/test_vllm.py), is
    # accepted in both modes; equal delta and c too.
    for mode in ("colocate", "server"):
        args = HAPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, use_vllm=True, vllm_mode=mode)
        assert args.hapo_adaptive_temperature and args.use_vllm
    HAPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, delta=10.0)
    HAPOConfig(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        loss_type="cispo",
        **{**ALL_OFF, "hapo_adaptive_advantage": True},
    )


# ----------------------------------------------------------------------------------------------------------------------
# 6. Trainer: exact parity with grpo when everything is off (issue "must show" 2)
# ----------------------------------------------------------------------------------------------------------------------
def perturb_old_logps(inputs, seed=3):
    inputs = dict(inputs)
    old = inputs["old_per_token_logps"]
    inputs["old_per_token_logps"] = old + 0.4 * torch.randn(old.shape, generator=torch.Generator().manual_seed(seed))
    return inputs


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_type": "dapo"},
        {"loss_type": "bnpo", "num_iterations": 2},
        {"loss_type": "grpo", "beta": 0.04, "num_iterations": 2},
    ],
    ids=["dapo-onpolicy", "bnpo-offpolicy", "grpo-kl-offpolicy"],
)
def test_all_components_off_equals_grpo_exactly(tiny_checkpoint, toy_dataset, tmp_path, overrides):
    base = make_trainer(BaseGRPOTrainer, BaseGRPOConfig, tiny_checkpoint, toy_dataset, tmp_path / "grpo", **overrides)
    off = make_trainer(HAPOTrainer, HAPOConfig, tiny_checkpoint, toy_dataset, tmp_path / "off", **overrides, **ALL_OFF)
    on = make_trainer(HAPOTrainer, HAPOConfig, tiny_checkpoint, toy_dataset, tmp_path / "on", **overrides)
    expected_batch, off_batch = generate(base, toy_dataset), generate(off, toy_dataset)
    for key, value in expected_batch.items():  # the generation batch, advantages included, is bit-identical
        if isinstance(value, torch.Tensor):
            assert torch.equal(off_batch[key], value), key
    inputs = perturb_old_logps(expected_batch) if "old_per_token_logps" in expected_batch else expected_batch
    expected_loss, expected_grads, expected_metrics = loss_grads_metrics(base, inputs)
    loss, grads, metrics = loss_grads_metrics(off, inputs)
    assert torch.equal(loss, expected_loss) and sorted(grads) == sorted(expected_grads)
    for name, grad in expected_grads.items():
        assert torch.equal(grads[name], grad), name
    assert metrics == expected_metrics
    # The comparison can fail: with the components on, the advantages and the loss differ.
    on_batch = generate(on, toy_dataset)
    assert torch.equal(on_batch["completion_ids"], expected_batch["completion_ids"])  # first step: plain T0
    assert not torch.allclose(on_batch["advantages"], expected_batch["advantages"], atol=1e-3)
    on_loss, _, on_metrics = loss_grads_metrics(on, dict(inputs, advantages=expected_batch["advantages"]))
    assert not torch.allclose(on_loss, expected_loss, atol=1e-5) and "hapo/redistributed_frac" in on_metrics


# ----------------------------------------------------------------------------------------------------------------------
# 7. The processor inside training generation, and the statistics across a checkpoint resume
# ----------------------------------------------------------------------------------------------------------------------
class RecordingHAPOTrainer(HAPOTrainer):
    """Records, per generation, the statistics sampled with, whether the processor ran, and the completions."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generations: list[dict] = []

    def hapo_build_processor(self, stats, settings):
        processor = super().hapo_build_processor(stats, settings)
        processor.history = []
        self._last_processor = processor
        return processor

    def _generate_and_score_completions(self, inputs):
        self._last_processor = None
        output = super()._generate_and_score_completions(inputs)
        processor = self._last_processor
        self.generations.append(
            {
                "training": self.model.training,
                "stats": self.hapo_temperature.current if self.model.training else None,
                "processor_steps": 0 if processor is None else len(processor.history),
                "temperatures": None
                if processor is None
                else torch.cat([h["temperature"] for h in processor.history]),
                "completion_ids": output["completion_ids"].clone(),
            }
        )
        return output


def test_rollout_statistics_drive_generation_and_survive_resume(spread_checkpoint, toy_dataset, tmp_path):
    common = dict(save_strategy="steps", save_steps=1, hapo_temperature_tau=0.5, per_device_train_batch_size=8)
    first = make_trainer(RecordingHAPOTrainer, HAPOConfig, spread_checkpoint, toy_dataset, tmp_path / "run", **common)
    first.train()
    gens = first.generations
    assert [g["training"] for g in gens] == [True, True]
    # Fresh run: plain T0 at the first generation; the second samples through the processor with statistics of the
    # first batch's entropies, realised temperatures spread over [0.5, 1.5] T0.
    assert gens[0]["stats"] is None and gens[0]["processor_steps"] == 0
    assert gens[1]["stats"] is not None and gens[1]["processor_steps"] > 0
    assert gens[1]["temperatures"].max() - gens[1]["temperatures"].min() > 0.05
    assert ((gens[1]["temperatures"] >= 0.5) & (gens[1]["temperatures"] <= 1.5)).all()
    logged = [e for e in first.state.log_history if "hapo/temperature_min" in e]
    assert logged[0]["hapo/temperature_min"] == logged[0]["hapo/temperature_max"] == 1.0
    assert logged[1]["hapo/temperature_min"] < logged[1]["hapo/temperature_max"]
    saved = json.loads((tmp_path / "run" / "checkpoint-1" / STATE_FILE).read_text())["trainer"]["hapo_temperature"]
    assert saved["current"] is None and saved["pending"] == gens[1]["stats"].state_dict()

    resumed = make_trainer(
        RecordingHAPOTrainer, HAPOConfig, spread_checkpoint, toy_dataset, tmp_path / "resumed", **common
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert len(resumed.generations) == 1
    assert resumed.generations[0]["stats"] == gens[1]["stats"]
    assert torch.equal(resumed.generations[0]["completion_ids"], gens[1]["completion_ids"])
    assert json.loads((tmp_path / "resumed" / "checkpoint-2" / STATE_FILE).read_text()) == json.loads(
        (tmp_path / "run" / "checkpoint-2" / STATE_FILE).read_text()
    )

    # Without the saved statistics the resumed step samples at plain T0, and differently: the restore matters.
    stripped = tmp_path / "stripped" / "checkpoint-1"
    shutil.copytree(tmp_path / "run" / "checkpoint-1", stripped)
    state = json.loads((stripped / STATE_FILE).read_text())
    state["trainer"] = {}
    (stripped / STATE_FILE).write_text(json.dumps(state))
    fresh = make_trainer(
        RecordingHAPOTrainer, HAPOConfig, spread_checkpoint, toy_dataset, tmp_path / "fresh", **common
    )
    fresh.train(resume_from_checkpoint=str(stripped))
    assert fresh.generations[0]["stats"] is None
    assert not torch.equal(fresh.generations[0]["completion_ids"], gens[1]["completion_ids"])


def test_tau_zero_through_the_trainer_samples_exactly_as_plain_generation(spread_checkpoint, toy_dataset, tmp_path):
    """The wrapper neutralises generate()'s own warpers, so T0, top-k, top-p and a model-level min_p apply once."""
    sampling = dict(temperature=0.7, top_k=10, top_p=0.95, hapo_temperature_tau=0.0)
    trainer = make_trainer(RecordingHAPOTrainer, HAPOConfig, spread_checkpoint, toy_dataset, tmp_path, **sampling)
    trainer.model.generation_config.min_p = 0.3  # None in TRL's config: generate() fills it from the model's
    trainer.hapo_temperature.current = section_5_2_stats("signed")
    adaptive = generate(trainer, toy_dataset)
    assert trainer.generations[-1]["processor_steps"] > 0
    assert trainer.generations[-1]["temperatures"].eq(0.7).all()
    trainer.hapo_adaptive_temperature = False  # the plain TRL path, same seed
    plain = generate(trainer, toy_dataset)
    assert trainer.generations[-1]["processor_steps"] == 0
    assert torch.equal(adaptive["completion_ids"], plain["completion_ids"])
    assert trainer.generation_config.temperature == 0.7 and "generate" not in trainer.model.__dict__  # restored


def test_eval_generation_never_adapts(spread_checkpoint, toy_dataset, tmp_path):
    trainer = make_trainer(
        RecordingHAPOTrainer, HAPOConfig, spread_checkpoint, toy_dataset, tmp_path, hapo_temperature_tau=0.5
    )
    trainer.hapo_temperature.current = section_5_2_stats("signed")
    trainer.model.eval()
    rows = [dict(toy_dataset[i]) for i in range(4) for _ in range(NUM_GENERATIONS)]
    trainer._generate_and_score_completions(rows)
    assert trainer.generations[-1]["processor_steps"] == 0 and "hapo/temperature_min" not in trainer._metrics["eval"]
    assert trainer.hapo_temperature.current == section_5_2_stats("signed")  # untouched
    # The same rows in train mode go through the processor.
    trainer.model.train()
    trainer._generate_and_score_completions(rows)
    assert trainer.generations[-1]["processor_steps"] > 0


# ----------------------------------------------------------------------------------------------------------------------
# 8. End to end: 1 process on the built-in task, 2 processes (gloo)
# ----------------------------------------------------------------------------------------------------------------------
HAPO_METRICS = (
    "hapo/entropy_pivot",
    "hapo/entropy_scale",
    "hapo/redistributed_frac",
    "hapo/clip_low_mean",
    "hapo/clip_high_mean",
    "hapo/temperature_min",
    "hapo/temperature_max",
    "hapo/tlga_fallback_frac",
)


def test_end_to_end_one_process_on_the_arithmetic_task(tmp_path):
    from trl_ext.data import get_task
    from trl_ext.tiny_models import build_tiny_checkpoint

    task = get_task("arithmetic")
    checkpoint = build_tiny_checkpoint(str(tmp_path / "model"), alphabet=task.alphabet, initializer_range=0.1)
    args = HAPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=64,
        num_generations=8,
        max_completion_length=task.max_completion_length,
        learning_rate=1e-3,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_tqdm=True,
    )
    trainer = HAPOTrainer(
        model=checkpoint, reward_funcs=task.reward_funcs, args=args, train_dataset=task.make_dataset(512, 0)
    )
    trainer.train()
    steps = [e for e in trainer.state.log_history if "loss" in e]
    assert len(steps) == 4
    for entry in steps:
        assert math.isfinite(entry["loss"]) and all(math.isfinite(entry[k]) for k in HAPO_METRICS)
        assert 0.95 - 1e-6 <= entry["hapo/temperature_min"] <= entry["hapo/temperature_max"] <= 1.05 + 1e-6
        assert entry["hapo/clip_low_mean"] >= 0.2 and entry["hapo/clip_high_mean"] >= 0.2
    assert steps[0]["hapo/temperature_min"] == steps[0]["hapo/temperature_max"] == 1.0
    assert any(e["hapo/temperature_max"] > e["hapo/temperature_min"] for e in steps[1:])


def test_two_processes_share_statistics_and_advantages(tiny_checkpoint, tmp_path):
    launch_two_processes(
        str(REPO / "tests" / "scripts" / "hapo_two_process.py"),
        "--checkpoint",
        tiny_checkpoint,
        "--out",
        str(tmp_path),
    )
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    assert [r["num_processes"] for r in ranks] == [2, 2] and [r["process_index"] for r in ranks] == [0, 1]

    # Rollout statistics: identical on both processes, computed from BOTH processes' first-pass entropies.
    assert ranks[0]["stats_used"] == ranks[1]["stats_used"] and ranks[0]["stats_used"][0] is None
    assert ranks[0]["stats_computed"] == ranks[1]["stats_computed"] and len(ranks[0]["stats_computed"]) == 3
    for update, computed in enumerate(ranks[0]["stats_computed"]):
        local = [r["local_entropies"][update] for r in ranks]
        assert local[0].numel() > 0 and local[1].numel() > 0
        both = TemperatureStatistics.from_entropies(torch.cat(local), 0.8, "signed")
        for key in ("pivot", "scale", "scale_pos", "scale_neg", "num_tokens"):
            assert computed[key] == pytest.approx(getattr(both, key), rel=1e-9, abs=1e-12), key
        own = TemperatureStatistics.from_entropies(local[0], 0.8, "signed")
        assert own.num_tokens < both.num_tokens
        if update + 1 < len(ranks[0]["stats_used"]):
            assert ranks[0]["stats_used"][update + 1] == computed  # the next generation samples with them
    assert all(calls > 0 for calls in ranks[0]["processor_calls"][1:]) and ranks[0]["processor_calls"][0] == 0

    # TLGA on the gathered batch: the same full advantages on both processes; each keeps its slice.
    assert ranks[0]["full_advantages"][0].abs().max() > 0.1
    for step in range(3):
        rewards, lengths = ranks[0]["rewards_per_func"][step], ranks[0]["completion_lengths"][step]
        expected, _ = tlga_advantages(rewards.squeeze(1), lengths, 4)
        for rank in ranks:
            assert torch.equal(rank["rewards_per_func"][step], rewards)
            assert torch.equal(rank["full_advantages"][step], expected)
        local = torch.cat([rank["local_advantages"][step] for rank in ranks])
        assert torch.equal(local, expected)

    # Logged metrics are global: identical on both processes, finite, the temperature range within [0.5, 1.5] T0.
    assert ranks[0]["logged"] == ranks[1]["logged"] and len(ranks[0]["logged"]) == 3
    for entry in ranks[0]["logged"]:
        assert all(math.isfinite(value) for value in entry.values())
        assert 0.5 - 1e-6 <= entry["hapo/temperature_min"] <= entry["hapo/temperature_max"] <= 1.5 + 1e-6
