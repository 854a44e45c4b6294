"""BNPO: Beta-normalised advantages (Xiao, Zhang, Cao, "BNPO: Beta Normalization Policy Optimization",
arXiv 2506.02864).

For prompt q with success rate p(q) = E[R | q] (the mean of its group's rewards mapped to [0, 1]):

    A(q, o) = (R(q, o) - p(q)) / f_Beta(p(q); alpha, beta)

The batch's success rates are modelled as Beta(a, b), fitted by the method of moments over the groups of the whole
generation batch (m = mean p_g, v = unbiased variance of p_g):

    k = m (1 - m) / v - 1,   a = k m,   b = k (1 - m),   alpha = max(1, 1 + a/3),   beta = max(1, 1 + b/3)

(the variance-minimising normaliser of the paper). alpha = beta = 1 gives R - p (REINFORCE with a group-mean
baseline); alpha = beta = 3/2 gives (pi/8) x GRPO with the population std.

Not TRL's ``loss_type="bnpo"``, which is an unrelated token-mean loss aggregation; the two are orthogonal.

Degenerate batches are finite by construction (all in float64):

* fewer than two participating groups, or v == 0 -> alpha = beta = 1; v > m(1 - m) (k < 0) -> alpha = beta = 1;
* every participating p_g in {0, 1} -> A = 0 (no signal);
* the density uses xlogy (0 log 0 = 0), and 1/f is capped at ``max_inv_density`` *before* it multiplies
  (s - p), so inf * 0 never occurs; groups at p in {0, 1} get exactly 0 because all their s equal p;
* unscorable rows (NaN) are excluded from p and the moments and get A = 0; a group with one scorable row has
  p = its own s, so A = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from trl_ext.advantages.base import AdvantageBatch, AdvantageEstimator, AdvantageOutput
from trl_ext.registry import register_advantage_estimator

BNPO_DECOMPOSITION_WEIGHTINGS = ("mean", "reward_weights")


@dataclass(frozen=True)
class BetaFit:
    """Method-of-moments fit over the participating groups' success rates.

    Attributes:
        alpha, beta: the normaliser's Beta parameters (>= 1).
        m, v: mean and unbiased variance of the success rates (0 when undefined).
        num_groups: groups with at least one scorable row.
    """

    alpha: float
    beta: float
    m: float
    v: float
    num_groups: int


#: A BNPO weight 1/f above this is reported as large (``bnpo/frac_weight_large``): such a group's advantages are more
#: than ten times a Beta(1, 1) fit's. With the authors' cap (1e6) one outlier success rate in a tight cluster can get a
#: weight near 1e6; ``bnpo_max_inv_density: 10`` bounds it (docs/trainers/bnpo.md).
LARGE_WEIGHT: float = 10.0


def beta_log_pdf(p: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """log f_Beta(p; alpha, beta) = xlogy(alpha - 1, p) + xlogy(beta - 1, 1 - p) - log B(alpha, beta), in float64.

    xlogy makes alpha = 1 (or beta = 1) finite at p = 0 (or p = 1); alpha > 1 at p = 0 gives -inf (f = 0).
    """
    p = p.to(torch.float64)
    a = torch.tensor(alpha, dtype=torch.float64, device=p.device)
    b = torch.tensor(beta, dtype=torch.float64, device=p.device)
    log_beta_fn = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    return torch.xlogy(a - 1, p) + torch.xlogy(b - 1, 1 - p) - log_beta_fn


def fit_beta(success_rates: torch.Tensor) -> BetaFit:
    """Fit (alpha, beta) to per-group success rates in [0, 1] (one entry per participating group).

    alpha = max(1, 1 + k m / 3), beta = max(1, 1 + k (1 - m) / 3) with k = m (1 - m) / v - 1; alpha = beta = 1 when
    fewer than two groups participate or v == 0.
    """
    rates = success_rates.to(torch.float64)
    n = int(rates.numel())
    if n == 0:
        return BetaFit(1.0, 1.0, 0.0, 0.0, 0)
    m = float(rates.mean())
    if n < 2:
        return BetaFit(1.0, 1.0, m, 0.0, n)
    v = float(rates.var(unbiased=True))
    if v == 0.0:
        return BetaFit(1.0, 1.0, m, v, n)
    k = m * (1.0 - m) / v - 1.0
    alpha = max(1.0, 1.0 + k * m / 3.0)
    beta = max(1.0, 1.0 + k * (1.0 - m) / 3.0)
    return BetaFit(alpha, beta, m, v, n)


def check_reward_range(
    rewards: torch.Tensor, reward_min: float, reward_max: float, reward_name: str = "reward"
) -> None:
    """Raise ``ValueError`` naming the fields, the range and the first offending value if a (non-NaN) reward
    lies outside [reward_min, reward_max], or if the range itself is empty."""
    if not reward_min < reward_max:
        raise ValueError(
            f"bnpo_reward_min ({reward_min}) must be smaller than bnpo_reward_max ({reward_max}) "
            f"(reward function {reward_name})"
        )
    outside = ~torch.isnan(rewards) & ((rewards < reward_min) | (rewards > reward_max))
    if outside.any():
        index = int(outside.nonzero()[0, 0])
        raise ValueError(
            f"BNPO reward {float(rewards[index])} (completion {index}, reward function {reward_name}) is outside "
            f"[bnpo_reward_min, bnpo_reward_max] = [{reward_min}, {reward_max}]"
        )


def beta_normalized_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    reward_min: float = 0.0,
    reward_max: float = 1.0,
    max_inv_density: float = 1e6,
    reward_name: str = "reward",
) -> tuple[torch.Tensor, BetaFit, dict[str, float]]:
    """BNPO advantages for one reward column of a whole generation batch.

    Args:
        rewards: (N,) rewards, NaN for unscorable rows; groups are contiguous blocks of ``num_generations``.
        num_generations: G.
        reward_min: lower end of the reward range: s = (R - min) / (max - min) maps rewards to [0, 1]; rewards
            outside the range raise.
        reward_max: upper end of the reward range.
        max_inv_density: cap on the weight 1/f (> 0).
        reward_name: used in error messages.

    Returns:
        ``(advantages, fit, weight_stats)``: (N,) float64 advantages in normalised reward units, the Beta fit, and
        ``{"max_weight", "mean_weight", "frac_weight_capped", "frac_weight_large"}`` of 1/f over the groups with
        0 < p < 1 (elsewhere the weight multiplies zero); "large" is above :data:`LARGE_WEIGHT`.
    """
    if not max_inv_density > 0:
        raise ValueError(f"bnpo_max_inv_density must be > 0, got {max_inv_density}")
    n = rewards.numel()
    if n % num_generations != 0:
        raise ValueError(f"{n} completions are not a whole number of groups of num_generations={num_generations}")
    rewards = rewards.to(torch.float64)
    check_reward_range(rewards, reward_min, reward_max, reward_name)

    scores = ((rewards - reward_min) / (reward_max - reward_min)).view(-1, num_generations)
    scorable = ~torch.isnan(scores)
    counts = scorable.sum(dim=1)
    participating = counts > 0
    group_rates = torch.where(scorable, scores, 0.0).sum(dim=1) / counts.clamp(min=1)  # p_g (0 where no row)

    fit = fit_beta(group_rates[participating])
    rates = group_rates[participating]
    if fit.num_groups == 0 or bool(((rates == 0) | (rates == 1)).all()):
        # No group carries signal: every scorable s equals its group's p.
        stats = {"max_weight": 1.0, "mean_weight": 1.0, "frac_weight_capped": 0.0, "frac_weight_large": 0.0}
        return torch.zeros(n, dtype=torch.float64, device=rewards.device), fit, stats

    weights = torch.exp(-beta_log_pdf(group_rates, fit.alpha, fit.beta)).clamp(max=max_inv_density)  # 1/f, capped
    advantages = weights.unsqueeze(1) * (scores - group_rates.unsqueeze(1))
    advantages = torch.where(scorable & participating.unsqueeze(1), advantages, 0.0).reshape(-1)

    # Weight statistics over the groups where the weight acts (0 < p < 1): at p in {0, 1} it multiplies 0.
    informative = participating & (group_rates > 0) & (group_rates < 1)
    acting = weights[informative]
    stats = {
        "max_weight": float(acting.max()),
        "mean_weight": float(acting.mean()),
        "frac_weight_capped": float((acting >= max_inv_density).double().mean()),
        "frac_weight_large": float((acting > LARGE_WEIGHT).double().mean()),
    }
    return advantages, fit, stats


def combine_components(
    component_advantages: torch.Tensor,
    defined: torch.Tensor,
    weighting: str = "mean",
    reward_weights: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Combine per-component advantages (N, K) over the components defined for each row (``defined``, (N, K)).

    ``"mean"``: A_i = mean_k A_ik; ``"reward_weights"``: A_i = sum_k w_k A_ik / sum_k w_k. A row with no defined
    component, or whose defined weights sum to 0, gets 0.
    """
    if weighting not in BNPO_DECOMPOSITION_WEIGHTINGS:
        raise ValueError(
            f"bnpo_decomposition_weighting must be one of {BNPO_DECOMPOSITION_WEIGHTINGS}, got {weighting!r}"
        )
    mask = defined.to(component_advantages.dtype)
    if weighting == "mean":
        weights = mask
    else:
        if reward_weights is None:
            raise ValueError("bnpo_decomposition_weighting='reward_weights' needs the reward weights")
        w = torch.as_tensor(reward_weights, dtype=component_advantages.dtype, device=component_advantages.device)
        weights = mask * w.unsqueeze(0)
    total = weights.sum(dim=1)
    summed = (torch.where(defined, component_advantages, 0.0) * weights).sum(dim=1)
    return torch.where(total != 0, summed / torch.where(total != 0, total, 1.0), 0.0)


def _as_range_list(value: float | Sequence[float], num_funcs: int, field_name: str) -> list[float]:
    """One bound per reward function: a scalar applies to all; a list needs one entry per function.

    A list without decomposition never reaches here: :func:`validate_bnpo_fields` rejects it when the estimator is
    built."""
    if isinstance(value, int | float):
        return [float(value)] * num_funcs
    values = [float(x) for x in value]
    if len(values) == 1:
        return values * num_funcs
    if len(values) != num_funcs:
        raise ValueError(f"{field_name} has {len(values)} entries but there are {num_funcs} reward functions")
    return values


@register_advantage_estimator("beta_normalization")
class BetaNormalizationAdvantage(AdvantageEstimator):
    """BNPO: (R - p) / BetaPDF(p; alpha, beta), alpha and beta refit on every generation batch (arXiv 2506.02864).

    Reads ``bnpo_reward_min``, ``bnpo_reward_max``, ``bnpo_max_inv_density``, ``bnpo_advantage_decomposition`` and
    ``bnpo_decomposition_weighting`` from the config (defaults 0.0, 1.0, 1e6, False, "mean"). Stateless.
    """

    def __init__(self, args) -> None:
        super().__init__(args)
        self.reward_min = getattr(args, "bnpo_reward_min", 0.0)
        self.reward_max = getattr(args, "bnpo_reward_max", 1.0)
        self.max_inv_density = float(getattr(args, "bnpo_max_inv_density", 1e6))
        self.decomposition = bool(getattr(args, "bnpo_advantage_decomposition", False))
        self.weighting = getattr(args, "bnpo_decomposition_weighting", "mean")
        validate_bnpo_fields(
            self.reward_min, self.reward_max, self.max_inv_density, self.decomposition, self.weighting
        )

    def ranges(self, num_funcs: int) -> list[tuple[float, float]]:
        """(min, max) per reward function (decomposition) or a single pair for the combined reward."""
        count = num_funcs if self.decomposition else 1
        lows = _as_range_list(self.reward_min, count, "bnpo_reward_min")
        highs = _as_range_list(self.reward_max, count, "bnpo_reward_max")
        return list(zip(lows, highs))

    def __call__(self, batch: AdvantageBatch) -> AdvantageOutput:
        rewards_per_func = batch.rewards_per_func.to(torch.float64)
        weights = batch.reward_weights.to(rewards_per_func.device, torch.float64)
        num_funcs = rewards_per_func.shape[1]
        ranges = self.ranges(num_funcs)
        metrics: dict[str, float] = {}

        if not self.decomposition:
            # TRL's combined reward: sum_k w_k r_k as a nansum, NaN where every function returned None.
            combined = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
            combined[batch.unscorable] = torch.nan
            (low, high), name = ranges[0], "+".join(batch.reward_func_names)
            advantages, fit, stats = beta_normalized_advantages(
                combined, batch.num_generations, low, high, self.max_inv_density, name
            )
            metrics.update(_fit_metrics("bnpo/", fit, stats))
        else:
            components = []
            for k, name in enumerate(batch.reward_func_names):
                low, high = ranges[k]
                column, fit, stats = beta_normalized_advantages(
                    rewards_per_func[:, k], batch.num_generations, low, high, self.max_inv_density, name
                )
                components.append(column)
                metrics.update(_fit_metrics(f"bnpo/{name}/", fit, stats))
            advantages = combine_components(
                torch.stack(components, dim=1), ~torch.isnan(rewards_per_func), self.weighting, weights
            )
        return AdvantageOutput(advantages.to(torch.float32), metrics)


def _fit_metrics(prefix: str, fit: BetaFit, stats: dict[str, float]) -> dict[str, float]:
    return {
        f"{prefix}alpha": fit.alpha,
        f"{prefix}beta": fit.beta,
        f"{prefix}m": fit.m,
        f"{prefix}v": fit.v,
        f"{prefix}max_weight": stats["max_weight"],
        f"{prefix}mean_weight": stats["mean_weight"],
        f"{prefix}frac_weight_capped": stats["frac_weight_capped"],
        f"{prefix}frac_weight_large": stats["frac_weight_large"],
    }


def validate_bnpo_fields(
    reward_min: float | Sequence[float],
    reward_max: float | Sequence[float],
    max_inv_density: float,
    decomposition: bool,
    weighting: str,
) -> None:
    """Config-time checks; each error names the field and what it accepts."""
    if not max_inv_density > 0 or max_inv_density != max_inv_density:
        raise ValueError(f"bnpo_max_inv_density must be > 0, got {max_inv_density}")
    if weighting not in BNPO_DECOMPOSITION_WEIGHTINGS:
        raise ValueError(
            f"bnpo_decomposition_weighting must be one of {BNPO_DECOMPOSITION_WEIGHTINGS}, got {weighting!r}"
        )
    lows = [reward_min] if isinstance(reward_min, int | float) else list(reward_min)
    highs = [reward_max] if isinstance(reward_max, int | float) else list(reward_max)
    for name, values in (("bnpo_reward_min", lows), ("bnpo_reward_max", highs)):
        if not values:
            raise ValueError(f"{name} must be a float or a non-empty list of floats")
        if not decomposition and len(values) > 1:
            raise ValueError(
                f"{name} is a list ({values}); a list with one entry per reward function is only accepted with "
                "bnpo_advantage_decomposition=True. Without decomposition give one float covering the combined "
                "reward (e.g. bnpo_reward_max=2 for accuracy + format)."
            )
    if len(lows) > 1 and len(highs) > 1 and len(lows) != len(highs):
        raise ValueError(f"bnpo_reward_min has {len(lows)} entries but bnpo_reward_max has {len(highs)}")
    pairs = zip(lows * len(highs), highs * len(lows)) if len(lows) == 1 or len(highs) == 1 else zip(lows, highs)
    for low, high in pairs:
        if not float(low) < float(high):
            raise ValueError(
                f"bnpo_reward_min ({low}) must be smaller than bnpo_reward_max ({high}): the rewards are mapped "
                "to [0, 1] by (R - bnpo_reward_min) / (bnpo_reward_max - bnpo_reward_min)"
            )
