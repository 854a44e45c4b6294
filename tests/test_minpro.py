"""MinPRO (``"minpro"``, arXiv 2601.22718): the spec's acceptance list (``specs/minpro.md``) and the issue's checks.

Pure math (``trl_ext.objectives.minpro``):

* the worked table §5.1 (rho, M for the three flag settings, per-token losses and gradients for A = +-1) and the
  masking example §5.2;
* properties on random inputs, and the vectorised cummin against a naive O(T^2) loop (float64, every flag
  combination, right padding and interior tool-mask zeros);
* detach (the Jacobian of the per-token loss is diagonal, with -M rho A on unclipped tokens), masked tokens are
  inert, log-ratios of +-80 give a finite loss and finite gradients, bf16 is processed in float32.

Trainer (``MinPROTrainer`` on a tiny offline model):

* on-policy, loss and gradients equal ``BaseGRPOTrainer`` bit for bit and ``trl.GRPOTrainer`` to 1e-6 for every
  supported ``loss_type`` (and M = 1);
* off-policy, MinPRO equals the base loss with token-level advantages A * M (the spec's equivalence), with a tool
  mask inside the completion, for several loss types, KL and delta;
* perturbing the old log-prob of a padding or tool token changes neither the loss nor the gradients;
* clear errors; registry; a 1-process end-to-end run of the off-policy recipe through the CLI, and a real
  2-process CPU run (``tests/scripts/minpro_two_process.py``).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import length_reward
from harness import generate, loss_grads_metrics, make_trainer
from trl import GRPOConfig, GRPOTrainer
from twoproc import launch_two_processes

import trl_ext.trainers.minpro  # noqa: F401  (registers "minpro"; explicit until trl_ext.trainers imports it)
from trl_ext import BaseGRPOConfig, BaseGRPOTrainer, get_policy_objective, get_trainer
from trl_ext.objectives import functional as F
from trl_ext.objectives.base import LossContext
from trl_ext.objectives.minpro import (
    MinPROObjective,
    guard_weighted_ratio_overflow,
    minpro_clipped_surrogate,
    prefix_min_log_ratio,
    prefix_min_weights,
)
from trl_ext.trainers.minpro import MinPROConfig, MinPROTrainer

REPO = Path(__file__).resolve().parents[1]
FLAGS = list(itertools.product([False, True], [False, True]))  # (include_current, cap_at_one)
SUPPORTED_LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"]
METRIC_KEYS = ("minpro/weight_mean", "minpro/weight_min", "minpro/weight_max", "minpro/frac_weight_below_half")


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------
def naive_log_m(log_ratio, valid, include_current, cap_at_one, clamp=20.0):
    """The O(T^2) definition, one token at a time, in float64."""
    rows, width = log_ratio.shape
    out = torch.zeros(rows, width, dtype=torch.float64)
    for i in range(rows):
        for t in range(width):
            stop = t + 1 if include_current else t
            prefix = [float(log_ratio[i, j]) for j in range(stop) if valid[i, j]]
            value = min(prefix) if prefix else 0.0
            if cap_at_one:
                value = min(value, 0.0)
            out[i, t] = max(-clamp, min(clamp, value))
    return out


def random_batch(seed, rows=6, width=12, scale=1.5):
    """Random log-ratios with right padding (random lengths, one empty row) and interior tool-mask zeros."""
    generator = torch.Generator().manual_seed(seed)
    log_ratio = scale * torch.randn(rows, width, generator=generator, dtype=torch.float64)
    lengths = torch.randint(1, width + 1, (rows,), generator=generator)
    lengths[0], lengths[1] = width, 0
    completion = (torch.arange(width)[None, :] < lengths[:, None]).long()
    tool = (torch.rand(rows, width, generator=generator) > 0.25).long()
    tool[0, 2:4] = 0  # a tool segment inside a full-length row
    return log_ratio, completion, tool


def worked_example():
    """§5.1: pi_old and pi_theta of six valid tokens."""
    old = torch.tensor([[0.50, 0.40, 0.30, 0.60, 0.20, 0.50]]).log()
    new = torch.tensor([[0.55, 0.20, 0.33, 0.66, 0.26, 0.45]]).log()
    return old, new


def masked_mean_fn(mask):
    return lambda x: ((x * mask).sum() / mask.sum().clamp(min=1)).item()


# ----------------------------------------------------------------------------------------------------------------------
# Pure math: worked examples (acceptance 2, 3)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("include_current", "cap_at_one", "expected"),
    [
        (False, False, [1.00, 1.10, 0.50, 0.50, 0.50, 0.50]),
        (False, True, [1.00, 1.00, 0.50, 0.50, 0.50, 0.50]),
        (True, False, [1.10, 0.50, 0.50, 0.50, 0.50, 0.50]),
    ],
    ids=["default", "cap_at_one", "include_current"],
)
def test_worked_table_weights(include_current, cap_at_one, expected):
    old, new = worked_example()
    log_ratio = new - old
    torch.testing.assert_close(
        log_ratio.exp(), torch.tensor([[1.10, 0.50, 1.10, 1.10, 1.30, 0.90]]), atol=1e-4, rtol=0
    )
    weights = prefix_min_weights(log_ratio, torch.ones_like(log_ratio), include_current, cap_at_one)
    torch.testing.assert_close(weights, torch.tensor([expected]), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("advantage", "ppo_loss", "minpro_loss", "minpro_grad"),
    [
        (
            1.0,
            [-1.10, -0.50, -1.10, -1.10, -1.20, -0.90],
            [-1.10, -0.55, -0.55, -0.55, -0.60, -0.45],
            [-1.10, -0.55, -0.55, -0.55, 0.00, -0.45],
        ),
        (
            -1.0,
            [1.10, 0.80, 1.10, 1.10, 1.30, 0.90],
            [1.10, 0.88, 0.55, 0.55, 0.65, 0.45],
            [1.10, 0.00, 0.55, 0.55, 0.65, 0.45],
        ),
    ],
    ids=["A=+1", "A=-1"],
)
def test_worked_table_losses_and_gradients(advantage, ppo_loss, minpro_loss, minpro_grad):
    old, new = worked_example()
    logps = new.clone().requires_grad_(True)
    ratio = torch.exp(logps - old)
    advantages = torch.full((1, 1), advantage)
    ppo, _ = F.clipped_surrogate(ratio, advantages, 0.2, 0.2)
    weights = prefix_min_weights(logps - old, torch.ones_like(old))
    loss = minpro_clipped_surrogate(ratio, advantages, weights, 0.2, 0.2)
    torch.testing.assert_close(ppo.detach(), torch.tensor([ppo_loss]), atol=1e-4, rtol=0)
    torch.testing.assert_close(loss.detach(), torch.tensor([minpro_loss]), atol=1e-4, rtol=0)
    # Each l_t depends on log pi_theta(y_t) only (M is detached), so the gradient of the sum is per token.
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    torch.testing.assert_close(grad, torch.tensor([minpro_grad]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("padding_value", [float("nan"), -50.0, 50.0, 0.0])
def test_masking_example(padding_value):
    log_ratio = torch.tensor([[0.0, -1.0, -3.0, 0.2, 5.0, padding_value]])
    valid = torch.tensor([[1, 1, 0, 1, 1, 0]])  # token 3 is a tool token, token 6 padding
    log_m = prefix_min_log_ratio(log_ratio, valid)
    torch.testing.assert_close(log_m, torch.tensor([[0.0, 0.0, -1.0, -1.0, -1.0, -1.0]]), atol=0, rtol=0)
    # Without the tool mask the -3 would enter the minimum: the mask is what the example checks.
    assert prefix_min_log_ratio(log_ratio, torch.tensor([[1, 1, 1, 1, 1, 0]]))[0, 3] == -3.0


# ----------------------------------------------------------------------------------------------------------------------
# Pure math: properties and the O(T^2) oracle (acceptance 1, 4, 8)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("include_current", "cap_at_one"), FLAGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_naive_loop(seed, include_current, cap_at_one):
    log_ratio, completion, tool = random_batch(seed, scale=8.0)
    log_ratio[:, 0], log_ratio[:, 5] = 35.0, -27.0  # beyond +-20: the clamp acts
    valid = completion * tool
    assert valid[0].sum() < valid.size(1) and valid[1].sum() == 0
    actual = prefix_min_log_ratio(log_ratio, valid, include_current, cap_at_one)
    assert actual.dtype == torch.float64 and (actual == -20.0).any()
    expected = naive_log_m(log_ratio, valid, include_current, cap_at_one)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)
    small_clamp = prefix_min_log_ratio(log_ratio, valid, include_current, cap_at_one, clamp=0.5)
    torch.testing.assert_close(small_clamp, naive_log_m(log_ratio, valid, include_current, cap_at_one, 0.5))


@pytest.mark.parametrize("seed", range(4))
def test_properties_on_random_inputs(seed):
    log_ratio, completion, tool = random_batch(seed, rows=8, width=16)
    valid = (completion * tool).bool()
    for include_current, cap_at_one in FLAGS:
        log_m = prefix_min_log_ratio(log_ratio, valid, include_current, cap_at_one)
        for i in range(log_ratio.size(0)):
            positions = valid[i].nonzero().flatten().tolist()
            for t in range(log_ratio.size(1)):
                prefix = [j for j in positions if j < t or (include_current and j == t)]
                for j in prefix:  # M_t <= rho_j for every valid j in the prefix
                    assert log_m[i, t] <= log_ratio[i, j] + 1e-12
            if positions and not include_current:
                assert log_m[i, positions[0]] == 0.0  # M = 1 at the first valid token
            if not include_current and not cap_at_one:
                after = log_m[i, positions[1:]] if len(positions) > 1 else log_m[i, :0]
                assert torch.all(after[1:] <= after[:-1])  # non-increasing from the second valid token
        if not valid[1].any():
            assert torch.all(log_m[1] == 0.0)  # all-masked row: M = 1 everywhere


def test_on_policy_weight_is_one():
    logps = torch.randn(4, 9, requires_grad=True)
    log_ratio = logps - logps.detach()  # old = current.detach()
    _, completion, tool = random_batch(0, rows=4, width=9)
    for include_current, cap_at_one in FLAGS:
        weights = prefix_min_weights(log_ratio, completion * tool, include_current, cap_at_one)
        assert torch.equal(weights, torch.ones_like(weights))


# ----------------------------------------------------------------------------------------------------------------------
# Pure math: detach, inert masks, robustness (acceptance 5, 6, 7)
# ----------------------------------------------------------------------------------------------------------------------
def test_gradient_flows_only_through_the_current_ratio():
    generator = torch.Generator().manual_seed(0)
    old = torch.randn(1, 8, generator=generator, dtype=torch.float64)
    new = old + 0.3 * torch.randn(1, 8, generator=generator, dtype=torch.float64)
    valid = torch.ones(1, 8, dtype=torch.long)
    for advantage in (1.5, -0.7):

        def per_token_loss(logps, advantage=advantage):
            ratio = torch.exp(logps - old)
            weights = prefix_min_weights(logps - old, valid)
            return minpro_clipped_surrogate(
                ratio, torch.full((1, 1), advantage, dtype=torch.float64), weights, 0.2, 0.2
            )[0]

        jacobian = torch.autograd.functional.jacobian(per_token_loss, new)[:, 0, :]  # (T, T): d l_t / d log pi(y_j)
        off_diagonal = jacobian - torch.diag(torch.diagonal(jacobian))
        assert torch.all(off_diagonal == 0)
        ratio = torch.exp(new - old)[0]
        weights = prefix_min_weights(new - old, valid)[0]
        unclipped = ((ratio - 1).abs() <= 0.2) | ((ratio < 0.8) & (advantage > 0)) | ((ratio > 1.2) & (advantage < 0))
        assert unclipped.sum() >= 3 and (~unclipped).sum() >= 1
        expected = torch.where(unclipped, -weights * ratio * advantage, torch.zeros_like(ratio))
        torch.testing.assert_close(torch.diagonal(jacobian), expected, atol=1e-12, rtol=0)
        # Not detaching would put the prefix into the Jacobian: this is what the assertion above excludes.
        assert prefix_min_log_ratio(new.clone().requires_grad_(True), valid).requires_grad is False


def test_inclusive_prefix_minimum_replaces_the_current_ratio():
    # minpro_include_current=True: the effective weight of an unclipped token is min_{j<=t} rho_j (an O(T^2) oracle),
    # not rho_t * min_{j<=t} rho_j, which counted the token's own ratio twice.
    generator = torch.Generator().manual_seed(3)
    old = torch.randn(2, 9, generator=generator, dtype=torch.float64)
    new = old + 0.4 * torch.randn(2, 9, generator=generator, dtype=torch.float64)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 7:] = 0  # padding
    mask[0, 4] = 0  # a tool token: outside the minimum and the loss
    objective = MinPROObjective(SimpleNamespace(minpro_include_current=True))
    for advantage in (1.3, -0.6):
        advantages = torch.full((2, 1), advantage, dtype=torch.float64)

        def per_token_loss(logps, advantages=advantages):
            ctx = _context({}, logps, old, mask)
            return minpro_clipped_surrogate(torch.exp(logps - old), advantages, objective.token_weights(ctx), 0.2, 0.2)

        logps = new.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((per_token_loss(logps) * mask).sum(), logps)
        ratio = torch.exp(new - old)
        for i in range(2):
            for t in range(9):
                if not mask[i, t]:
                    assert grad[i, t] == 0
                    continue
                prefix_min = min(ratio[i, j].item() for j in range(t + 1) if mask[i, j])
                clipped = (advantage > 0 and ratio[i, t] > 1.2) or (advantage < 0 and ratio[i, t] < 0.8)
                expected = 0.0 if clipped else -prefix_min * advantage
                assert grad[i, t].item() == pytest.approx(expected, abs=1e-10), (i, t)
        # the metrics report the effective weight M
        ctx = _context({}, new, old, mask)
        objective.token_weights(ctx)
        oracle = [
            min(ratio[i, j].item() for j in range(t + 1) if mask[i, j])
            for i in range(2)
            for t in range(9)
            if mask[i, t]
        ]
        metrics = objective.metrics(ctx)
        assert metrics["minpro/weight_max"] == pytest.approx(max(oracle), abs=1e-6)
        assert metrics["minpro/weight_min"] == pytest.approx(min(oracle), abs=1e-6)


@pytest.mark.parametrize("loss_type", SUPPORTED_LOSS_TYPES)
def test_masked_positions_cannot_change_the_loss(loss_type):
    log_ratio, completion, tool = random_batch(5, scale=0.5)
    mask = (completion * tool).float()
    old = torch.randn(log_ratio.shape, dtype=torch.float64)
    advantages = torch.linspace(-1.0, 1.0, log_ratio.size(0), dtype=torch.float64)[:, None]

    def loss(old_logps):
        logps = (old + log_ratio).requires_grad_(True)
        ratio = torch.exp(logps - old_logps)
        weights = prefix_min_weights(logps - old_logps, mask)
        per_token = minpro_clipped_surrogate(ratio, advantages, weights, 0.2, 0.28)
        value = F.aggregate_loss(
            per_token, mask, loss_type, max_completion_length=mask.size(1), num_items=mask.sum().clamp(min=1)
        )
        (grad,) = torch.autograd.grad(value, logps)
        return value.detach(), grad

    expected_loss, expected_grad = loss(old)
    perturbed = old + torch.where(mask.bool(), 0.0, 1.0) * torch.randn(old.shape, dtype=torch.float64).mul(30.0)
    actual_loss, actual_grad = loss(perturbed)
    assert torch.equal(actual_loss, expected_loss) and torch.equal(actual_grad, expected_grad)
    # The same perturbation at valid positions does change it (the test can fail).
    changed_loss, _ = loss(old + 0.5 * torch.randn(old.shape, dtype=torch.float64))
    assert not torch.equal(changed_loss, expected_loss)


@pytest.mark.parametrize(("include_current", "cap_at_one"), FLAGS)
def test_log_ratios_of_80_give_a_finite_loss(include_current, cap_at_one):
    # Through the objective's token_weights (the trainer's path), every +-80 pattern of 4 tokens, A = +-1.
    objective = MinPROObjective(SimpleNamespace(minpro_include_current=include_current, minpro_cap_at_one=cap_at_one))
    width = 4
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=width)))  # (16, 4)
    old = torch.full(signs.shape, -3.0)
    mask = torch.ones_like(signs, dtype=torch.long)
    for advantage in (1.0, -1.0):
        logps = (old + 80.0 * signs).requires_grad_(True)
        ctx = _context({"old_per_token_logps": old}, logps, old, mask)
        weights = objective.token_weights(ctx)
        assert weights.requires_grad is False
        if (
            include_current
        ):  # the factor is M / rho_t: bounded, and the effective weight (factor x rho_t) is |log| <= 20
            assert weights.log().abs().max() <= 64.0
            assert (weights.log() + ctx.log_ratio.detach()).abs().max() <= 20.0
        else:
            assert weights.log().abs().max() <= 20.0
        per_token = minpro_clipped_surrogate(ctx.log_ratio.exp(), torch.tensor([[advantage]]), weights, 0.2, 0.2)
        for loss_type in SUPPORTED_LOSS_TYPES:
            loss = F.aggregate_loss(
                per_token, mask, loss_type, max_completion_length=width, num_items=mask.sum().float()
            )
            (grad,) = torch.autograd.grad(loss, logps, retain_graph=True)
            assert torch.isfinite(loss) and torch.isfinite(grad).all(), (loss_type, advantage)
        assert all(math.isfinite(value) for value in objective.metrics(ctx).values())


def test_overflow_guard_is_needed_and_inactive_in_normal_ranges():
    # Two tokens with log-ratio 80 and A < 0: M_2 = e^20 (the spec's clamp) times rho_2 = e^80 overflows float32,
    # while PPO's own term e^80 does not. The guard keeps M_2 * rho_2 finite.
    log_ratio = torch.tensor([[80.0, 80.0]])
    log_m = prefix_min_log_ratio(log_ratio, torch.ones_like(log_ratio))
    assert log_m[0, 1] == 20.0
    unguarded = minpro_clipped_surrogate(log_ratio.exp(), torch.tensor([[-1.0]]), log_m.exp(), 0.2, 0.2)
    assert torch.isinf(unguarded).any()
    guarded = guard_weighted_ratio_overflow(log_m, log_ratio)
    assert guarded[0, 1] <= 0.0  # lr_t > 64: MinPRO never amplifies PPO's term
    # |log rho_t| <= 64 - 20 = 44: unchanged.
    log_ratio, completion, tool = random_batch(3, scale=15.0)
    log_ratio = log_ratio.clamp(-44.0, 44.0)
    log_m = prefix_min_log_ratio(log_ratio, completion * tool)
    assert torch.equal(guard_weighted_ratio_overflow(log_m, log_ratio), log_m)


def test_bf16_inputs_are_processed_in_float32():
    log_ratio, completion, tool = random_batch(2, scale=0.3)
    as_bf16 = log_ratio.to(torch.bfloat16)
    for include_current, cap_at_one in FLAGS:
        log_m = prefix_min_log_ratio(as_bf16, completion * tool, include_current, cap_at_one)
        assert log_m.dtype == torch.float32
        expected = naive_log_m(as_bf16.double(), completion * tool, include_current, cap_at_one)
        torch.testing.assert_close(log_m.double(), expected, atol=0, rtol=0)
        assert prefix_min_weights(as_bf16, completion * tool).dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------------------
# The objective on hand-built contexts: validation, sampling source, metrics
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("minpro_ratio_source", "behaviour"),
        ("minpro_include_current", "yes"),
        ("minpro_cap_at_one", 1),
        ("minpro_log_weight_clamp", 0.0),
        ("minpro_log_weight_clamp", -1.0),
        ("minpro_log_weight_clamp", float("inf")),
        ("importance_sampling_level", "sequence"),
        ("loss_type", "cispo"),
    ],
)
def test_objective_validates_its_fields(field_name, value):
    with pytest.raises(ValueError, match=field_name):
        MinPROObjective(SimpleNamespace(**{field_name: value}))


def _context(inputs, logps, old, mask):
    ctx = LossContext(inputs=inputs, mode="train", mask=mask)
    ctx.logps, ctx.old_logps = logps, old
    ctx.log_ratio = logps - old
    ctx.global_masked_mean = masked_mean_fn(mask)
    return ctx


def test_objective_defaults_and_metrics():
    objective = MinPROObjective(SimpleNamespace())  # a config without minpro fields: the spec's defaults
    assert (objective.include_current, objective.cap_at_one, objective.ratio_source) == (False, False, "old")
    old, new = worked_example()
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    ctx = _context({}, new, old, mask)
    weights = objective.token_weights(ctx)
    torch.testing.assert_close(weights[:, :5], torch.tensor([[1.0, 1.1, 0.5, 0.5, 0.5]]), atol=1e-5, rtol=0)
    metrics = objective.metrics(ctx)
    assert metrics["minpro/weight_mean"] == pytest.approx(3.6 / 5, abs=1e-5)
    assert metrics["minpro/weight_min"] == pytest.approx(0.5, abs=1e-5)
    assert metrics["minpro/weight_max"] == pytest.approx(1.1, abs=1e-5)
    for shift, below in ((0.1, 0.0), (-0.2, 3 / 5)):  # every M moves to 0.55 / 0.41 after token 2
        ctx = _context({}, new + shift, old, mask)
        objective.token_weights(ctx)
        assert objective.metrics(ctx)["minpro/frac_weight_below_half"] == pytest.approx(below)


def test_sampling_source_skips_nan_and_requires_sampler_logps():
    objective = MinPROObjective(SimpleNamespace(minpro_ratio_source="sampling"))
    old, new = worked_example()
    sampling = old.clone()
    sampling[0, 1] = float("nan")  # the sampler could not score token 2: it leaves the minimum
    mask = torch.ones_like(old, dtype=torch.long)
    ctx = _context({"sampling_per_token_logps": sampling}, new, new.detach(), mask)  # old == current: rho_t = 1
    weights = objective.token_weights(ctx)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights, torch.tensor([[1.0, 1.1, 1.1, 1.1, 1.1, 1.1]]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="sampling_per_token_logps"):
        objective.token_weights(_context({}, new, new.detach(), mask))
    with pytest.warns(UserWarning, match="vllm_importance_sampling_correction"):
        MinPROObjective(
            SimpleNamespace(minpro_ratio_source="sampling", use_vllm=True, vllm_importance_sampling_correction=True)
        )


# ----------------------------------------------------------------------------------------------------------------------
# Config and trainer errors (acceptance 9), registry
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"importance_sampling_level": "sequence"}, "importance_sampling_level"),
        ({"loss_type": "cispo"}, "loss_type"),
        ({"loss_type": "sapo"}, "loss_type"),
        ({"loss_type": "vespo"}, "loss_type"),
        ({"minpro_ratio_source": "vllm"}, "minpro_ratio_source"),
        ({"minpro_log_weight_clamp": 0.0}, "minpro_log_weight_clamp"),
        ({"minpro_cap_at_one": "true"}, "minpro_cap_at_one"),
    ],
)
def test_config_rejects_bad_settings(tmp_path, overrides, field_name):
    with pytest.raises(ValueError, match=field_name):
        MinPROConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **overrides)


def test_config_defaults_and_registry(tmp_path):
    args = MinPROConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert args.policy_objective == "minpro" and args.advantage_estimator == "grpo"
    assert (args.minpro_include_current, args.minpro_cap_at_one) == (False, False)
    assert (args.minpro_ratio_source, args.minpro_log_weight_clamp) == ("old", 20.0)
    assert args.loss_type in SUPPORTED_LOSS_TYPES
    assert get_trainer("minpro") == (MinPROTrainer, MinPROConfig)
    assert get_policy_objective("minpro") is MinPROObjective
    assert MinPROTrainer._paper["id"] == "2601.22718" and "minpro" in MinPROTrainer._tag_names


def test_sampling_source_without_sampler_raises_at_init(tiny_checkpoint, toy_dataset, tmp_path):
    args = MinPROConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, minpro_ratio_source="sampling")
    with pytest.raises(ValueError, match="minpro_ratio_source='sampling'"):
        MinPROTrainer(model=tiny_checkpoint, reward_funcs=[length_reward], args=args, train_dataset=toy_dataset)


# ----------------------------------------------------------------------------------------------------------------------
# Trainer: on-policy exactness, off-policy equivalence, inert masks (acceptance 1, 6; issue "must show" 2)
# ----------------------------------------------------------------------------------------------------------------------


def _assert_same(actual, expected, atol):
    (loss, grads, _), (expected_loss, expected_grads, _) = actual, expected
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected_loss, atol=atol, rtol=0)
    assert sorted(grads) == sorted(expected_grads) and any(g.abs().max() > 0 for g in grads.values())
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize(
    ("loss_type", "beta"), [(t, 0.0) for t in SUPPORTED_LOSS_TYPES] + [("dapo", 0.04)], ids=lambda v: str(v)
)
def test_on_policy_equals_grpo_exactly(tiny_checkpoint, toy_dataset, tmp_path, loss_type, beta):
    common = dict(loss_type=loss_type, beta=beta)
    trl_trainer = make_trainer(GRPOTrainer, GRPOConfig, tiny_checkpoint, toy_dataset, tmp_path / "trl", **common)
    base = make_trainer(BaseGRPOTrainer, BaseGRPOConfig, tiny_checkpoint, toy_dataset, tmp_path / "base", **common)
    minpro = make_trainer(MinPROTrainer, MinPROConfig, tiny_checkpoint, toy_dataset, tmp_path / "minpro", **common)
    inputs = generate(trl_trainer, toy_dataset)
    assert "old_per_token_logps" not in inputs  # on-policy: TRL skips the old log-probs
    expected_trl = loss_grads_metrics(trl_trainer, inputs)
    expected_base = loss_grads_metrics(base, inputs)
    actual = loss_grads_metrics(minpro, inputs)
    _assert_same(actual, expected_base, atol=0.0)  # bit for bit
    _assert_same(actual, expected_trl, atol=1e-6)  # the parity tolerance of tests/test_parity.py
    metrics, trl_metrics = actual[2], expected_trl[2]
    for key, values in trl_metrics.items():
        assert metrics[key] == pytest.approx(values, abs=1e-6), key
    assert metrics["minpro/weight_mean"] == [1.0] and metrics["minpro/weight_min"] == [1.0]
    assert metrics["minpro/weight_max"] == [1.0]
    assert metrics["minpro/frac_weight_below_half"] == [0.0]


def _off_policy(inputs, seed=3, scale=0.5):
    """Old log-probs of an older policy (num_iterations > 1), a tool segment inside the completions, right padding."""
    generator = torch.Generator().manual_seed(seed)
    inputs = dict(inputs)
    old = inputs["old_per_token_logps"]
    inputs["old_per_token_logps"] = old + scale * torch.randn(old.shape, generator=generator)
    tool_mask = torch.ones_like(inputs["completion_mask"])
    tool_mask[::2, 2:4] = 0
    inputs["tool_mask"] = tool_mask
    completion_mask = inputs["completion_mask"].clone()
    completion_mask[1::3, 4:] = 0  # shorter completions: right padding
    inputs["completion_mask"] = completion_mask
    return inputs


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_type": "dapo"},
        {"loss_type": "grpo", "beta": 0.04},
        {"loss_type": "bnpo", "delta": 1.5, "epsilon_high": 0.28},
        {"loss_type": "luspo", "minpro_include_current": True},
        {"loss_type": "dr_grpo", "minpro_cap_at_one": True},
    ],
    ids=["dapo", "grpo-kl", "bnpo-delta", "luspo-inclusive", "dr_grpo-capped"],
)
def test_off_policy_equals_base_with_weighted_advantages(tiny_checkpoint, toy_dataset, tmp_path, overrides):
    base_overrides = {k: v for k, v in overrides.items() if not k.startswith("minpro_")}
    minpro = make_trainer(
        MinPROTrainer, MinPROConfig, tiny_checkpoint, toy_dataset, tmp_path / "m", num_iterations=2, **overrides
    )
    base = make_trainer(
        BaseGRPOTrainer,
        BaseGRPOConfig,
        tiny_checkpoint,
        toy_dataset,
        tmp_path / "b",
        num_iterations=2,
        **base_overrides,
    )
    inputs = _off_policy(generate(minpro, toy_dataset))

    captured = {}
    token_weights = minpro.policy_objective.token_weights

    def capture(ctx):
        captured["weights"], captured["logps"] = token_weights(ctx), ctx.logps.detach()
        return captured["weights"]

    minpro.policy_objective.token_weights = capture
    actual = loss_grads_metrics(minpro, inputs)
    weights = captured["weights"]
    # M is the spec's weight over the valid tokens (padding and tool tokens excluded).
    valid = inputs["completion_mask"] * inputs["tool_mask"]
    log_ratio = captured["logps"].double() - inputs["old_per_token_logps"].double()
    inclusive = overrides.get("minpro_include_current", False)
    expected_log_m = naive_log_m(log_ratio, valid, inclusive, overrides.get("minpro_cap_at_one", False))
    effective = expected_log_m.exp().float()  # M, what the metrics report
    if inclusive:  # the inclusive minimum replaces rho_t: the surrogate's factor is M / rho_t on the loss tokens
        expected_log_m = torch.where(valid.bool(), expected_log_m - log_ratio, expected_log_m)
    torch.testing.assert_close(weights.log().double(), expected_log_m, atol=1e-5, rtol=0)
    assert weights[valid.bool()].min() < 0.8  # off-policy enough that M matters

    weighted = dict(inputs, advantages=inputs["advantages"][:, None] * weights)
    _assert_same(actual, loss_grads_metrics(base, weighted), atol=1e-6)
    # ... and differs from the unweighted base loss, so the comparison above could fail.
    unweighted_loss = loss_grads_metrics(base, inputs)[0]
    assert not torch.allclose(actual[0], unweighted_loss, atol=1e-4)
    metrics = actual[2]
    assert metrics["minpro/weight_min"][0] == pytest.approx(effective[valid.bool()].min().item(), rel=1e-5)
    assert metrics["minpro/weight_max"][0] == pytest.approx(effective[valid.bool()].max().item(), rel=1e-5)
    assert metrics["minpro/weight_mean"][0] == pytest.approx(effective[valid.bool()].mean().item(), rel=1e-5)
    below = (effective[valid.bool()] < 0.5).float().mean().item()
    assert metrics["minpro/frac_weight_below_half"][0] == pytest.approx(below)


def test_trainer_masked_tokens_are_inert(tiny_checkpoint, toy_dataset, tmp_path):
    minpro = make_trainer(MinPROTrainer, MinPROConfig, tiny_checkpoint, toy_dataset, tmp_path, num_iterations=2)
    inputs = _off_policy(generate(minpro, toy_dataset))
    expected = loss_grads_metrics(minpro, inputs)
    invalid = (inputs["completion_mask"] * inputs["tool_mask"]) == 0
    assert invalid.any() and (inputs["tool_mask"] == 0).any() and (inputs["completion_mask"] == 0).any()
    for value in (-40.0, 40.0):
        old = inputs["old_per_token_logps"]
        perturbed = dict(inputs, old_per_token_logps=torch.where(invalid, old + value, old))
        _assert_same(loss_grads_metrics(minpro, perturbed), expected, atol=0.0)
    # Perturbing a valid token's old log-prob changes the loss: the check above can fail.
    valid_changed = dict(inputs, old_per_token_logps=torch.where(~invalid, old - 1.0, old))
    assert not torch.equal(loss_grads_metrics(minpro, valid_changed)[0], expected[0])


def test_objective_combines_with_another_estimator_on_a_plain_base_config(tiny_checkpoint, toy_dataset, tmp_path):
    # BNPO advantages with the MinPRO loss, through the registries (the spec's combination example).
    trainer = make_trainer(
        BaseGRPOTrainer,
        BaseGRPOConfig,
        tiny_checkpoint,
        toy_dataset,
        tmp_path,
        advantage_estimator="beta_normalization",
        policy_objective="minpro",
        num_iterations=2,
    )
    assert isinstance(trainer.policy_objective, MinPROObjective)
    assert trainer.advantage_estimator.name == "beta_normalization"
    inputs = _off_policy(generate(trainer, toy_dataset))
    loss, _, metrics = loss_grads_metrics(trainer, inputs)
    assert torch.isfinite(loss) and metrics["minpro/weight_min"][0] < 1.0


# ----------------------------------------------------------------------------------------------------------------------
# End to end: the off-policy recipe through the CLI (1 process) and a real 2-process CPU run
# ----------------------------------------------------------------------------------------------------------------------
def test_end_to_end_one_process(tiny_checkpoint, toy_dataset, tmp_path):
    trainer = make_trainer(
        MinPROTrainer, MinPROConfig, tiny_checkpoint, toy_dataset, tmp_path, num_iterations=2, max_steps=4
    )
    initial = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "minpro/weight_mean" in entry]
    assert trainer.state.global_step == 4 and len(steps) == 4
    for entry in steps:
        assert all(math.isfinite(entry[key]) for key in (*METRIC_KEYS, "loss", "grad_norm"))
    # The first iteration of each generation batch is on-policy (M = 1 up to round-off); the second is not.
    for first, second in (steps[0:2], steps[2:4]):
        assert first["minpro/weight_min"] == pytest.approx(1.0, abs=1e-5)
        assert second["minpro/weight_min"] < 0.99 and second["minpro/weight_max"] > 1.0
    assert any(not torch.equal(p, initial[name]) for name, p in trainer.model.named_parameters())


def test_offpolicy_recipe_runs_through_the_cli(tmp_path):
    from trl_ext.cli import train_main

    recipe = REPO / "recipes" / "minpro" / "offpolicy_tiny.yaml"
    argv = ["--config", str(recipe), "--output_dir", str(tmp_path), "--max_steps", "3", "--task_num_rows", "256"]
    trainer = train_main(argv)
    assert isinstance(trainer, MinPROTrainer) and trainer.state.global_step == 3
    assert trainer.args.num_iterations > 1  # the recipe is off-policy
    steps = [entry for entry in trainer.state.log_history if "minpro/weight_mean" in entry]
    assert len(steps) == 3
    assert all(math.isfinite(entry[key]) for entry in steps for key in METRIC_KEYS)
    assert (tmp_path / "model.safetensors").exists()


def test_two_processes_log_identical_global_metrics(tiny_checkpoint, tmp_path):
    launch_two_processes(
        str(REPO / "tests" / "scripts" / "minpro_two_process.py"),
        "--checkpoint",
        tiny_checkpoint,
        "--out",
        str(tmp_path),
    )
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["num_processes"] for r in ranks] == [2, 2] and [r["process_index"] for r in ranks] == [0, 1]
    assert ranks[0]["logged"] == ranks[1]["logged"]  # identical global metrics on both processes
    logged = ranks[0]["logged"]
    assert len(logged) == 2
    for step, entry in enumerate(logged):
        assert all(math.isfinite(entry[key]) for key in METRIC_KEYS)
        # weight_min / weight_max are over both processes' tokens, not this process's own.
        local_mins = [r["local_weight_min"][step] for r in ranks]
        local_maxs = [r["local_weight_max"][step] for r in ranks]
        assert entry["minpro/weight_min"] == pytest.approx(min(local_mins), abs=1e-7)
        assert entry["minpro/weight_max"] == pytest.approx(max(local_maxs), abs=1e-7)
    assert logged[1]["minpro/weight_min"] < 1.0  # the second iteration is off-policy
    assert ranks[0]["local_weight_min"][1] != ranks[1]["local_weight_min"][1]  # so the gather mattered
