"""Advantage estimators: pure functions of the gathered batch, registered by name."""

from trl_ext.advantages.base import AdvantageBatch, AdvantageEstimator, AdvantageOutput
from trl_ext.advantages.grpo import GRPOAdvantage, grpo_advantages, nanstd

__all__ = ["AdvantageBatch", "AdvantageEstimator", "AdvantageOutput", "GRPOAdvantage", "grpo_advantages", "nanstd"]
