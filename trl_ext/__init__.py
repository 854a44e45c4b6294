"""trl-ext: named GRPO-variant trainers as drop-in subclasses of ``trl.GRPOTrainer``."""

__version__ = "0.1.0.dev0"

from trl_ext.registry import (  # noqa: E402
    TrainerEntry,
    get_advantage_estimator,
    get_policy_objective,
    get_trainer,
    get_trainer_entry,
    list_advantage_estimators,
    list_policy_objectives,
    list_trainers,
    register_advantage_estimator,
    register_policy_objective,
    register_trainer,
)
from trl_ext.trainers import BaseGRPOConfig, BaseGRPOTrainer, BNPOConfig, BNPOTrainer  # noqa: E402

__all__ = [
    "BNPOConfig",
    "BNPOTrainer",
    "BaseGRPOConfig",
    "BaseGRPOTrainer",
    "TrainerEntry",
    "__version__",
    "get_advantage_estimator",
    "get_policy_objective",
    "get_trainer",
    "get_trainer_entry",
    "list_advantage_estimators",
    "list_policy_objectives",
    "list_trainers",
    "register_advantage_estimator",
    "register_policy_objective",
    "register_trainer",
]
