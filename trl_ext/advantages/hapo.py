"""HAPO's token-level group average advantage (TLGA) with its GRPO fallback, and the registered ``"hapo_tlga"``
estimator.

"From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature" (HAPO), Liu et al.,
arXiv 2509.16591. The formulas follow the reference code (``starriver030515/HAPO``).

For group g (a contiguous block of G = ``num_generations`` rows) with combined rewards R_i (TRL's weighted nansum;
NaN for unscorable rows) and loss-token counts L_i (sum of ``completion_mask * tool_mask``), each row weighted by
w_i = L_i (0 for unscorable rows)::

    mu_g    = sum_i w_i R_i / sum_i w_i
    sigma_g = sqrt(sum_i w_i (R_i - mu_g)^2 / sum_i w_i)               (population std over tokens)
    A_i     = (R_i - mu_g) / (sigma_g + eps)     (or R_i - mu_g without scaling)

so that sum_i L_i A_i = 0: under a token-mean loss a group's positive and negative token mass cancel. With equal
lengths A = A_GRPO(unbiased std) * sqrt(G / (G - 1)).

**Fallback.** If any row with L_i > 0 has |A_i| >= ``fallback_threshold`` the whole group uses GRPO,
(R_i - mean R) / (std_unbiased R + eps) over the group's scorable rows. ``fallback_mode="reference"`` also falls back
when some row is shorter than ``max_completion_length`` and the padding "phantom" |mu_g| / (sigma_g + eps) reaches the
threshold (the reference code tests padding positions too).

**Degenerate input** (finite by construction, computed in float64): a row with L_i = 0 or an unscorable row gets
A = 0; a group with sum L = 0 or a single scorable row gets A = 0; a uniform group gets A = 0.
"""

from __future__ import annotations

import torch

from trl_ext.advantages.base import AdvantageBatch, AdvantageEstimator, AdvantageOutput, combined_rewards
from trl_ext.advantages.grpo import grpo_advantages
from trl_ext.registry import register_advantage_estimator

FALLBACK_MODES = ("valid", "reference")

__all__ = ["FALLBACK_MODES", "TokenLevelGroupAdvantage", "combined_rewards", "tlga_advantages", "validate_tlga_fields"]


def validate_tlga_fields(fallback_threshold: float, fallback_mode: str, eps: float) -> None:
    """Raise ``ValueError`` naming the field for an out-of-range TLGA setting."""
    if not fallback_threshold > 0:
        raise ValueError(f"hapo_tlga_fallback_threshold must be > 0, got {fallback_threshold}")
    if fallback_mode not in FALLBACK_MODES:
        raise ValueError(f"hapo_tlga_fallback_mode must be one of {FALLBACK_MODES}, got {fallback_mode!r}")
    if not eps > 0:
        raise ValueError(f"hapo_advantage_eps must be > 0, got {eps}")


def tlga_advantages(
    rewards: torch.Tensor,
    lengths: torch.Tensor,
    num_generations: int,
    *,
    eps: float = 1e-6,
    scale_by_std: bool = True,
    fallback_threshold: float = 5.0,
    fallback_mode: str = "valid",
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level group average advantages (HAPO, arXiv 2509.16591) with the GRPO fallback.

    Args:
        rewards: (N,) combined rewards, NaN for unscorable rows.
        lengths: (N,) loss-token counts L_i (>= 0).
        num_generations: G; N must be a multiple of G.
        eps: epsilon in the TLGA and GRPO denominators.
        scale_by_std: divide by sigma_g (and, in the fallback, by the unbiased std).
        fallback_threshold: a group falls back to GRPO if any valid row has |A_i| >= this.
        fallback_mode: ``"valid"`` (test the real rows only) or ``"reference"`` (also the padding phantom).
        max_completion_length: needed by ``"reference"``: rows shorter than it have padding positions.

    Returns:
        ``(advantages, fell_back)``: (N,) float32 finite advantages and (N // G,) bool marking the groups that used
        the GRPO fallback.
    """
    validate_tlga_fields(fallback_threshold, fallback_mode, eps)
    n = rewards.numel()
    if n % num_generations != 0:
        raise ValueError(
            f"the batch of {n} completions is not a whole number of groups of num_generations={num_generations}"
        )
    if fallback_mode == "reference" and max_completion_length is None:
        raise ValueError("fallback_mode='reference' needs max_completion_length")
    r = rewards.to(torch.float64).view(-1, num_generations)
    scorable = ~torch.isnan(r)
    r0 = torch.where(scorable, r, torch.zeros_like(r))
    length = lengths.to(torch.float64).view(-1, num_generations)
    weight = torch.where(scorable, length, torch.zeros_like(length))
    valid = weight > 0  # rows with loss tokens and a reward

    total = weight.sum(dim=1, keepdim=True)
    safe_total = total.clamp(min=1.0)  # total is a token count: 0 or >= 1
    mu = (weight * r0).sum(dim=1, keepdim=True) / safe_total
    sigma = torch.sqrt((weight * (r0 - mu) ** 2).sum(dim=1, keepdim=True) / safe_total)
    centred = r0 - mu
    tlga = centred / (sigma + eps) if scale_by_std else centred
    tlga = torch.where(valid, tlga, torch.zeros_like(tlga))

    fell_back = (tlga.abs() >= fallback_threshold).any(dim=1)
    if fallback_mode == "reference":
        has_padding = (length < max_completion_length).any(dim=1)
        phantom = mu.squeeze(1).abs() / (sigma.squeeze(1) + eps) if scale_by_std else mu.squeeze(1).abs()
        fell_back = fell_back | (has_padding & (phantom >= fallback_threshold))

    # GRPO over each group's scorable rows (unbiased std; a single scorable row gives 0).
    count = scorable.sum(dim=1, keepdim=True).to(torch.float64)
    mean = r0.sum(dim=1, keepdim=True) / count.clamp(min=1.0)
    variance = (torch.where(scorable, (r0 - mean) ** 2, torch.zeros_like(r0))).sum(dim=1, keepdim=True)
    std = torch.sqrt(variance / (count - 1).clamp(min=1.0))
    grpo = (r0 - mean) / (std + eps) if scale_by_std else r0 - mean
    grpo = torch.where(scorable & (count > 1), grpo, torch.zeros_like(grpo))

    advantages = torch.where(fell_back.unsqueeze(1), grpo, tlga)
    single = (count <= 1) | (total == 0)  # nothing to compare against: no signal
    advantages = torch.where(single | ~valid, torch.zeros_like(advantages), advantages)
    return advantages.reshape(-1).to(torch.float32), fell_back & ~single.squeeze(1)


@register_advantage_estimator("hapo_tlga")
class TokenLevelGroupAdvantage(AdvantageEstimator):
    """HAPO's token-level group average advantage with a GRPO fallback (arXiv 2509.16591); TRL's GRPO when off.

    Reads ``hapo_token_level_advantage`` (False: TRL's GRPO advantage, bit-identical to the ``"grpo"`` estimator),
    ``hapo_tlga_scale_by_std``, ``hapo_tlga_fallback_threshold``, ``hapo_tlga_fallback_mode``,
    ``hapo_advantage_eps`` and ``max_completion_length`` (the ``HAPOConfig`` defaults when absent). Logs
    ``hapo/tlga_fallback_frac`` (the fraction of groups that fell back to GRPO).
    """

    requires = frozenset({"completion_lengths"})

    def __init__(self, args) -> None:
        super().__init__(args)
        self.enabled = bool(getattr(args, "hapo_token_level_advantage", True))
        self.scale_by_std = bool(getattr(args, "hapo_tlga_scale_by_std", True))
        self.fallback_threshold = float(getattr(args, "hapo_tlga_fallback_threshold", 5.0))
        self.fallback_mode = getattr(args, "hapo_tlga_fallback_mode", "valid")
        self.eps = float(getattr(args, "hapo_advantage_eps", 1e-6))
        self.max_completion_length = args.max_completion_length
        validate_tlga_fields(self.fallback_threshold, self.fallback_mode, self.eps)
        if not self.enabled:
            self.requires = frozenset()  # TRL's advantage needs no gathered lengths
        if self.enabled and getattr(args, "multi_objective_aggregation", "sum_then_normalize") != "sum_then_normalize":
            raise ValueError(
                "multi_objective_aggregation must be 'sum_then_normalize' with hapo_token_level_advantage=True (TLGA "
                f"averages the combined reward), got {args.multi_objective_aggregation!r}"
            )

    def __call__(self, batch: AdvantageBatch) -> AdvantageOutput:
        if not self.enabled:
            advantages, _ = grpo_advantages(
                batch.rewards_per_func,
                batch.reward_weights,
                batch.num_generations,
                self.args.scale_rewards,
                self.args.multi_objective_aggregation,
            )
            return AdvantageOutput(advantages)
        advantages, fell_back = tlga_advantages(
            combined_rewards(batch.rewards_per_func, batch.reward_weights),
            batch.completion_lengths,
            batch.num_generations,
            eps=self.eps,
            scale_by_std=self.scale_by_std,
            fallback_threshold=self.fallback_threshold,
            fallback_mode=self.fallback_mode,
            max_completion_length=self.max_completion_length,
        )
        return AdvantageOutput(advantages, metrics={"hapo/tlga_fallback_frac": fell_back.float().mean().item()})
