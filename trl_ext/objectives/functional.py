"""Pure per-token loss pieces of the GRPO family (no TRL import; tensors in, tensors out).

Notation: per-token log-probabilities log pi_theta(o_t | q, o_<t) (``logps``), of the behaviour policy
(``old_logps``) and of the reference policy (``ref_logps``); the loss mask m_t (completion tokens that are neither
padding nor tool output); advantages A (shape (B, 1) or (B, T)).

Every function mirrors TRL 1.16's arithmetic so that the composed loss is bit-identical to ``GRPOTrainer``'s.
"""

from __future__ import annotations

import math

import torch

CLIPPED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")
LOSS_TYPES = (*CLIPPED_LOSS_TYPES, "cispo", "sapo", "vespo")


def importance_log_weights(log_ratio: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """log w: per token, ``log_ratio`` (B, T); per sequence (GSPO, arXiv 2507.18071), the masked mean
    (1/|o|) sum_t m_t log r_t as (B, 1)."""
    if level == "token":
        return log_ratio
    if level == "sequence":
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    raise ValueError(f"importance_sampling_level must be 'token' or 'sequence', got {level!r}")


def k3_kl(ref_logps: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref): exp(d) - d - 1 with d = log pi_ref - log pi_theta."""
    diff = ref_logps - logps
    return torch.exp(diff) - diff - 1


def clipped_surrogate(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float | torch.Tensor,
    clip_high: float | torch.Tensor,
    delta: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, negated: -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A).

    ``delta`` (two-sided / dual clip, arXiv 1912.09729 as exposed by TRL) caps the unclipped ratio from above.
    Returns ``(per_token_loss, ratio_after_delta)``; the second is what TRL's clip metrics read.
    """
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    if delta is not None:
        ratio = torch.clamp(ratio, max=delta)
    return -torch.min(ratio * advantages, clipped * advantages), ratio


def cispo_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, logps: torch.Tensor, epsilon_high: float
) -> torch.Tensor:
    """CISPO (MiniMax-M1, arXiv 2506.13585): -sg(min(r, eps_high)) A log pi_theta."""
    return -torch.clamp(ratio, max=epsilon_high).detach() * advantages * logps


def sapo_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, temperature_pos: float, temperature_neg: float
) -> torch.Tensor:
    """SAPO (arXiv 2511.20347): -(4/tau) sigmoid(tau (r - 1)) A, tau chosen by the sign of A."""
    tau = torch.where(advantages > 0, temperature_pos, temperature_neg)
    return -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * advantages


@torch.no_grad()
def vespo_gamma_weights(
    advantages: torch.Tensor,
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
    importance_sampling_ratio: torch.Tensor | None,
    k_pos: float,
    lambda_pos: float,
    k_neg: float,
    lambda_neg: float,
) -> torch.Tensor:
    """VESPO's detached sequence weight phi(w) = exp(lambda + k log w - lambda w), w the sequence ratio (B, 1)."""
    lower = math.log(1e-8)
    seq_log_ratio = torch.sum(torch.clamp(log_ratio, -20.0, 20.0) * mask, dim=-1, keepdim=True)
    if importance_sampling_ratio is not None:
        seq_log_ratio += torch.sum(
            torch.clamp(torch.log(importance_sampling_ratio), lower, 20.0), dim=-1, keepdim=True
        )
    log_w = torch.clamp(seq_log_ratio, lower, 20.0)
    nonneg = advantages >= 0
    k = torch.where(nonneg, k_pos, k_neg)
    lam = torch.where(nonneg, lambda_pos, lambda_neg).clamp(min=1e-4)
    return torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def vespo_surrogate(phi: torch.Tensor, advantages: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
    """VESPO: -phi(w) A log pi_theta."""
    return -phi * advantages * logps


def off_policy_sequence_mask(
    advantages: torch.Tensor,
    logps: torch.Tensor,
    sampling_logps: torch.Tensor,
    mask: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """DeepSeek-V3.2's off-policy sequence mask: keep a sequence if A >= 0 or its mean KL(sampler || pi_theta)
    estimate is at most ``threshold``. Returns (B, 1) in the mask dtype."""
    kl = torch.nan_to_num(sampling_logps - logps.detach(), nan=0.0)
    avg_kl = (kl * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    return ((advantages >= 0) | (avg_kl <= threshold)).to(dtype=mask.dtype)


def aggregate_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    *,
    max_completion_length: int,
    num_items: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce the per-token loss to a scalar as TRL's ``loss_type`` does, before gradient-accumulation scaling.

    * ``grpo``/``sapo``: mean over sequences of each sequence's masked token mean;
    * ``bnpo``: masked token mean over the micro-batch (TRL's aggregation mode, unrelated to the BNPO paper);
    * ``dr_grpo``: masked sum / (B * max_completion_length);
    * ``dapo``/``cispo``/``vespo``: masked sum / ``num_items`` (the caller supplies the accumulation-window count);
    * ``luspo``: mean over sequences of each sequence's masked token sum.
    """
    masked = per_token_loss * mask
    if loss_type in ("grpo", "sapo"):
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return masked.sum() / (per_token_loss.size(0) * max_completion_length)
    if loss_type in ("dapo", "cispo", "vespo"):
        if num_items is None:
            raise ValueError(f"loss_type={loss_type!r} needs num_items")
        return masked.sum() / num_items
    if loss_type == "luspo":
        return masked.sum(-1).mean()
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
