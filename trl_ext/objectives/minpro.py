r"""MinPRO: the minimum prefix ratio as a detached per-token weight of the clipped surrogate.

"A Step Back: Prefix Importance Ratio Stabilizes Policy Optimization" (Lei, Cheng, Tao), arXiv 2601.22718.

The exact off-policy policy gradient weights token t by the prefix ratio prod_{j<t} rho_j (it corrects the state
distribution) times rho_t (it corrects the action), with rho_j = pi_theta(y_j | x, y_<j) / mu(y_j | x, y_<j). PPO/GRPO
drop the prefix factor; keeping it is unstable because its variance grows exponentially with length. MinPRO replaces
it by a non-cumulative surrogate, the smallest single-token ratio seen in the prefix:

    M_{i,t} = min{ rho_{i,j} : j < t (or j <= t), v_{i,j} = 1 }      (M = 1 when that set is empty)
    l_{i,t} = - sg(M_{i,t}) * min( rho_{i,t} A_{i,t}, clip(rho_{i,t}, 1 - eps_low, 1 + eps_high) A_{i,t} )

where v = completion_mask * tool_mask marks the model's own tokens and sg is stop-gradient. Everything else in the
loss (masks, KL, aggregation) is the base trainer's; the KL term is not weighted.

**Reconstruction.** No reference code is public and the paper's listing was not available; five choices are
reconstructed (``docs/trainers/minpro.md``, "Reconstructed choices") and must be revisited if the authors' code
appears:

* exclusive (j < t, default) or inclusive (j <= t) prefix: ``include_current``. Inclusive, the prefix minimum takes
  the place of the token's ratio, l_t = -sg(M_t / rho_t) * min(rho_t A, clip(rho_t) A), so the effective weight of
  an unclipped token is M_t (rho_t is not counted twice, as it would be in sg(M_t) * rho_t);
* capping M at 1 (default: not capped): ``cap_at_one``;
* the ratio source, pi_theta / pi_old (default) or pi_theta / mu_sampler: ``minpro_ratio_source``;
* M is detached (fixed);
* the PPO clip acts on rho_t only, never on M (fixed).

This module holds the pure math (tensors in, tensors out, no TRL import) and the registered policy objective
``"minpro"`` that plugs the weight into the base trainer's ``token_weights`` step.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from trl_ext.generation import capabilities_of
from trl_ext.objectives import functional as F
from trl_ext.objectives.base import LossContext, PolicyObjective
from trl_ext.registry import register_policy_objective

__all__ = [
    "DEFAULT_LOG_WEIGHT_CLAMP",
    "MAX_LOG_WEIGHTED_RATIO",
    "MINPRO_LOSS_TYPES",
    "MINPRO_RATIO_SOURCES",
    "MinPROObjective",
    "guard_weighted_ratio_overflow",
    "minpro_clipped_surrogate",
    "minpro_valid_mask",
    "prefix_min_log_ratio",
    "prefix_min_weights",
]

#: Loss types MinPRO is defined for: TRL's clipped-surrogate family (``luspo`` with token-level sampling only).
MINPRO_LOSS_TYPES: tuple[str, ...] = F.CLIPPED_LOSS_TYPES
#: Accepted values of ``minpro_ratio_source``.
MINPRO_RATIO_SOURCES: tuple[str, ...] = ("old", "sampling")
#: Default bound c of |log M| (``minpro_log_weight_clamp``).
DEFAULT_LOG_WEIGHT_CLAMP: float = 20.0
#: Bound G of log(M_t * rho_t) enforced by :func:`guard_weighted_ratio_overflow` (e^64 ~ 6e27, far below the float32
#: maximum e^88.7, leaving room for sums over tokens).
MAX_LOG_WEIGHTED_RATIO: float = 64.0


def prefix_min_log_ratio(
    log_ratio: torch.Tensor,
    valid_mask: torch.Tensor,
    include_current: bool = False,
    cap_at_one: bool = False,
    clamp: float = DEFAULT_LOG_WEIGHT_CLAMP,
) -> torch.Tensor:
    r"""log M, the minimum log importance ratio over each token's valid prefix (arXiv 2601.22718), detached.

    For a row i with log-ratios lr_{i,j} = log pi_theta(y_j) - log mu(y_j) and validity v_{i,j}:

        log M_{i,t} = min{ lr_{i,j} : j < t, v_{i,j} = 1 }      (include_current=False, the default)
        log M_{i,t} = min{ lr_{i,j} : j <= t, v_{i,j} = 1 }     (include_current=True)
        log M_{i,t} = 0                                         if that set is empty
        log M_{i,t} <- min(log M_{i,t}, 0)                      if cap_at_one
        log M_{i,t} <- clamp(log M_{i,t}, -clamp, clamp)

    Computed in O(T) with a cumulative minimum (never a cumulative product): invalid positions are set to +inf, the
    exclusive variant shifts right by one, ``cummin`` runs along T, and positions whose prefix holds no valid token
    (counted with a cumulative sum of v) get 0. So M = 1 at the first valid token of the exclusive variant and on
    rows without a valid token. Invalid positions never enter a minimum, whatever their value (NaN included); a NaN
    at a position marked valid is treated as invalid too. The value returned *at* an invalid position is the minimum
    over the valid tokens before it (it is masked out of the loss anyway).

    Args:
        log_ratio: (B, T) log-ratios; any float dtype. bf16/fp16 are computed in float32, float64 stays float64.
        valid_mask: (B, T) bool or 0/1 tensor v (padding and tool/observation tokens are 0).
        include_current: use the inclusive prefix j <= t instead of j < t. Default False.
        cap_at_one: cap M at 1 (log M <= 0), so that the weight can only down-weight. Default False.
        clamp: bound c > 0 of |log M| (safety against overflow of exp). Default 20.

    Returns:
        (B, T) log M, detached, in float32 (float64 for float64 input).
    """
    if log_ratio.shape != valid_mask.shape or log_ratio.dim() != 2:
        raise ValueError(
            f"log_ratio and valid_mask must both be (B, T); got {tuple(log_ratio.shape)} and {tuple(valid_mask.shape)}"
        )
    if not clamp > 0:
        raise ValueError(f"clamp must be > 0, got {clamp!r}")
    dtype = torch.promote_types(log_ratio.dtype, torch.float32)
    log_ratio = log_ratio.detach().to(dtype)
    valid = valid_mask.detach().bool() & ~torch.isnan(log_ratio)
    masked = torch.where(valid, log_ratio, torch.full_like(log_ratio, float("inf")))
    count = valid.to(torch.int32).cumsum(dim=1)
    if not include_current:
        masked = torch.cat([torch.full_like(masked[:, :1], float("inf")), masked[:, :-1]], dim=1)
        count = count - valid.to(torch.int32)
    prefix_min = masked.cummin(dim=1).values if masked.size(1) > 0 else masked
    log_m = torch.where(count > 0, prefix_min, torch.zeros_like(prefix_min))
    if cap_at_one:
        log_m = log_m.clamp(max=0.0)
    return log_m.clamp(-clamp, clamp)


def prefix_min_weights(
    log_ratio: torch.Tensor,
    valid_mask: torch.Tensor,
    include_current: bool = False,
    cap_at_one: bool = False,
    clamp: float = DEFAULT_LOG_WEIGHT_CLAMP,
) -> torch.Tensor:
    r"""M = exp(log M), the detached MinPRO weight (arXiv 2601.22718); see :func:`prefix_min_log_ratio`.

    With the default clamp, e^-20 <= M <= e^20 (M <= 1 with ``cap_at_one``). Returns (B, T), float32 or float64.
    """
    return prefix_min_log_ratio(log_ratio, valid_mask, include_current, cap_at_one, clamp).exp()


def guard_weighted_ratio_overflow(
    log_m: torch.Tensor, current_log_ratio: torch.Tensor, max_log_product: float = MAX_LOG_WEIGHTED_RATIO
) -> torch.Tensor:
    r"""Bound log M_t so that M_t * rho_t stays finite in float32; our safety, not part of arXiv 2601.22718.

        log M_t <- min( log M_t, max(G - lr_t, 0) )          G = ``max_log_product`` (64)

    with lr_t = log rho_t the detached log-ratio the surrogate uses at token t. Clamping log M to [-20, 20] alone does
    not keep the loss finite: for A < 0 the clipped surrogate is rho_t |A| unbounded, so two consecutive tokens with
    log-ratio 80 give M_2 rho_2 = e^100, above the float32 maximum e^88.7, where PPO's own term (e^80) is finite.
    Under the guard, M_t rho_t <= e^G whenever lr_t <= G, and M_t <= 1 (MinPRO never amplifies PPO's term) when
    lr_t > G. It is inactive unless lr_t > G - c (e^44 with the defaults) and never acts with ``cap_at_one``.
    NaN log-ratios leave log M unchanged. Returns a detached tensor of log M's dtype.
    """
    current = current_log_ratio.detach().to(log_m.dtype)
    bound = (max_log_product - current).clamp(min=0.0)
    return torch.where(torch.isnan(bound), log_m, torch.minimum(log_m, bound))


def minpro_valid_mask(loss_mask: torch.Tensor, source_logps: torch.Tensor | None = None) -> torch.Tensor:
    r"""MinPRO's validity mask (arXiv 2601.22718): v_{i,t} = completion_mask * tool_mask, 0 where the source log-prob is
    not finite.

    Under ``minpro_ratio_source="sampling"`` the sampler (vLLM) may report NaN log-probs; those positions must not
    enter the minimum. Returns a (B, T) bool tensor.
    """
    valid = loss_mask.bool()
    if source_logps is not None:
        valid = valid & torch.isfinite(source_logps)
    return valid


def minpro_clipped_surrogate(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    clip_low: float | torch.Tensor,
    clip_high: float | torch.Tensor,
    delta: float | None = None,
) -> torch.Tensor:
    r"""The MinPRO per-token loss before aggregation (arXiv 2601.22718):

        l_t = - sg(M_t) * min( rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t )

    (with ``delta`` capping the unclipped rho_t as in TRL's two-sided clip). It is what the base trainer computes with
    the MinPRO objective; since M > 0 is detached, it also equals the unweighted surrogate with advantages A * M.
    """
    per_token_loss, _ = F.clipped_surrogate(ratio, advantages, clip_low, clip_high, delta)
    return per_token_loss * weights.detach()


def _flag(args: Any, name: str, default: bool) -> bool:
    value = getattr(args, name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


@register_policy_objective("minpro")
class MinPROObjective(PolicyObjective):
    """MinPRO (arXiv 2601.22718): weight each token's clipped surrogate by the detached minimum prefix ratio.

    Reads ``minpro_include_current`` (False), ``minpro_cap_at_one`` (False), ``minpro_ratio_source`` ("old") and
    ``minpro_log_weight_clamp`` (20.0) from the config, with these defaults when the config lacks them, so it combines
    with any ``BaseGRPOConfig`` (``policy_objective="minpro"``) and any advantage estimator. A reconstruction: see the
    module docstring.

    Metrics (over the loss tokens of every process): ``minpro/weight_mean``, ``minpro/weight_min``,
    ``minpro/frac_weight_below_half`` (fraction of tokens with M < 0.5) and ``minpro/weight_max`` (above 1 only
    without ``minpro_cap_at_one``: the uncapped weight can amplify a token's gradient).
    """

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        self.include_current = _flag(args, "minpro_include_current", False)
        self.cap_at_one = _flag(args, "minpro_cap_at_one", False)
        self.ratio_source = getattr(args, "minpro_ratio_source", "old")
        if self.ratio_source not in MINPRO_RATIO_SOURCES:
            raise ValueError(f"minpro_ratio_source must be one of {MINPRO_RATIO_SOURCES}, got {self.ratio_source!r}")
        clamp = getattr(args, "minpro_log_weight_clamp", DEFAULT_LOG_WEIGHT_CLAMP)
        if isinstance(clamp, bool) or not isinstance(clamp, int | float) or not 0 < clamp < float("inf"):
            raise ValueError(f"minpro_log_weight_clamp must be a finite number > 0, got {clamp!r}")
        self.log_weight_clamp = float(clamp)
        level = getattr(args, "importance_sampling_level", "token")
        if level != "token":
            raise ValueError(
                "importance_sampling_level: MinPRO requires token-level importance sampling "
                f"(importance_sampling_level='token'), got {level!r}"
            )
        loss_type = getattr(args, "loss_type", "dapo")
        if loss_type not in MINPRO_LOSS_TYPES:
            raise ValueError(
                f"loss_type: MinPRO weights the clipped surrogate and supports loss_type in {MINPRO_LOSS_TYPES}, "
                f"got {loss_type!r}"
            )
        if (
            self.ratio_source == "sampling"
            and capabilities_of(args).sampling_logprobs  # TRL corrects with the sampler's log-probs (vLLM)
            and getattr(args, "vllm_importance_sampling_correction", False)
        ):
            warnings.warn(
                "minpro_ratio_source='sampling' with vllm_importance_sampling_correction=True: TRL corrects the "
                "current token's sampler mismatch while MinPRO's weight corrects the prefix, so both act.",
                UserWarning,
                stacklevel=2,
            )

    def token_weights(self, ctx: LossContext) -> torch.Tensor:
        """The detached (B, T) factor of the clipped surrogate, float32: M (exclusive prefix, the default), or
        M / rho_t with ``minpro_include_current`` (the inclusive minimum replaces rho_t instead of multiplying it).
        M itself is kept in ``ctx.extras["minpro_weights"]`` for the metrics."""
        if self.ratio_source == "old":
            # ctx.log_ratio = log pi_theta - log pi_old, exactly 0 on-policy (old falls back to logps.detach()).
            log_ratio, valid = ctx.log_ratio, minpro_valid_mask(ctx.mask)
        else:
            sampling = ctx.inputs.get("sampling_per_token_logps")
            if sampling is None:
                raise ValueError(
                    "minpro_ratio_source='sampling' needs the sampler's log-probs (`sampling_per_token_logps`), which "
                    "this batch lacks: use use_vllm=True or a rollout_func that returns logprobs, or set "
                    "minpro_ratio_source='old'"
                )
            sampling = sampling.float()
            log_ratio = ctx.logps.detach().float() - sampling
            valid = minpro_valid_mask(ctx.mask, sampling)
        log_m = prefix_min_log_ratio(log_ratio, valid, self.include_current, self.cap_at_one, self.log_weight_clamp)
        if self.include_current:
            # The inclusive prefix minimum takes the place of the token's own ratio (a reconstructed choice): the
            # surrogate already holds rho_t, so it is multiplied by M / rho_t and the token's effective weight is M,
            # not rho_t * M (rho_t counted twice). The PPO clip still acts on rho_t. Positions outside the loss keep M,
            # so that no garbage log-ratio there can make inf * 0.
            current = ctx.log_ratio.detach().to(log_m.dtype)
            log_multiplier = (log_m - current).clamp(-MAX_LOG_WEIGHTED_RATIO, MAX_LOG_WEIGHTED_RATIO)
            multiplier = torch.where(ctx.mask.bool(), log_multiplier, log_m).exp()
            ctx.extras["minpro_weights"] = log_m.exp()  # the effective weight M, for the metrics
            return multiplier
        if not self.cap_at_one:
            log_m = guard_weighted_ratio_overflow(log_m, ctx.log_ratio)
        weights = log_m.exp()
        ctx.extras["minpro_weights"] = weights
        return weights

    def metrics(self, ctx: LossContext) -> dict[str, float]:
        weights = ctx.extras.get("minpro_weights")
        if weights is None:  # pragma: no cover - token_weights always runs first
            return {}
        mask = ctx.mask.bool()
        if mask.any():
            local = torch.stack([weights[mask].min(), -weights[mask].max()])
        else:  # no loss token here: neutral for the global min / max
            local = weights.new_tensor([float("inf"), float("inf")])
        global_min, negative_max = _gather_min(local)
        return {
            "minpro/weight_mean": ctx.global_masked_mean(weights),
            # M = 1 where no process has a loss token (rows without valid tokens have M = 1).
            "minpro/weight_min": global_min if math.isfinite(global_min) else 1.0,
            "minpro/weight_max": -negative_max if math.isfinite(negative_max) else 1.0,
            "minpro/frac_weight_below_half": ctx.global_masked_mean((weights < 0.5).float()),
        }


def _gather_min(values: torch.Tensor) -> list[float]:
    """Element-wise minimum of a 1-D tensor over all processes (a collective when distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from accelerate.utils import gather

        values = gather(values.unsqueeze(0)).amin(dim=0)
    return values.tolist()
