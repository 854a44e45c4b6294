"""GRPO's group-relative advantage, the reference every other estimator is compared against.

For prompt q with G completions and scalar rewards R_1..R_G (Shao et al., 2024, arXiv 2402.03300, eq. 3 as
implemented by TRL 1.16):

    A_i = (R_i - mean_j R_j) / (std_j R_j + 1e-4)

* ``scale_rewards="group"``: std over the group (unbiased, NaN-aware);
* ``scale_rewards="batch"``: std over the whole generation batch, baseline still the group mean;
* ``scale_rewards="none"``: no division (Dr. GRPO, arXiv 2503.20783).

Multiple reward functions are combined either before normalisation (``"sum_then_normalize"``: R = sum_k w_k r_k)
or after (``"normalize_then_sum"``, GDPO: each r_k is z-scored within its group, then summed with weights and
z-scored over the batch). Rows whose rewards are all ``None`` (NaN) are excluded from the statistics and get 0.

The arithmetic mirrors TRL 1.16 operation for operation so that the result is bit-identical in float32.
"""

from __future__ import annotations

import torch

from trl_ext.advantages.base import AdvantageBatch, AdvantageEstimator, AdvantageOutput
from trl_ext.registry import register_advantage_estimator

EPS = 1e-4
SCALE_REWARDS = ("group", "batch", "none")
AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")


def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased standard deviation ignoring NaN (NaN where fewer than two values are present)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(count, float("nan"), dtype=x.dtype))
    std = torch.sqrt(variance * correction)
    if keepdim:
        return std
    return std.squeeze() if dim is None else std.squeeze(dim)


def grpo_advantages(
    rewards_per_func: torch.Tensor,
    reward_weights: torch.Tensor,
    num_generations: int,
    scale_rewards: str = "group",
    multi_objective_aggregation: str = "sum_then_normalize",
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages for a gathered batch.

    Args:
        rewards_per_func: (N, K) rewards, NaN where a reward function returned ``None``.
        reward_weights: (K,) weights.
        num_generations: G, the group size; N must be a multiple of G.
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"``.
        multi_objective_aggregation: ``"sum_then_normalize"`` or ``"normalize_then_sum"``.

    Returns:
        ``(advantages, std_is_zero)``: (N,) float advantages (finite; 0 for unscorable rows) and (N,) bool marking
        rows whose normaliser is zero (TRL's ``frac_reward_zero_std``).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if multi_objective_aggregation not in AGGREGATIONS:
        raise ValueError(
            f"multi_objective_aggregation must be one of {AGGREGATIONS}, got {multi_objective_aggregation!r}"
        )
    n, num_funcs = rewards_per_func.shape
    if n % num_generations != 0:
        raise ValueError(
            f"the batch of {n} completions is not a whole number of groups of num_generations={num_generations}"
        )
    weights = reward_weights.to(rewards_per_func.device).unsqueeze(0)
    unscorable = torch.isnan(rewards_per_func).all(dim=1)

    if multi_objective_aggregation == "sum_then_normalize":
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[unscorable] = torch.nan
        group_mean = torch.nanmean(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations, dim=0)
        if scale_rewards in ("group", "none"):
            if num_generations > 1:
                std = nanstd(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations, dim=0)
            else:
                std = torch.zeros_like(rewards)
        else:
            std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        advantages = rewards - group_mean
        if scale_rewards != "none":
            advantages = advantages / (std + EPS)
    else:
        grouped = rewards_per_func.view(-1, num_generations, num_funcs)
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd(grouped, dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(mean_k)
        normalized = ((grouped - mean_k) / (std_k + EPS)).view(-1, num_funcs)
        rewards = (normalized * weights).nansum(dim=1)
        rewards[unscorable] = torch.nan
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        advantages = (rewards - torch.nanmean(rewards)) / (std + EPS)

    std_is_zero = torch.isclose(std, torch.zeros_like(std))
    return torch.nan_to_num(advantages, nan=0.0), std_is_zero


@register_advantage_estimator("grpo")
class GRPOAdvantage(AdvantageEstimator):
    """Group-relative z-score (TRL's GRPO advantage; honours scale_rewards and multi_objective_aggregation)."""

    def __init__(self, args) -> None:
        super().__init__(args)
        self.scale_rewards = args.scale_rewards
        self.aggregation = args.multi_objective_aggregation
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"multi_objective_aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")

    def __call__(self, batch: AdvantageBatch) -> AdvantageOutput:
        advantages, _ = grpo_advantages(
            batch.rewards_per_func, batch.reward_weights, batch.num_generations, self.scale_rewards, self.aggregation
        )
        return AdvantageOutput(advantages)
