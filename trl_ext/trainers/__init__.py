"""Trainers. Importing this package registers every built-in trainer, estimator and objective."""

import trl_ext.advantages  # noqa: F401  (registers the built-in estimators)
import trl_ext.objectives  # noqa: F401  (registers the built-in objectives)
from trl_ext.catalogue import BUILTIN_TRAINERS
from trl_ext.registry import TrainerEntry, register_trainer
from trl_ext.trainers.base import BaseGRPOConfig, BaseGRPOTrainer

register_trainer(
    TrainerEntry(
        name="grpo",
        trainer_cls=BaseGRPOTrainer,
        config_cls=BaseGRPOConfig,
        changes=BUILTIN_TRAINERS["grpo"][0],
        paper=BUILTIN_TRAINERS["grpo"][1],
    )
)

from trl_ext.trainers.bnpo import BNPOConfig, BNPOTrainer  # noqa: E402  (registers "bnpo")
from trl_ext.trainers.calibadv import CalibAdvConfig, CalibAdvTrainer  # noqa: E402  (registers "calibadv")
from trl_ext.trainers.diva import DIVAConfig, DIVATrainer  # noqa: E402  (registers "diva")
from trl_ext.trainers.hapo import HAPOConfig, HAPOTrainer  # noqa: E402  (registers "hapo")
from trl_ext.trainers.minpro import MinPROConfig, MinPROTrainer  # noqa: E402  (registers "minpro")

__all__ = [
    "BNPOConfig",
    "BNPOTrainer",
    "BaseGRPOConfig",
    "BaseGRPOTrainer",
    "CalibAdvConfig",
    "CalibAdvTrainer",
    "DIVAConfig",
    "DIVATrainer",
    "HAPOConfig",
    "HAPOTrainer",
    "MinPROConfig",
    "MinPROTrainer",
]
