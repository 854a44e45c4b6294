"""The one declaration of every built-in component, without importing any of them (no torch, no TRL).

Each entry names where its classes live (``"module:attribute"``); :mod:`trl_ext.registry` imports them on first use.
Everything else about the built-ins derives from here: the ``trl-ext list`` table, the names ``trl_ext`` and
``trl_ext.trainers`` export (``trl_ext.BNPOTrainer``), and the key metrics of the console progress line and of
``trl-ext compare`` (:data:`KEY_METRICS`).

Adding a built-in trainer is its module (config + trainer) plus one :class:`BuiltinTrainer` entry below
(``docs/extending.md``, "Adding a built-in trainer").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = [
    "BUILTIN_ESTIMATORS",
    "BUILTIN_OBJECTIVES",
    "BUILTIN_TRAINERS",
    "KEY_METRICS",
    "BuiltinComponent",
    "BuiltinTrainer",
    "exported_names",
    "split_path",
]


@dataclass(frozen=True)
class BuiltinTrainer:
    """A built-in named trainer.

    Attributes:
        trainer: ``"module:Class"`` of the trainer (a ``trl.GRPOTrainer`` subclass).
        config: ``"module:Class"`` of its config (a ``trl.GRPOConfig`` subclass).
        changes: one line: what the method changes relative to GRPO (the ``trl-ext list`` table).
        paper: short citation, e.g. ``"arXiv 2506.02864"``.
        key_metrics: the method metrics the console progress line and ``trl-ext compare`` show (every trainer logs
            all of ``<name>/*``; see its page); the progress line shows those of every namespace present in a log,
            so e.g. ``grpo`` with ``advantage_estimator=beta_normalization`` shows BNPO's.
    """

    trainer: str
    config: str
    changes: str
    paper: str = ""
    key_metrics: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuiltinComponent:
    """A built-in advantage estimator or policy objective: ``"module:Class"`` and one line for ``trl-ext list``."""

    path: str
    summary: str


BUILTIN_TRAINERS: dict[str, BuiltinTrainer] = {
    "bnpo": BuiltinTrainer(
        "trl_ext.trainers.bnpo:BNPOTrainer",
        "trl_ext.trainers.bnpo:BNPOConfig",
        "advantage: (R - p) / BetaPDF(p; alpha, beta), Beta fitted to the batch's success rates (not loss_type='bnpo')",
        "arXiv 2506.02864",
        ("bnpo/alpha", "bnpo/beta", "bnpo/max_weight"),
    ),
    "calibadv": BuiltinTrainer(
        "trl_ext.trainers.calibadv:CalibAdvTrainer",
        "trl_ext.trainers.calibadv:CalibAdvConfig",
        "rollout: multi-turn search agent (retriever between turns); advantage: token-level, soft penalty on correct "
        "search steps of negative trajectories (silver docs), per-group answer rebalance",
        "arXiv 2604.18235",
        ("calibadv/frac_neg_traj_calibrated", "calibadv/turns_mean"),
    ),
    "diva": BuiltinTrainer(
        "trl_ext.trainers.diva:DIVATrainer",
        "trl_ext.trainers.diva:DIVAConfig",
        "batch: each problem with difficulty-adaptive variants (store per id); advantage: local + global group "
        "z-scores, difficulty-weighted, low-reward groups damped",
        "arXiv 2603.01106",
        ("diva/frac_zero_std_local", "diva/frac_zero_std_global"),
    ),
    "grpo": BuiltinTrainer(
        "trl_ext.trainers.base:BaseGRPOTrainer",
        "trl_ext.trainers.base:BaseGRPOConfig",
        "nothing: trl.GRPOTrainer's advantage and loss (the baseline every benchmark compares against)",
        "arXiv 2402.03300",
    ),
    "hapo": BuiltinTrainer(
        "trl_ext.trainers.hapo:HAPOTrainer",
        "trl_ext.trainers.hapo_config:HAPOConfig",
        "rollout: entropy-adaptive temperature; advantage: token-level group average; loss: entropy-driven advantage "
        "redistribution, asymmetric adaptive clipping, dual clip",
        "arXiv 2509.16591",
        ("hapo/temperature_mean", "hapo/clip_high_mean"),
    ),
    "minpro": BuiltinTrainer(
        "trl_ext.trainers.minpro:MinPROTrainer",
        "trl_ext.trainers.minpro:MinPROConfig",
        "loss: each token's clipped surrogate weighted by the detached minimum prefix ratio (off-policy only)",
        "arXiv 2601.22718",
        ("minpro/weight_min", "minpro/weight_mean"),
    ),
}

#: advantage estimator name (``advantage_estimator=...``) -> where it lives and one line
BUILTIN_ESTIMATORS: dict[str, BuiltinComponent] = {
    "beta_normalization": BuiltinComponent(
        "trl_ext.advantages.beta_normalization:BetaNormalizationAdvantage",
        "BNPO: (R - p) / BetaPDF(p), Beta fitted per generation batch",
    ),
    "calibadv": BuiltinComponent(
        "trl_ext.advantages.calibadv:CalibAdvAdvantage",
        "CalibAdv: token-level calibrated advantages of search trajectories",
    ),
    "diva": BuiltinComponent(
        "trl_ext.advantages.diva:DivaAdvantageEstimator",
        "DIVA-GRPO: local + global group z-scores with difficulty weighting",
    ),
    "grpo": BuiltinComponent(
        "trl_ext.advantages.grpo:GRPOAdvantage",
        "TRL's group-relative advantage (scale_rewards, multi-objective aggregation)",
    ),
    "hapo_tlga": BuiltinComponent(
        "trl_ext.advantages.hapo:TokenLevelGroupAdvantage",
        "HAPO: token-level group average advantage with a GRPO fallback",
    ),
}

#: policy objective name (``policy_objective=...``) -> where it lives and one line
BUILTIN_OBJECTIVES: dict[str, BuiltinComponent] = {
    "grpo": BuiltinComponent("trl_ext.objectives.grpo:GRPOObjective", "TRL's loss for every loss_type"),
    "hapo": BuiltinComponent(
        "trl_ext.objectives.hapo:HAPOObjective",
        "HAPO: advantage redistribution, asymmetric adaptive clipping, dual clip",
    ),
    "minpro": BuiltinComponent(
        "trl_ext.objectives.minpro:MinPROObjective",
        "MinPRO: clipped surrogate weighted by the minimum prefix ratio",
    ),
}


class _KeyMetrics(Mapping[str, tuple[str, ...]]):
    """metric namespace -> key metrics, read from :data:`BUILTIN_TRAINERS` at every access (a trainer added to the
    catalogue shows up without another list to edit)."""

    def _items(self) -> dict[str, tuple[str, ...]]:
        return {name: entry.key_metrics for name, entry in BUILTIN_TRAINERS.items() if entry.key_metrics}

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self._items()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


#: The method metrics shown on the console progress line of ``trl-ext train`` / ``quickstart`` and in the table of
#: ``trl-ext compare``, per metric namespace (derived from :data:`BUILTIN_TRAINERS`).
KEY_METRICS: Mapping[str, tuple[str, ...]] = _KeyMetrics()


def split_path(path: str) -> tuple[str, str]:
    """``"module:attribute"`` -> ``(module, attribute)``."""
    module, sep, attribute = path.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"a catalogue path must read 'module:attribute', got {path!r}")
    return module, attribute


def exported_names() -> dict[str, str]:
    """Public class name -> ``"module:attribute"`` of every built-in trainer and config (what ``trl_ext`` exports)."""
    names: dict[str, str] = {}
    for entry in BUILTIN_TRAINERS.values():
        for path in (entry.trainer, entry.config):
            names[split_path(path)[1]] = path
    return names
