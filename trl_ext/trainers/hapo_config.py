"""Configuration of the HAPO trainer (``"hapo"``; arXiv 2509.16591): the ``hapo_`` fields of
its four components, validated before any model loads. The trainer is :mod:`trl_ext.trainers.hapo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl_ext.advantages.hapo import FALLBACK_MODES, validate_tlga_fields
from trl_ext.generation import capabilities_of
from trl_ext.objectives.hapo import SIGN_MODES, validate_objective_fields, validate_sign_mode
from trl_ext.trainers.base import BaseGRPOConfig

__all__ = ["HAPOConfig"]


@dataclass
class HAPOConfig(BaseGRPOConfig):
    r"""
    Configuration for [`HAPOTrainer`][trl_ext.trainers.hapo.HAPOTrainer]: every field of [`BaseGRPOConfig`] (hence
    of `trl.GRPOConfig`), plus the HAPO fields below ([arXiv 2509.16591](https://arxiv.org/abs/2509.16591)). Each of
    the four components has its own switch; with all four off and `hapo_dual_clip_c=None` the trainer is `grpo`
    exactly.

    Parameters:
        hapo_entropy_sign_mode (`str`, *optional*, defaults to `"signed"`):
            How the normalised entropy h is signed. `"signed"` (the paper's intent): h in [-1, 0] below the pivot
            and [0, 1] above, so low-entropy tokens get a wider *lower* clip bound and (in the ratio band) a damped
            advantage. `"reference"` reproduces the authors' code: h in [0, 1] at both tails, so eps_low never
            adapts and the upper bound widens for both the highest- and the lowest-entropy tokens.
        hapo_entropy_pivot (`float`, *optional*, defaults to `0.8`):
            Quantile q in [0, 1] of log-entropy used as the pivot m (nearest rank).
        hapo_adaptive_temperature (`bool`, *optional*, defaults to `True`):
            Component 1: sample at T_t = T0 (1 + tau h_t) with h from the previous training batch's statistics.
            Every generation backend applies it (transformers; vLLM colocate or server, through the logits
            processor vLLM loads from trl-ext's entry point). Not supported with
            `use_transformers_continuous_batching=True` (`ValueError`).
        hapo_temperature_tau (`float`, *optional*, defaults to `0.05`):
            tau in [0, 1): the temperature range is [0.95, 1.05] T0 (signed) or [T0, 1.05 T0] (reference).
            T0 is TRL's `temperature`.
        hapo_temperature_stats_max_tokens (`int` or `None`, *optional*, defaults to `None`):
            If set (> 0), the statistics use a seeded uniform subsample of at most this many token entropies
            (bounds the memory of the cross-process gather). `None`: every valid token (exact).
        hapo_token_level_advantage (`bool`, *optional*, defaults to `True`):
            Component 2: the token-level group average advantage (TLGA) with its GRPO fallback. `False`: TRL's GRPO
            advantage (honouring `scale_rewards`).
        hapo_tlga_scale_by_std (`bool`, *optional*, defaults to `True`):
            Divide the TLGA (and its fallback) by the group's std (the reference's `norm_adv_by_std_in_grpo`).
        hapo_tlga_fallback_threshold (`float`, *optional*, defaults to `5.0`):
            A group falls back to GRPO if any of its rows has |A| >= this (> 0).
        hapo_tlga_fallback_mode (`str`, *optional*, defaults to `"valid"`):
            `"valid"`: test the real rows only. `"reference"`: also test the padding "phantom" -mu/(sigma + eps)
            that the authors' code sees at padding positions.
        hapo_adaptive_advantage (`bool`, *optional*, defaults to `True`):
            Component 3: differential advantage redistribution A (1 + beta h) (see the docs for the condition).
        hapo_adv_beta (`float`, *optional*, defaults to `1.0`):
            beta >= 0 (at most 1 in `"signed"` mode, where a larger value could flip an advantage's sign).
        hapo_adaptive_clip (`bool`, *optional*, defaults to `True`):
            Component 4: asymmetric adaptive clipping, eps_high (1 + alpha h) for h > 0 and eps_low (1 - alpha h)
            for h <= 0. Needs a clipped `loss_type`.
        hapo_clip_alpha (`float`, *optional*, defaults to `1.0`):
            alpha >= 0.
        hapo_dual_clip_c (`float` or `None`, *optional*, defaults to `10.0`):
            Dual-clip constant c > 1 for negative advantages (the per-token loss is capped at -A c). `None`
            disables it. The reference yaml default is 3.0; its recipes use 10. Must agree with TRL's `delta` if
            both are set.
        hapo_advantage_eps (`float`, *optional*, defaults to `1e-6`):
            epsilon > 0 in the TLGA and fallback-GRPO denominators.
        advantage_estimator (`str`, *optional*, defaults to `"hapo_tlga"`):
            Inherited seam field; HAPO's TLGA estimator (GRPO when `hapo_token_level_advantage=False`).
        policy_objective (`str`, *optional*, defaults to `"hapo"`):
            Inherited seam field; HAPO's objective (ADR, AAC, dual clip).

    The base clip range is TRL's `epsilon` (eps_low, default 0.2) and `epsilon_high` (defaults to `epsilon`); set
    `epsilon_high` explicitly. The reference aggregates the loss as a token mean per micro-batch, TRL's
    `loss_type="bnpo"` (unrelated to the BNPO method); the default here stays TRL's `"dapo"`, a token mean over the
    accumulation window.
    """

    hapo_entropy_sign_mode: str = field(
        default="signed",
        metadata={
            "help": "'signed' (paper's intent: h <= 0 for low-entropy tokens) or 'reference' (authors' code: h >= 0).",
            "choices": list(SIGN_MODES),
        },
    )
    hapo_entropy_pivot: float = field(
        default=0.8, metadata={"help": "Quantile q in [0, 1] of log-entropy used as the pivot. Default 0.8."}
    )
    hapo_adaptive_temperature: bool = field(
        default=True,
        metadata={"help": "Component 1: entropy-adaptive sampling temperature T0 (1 + tau h)."},
    )
    hapo_temperature_tau: float = field(
        default=0.05, metadata={"help": "tau in [0, 1): T_t = T0 (1 + tau h_t). Default 0.05."}
    )
    hapo_temperature_stats_max_tokens: int | None = field(
        default=None,
        metadata={"help": "Seeded subsample size (> 0) for the rollout statistics; None = every valid token."},
    )
    hapo_token_level_advantage: bool = field(
        default=True, metadata={"help": "Component 2: token-level group average advantage with GRPO fallback."}
    )
    hapo_tlga_scale_by_std: bool = field(
        default=True, metadata={"help": "Divide the TLGA by the group's token-weighted std. Default True."}
    )
    hapo_tlga_fallback_threshold: float = field(
        default=5.0, metadata={"help": "Fall back to GRPO for a group if any |A| >= this (> 0). Default 5.0."}
    )
    hapo_tlga_fallback_mode: str = field(
        default="valid",
        metadata={
            "help": "'valid': test real rows only. 'reference': also the padding phantom, as the authors' code.",
            "choices": list(FALLBACK_MODES),
        },
    )
    hapo_adaptive_advantage: bool = field(
        default=True, metadata={"help": "Component 3: differential advantage redistribution A (1 + beta h)."}
    )
    hapo_adv_beta: float = field(
        default=1.0, metadata={"help": "beta >= 0 of the redistribution (<= 1 in 'signed' mode). Default 1.0."}
    )
    hapo_adaptive_clip: bool = field(
        default=True, metadata={"help": "Component 4: asymmetric adaptive clip bounds. Default True."}
    )
    hapo_clip_alpha: float = field(default=1.0, metadata={"help": "alpha >= 0 of the adaptive clip. Default 1.0."})
    hapo_dual_clip_c: float | None = field(
        default=10.0, metadata={"help": "Dual-clip constant c > 1 for negative advantages; None disables it."}
    )
    hapo_advantage_eps: float = field(
        default=1e-6, metadata={"help": "epsilon > 0 in the TLGA and fallback-GRPO denominators. Default 1e-6."}
    )
    advantage_estimator: str = field(
        default="hapo_tlga",
        metadata={"help": "Registered advantage estimator; 'hapo_tlga' is HAPO's token-level group average."},
    )
    policy_objective: str = field(
        default="hapo",
        metadata={"help": "Registered policy objective; 'hapo' is HAPO's (ADR, AAC, dual clip)."},
    )

    def __post_init__(self):
        super().__post_init__()
        validate_sign_mode(self.hapo_entropy_sign_mode)
        for name in (
            "hapo_adaptive_temperature",
            "hapo_token_level_advantage",
            "hapo_tlga_scale_by_std",
            "hapo_adaptive_advantage",
            "hapo_adaptive_clip",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not 0.0 <= self.hapo_temperature_tau < 1.0:
            raise ValueError(f"hapo_temperature_tau must be in [0, 1), got {self.hapo_temperature_tau}")
        max_tokens = self.hapo_temperature_stats_max_tokens
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise ValueError(
                f"hapo_temperature_stats_max_tokens must be a positive integer or None, got {max_tokens!r}"
            )
        validate_tlga_fields(self.hapo_tlga_fallback_threshold, self.hapo_tlga_fallback_mode, self.hapo_advantage_eps)
        validate_objective_fields(
            self.hapo_entropy_pivot,
            self.hapo_adv_beta,
            self.hapo_clip_alpha,
            self.hapo_dual_clip_c,
            self.hapo_entropy_sign_mode,
            self.hapo_adaptive_clip,
            self.loss_type,
            self.delta,
        )
        capabilities = capabilities_of(self)
        if self.hapo_adaptive_temperature and not capabilities.sampling_changes:
            raise ValueError(
                f"hapo_adaptive_temperature=True is not supported with the {capabilities.name} backend "
                "(use_transformers_continuous_batching=True: generate_batch takes no logits processor); set one of "
                "them to False."
            )
