"""DIVA-GRPO's advantage: local + global group z-scores, batch normalisation, difficulty weighting and RRB.

DIVA-GRPO (Gao, Zhang, Pang et al., "DIVA-GRPO: Enhancing Multimodal Reasoning through Difficulty-Adaptive Variant
Advantage", arXiv 2603.01106) trains every problem together with V variants of targeted difficulty. A response i has
a prompt-row group u(i) (its ``num_generations`` siblings) and a problem group g(i) (every row with the same ``id``: the
original and its variants). With r the combined reward and d the row difficulty:

    a_loc_i = (r_i - mean_u(i) r) / (std_u(i) r + eps)          (unbiased std; identical rewards -> exactly 0)
    a_glo_i = (r_i - mean_g(i) r) / (std_g(i) r + eps)
    â = (a - mu) / sigma                                          (batch z-score, separately for loc and glo)
    ã_glo_i = â_glo_i * exp(k * (d_i - mean_g(i) d) * sign(â_glo_i))
    RRB: x c on the local part of a row group / the global part of a problem group whose rewards are all < tau
    A_i = alpha * â_loc_i + beta * ã_glo_i                       (0 for unscorable rows)

The batch statistic is the mean/unbiased std over the scorable responses (``"responses"``) or the reference code's
statistic over the padded (N, T) token tensor (``"reference"``): with L_i loss tokens and N_tok = N * T,

    mu = sum_i a_i L_i / N_tok,  sigma^2 = [sum_i L_i (a_i - mu)^2 + (N_tok - sum_i L_i) mu^2] / (N_tok - 1).

After each training batch a problem's difficulty moves by the change of the first score range that contains its mean
reward over all its responses (original and variants), clipped to [min, max].

Everything is computed in float64 from the gathered batch, identically on every process; groups are found by id, not
by position, with scatter operations (no Python loop over completions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trl_ext.advantages.base import AdvantageBatch, AdvantageEstimator, AdvantageOutput, combined_rewards
from trl_ext.advantages.grpo import grpo_advantages
from trl_ext.registry import register_advantage_estimator

BATCH_NORMS = ("responses", "reference")
DEFAULT_SCORE_RANGES: tuple[tuple[float, float], ...] = ((0.0, 0.05), (0.05, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 1.0))
#: Slack of the range boundaries in :func:`difficulty_change`: far above the float32 rounding of a mean of rewards in
#: [0, 1] (about 6e-8), far below any meaningful difference of success rates.
BOUNDARY_TOLERANCE: float = 1e-6
DEFAULT_DIFFICULTY_CHANGES: tuple[int, ...] = (2, 1, 0, -1, -2)


@dataclass(frozen=True)
class DivaAdvantageParts:
    """The pieces of the DIVA advantage for N responses (float64; unscorable rows are 0 everywhere).

    Attributes:
        advantages: (N,) the final A = alpha * local + beta * global.
        local_z: (N,) raw local group z-scores a_loc.
        global_z: (N,) raw global (problem) group z-scores a_glo.
        local: (N,) batch-normalised local part after RRB (alpha not applied).
        global_: (N,) batch-normalised, difficulty-weighted global part after RRB (beta not applied).
        local_constant: (num_row_groups,) bool, the prompt-row groups whose scorable rewards are all identical.
        global_constant: (num_problems,) bool, the same for problem groups.
    """

    advantages: torch.Tensor
    local_z: torch.Tensor
    global_z: torch.Tensor
    local: torch.Tensor
    global_: torch.Tensor
    local_constant: torch.Tensor
    global_constant: torch.Tensor


def encode_ids(problem_ids: Sequence[Any]) -> tuple[torch.Tensor, list[str]]:
    """Map ids to dense codes in order of first appearance: ``(codes (N,) long, unique ids as str)``."""
    index: dict[str, int] = {}
    codes = [index.setdefault(str(pid), len(index)) for pid in problem_ids]
    return torch.tensor(codes, dtype=torch.long), list(index)


def group_zscores(values: torch.Tensor, groups: torch.Tensor, num_groups: int, eps: float) -> tuple[torch.Tensor, ...]:
    """Per-group z-scores (x - mean) / (unbiased std + eps) over the finite entries of `values`.

    Args:
        values: (N,) float64, NaN for entries to exclude (they get 0).
        groups: (N,) long group codes in [0, num_groups).
        num_groups: number of groups.
        eps: added to the std.

    Returns:
        ``(z, constant)``: (N,) z-scores, exactly 0 in groups whose finite values are all identical (``max == min``,
        which also covers groups with fewer than two finite values), and (num_groups,) bool marking those groups.
    """
    valid = ~torch.isnan(values)
    x = torch.where(valid, values, torch.zeros_like(values))
    w = valid.to(values.dtype)
    count = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, groups, w)
    mean = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, groups, x) / count.clamp(min=1.0)
    deviation = (x - mean[groups]) * w
    sum_sq = torch.zeros(num_groups, dtype=values.dtype).index_add_(0, groups, deviation**2)
    std = torch.sqrt(sum_sq / (count - 1.0).clamp(min=1.0))
    high = torch.full((num_groups,), -math.inf, dtype=values.dtype).scatter_reduce_(
        0, groups, torch.where(valid, values, torch.full_like(values, -math.inf)), reduce="amax"
    )
    low = torch.full((num_groups,), math.inf, dtype=values.dtype).scatter_reduce_(
        0, groups, torch.where(valid, values, torch.full_like(values, math.inf)), reduce="amin"
    )
    constant = ~(high > low)  # also true for groups with 0 or 1 finite value
    z = deviation / (std[groups] + eps)
    z = torch.where(constant[groups] | ~valid, torch.zeros_like(z), z)
    return z, constant


def batch_zscore(
    values: torch.Tensor,
    valid: torch.Tensor,
    mode: str = "responses",
    token_counts: torch.Tensor | None = None,
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """Batch z-score (a - mu) / sigma over the `valid` entries (others return 0); sigma := 1 when it is 0.

    ``"responses"``: mu and the unbiased sigma over the valid values. ``"reference"``: the padded-token statistic of
    the reference code (module docstring) with T = `max_completion_length` and L = `token_counts`; ``"responses"`` is
    that formula with T = 1 and every L = 1.
    """
    if mode not in BATCH_NORMS:
        raise ValueError(f"diva_batch_norm must be one of {BATCH_NORMS}, got {mode!r}")
    w = valid.to(values.dtype)
    a = torch.where(valid, values, torch.zeros_like(values))
    if mode == "responses":
        lengths, width = w, 1
    else:
        if token_counts is None or max_completion_length is None:
            raise ValueError("diva_batch_norm='reference' needs the loss-token counts and max_completion_length")
        lengths, width = token_counts.to(values.dtype) * w, int(max_completion_length)
    num_tokens = float(w.sum().item()) * width
    if num_tokens <= 1.0:
        return torch.zeros_like(values)
    mu = (a * lengths).sum() / num_tokens
    variance = ((lengths * (a - mu) ** 2).sum() + (num_tokens - lengths.sum()) * mu**2) / (num_tokens - 1.0)
    sigma = torch.sqrt(variance)
    sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    return torch.where(valid, (a - mu) / sigma, torch.zeros_like(values))


def diva_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    problem_ids: Sequence[Any],
    difficulties: torch.Tensor,
    *,
    difficulty_k: float = 0.1,
    rrb_threshold: float = 0.15,
    rrb_scale: float = 0.1,
    local_weight: float = 1.0,
    global_weight: float = 1.0,
    group_eps: float = 1e-6,
    batch_norm: str = "responses",
    token_counts: torch.Tensor | None = None,
    max_completion_length: int | None = None,
) -> DivaAdvantageParts:
    """The DIVA advantage of a gathered generation batch (the module docstring has the equations).

    Args:
        rewards: (N,) combined rewards (NaN = unscorable). Rows come in prompt-row blocks of `num_generations`.
        num_generations: n, the size of a prompt-row group; N must be a multiple of it.
        problem_ids: N problem ids (any hashable, compared as ``str``); equal ids form one global group wherever the
            rows sit.
        difficulties: (N,) difficulty of each response's prompt row (store level for originals, recorded level for
            variants).
        difficulty_k: ``diva_difficulty_k``.
        rrb_threshold: ``diva_rrb_threshold``.
        rrb_scale: ``diva_rrb_scale``.
        local_weight: ``diva_local_weight``.
        global_weight: ``diva_global_weight``.
        group_eps: ``diva_group_eps``.
        batch_norm: ``diva_batch_norm``.
        token_counts: (N,) loss tokens per response, needed for ``batch_norm="reference"``.
        max_completion_length: T of the padded tensor, needed for ``batch_norm="reference"``.

    Returns:
        A :class:`DivaAdvantageParts` in float64.
    """
    rewards = rewards.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    n = rewards.numel()
    if num_generations < 1 or n % num_generations != 0:
        raise ValueError(f"the batch of {n} responses is not a whole number of groups of {num_generations}")
    if len(problem_ids) != n or difficulties.numel() != n:
        raise ValueError(
            f"problem_ids ({len(problem_ids)}) and difficulties ({difficulties.numel()}) must have {n} rows"
        )
    valid = ~torch.isnan(rewards)
    difficulties = difficulties.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    row_groups = torch.arange(n) // num_generations
    num_rows = n // num_generations
    problems, unique_ids = encode_ids(problem_ids)
    num_problems = len(unique_ids)

    local_z, local_constant = group_zscores(rewards, row_groups, num_rows, group_eps)
    global_z, global_constant = group_zscores(rewards, problems, num_problems, group_eps)
    if token_counts is not None:
        token_counts = token_counts.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    local = batch_zscore(local_z, valid, batch_norm, token_counts, max_completion_length)
    global_ = batch_zscore(global_z, valid, batch_norm, token_counts, max_completion_length)

    # Difficulty weighting of the global part: harder-than-its-problem rows get larger positive / smaller negative.
    problem_count = torch.zeros(num_problems, dtype=torch.float64).index_add_(
        0, problems, torch.ones(n, dtype=torch.float64)
    )
    mean_difficulty = (
        torch.zeros(num_problems, dtype=torch.float64).index_add_(0, problems, difficulties) / problem_count
    )
    relative_difficulty = difficulties - mean_difficulty[problems]
    global_ = global_ * torch.exp(difficulty_k * relative_difficulty * torch.sign(global_))

    # Reward-rescaling of low-reward groups (RRB): every scorable reward of the group below the threshold.
    low = torch.where(valid, (rewards < rrb_threshold).to(torch.float64), torch.ones_like(rewards))
    row_low = torch.ones(num_rows, dtype=torch.float64).scatter_reduce_(0, row_groups, low, reduce="amin") > 0
    problem_low = torch.ones(num_problems, dtype=torch.float64).scatter_reduce_(0, problems, low, reduce="amin") > 0
    local = torch.where(row_low[row_groups], local * rrb_scale, local)
    global_ = torch.where(problem_low[problems], global_ * rrb_scale, global_)

    zero = torch.zeros_like(rewards)
    local = torch.where(valid, local, zero)
    global_ = torch.where(valid, global_, zero)
    advantages = local_weight * local + global_weight * global_
    return DivaAdvantageParts(
        advantages=advantages,
        local_z=local_z,
        global_z=global_z,
        local=local,
        global_=global_,
        local_constant=local_constant,
        global_constant=global_constant,
    )


def difficulty_change(
    mean_reward: float,
    score_ranges: Sequence[Sequence[float]] = DEFAULT_SCORE_RANGES,
    changes: Sequence[int] = DEFAULT_DIFFICULTY_CHANGES,
) -> int:
    """Δ for a problem's mean reward: the change of the first inclusive range [lo, hi] holding it, else 0.

    The boundaries are inclusive up to :data:`BOUNDARY_TOLERANCE`: rewards arrive rounded to float32, so a mean that
    is a boundary in exact arithmetic (five 0.1 format rewards out of ten: 0.05) can land a few 1e-9 above it, and
    without the tolerance would take the next range's change (the authors' float32 mean and comparison give the
    boundary's own range, as inclusive ranges matched first to last do).
    """
    for (lo, hi), change in zip(score_ranges, changes, strict=True):
        if lo - BOUNDARY_TOLERANCE <= mean_reward <= hi + BOUNDARY_TOLERANCE:
            return int(change)
    return 0


def difficulty_updates(
    rewards: torch.Tensor,
    problem_ids: Sequence[Any],
    current: dict[str, int],
    *,
    score_ranges: Sequence[Sequence[float]] = DEFAULT_SCORE_RANGES,
    changes: Sequence[int] = DEFAULT_DIFFICULTY_CHANGES,
    min_difficulty: int = 1,
    max_difficulty: int = 9,
) -> dict[str, int]:
    """New levels of the problems in a batch, in order of first appearance.

    Args:
        rewards: (N,) combined rewards of every response of the batch, originals and variants (NaN = unscorable).
        problem_ids: N problem ids.
        current: the level of every id in the batch before the update (``str(id)`` -> level).

    Returns:
        ``str(id)`` -> new level, clip(level + Δ(mean reward), min, max), for every id with at least one scorable
        response (a problem with none keeps its level and is left out).
    """
    rewards = rewards.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    problems, unique_ids = encode_ids(problem_ids)
    valid = ~torch.isnan(rewards)
    count = torch.zeros(len(unique_ids), dtype=torch.float64).index_add_(0, problems, valid.to(torch.float64))
    total = torch.zeros(len(unique_ids), dtype=torch.float64).index_add_(
        0, problems, torch.where(valid, rewards, torch.zeros_like(rewards))
    )
    updated: dict[str, int] = {}
    for pid, c, s in zip(unique_ids, count.tolist(), total.tolist(), strict=True):
        if c == 0:
            continue
        level = current[pid] + difficulty_change(s / c, score_ranges, changes)
        updated[pid] = int(min(max(level, min_difficulty), max_difficulty))
    return updated


def validate_diva_fields(args: Any) -> None:
    """Check the ``diva_*`` fields of a config; raise ``ValueError`` naming the field and what is accepted."""
    if args.diva_num_variants < 0:
        raise ValueError(f"diva_num_variants must be an integer >= 0, got {args.diva_num_variants!r}")
    for name in ("diva_difficulty_k", "diva_local_weight", "diva_global_weight", "diva_rrb_threshold"):
        value = getattr(args, name)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if args.diva_difficulty_k < 0:
        raise ValueError(f"diva_difficulty_k must be >= 0, got {args.diva_difficulty_k!r}")
    if not (0.0 <= args.diva_rrb_scale <= 1.0):
        raise ValueError(f"diva_rrb_scale must be in [0, 1], got {args.diva_rrb_scale!r}")
    if not (args.diva_group_eps > 0 and math.isfinite(args.diva_group_eps)):
        raise ValueError(f"diva_group_eps must be a finite number > 0, got {args.diva_group_eps!r}")
    if args.diva_batch_norm not in BATCH_NORMS:
        raise ValueError(f"diva_batch_norm must be one of {BATCH_NORMS}, got {args.diva_batch_norm!r}")
    lo, hi, start = args.diva_min_difficulty, args.diva_max_difficulty, args.diva_initial_difficulty
    if not (isinstance(lo, int) and isinstance(hi, int) and lo <= hi):
        raise ValueError(f"diva_min_difficulty <= diva_max_difficulty must be integers, got {lo!r} and {hi!r}")
    if not (isinstance(start, int) and lo <= start <= hi):
        raise ValueError(f"diva_initial_difficulty must be an integer in [{lo}, {hi}], got {start!r}")
    ranges, changes = args.diva_score_ranges, args.diva_difficulty_changes
    if not ranges or any(len(r) != 2 or not (r[0] <= r[1]) for r in ranges):
        raise ValueError(
            f"diva_score_ranges must be a non-empty list of [low, high] pairs with low <= high, got {ranges!r}"
        )
    if len(changes) != len(ranges) or any(int(c) != c for c in changes):
        raise ValueError(
            f"diva_difficulty_changes must hold one integer per entry of diva_score_ranges ({len(ranges)}), "
            f"got {changes!r}"
        )
    if args.diva_warmup_steps < 0:
        raise ValueError(f"diva_warmup_steps must be >= 0, got {args.diva_warmup_steps!r}")


@register_advantage_estimator("diva")
class DivaAdvantageEstimator(AdvantageEstimator):
    """DIVA-GRPO's advantage (local + global z-scores; module docstring). Needs the :class:`~trl_ext.trainers.diva.DIVATrainer`.

    The trainer passes, in ``batch.extras``: ``diva_ids`` (N problem ids), ``diva_difficulties`` ((N,) row
    difficulties), ``diva_is_original`` ((N,) bool) and ``diva_warmup`` (bool). In evaluation the plain GRPO
    advantage (TRL's, honouring ``scale_rewards``) is returned.
    """

    name = "diva"

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        validate_diva_fields(args)
        # Only the reference batch statistic needs the loss-token counts; don't gather them otherwise.
        self.requires = frozenset({"completion_lengths"}) if args.diva_batch_norm == "reference" else frozenset()

    def __call__(self, batch: AdvantageBatch) -> AdvantageOutput:
        args = self.args
        if batch.mode != "train":
            advantages, _ = grpo_advantages(
                batch.rewards_per_func,
                batch.reward_weights,
                batch.num_generations,
                getattr(args, "scale_rewards", "group"),
                getattr(args, "multi_objective_aggregation", "sum_then_normalize"),
            )
            return AdvantageOutput(advantages=advantages.to(torch.float32))
        missing = [key for key in ("diva_ids", "diva_difficulties") if key not in batch.extras]
        if missing:
            raise ValueError(
                f"the 'diva' advantage estimator needs {missing} from the DIVA trainer (its difficulty store and "
                "variants); use trl_ext.DIVATrainer (trainer name 'diva') rather than advantage_estimator='diva' alone"
            )
        rewards = combined_rewards(batch.rewards_per_func.double(), batch.reward_weights)
        ids = batch.extras["diva_ids"]
        difficulties = torch.as_tensor(batch.extras["diva_difficulties"], dtype=torch.float64)
        parts = diva_advantages(
            rewards,
            batch.num_generations,
            ids,
            difficulties,
            difficulty_k=args.diva_difficulty_k,
            rrb_threshold=args.diva_rrb_threshold,
            rrb_scale=args.diva_rrb_scale,
            local_weight=args.diva_local_weight,
            global_weight=args.diva_global_weight,
            group_eps=args.diva_group_eps,
            batch_norm=args.diva_batch_norm,
            token_counts=batch.completion_lengths,
            max_completion_length=args.max_completion_length,
        )
        advantages = parts.local_z if batch.extras.get("diva_warmup", False) else parts.advantages
        valid = ~torch.isnan(rewards)
        count = max(int(valid.sum()), 1)
        is_original = torch.as_tensor(batch.extras.get("diva_is_original", [True] * len(ids)), dtype=torch.bool)
        original_rows = is_original.view(-1, batch.num_generations)[:, 0]
        metrics = {
            "diva/local_adv_abs_mean": float((args.diva_local_weight * parts.local).abs().sum() / count),
            "diva/global_adv_abs_mean": float((args.diva_global_weight * parts.global_).abs().sum() / count),
            "diva/frac_zero_std_local": float(parts.local_constant.double().mean()),
            "diva/frac_zero_std_global": float(parts.global_constant.double().mean()),
            "diva/mean_difficulty": float(difficulties[is_original].mean()) if is_original.any() else math.nan,
            "diva/mean_variant_difficulty": (
                float(difficulties[~is_original].mean()) if (~is_original).any() else math.nan
            ),
        }
        if original_rows.any():
            metrics["diva/frac_zero_std_original"] = float(parts.local_constant[original_rows].double().mean())
        metrics = {name: value for name, value in metrics.items() if math.isfinite(value)}
        return AdvantageOutput(advantages=advantages.to(torch.float32), metrics=metrics)
