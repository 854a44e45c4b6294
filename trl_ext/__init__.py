"""trl-ext: named GRPO-variant trainers as drop-in subclasses of ``trl.GRPOTrainer``."""

__version__ = "0.1.0.dev0"

from trl_ext import _quiet  # noqa: E402

_quiet.install()  # before TRL (and bitsandbytes) are imported; see trl_ext/_quiet.py for what is silenced

# Trainer classes import TRL (seconds); resolve them on first use so that `import trl_ext.data` stays cheap.
# `from trl_ext import BNPOTrainer` works as usual; the names come from the catalogue's declarations.
from trl_ext.catalogue import exported_names as _exported_names  # noqa: E402
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

#: Public names outside the trainer catalogue, resolved on first use like the trainers.
_OTHER_EXPORTS = {"RegimeCallback": "trl_ext.diagnose.callback:RegimeCallback"}


def __getattr__(name: str):
    path = _exported_names().get(name) or _OTHER_EXPORTS.get(name)
    if path is not None:
        from trl_ext.registry import load_path

        return load_path(path)
    raise AttributeError(f"module 'trl_ext' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    *sorted(_exported_names()),
    "RegimeCallback",
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
