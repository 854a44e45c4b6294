"""Policy objectives: per-token loss pieces (pure functions) and the hooks that plug them into the loss pipeline."""

from trl_ext.objectives import functional
from trl_ext.objectives.base import LossContext, PolicyObjective
from trl_ext.objectives.grpo import GRPOObjective

__all__ = ["GRPOObjective", "LossContext", "PolicyObjective", "functional"]
