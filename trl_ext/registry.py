"""Name -> component registries for trainers, advantage estimators and policy objectives.

Three registries, one shape each:

* **trainers**: a name maps to a :class:`TrainerEntry` (trainer class, config class, a one-line summary of what
  it changes, and the paper). ``trl_ext.get_trainer("bnpo")`` returns ``(BNPOTrainer, BNPOConfig)``.
* **advantage estimators**: a name maps to a class implementing
  :class:`trl_ext.advantages.base.AdvantageEstimator`. A config selects one with ``advantage_estimator="..."``.
* **policy objectives**: a name maps to a class implementing
  :class:`trl_ext.objectives.base.PolicyObjective`. A config selects one with ``policy_objective="..."``.

Because estimators and objectives are chosen by name in the config, components combine freely (for example BNPO
advantages with the MinPRO objective), and the named trainers are presets over these registries.

Another package can add its own components through Python entry points, discovered lazily on the first lookup:

.. code-block:: toml

    [project.entry-points."trl_ext.trainers"]
    my_trainer = "my_pkg.trainers:MY_TRAINER_ENTRY"        # a TrainerEntry
    [project.entry-points."trl_ext.advantage_estimators"]
    my_estimator = "my_pkg.advantages:MyEstimator"         # an AdvantageEstimator subclass
    [project.entry-points."trl_ext.policy_objectives"]
    my_objective = "my_pkg.objectives:MyObjective"         # a PolicyObjective subclass

The entry point's name is the registered name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

ENTRY_POINT_GROUPS = {
    "trainers": "trl_ext.trainers",
    "advantage_estimators": "trl_ext.advantage_estimators",
    "policy_objectives": "trl_ext.policy_objectives",
}


@dataclass(frozen=True)
class TrainerEntry:
    """A named trainer: the classes a user needs plus what the ``trl-ext list`` table shows.

    Attributes:
        name: registry name, used in recipes (``trainer: bnpo``) and on the command line.
        trainer_cls: the trainer class (a subclass of ``trl.GRPOTrainer``).
        config_cls: its config dataclass (a subclass of ``trl.GRPOConfig``).
        changes: one line saying what the method changes relative to GRPO.
        paper: short citation, e.g. ``"arXiv 2506.02864"``; empty for the baseline.
    """

    name: str
    trainer_cls: type
    config_cls: type
    changes: str
    paper: str = ""


@dataclass
class Registry(Generic[T]):
    """A name -> object map with entry-point discovery and helpful errors."""

    kind: str
    group: str
    _items: dict[str, T] = field(default_factory=dict)
    _loaded_entry_points: bool = False

    def register(self, name: str, obj: T, *, overwrite: bool = False) -> T:
        """Register ``obj`` under ``name``; a second registration of a name raises unless ``overwrite``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items and not overwrite and self._items[name] is not obj:
            raise ValueError(
                f"{self.kind} {name!r} is already registered ({self._items[name]!r}); pass overwrite=True to replace it"
            )
        self._items[name] = obj
        return obj

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the built-in components
                logger.warning("Could not load %s entry point %r (%s): %s", self.kind, ep.name, ep.value, exc)
                continue
            self.register(ep.name, obj)
            if isinstance(obj, type) and not getattr(obj, "name", ""):
                obj.name = ep.name  # as the decorators do, so that error messages name the component

    def get(self, name: str) -> T:
        """Return the object registered as ``name``; an unknown name raises ``KeyError`` listing the known ones."""
        if name not in self._items:
            self._load_entry_points()
        if name not in self._items:
            raise KeyError(f"Unknown {self.kind} {name!r}. Registered {self.kind}s: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        """All registered names, built-in and from entry points, sorted."""
        self._load_entry_points()
        return sorted(self._items)


TRAINERS: Registry[TrainerEntry] = Registry("trainer", ENTRY_POINT_GROUPS["trainers"])
ADVANTAGE_ESTIMATORS: Registry[type] = Registry("advantage estimator", ENTRY_POINT_GROUPS["advantage_estimators"])
POLICY_OBJECTIVES: Registry[type] = Registry("policy objective", ENTRY_POINT_GROUPS["policy_objectives"])


def _ensure_builtins() -> None:
    # Importing the trainers package registers every built-in component.
    import trl_ext.trainers  # noqa: F401


def register_trainer(entry: TrainerEntry, *, overwrite: bool = False) -> TrainerEntry:
    """Register a named trainer (see :class:`TrainerEntry`)."""
    return TRAINERS.register(entry.name, entry, overwrite=overwrite)


def register_advantage_estimator(name: str, *, overwrite: bool = False) -> Callable[[type], type]:
    """Class decorator registering an :class:`~trl_ext.advantages.base.AdvantageEstimator` under ``name``."""

    def decorator(cls: type) -> type:
        ADVANTAGE_ESTIMATORS.register(name, cls, overwrite=overwrite)
        cls.name = name  # only once the registration succeeded
        return cls

    return decorator


def register_policy_objective(name: str, *, overwrite: bool = False) -> Callable[[type], type]:
    """Class decorator registering a :class:`~trl_ext.objectives.base.PolicyObjective` under ``name``."""

    def decorator(cls: type) -> type:
        POLICY_OBJECTIVES.register(name, cls, overwrite=overwrite)
        cls.name = name  # only once the registration succeeded
        return cls

    return decorator


def list_trainers() -> list[str]:
    """Names of every registered trainer, e.g. ``["grpo", ...]``."""
    _ensure_builtins()
    return TRAINERS.names()


def get_trainer_entry(name: str) -> TrainerEntry:
    """The full :class:`TrainerEntry` registered as ``name``."""
    _ensure_builtins()
    return TRAINERS.get(name)


def get_trainer(name: str) -> tuple[type, type]:
    """``(trainer_cls, config_cls)`` registered as ``name``."""
    entry = get_trainer_entry(name)
    return entry.trainer_cls, entry.config_cls


def list_advantage_estimators() -> list[str]:
    """Names of every registered advantage estimator."""
    _ensure_builtins()
    return ADVANTAGE_ESTIMATORS.names()


def get_advantage_estimator(name: str) -> type:
    """The advantage-estimator class registered as ``name``."""
    _ensure_builtins()
    return ADVANTAGE_ESTIMATORS.get(name)


def list_policy_objectives() -> list[str]:
    """Names of every registered policy objective."""
    _ensure_builtins()
    return POLICY_OBJECTIVES.names()


def get_policy_objective(name: str) -> type:
    """The policy-objective class registered as ``name``."""
    _ensure_builtins()
    return POLICY_OBJECTIVES.get(name)


def describe(obj: Any) -> str:
    """First line of an object's docstring (used by ``trl-ext list``)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
