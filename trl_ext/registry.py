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

The built-in components are declared once, in :mod:`trl_ext.catalogue` (``"module:attribute"``), and imported on
first use: this module imports none of them, so no built-in imports back into a module that imports it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from trl_ext.catalogue import BUILTIN_ESTIMATORS, BUILTIN_OBJECTIVES, BUILTIN_TRAINERS, split_path

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


def load_path(path: str) -> Any:
    """Import the object a catalogue path (``"module:attribute"``) names."""
    module, attribute = split_path(path)
    return getattr(importlib.import_module(module), attribute)


@dataclass
class Registry(Generic[T]):
    """A name -> object map with lazily imported built-ins, entry-point discovery and helpful errors.

    ``builtins`` maps the built-in names to a loader (``load(name) -> object``) and ``builtin_names`` lists them:
    a built-in is imported the first time it is asked for.
    """

    kind: str
    group: str
    builtin_names: Callable[[], Mapping[str, Any]] = dict
    builtin_loader: Callable[[str], T] | None = None
    _items: dict[str, T] = field(default_factory=dict)
    _loaded_entry_points: bool = False

    def _load_builtin(self, name: str) -> None:
        if name in self._items or self.builtin_loader is None or name not in self.builtin_names():
            return
        self.register(name, self.builtin_loader(name))

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
        self._load_builtin(name)
        if name not in self._items:
            self._load_entry_points()
        if name not in self._items:
            raise KeyError(f"Unknown {self.kind} {name!r}. Registered {self.kind}s: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        """All registered names, built-in (declared, imported or not) and from entry points, sorted."""
        self._load_entry_points()
        return sorted(set(self._items) | set(self.builtin_names()))


def _builtin_trainer(name: str) -> TrainerEntry:
    declared = BUILTIN_TRAINERS[name]
    return TrainerEntry(
        name=name,
        trainer_cls=load_path(declared.trainer),
        config_cls=load_path(declared.config),
        changes=declared.changes,
        paper=declared.paper,
    )


def _builtin_component(declarations: Mapping[str, Any]) -> Callable[[str], type]:
    def load(name: str) -> type:
        cls = load_path(declarations[name].path)
        if not getattr(cls, "name", ""):
            cls.name = name
        return cls

    return load


TRAINERS: Registry[TrainerEntry] = Registry(
    "trainer", ENTRY_POINT_GROUPS["trainers"], lambda: BUILTIN_TRAINERS, _builtin_trainer
)
ADVANTAGE_ESTIMATORS: Registry[type] = Registry(
    "advantage estimator",
    ENTRY_POINT_GROUPS["advantage_estimators"],
    lambda: BUILTIN_ESTIMATORS,
    _builtin_component(BUILTIN_ESTIMATORS),
)
POLICY_OBJECTIVES: Registry[type] = Registry(
    "policy objective",
    ENTRY_POINT_GROUPS["policy_objectives"],
    lambda: BUILTIN_OBJECTIVES,
    _builtin_component(BUILTIN_OBJECTIVES),
)


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
    return TRAINERS.names()


def get_trainer_entry(name: str) -> TrainerEntry:
    """The full :class:`TrainerEntry` registered as ``name``."""
    return TRAINERS.get(name)


def get_trainer(name: str) -> tuple[type, type]:
    """``(trainer_cls, config_cls)`` registered as ``name``."""
    entry = get_trainer_entry(name)
    return entry.trainer_cls, entry.config_cls


def list_advantage_estimators() -> list[str]:
    """Names of every registered advantage estimator."""
    return ADVANTAGE_ESTIMATORS.names()


def get_advantage_estimator(name: str) -> type:
    """The advantage-estimator class registered as ``name``."""
    return ADVANTAGE_ESTIMATORS.get(name)


def list_policy_objectives() -> list[str]:
    """Names of every registered policy objective."""
    return POLICY_OBJECTIVES.names()


def get_policy_objective(name: str) -> type:
    """The policy-objective class registered as ``name``."""
    return POLICY_OBJECTIVES.get(name)


def describe(obj: Any) -> str:
    """First line of an object's docstring (used by ``trl-ext list``)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
