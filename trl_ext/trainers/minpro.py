"""MinPRO trainer (``"minpro"``): GRPO whose clipped surrogate is weighted by the minimum prefix ratio.

"A Step Back: Prefix Importance Ratio Stabilizes Policy Optimization", arXiv 2601.22718. The math and the registered
policy objective live in :mod:`trl_ext.objectives.minpro`; this module is the preset: a config with the ``minpro_``
fields and ``policy_objective="minpro"``, and a trainer that only adds checks and model-card metadata.

MinPRO matters only off-policy (``num_iterations > 1``, ``steps_per_generation > gradient_accumulation_steps``, or a
vLLM sampler mismatch with ``minpro_ratio_source="sampling"``); on-policy it equals ``grpo`` exactly.

**Reconstruction:** no reference code is public; the exclusive prefix, no cap at 1, the ratio source, the detached
weight and the clip on rho_t only are reconstructed choices (see ``docs/trainers/minpro.md``).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

import trl_ext.objectives.minpro  # noqa: F401  (registers the "minpro" policy objective)
from trl_ext import compat
from trl_ext.generation import capabilities_of
from trl_ext.objectives.minpro import (
    DEFAULT_LOG_WEIGHT_CLAMP,
    MINPRO_LOSS_TYPES,
    MINPRO_RATIO_SOURCES,
)
from trl_ext.trainers.base import BaseGRPOConfig, BaseGRPOTrainer

__all__ = ["MinPROConfig", "MinPROTrainer"]


@dataclass
class MinPROConfig(BaseGRPOConfig):
    r"""
    Configuration for [`MinPROTrainer`]: every field of [`BaseGRPOConfig`] (hence of `trl.GRPOConfig`), plus the
    MinPRO fields below. MinPRO weights each token's clipped surrogate by the detached minimum importance ratio over
    its preceding prefix, M_t = min_{j<t} pi_theta(y_j) / pi_old(y_j) ([arXiv 2601.22718](https://arxiv.org/abs/2601.22718)).
    Several choices are reconstructions because no reference code is public; they are flagged below.

    Parameters:
        minpro_include_current (`bool`, *optional*, defaults to `False`):
            Reconstructed choice. `False`: M_t is the minimum over the valid tokens j < t (exclusive prefix; the
            current token's ratio enters only through the clipped surrogate, and M = 1 at the first token). `True`:
            the minimum over j <= t.
        minpro_cap_at_one (`bool`, *optional*, defaults to `False`):
            Reconstructed choice. If `True`, M_t := min(1, M_t), so the weight can only down-weight a token.
        minpro_ratio_source (`str`, *optional*, defaults to `"old"`):
            Reconstructed choice: the policy in the denominator of the prefix ratios. `"old"`: pi_theta / pi_old
            (TRL's `old_per_token_logps`, present off-policy; on-policy M = 1). `"sampling"`: pi_theta / mu_sampler
            (TRL's `sampling_per_token_logps`), which needs `use_vllm=True` or a `rollout_func` returning log-probs;
            NaN sampler log-probs are left out of the minimum.
        minpro_log_weight_clamp (`float`, *optional*, defaults to `20.0`):
            Bound c (in nats, > 0) of |log M|: log M is clamped to [-c, c] before exp, so e^-c <= M <= e^c.
        policy_objective (`str`, *optional*, defaults to `"minpro"`):
            Registered policy objective; `"minpro"` is this method.

    MinPRO needs `importance_sampling_level="token"` and a clipped-surrogate `loss_type` (`"grpo"`, `"bnpo"`,
    `"dr_grpo"`, `"dapo"` (TRL's default), `"luspo"`); anything else raises a `ValueError` (checked only while
    `policy_objective="minpro"`). The KL term (`beta`) is
    not weighted by M. Use an off-policy regime (`num_iterations > 1` or `steps_per_generation >
    gradient_accumulation_steps`): on-policy the trainer equals `grpo` exactly.
    """

    minpro_include_current: bool = field(
        default=False,
        metadata={
            "help": "Reconstructed choice. False (default): M_t = min over valid j < t (exclusive prefix). "
            "True: the minimum over valid j <= t replaces the token's own ratio."
        },
    )
    minpro_cap_at_one: bool = field(
        default=False,
        metadata={"help": "Reconstructed choice. True: M_t := min(1, M_t), so M only down-weights. Default False."},
    )
    minpro_ratio_source: str = field(
        default="old",
        metadata={
            "help": "Reconstructed choice. 'old' (default): ratios pi_theta / pi_old. 'sampling': pi_theta / "
            "mu_sampler (vLLM or rollout_func log-probs).",
            "choices": list(MINPRO_RATIO_SOURCES),
        },
    )
    minpro_log_weight_clamp: float = field(
        default=DEFAULT_LOG_WEIGHT_CLAMP,
        metadata={"help": "log M is clamped to [-c, c] (nats, > 0) before exp. Default 20.0."},
    )
    policy_objective: str = field(
        default="minpro",
        metadata={"help": "Registered policy objective name (see `trl-ext list`). 'minpro' is this method."},
    )

    def __post_init__(self):
        super().__post_init__()
        # The method's own requirements apply only when its objective is on (policy_objective="minpro", the
        # default); with another objective the config is a plain BaseGRPOConfig with unused minpro_* fields.
        method_on = self.policy_objective == "minpro"
        if method_on and self.importance_sampling_level != "token":
            raise ValueError(
                "importance_sampling_level: MinPRO requires token-level importance sampling "
                f"(importance_sampling_level='token'), got {self.importance_sampling_level!r}"
            )
        if method_on and self.loss_type not in MINPRO_LOSS_TYPES:
            raise ValueError(
                f"loss_type: MinPRO weights the clipped surrogate and supports loss_type in {MINPRO_LOSS_TYPES}, "
                f"got {self.loss_type!r}"
            )
        if self.minpro_ratio_source not in MINPRO_RATIO_SOURCES:
            raise ValueError(
                f"minpro_ratio_source must be one of {MINPRO_RATIO_SOURCES}, got {self.minpro_ratio_source!r}"
            )
        for name in ("minpro_include_current", "minpro_cap_at_one"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        clamp = self.minpro_log_weight_clamp
        if isinstance(clamp, bool) or not isinstance(clamp, int | float) or not 0 < clamp < float("inf"):
            raise ValueError(f"minpro_log_weight_clamp must be a finite number > 0, got {clamp!r}")


class MinPROTrainer(BaseGRPOTrainer):
    """GRPO with MinPRO's minimum-prefix-ratio token weights (arXiv 2601.22718); see [`MinPROConfig`].

    Accepts every argument of ``trl.GRPOTrainer``. It changes only the per-token weight of the clipped surrogate
    (through the ``"minpro"`` policy objective); advantages, rollout and every other loss term are GRPO's.
    """

    _tag_names = ["trl", "grpo", "trl-ext", "minpro"]
    _name = "MinPRO"
    _paper = {
        "title": "A Step Back: Prefix Importance Ratio Stabilizes Policy Optimization",
        "id": "2601.22718",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{lei2026minpro,
                title        = {{A Step Back: Prefix Importance Ratio Stabilizes Policy Optimization}},
                author       = {Lei and Cheng and Tao},
                year         = 2026,
                eprint       = {arXiv:2601.22718},
            }"""),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Checked before the parent loads a model, so that a misconfigured run fails in seconds.
        bound = compat.grpo_trainer_arguments(args, kwargs).arguments
        config = bound.get("args")
        if (
            config is not None
            and getattr(config, "policy_objective", None) == "minpro"
            and getattr(config, "minpro_ratio_source", "old") == "sampling"
            and not capabilities_of(config, bound.get("rollout_func")).sampling_logprobs
        ):
            raise ValueError(
                "minpro_ratio_source='sampling' needs the sampler's log-probs: set use_vllm=True or pass a "
                "rollout_func that returns logprobs; otherwise use minpro_ratio_source='old'"
            )
        super().__init__(*args, **kwargs)
