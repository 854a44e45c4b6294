"""trl-ext: named GRPO-variant trainers as drop-in subclasses of ``trl.GRPOTrainer``."""

__version__ = "0.1.0.dev0"

from trl_ext import _quiet  # noqa: E402

_quiet.install()  # before TRL (and bitsandbytes) are imported; see trl_ext/_quiet.py for what is silenced

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

# Trainer classes import TRL (seconds); resolve them on first use so that `import trl_ext.data` or
# `trl_ext.tiny_models` stays cheap. `from trl_ext import BNPOTrainer` works as usual.
_LAZY_TRAINER_EXPORTS = (
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
)


def __getattr__(name: str):
    if name in _LAZY_TRAINER_EXPORTS:
        import trl_ext.trainers as trainers

        return getattr(trainers, name)
    raise AttributeError(f"module 'trl_ext' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


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
