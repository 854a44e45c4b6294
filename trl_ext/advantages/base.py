"""The advantage seam: what an estimator receives and what it returns.

An estimator sees the **whole gathered generation batch** (all processes, process order), never a local slice, so
group and batch statistics are global by construction. It returns advantages for all N completions; the trainer
keeps this process's rows. Token-level advantages are returned as (N, T) with T the gathered (padded) completion
width; the trainer keeps its rows and cuts them to its local width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class AdvantageBatch:
    """Gathered per-sequence facts for one generation batch (N completions, K reward functions).

    Attributes:
        rewards_per_func: (N, K) float32 rewards as TRL's ``_calculate_rewards`` returns them, gathered over all
            processes in process order. NaN marks a reward function that returned ``None`` for that row; a row that
            is NaN in every column is *unscorable*.
        reward_weights: (K,) weights from ``GRPOConfig.reward_weights`` (ones by default).
        reward_func_names: the K reward-function names, in column order.
        num_generations: G; groups are contiguous blocks of G rows.
        process_slice: the rows that belong to this process.
        mode: ``"train"`` or ``"eval"``.
        completion_lengths: (N,) number of loss tokens (``completion_mask * tool_mask``) per row, gathered. Present
            only when the estimator lists ``"completion_lengths"`` in ``requires``.
        completion_mask: (N, T) loss mask padded to the widest completion over all processes. Present only when the
            estimator lists ``"completion_mask"`` in ``requires``.
        completion_ids: (N, T) completion token ids (pad id beyond each completion). Present only when the
            estimator lists ``"completion_ids"`` in ``requires``.
        columns: dataset columns named in the estimator's ``columns``, gathered as Python lists of length N.
        extras: anything else a trainer passes through (e.g. rollout facts).
    """

    rewards_per_func: torch.Tensor
    reward_weights: torch.Tensor
    reward_func_names: list[str]
    num_generations: int
    process_slice: slice = field(default_factory=lambda: slice(None))
    mode: str = "train"
    completion_lengths: torch.Tensor | None = None
    completion_mask: torch.Tensor | None = None
    completion_ids: torch.Tensor | None = None
    columns: dict[str, list[Any]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_completions(self) -> int:
        """N, the number of completions in the gathered batch."""
        return self.rewards_per_func.shape[0]

    @property
    def group_ids(self) -> torch.Tensor:
        """(N,) long tensor: the group (prompt) index of every row."""
        n = self.num_completions
        return torch.arange(n, device=self.rewards_per_func.device) // self.num_generations

    @property
    def unscorable(self) -> torch.Tensor:
        """(N,) bool: rows for which every reward function returned ``None``."""
        return torch.isnan(self.rewards_per_func).all(dim=1)


def combined_rewards(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor) -> torch.Tensor:
    """TRL's combined reward R = sum_k w_k r_k, ignoring ``None`` (NaN) columns; NaN where every column is NaN.

    The result has the dtype of `rewards_per_func` (pass float64 rewards for float64 statistics).
    """
    rewards = (rewards_per_func * reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    return torch.where(torch.isnan(rewards_per_func).all(dim=1), torch.full_like(rewards, torch.nan), rewards)


@dataclass
class AdvantageOutput:
    """What an estimator returns.

    Attributes:
        advantages: (N,) or (N, T) float32, finite.
        metrics: scalar metrics to log for this generation batch (name -> float), e.g. ``{"bnpo/alpha": 1.8}``.
            They are identical on every process because the inputs are.
    """

    advantages: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class AdvantageEstimator:
    """Base class for advantage estimators; subclass it and register it with
    :func:`trl_ext.registry.register_advantage_estimator`.

    Class attributes:
        requires: which optional gathered facts the estimator needs (``"completion_lengths"``,
            ``"completion_mask"``, ``"completion_ids"``); only those are gathered, so unused facts cost nothing.
        columns: dataset columns to gather (e.g. ``("id",)``); a missing column raises a ``ValueError`` naming it.

    The constructor receives the trainer config (a ``GRPOConfig`` subclass) and should validate the fields it reads,
    raising ``ValueError`` with the field name and the accepted range. Stateful estimators override
    :meth:`state_dict` / :meth:`load_state_dict` with JSON-serialisable state; it is saved with every checkpoint.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    columns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, args: Any) -> None:
        self.args = args

    def __call__(self, batch: AdvantageBatch) -> AdvantageOutput:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state that must survive a checkpoint resume (empty for stateless estimators)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
