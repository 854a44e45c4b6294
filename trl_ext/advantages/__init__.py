"""Advantage estimators: pure functions of the gathered batch, registered by name."""

from trl_ext.advantages.base import AdvantageBatch, AdvantageEstimator, AdvantageOutput
from trl_ext.advantages.beta_normalization import BetaNormalizationAdvantage, beta_normalized_advantages
from trl_ext.advantages.grpo import GRPOAdvantage, grpo_advantages, nanstd

__all__ = [
    "BetaNormalizationAdvantage",
    "beta_normalized_advantages",
    "AdvantageBatch",
    "AdvantageEstimator",
    "AdvantageOutput",
    "GRPOAdvantage",
    "grpo_advantages",
    "nanstd",
]
