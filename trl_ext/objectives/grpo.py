"""The baseline objective: TRL's surrogate for the configured ``loss_type``, with no hook overridden."""

from __future__ import annotations

from trl_ext.objectives.base import PolicyObjective
from trl_ext.registry import register_policy_objective


@register_policy_objective("grpo")
class GRPOObjective(PolicyObjective):
    """TRL's per-token surrogate for the configured loss_type (clipped PPO, CISPO, SAPO, VESPO); no change."""
