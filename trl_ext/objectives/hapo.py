"""HAPO's per-token loss pieces: entropy normalisation, asymmetric adaptive clipping (AAC), differential advantage
redistribution (ADR) and the dual clip, plus the registered ``"hapo"`` policy objective.

"From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature" (HAPO), Liu et al.,
arXiv 2509.16591. The formulas follow the reference code
(``starriver030515/HAPO``); ``sign_mode`` selects between the paper's intent (``"signed"``) and the code
(``"reference"``).

Notation (one micro-batch, B sequences, T completion tokens): H_t the current policy's token entropy, M_t the loss
mask (``completion_mask * tool_mask``), r_t = pi_theta / pi_old the importance ratio, A the advantage, eps_low and
eps_high TRL's ``epsilon`` / ``epsilon_high``.

Entropy normalisation, over the valid tokens only::

    x_t = log max(H_t, 1e-8)
    m   = sorted(x)[round_half_even(q (n - 1))]              (nearest-rank q-quantile, the pivot)
    s   = sqrt(max(mean((x - m)^2), 1e-8))                    (RMS deviation around the pivot)
    z_t = (x_t - m) / s
    P   = max(max z, 1e-8),  N = min(min z, -1e-8)
    scale_pos = 1 / P,   scale_neg = 1 / N ("reference")  or  1 / |N| ("signed")
    h_t = z_t scale_pos if z_t > 0 else z_t scale_neg

"signed": h in [-1, 0] below the pivot and [0, 1] above it. "reference": h in [0, 1] everywhere (1 at both tails).

Clipping (AAC) and redistribution (ADR)::

    eps_low,t  = eps_low  (1 - alpha h_t) if h_t <= 0 else eps_low
    eps_high,t = eps_high (1 + alpha h_t) if h_t > 0  else eps_high
    in_band_t  = 1 - eps_low,t / 2 < r_t < 1 + eps_high,t / 2
    A^_t = A (1 + beta h_t)  if (h_t > 0 and not in_band_t) or (h_t <= 0 and in_band_t)  else A

Surrogate with dual clip c (applied to A^ < 0 only)::

    L_t = max(-A^ r, -A^ clip(r, 1 - eps_low,t, 1 + eps_high,t));   L_t = min(L_t, -A^ c) if A^ < 0
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from trl_ext.objectives.base import LossContext, PolicyObjective
from trl_ext.objectives.functional import CLIPPED_LOSS_TYPES, importance_log_weights
from trl_ext.registry import register_policy_objective

SIGN_MODES = ("signed", "reference")
LOG_ENTROPY_FLOOR = 1e-8  # train side; the rollout side uses 1e-6 (trl_ext.rollout.temperature)
SCALE_FLOOR = 1e-8

__all__ = [
    "SIGN_MODES",
    "EntropyStatistics",
    "HAPOObjective",
    "adaptive_clip_bounds",
    "dual_clip_surrogate",
    "entropy_statistics",
    "normalized_entropy",
    "redistribute_advantages",
    "validate_sign_mode",
]


class EntropyStatistics(NamedTuple):
    """The entropy statistics of a set of token entropies (0-dim tensors, dtype of the computation).

    Attributes:
        pivot: m, the nearest-rank q-quantile of log-entropy.
        scale: s, the RMS deviation of log-entropy around the pivot.
        scale_pos: 1 / P, P the largest positive z (floored at 1e-8).
        scale_neg: 1 / N ("reference", < 0) or 1 / |N| ("signed", > 0), N the most negative z (capped at -1e-8).
        num_tokens: n, the number of entropies used (python int).
    """

    pivot: torch.Tensor
    scale: torch.Tensor
    scale_pos: torch.Tensor
    scale_neg: torch.Tensor
    num_tokens: int


def validate_sign_mode(sign_mode: str, field_name: str = "hapo_entropy_sign_mode") -> str:
    """Return ``sign_mode`` if it is ``"signed"`` or ``"reference"``, else raise ``ValueError`` naming the field."""
    if sign_mode not in SIGN_MODES:
        raise ValueError(f"{field_name} must be one of {SIGN_MODES}, got {sign_mode!r}")
    return sign_mode


def entropy_statistics(entropies: torch.Tensor, pivot_quantile: float, sign_mode: str) -> EntropyStatistics | None:
    """Entropy statistics (m, s, scale_pos, scale_neg) of a 1-D set of **valid** token entropies (HAPO).

    Computed in the input's dtype promoted to at least float32. Returns ``None`` for an empty set (the caller then
    uses h = 0, i.e. no adaptation). The pivot is ``sorted(x)[round_half_even(q (n - 1))]`` (n = 17, q = 0.8 gives
    index 13), found with ``kthvalue`` (no full sort).
    """
    validate_sign_mode(sign_mode, "sign_mode")
    values = entropies.reshape(-1)
    values = values.to(torch.promote_types(values.dtype, torch.float32))
    n = values.numel()
    if n == 0:
        return None
    x = torch.log(values.clamp(min=LOG_ENTROPY_FLOOR))
    index = round(pivot_quantile * (n - 1))  # Python's round is round-half-even: the pivot's nearest-rank rule
    pivot = torch.kthvalue(x, index + 1).values
    deviation = x - pivot
    scale = torch.sqrt((deviation * deviation).mean().clamp(min=SCALE_FLOOR))
    z = deviation / scale
    largest = z.max().clamp(min=SCALE_FLOOR)
    smallest = z.min().clamp(max=-SCALE_FLOOR)
    scale_pos = 1.0 / largest
    scale_neg = 1.0 / smallest if sign_mode == "reference" else -1.0 / smallest
    return EntropyStatistics(pivot, scale, scale_pos, scale_neg, n)


def normalized_entropy(entropies: torch.Tensor, mask: torch.Tensor, stats: EntropyStatistics | None) -> torch.Tensor:
    """Normalised entropy h_t: z_t scale_pos if z_t > 0 else z_t scale_neg, z_t = (log max(H_t, 1e-8) - m) / s.

    Returns a tensor shaped like ``entropies`` (float32 or wider), 0 at masked positions and everywhere when
    ``stats`` is ``None`` (no valid token: no adaptation).
    """
    dtype = torch.promote_types(entropies.dtype, torch.float32)
    if stats is None:
        return torch.zeros(entropies.shape, dtype=dtype, device=entropies.device)
    x = torch.log(entropies.to(dtype).clamp(min=LOG_ENTROPY_FLOOR))
    z = (x - stats.pivot.to(dtype)) / stats.scale.to(dtype)
    h = torch.where(z > 0, z * stats.scale_pos.to(dtype), z * stats.scale_neg.to(dtype))
    return torch.where(mask.bool(), h, torch.zeros_like(h))


def adaptive_clip_bounds(
    h: torch.Tensor, epsilon_low: float, epsilon_high: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric adaptive clipping (HAPO): per-token (eps_low,t, eps_high,t).

    eps_low,t = eps_low (1 - alpha h_t) where h_t <= 0 (low entropy: a wider lower bound), else eps_low;
    eps_high,t = eps_high (1 + alpha h_t) where h_t > 0 (high entropy: a wider upper bound), else eps_high.
    In ``"reference"`` mode h >= 0, so eps_low is never adapted.
    """
    low = torch.where(h <= 0, epsilon_low * (1 - alpha * h), torch.full_like(h, epsilon_low))
    high = torch.where(h > 0, epsilon_high * (1 + alpha * h), torch.full_like(h, epsilon_high))
    return low, high


def redistribute_advantages(
    advantages: torch.Tensor,
    h: torch.Tensor,
    ratio: torch.Tensor,
    clip_low: float | torch.Tensor,
    clip_high: float | torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differential advantage redistribution (HAPO).

    A^_t = A_t (1 + beta h_t) where (h_t > 0 and r_t outside the band) or (h_t <= 0 and r_t inside the band), else
    A_t; the band is the open interval (1 - eps_low,t / 2, 1 + eps_high,t / 2). High-entropy tokens whose ratio
    already moved get a boosted |A|; in ``"signed"`` mode low-entropy tokens whose ratio stayed put get a damped |A|.

    Args:
        advantages: (B, 1) or (B, T).
        h: (B, T) normalised entropy.
        ratio: (B, T) or (B, 1) detached importance ratio.
        clip_low: float or (B, T) lower clip bound in effect (eps_low).
        clip_high: float or (B, T) upper clip bound in effect (eps_high).
        beta: the redistribution strength.

    Returns:
        ``(A^, redistributed)``: (B, T) advantages and the (B, T) bool mask of tokens whose condition held.
    """
    in_band = (ratio > 1 - clip_low / 2) & (ratio < 1 + clip_high / 2)
    redistributed = ((h > 0) & ~in_band) | ((h <= 0) & in_band)
    factor = torch.where(redistributed, 1 + beta * h, torch.ones_like(h))
    return advantages * factor.to(advantages.dtype), redistributed


def dual_clip_surrogate(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float | torch.Tensor,
    clip_high: float | torch.Tensor,
    dual_clip_c: float | None,
) -> torch.Tensor:
    """Per-token PPO loss with asymmetric bounds and the dual clip (Ye et al. 2020, arXiv 1912.09729; HAPO).

    L = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)); for A < 0, L = min(L, -A c). With c > 1 + max eps_high
    this equals TRL's ``delta=c`` (value and gradient).
    """
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    loss = torch.max(-advantages * ratio, -advantages * clipped)
    if dual_clip_c is not None:
        loss = torch.where(advantages < 0, torch.min(loss, -advantages * dual_clip_c), loss)
    return loss


@register_policy_objective("hapo")
class HAPOObjective(PolicyObjective):
    """HAPO: entropy-driven advantage redistribution, asymmetric adaptive clipping and dual clip (arXiv 2509.16591).

    Reads ``hapo_entropy_sign_mode``, ``hapo_entropy_pivot``, ``hapo_adaptive_advantage``, ``hapo_adv_beta``,
    ``hapo_adaptive_clip``, ``hapo_clip_alpha`` and ``hapo_dual_clip_c`` from the config (the ``HAPOConfig``
    defaults when a field is absent, so it combines with any ``BaseGRPOConfig``). With ADR and AAC off and
    ``hapo_dual_clip_c=None`` every hook returns ``None`` and the loss is the base loss exactly.
    """

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.sign_mode = validate_sign_mode(getattr(args, "hapo_entropy_sign_mode", "signed"))
        self.pivot_quantile = float(getattr(args, "hapo_entropy_pivot", 0.8))
        self.adaptive_advantage = bool(getattr(args, "hapo_adaptive_advantage", True))
        self.adv_beta = float(getattr(args, "hapo_adv_beta", 1.0))
        self.adaptive_clip = bool(getattr(args, "hapo_adaptive_clip", True))
        self.clip_alpha = float(getattr(args, "hapo_clip_alpha", 1.0))
        self.dual_clip_c = getattr(args, "hapo_dual_clip_c", 10.0)
        self.epsilon_low = float(args.epsilon)
        self.epsilon_high = float(args.epsilon_high if args.epsilon_high is not None else args.epsilon)
        validate_objective_fields(
            self.pivot_quantile,
            self.adv_beta,
            self.clip_alpha,
            self.dual_clip_c,
            self.sign_mode,
            self.adaptive_clip,
            getattr(args, "loss_type", "dapo"),
            getattr(args, "delta", None),
        )

    @property
    def uses_entropy(self) -> bool:
        """Whether any per-token component (ADR, AAC) needs the normalised entropy h."""
        return self.adaptive_advantage or self.adaptive_clip

    def reshape_advantages(self, ctx: LossContext) -> torch.Tensor | None:
        if not self.uses_entropy:
            return None
        with torch.no_grad():
            mask = ctx.mask.bool()
            stats = entropy_statistics(ctx.entropies[mask], self.pivot_quantile, self.sign_mode)
            h = normalized_entropy(ctx.entropies, mask, stats)
            if self.adaptive_clip:
                clip_low, clip_high = adaptive_clip_bounds(h, self.epsilon_low, self.epsilon_high, self.clip_alpha)
            else:
                clip_low, clip_high = self.epsilon_low, self.epsilon_high
            ctx.extras.update(hapo_h=h, hapo_stats=stats, hapo_clip=(clip_low, clip_high))
            if not self.adaptive_advantage:
                return None
            level = getattr(self.args, "importance_sampling_level", "token")
            ratio = torch.exp(importance_log_weights(ctx.logps.detach() - ctx.old_logps, ctx.mask, level))
            reshaped, redistributed = redistribute_advantages(
                ctx.advantages, h, ratio, clip_low, clip_high, self.adv_beta
            )
            ctx.extras["hapo_redistributed"] = redistributed & mask & (h != 0)
        return reshaped

    def clip_bounds(self, ctx: LossContext) -> tuple[float | torch.Tensor, float | torch.Tensor] | None:
        return ctx.extras["hapo_clip"] if self.adaptive_clip else None

    def surrogate(self, ctx: LossContext) -> torch.Tensor | None:
        if self.dual_clip_c is None:
            return None
        return dual_clip_surrogate(ctx.ratio, ctx.advantages, ctx.clip_low, ctx.clip_high, self.dual_clip_c)

    def metrics(self, ctx: LossContext) -> dict[str, float]:
        if not self.uses_entropy:
            return {}
        stats: EntropyStatistics | None = ctx.extras["hapo_stats"]
        device = ctx.mask.device
        pivot = torch.zeros(1, 1, device=device) if stats is None else stats.pivot.float().reshape(1, 1)
        scale = torch.zeros(1, 1, device=device) if stats is None else stats.scale.float().reshape(1, 1)
        # Every process calls the same collectives in the same order, whatever its local data.
        metrics = {
            "hapo/entropy_pivot": ctx.global_masked_mean(pivot),  # mean over processes of the micro-batch pivot
            "hapo/entropy_scale": ctx.global_masked_mean(scale),
            "hapo/h_mean": ctx.global_masked_mean(ctx.extras["hapo_h"].float()),
        }
        if self.adaptive_advantage:
            metrics["hapo/redistributed_frac"] = ctx.global_masked_mean(ctx.extras["hapo_redistributed"].float())
        if self.adaptive_clip:
            clip_low, clip_high = ctx.extras["hapo_clip"]
            metrics["hapo/clip_low_mean"] = ctx.global_masked_mean(clip_low.float())
            metrics["hapo/clip_high_mean"] = ctx.global_masked_mean(clip_high.float())
        return metrics


def validate_objective_fields(
    pivot_quantile: float,
    adv_beta: float,
    clip_alpha: float,
    dual_clip_c: float | None,
    sign_mode: str,
    adaptive_clip: bool,
    loss_type: str,
    delta: float | None,
) -> None:
    """Raise ``ValueError`` naming the field for an out-of-range HAPO loss setting."""
    if not 0.0 <= pivot_quantile <= 1.0:
        raise ValueError(f"hapo_entropy_pivot must be in [0, 1], got {pivot_quantile}")
    if adv_beta < 0:
        raise ValueError(f"hapo_adv_beta must be >= 0, got {adv_beta}")
    if sign_mode == "signed" and adv_beta > 1:
        raise ValueError(
            f"hapo_adv_beta must be in [0, 1] with hapo_entropy_sign_mode='signed' (1 + beta h with h = -1 would flip "
            f"the sign of a low-entropy token's advantage), got {adv_beta}"
        )
    if clip_alpha < 0:
        raise ValueError(f"hapo_clip_alpha must be >= 0, got {clip_alpha}")
    if dual_clip_c is not None and not dual_clip_c > 1:
        raise ValueError(f"hapo_dual_clip_c must be > 1 or None (disabled), got {dual_clip_c}")
    if dual_clip_c is not None and delta is not None and float(delta) != float(dual_clip_c):
        raise ValueError(
            f"hapo_dual_clip_c={dual_clip_c} and delta={delta} disagree; set one of them (or both to the same value)"
        )
    if (adaptive_clip or dual_clip_c is not None) and loss_type not in CLIPPED_LOSS_TYPES:
        raise ValueError(
            f"loss_type must be a clipped surrogate {CLIPPED_LOSS_TYPES} with hapo_adaptive_clip or hapo_dual_clip_c, "
            f"got {loss_type!r}; set hapo_adaptive_clip=False and hapo_dual_clip_c=None to use it"
        )
