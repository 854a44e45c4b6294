"""BNPO trainer: GRPO with Beta-normalised advantages (arXiv 2506.02864). Only the advantage changes.

Not TRL's ``loss_type="bnpo"``: that is a token-mean loss *aggregation* that predates the paper and never touches
advantages. The method here is selected by the trainer name ``bnpo`` (or ``advantage_estimator=
"beta_normalization"``); any ``loss_type`` works with it, TRL's ``"bnpo"`` included.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass, field, fields

from trl import GRPOConfig

from trl_ext.advantages.beta_normalization import BNPO_DECOMPOSITION_WEIGHTINGS, validate_bnpo_fields
from trl_ext.trainers.base import BaseGRPOConfig, BaseGRPOTrainer

logger = logging.getLogger(__name__)

_LOSS_TYPE_NOTE = (
    "loss_type='bnpo' is TRL's token-mean loss aggregation, unrelated to the BNPO paper. The BNPO advantage "
    "(Beta normalisation) is active because this is the `bnpo` trainer / the 'beta_normalization' estimator; "
    "the two are orthogonal and this combination is allowed."
)


_TRL_LOSS_TYPE = next(f for f in fields(GRPOConfig) if f.name == "loss_type")


@dataclass
class BNPOConfig(BaseGRPOConfig):
    r"""
    Configuration for [`BNPOTrainer`]: every `GRPOConfig` field plus the BNPO advantage's fields (prefix `bnpo_`).

    > **Naming trap.** `loss_type="bnpo"` (inherited from TRL) is an unrelated token-mean loss aggregation. BNPO the
    > method is this trainer (or `advantage_estimator="beta_normalization"`); it works with any `loss_type`.

    Parameters:
        bnpo_reward_min (`float` or `list[float]`, *optional*, defaults to `0.0`):
            Lower end of the reward range; rewards are mapped to [0, 1] by (R - min) / (max - min). Without
            decomposition it bounds the *combined* reward sum_k w_k r_k; with decomposition it may be a list with
            one entry per reward function. A reward below it raises a `ValueError`.
        bnpo_reward_max (`float` or `list[float]`, *optional*, defaults to `1.0`):
            Upper end of the reward range (e.g. `2.0` for accuracy + format without decomposition).
        bnpo_max_inv_density (`float`, *optional*, defaults to `1e6`):
            Cap on the weight 1/f_Beta(p); must be > 0. Bounds the advantage of a rare success on a hard prompt.
        bnpo_advantage_decomposition (`bool`, *optional*, defaults to `False`):
            Fit a separate Beta (alpha_k, beta_k) to every reward function's column and combine the advantages.
        bnpo_decomposition_weighting (`str`, *optional*, defaults to `"mean"`):
            How decomposed advantages combine: `"mean"` (unweighted, as the reference code) or `"reward_weights"`
            (sum_k w_k A_k / sum_k w_k with TRL's `reward_weights`).
        advantage_estimator (`str`, *optional*, defaults to `"beta_normalization"`):
            Inherited from `BaseGRPOConfig`; the BNPO estimator by default.
    """

    loss_type: str = field(
        default=_TRL_LOSS_TYPE.default,
        metadata={
            **_TRL_LOSS_TYPE.metadata,
            "help": "NOTE for the BNPO trainer: loss_type='bnpo' is TRL's token-mean loss aggregation, NOT the BNPO "
            "method; this trainer applies the BNPO advantage whatever the loss_type. "
            + _TRL_LOSS_TYPE.metadata.get("help", ""),
        },
    )
    advantage_estimator: str = field(
        default="beta_normalization",
        metadata={"help": "Registered advantage estimator; 'beta_normalization' is BNPO's."},
    )
    bnpo_reward_min: list[float] = field(
        default_factory=lambda: [0.0],
        metadata={
            "help": "Lower end of the reward range (maps rewards to [0, 1]). One float, or with "
            "bnpo_advantage_decomposition one per reward function. Not related to loss_type='bnpo'."
        },
    )
    bnpo_reward_max: list[float] = field(
        default_factory=lambda: [1.0],
        metadata={
            "help": "Upper end of the reward range, e.g. 2.0 for accuracy + format without decomposition. One "
            "float, or with bnpo_advantage_decomposition one per reward function."
        },
    )
    bnpo_max_inv_density: float = field(
        default=1e6, metadata={"help": "Cap on the BNPO weight 1/BetaPDF(p); must be > 0."}
    )
    bnpo_advantage_decomposition: bool = field(
        default=False, metadata={"help": "Fit one Beta per reward function and combine the advantages."}
    )
    bnpo_decomposition_weighting: str = field(
        default="mean",
        metadata={
            "help": "Combination under decomposition: 'mean' (reference) or 'reward_weights'.",
            "choices": list(BNPO_DECOMPOSITION_WEIGHTINGS),
        },
    )

    def __post_init__(self):
        super().__post_init__()
        # A scalar is the common case; the CLI gives a one-element list. Keep scalars as floats.
        for name in ("bnpo_reward_min", "bnpo_reward_max"):
            value = getattr(self, name)
            if isinstance(value, list | tuple) and len(value) == 1:
                setattr(self, name, float(value[0]))
            elif isinstance(value, int | float):
                setattr(self, name, float(value))
        validate_bnpo_fields(
            self.bnpo_reward_min,
            self.bnpo_reward_max,
            self.bnpo_max_inv_density,
            self.bnpo_advantage_decomposition,
            self.bnpo_decomposition_weighting,
        )


class BNPOTrainer(BaseGRPOTrainer):
    """GRPO with Beta-normalised advantages: A = (R - p) / BetaPDF(p; alpha, beta), fitted on every batch.

    Takes every `trl.GRPOTrainer` argument; `args` is a [`BNPOConfig`]. The loss is the base (TRL) loss.
    """

    _tag_names = ["trl", "grpo", "trl-ext", "bnpo"]
    _name = "BNPO"
    _paper = {
        "title": "BNPO: Beta Normalization Policy Optimization",
        "id": "2506.02864",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{xiao2025bnpo,
                title        = {{BNPO: Beta Normalization Policy Optimization}},
                author       = {Changyi Xiao and Mengdi Zhang and Yixin Cao},
                year         = 2025,
                eprint       = {arXiv:2506.02864},
            }"""),
    }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        estimator = self.advantage_estimator
        if hasattr(estimator, "ranges"):
            estimator.ranges(len(self.reward_funcs))  # a per-function range list must match the reward functions
            if (
                getattr(estimator, "decomposition", False)
                and estimator.weighting == "reward_weights"
                and float(self.reward_weights.sum()) == 0.0
            ):
                raise ValueError(
                    "bnpo_decomposition_weighting='reward_weights' needs reward_weights with a non-zero sum, got "
                    f"{self.reward_weights.tolist()}"
                )
        if self.loss_type == "bnpo":
            logger.info(_LOSS_TYPE_NOTE)
