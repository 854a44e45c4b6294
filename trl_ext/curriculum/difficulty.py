"""DIVA-GRPO's per-problem difficulty store and the batch composition that keeps a problem and its variants together.

* :class:`DifficultyStore`: ``str(id)`` -> integer level, plus the generation-round counter that seeds the variants.
  Every process applies the same updates, computed from the same gathered batch, so the stores stay identical; the
  store is saved with each checkpoint (``diva_difficulty.json``) and restored on resume.
* :class:`VariantSlotDataset`: a view of the training dataset with V + 1 *slots* per problem (index = problem * (V + 1)
  + v, v = 0 the original). Slot v > 0 is turned into the problem's v-th variant when generation starts, inside the
  trainer, never in a dataloader worker (which would hold a stale copy of the store).
* :class:`ProblemRepeatSampler`: TRL's ``RepeatSampler`` contract (each index ``mini_repeat_count`` times in a row,
  ``batch_size`` unique rows per generation batch, the schedule repeated ``repeat_count`` times, one seed on every
  process), but it draws whole problems, slots 0..V consecutive, so the original and its variants always share a
  generation batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

#: Key added to every training row by :class:`VariantSlotDataset`; the trainer removes it before generation.
SLOT_KEY = "_diva_slot"
#: File written into every checkpoint directory.
STORE_FILE = "diva_difficulty.json"


class DifficultyStore:
    """Per-problem integer difficulty levels (1 easy .. 9 hard by default) and the generation-round counter.

    A problem that was never updated is at its dataset ``difficulty`` if the row has one, else at `initial`. The state
    is only the levels and the counter: no EMA, no history.
    """

    def __init__(self, initial: int = 5, min_level: int = 1, max_level: int = 9) -> None:
        self.initial = initial
        self.min_level = min_level
        self.max_level = max_level
        self.levels: dict[str, int] = {}
        self.round_index = 0

    def level(self, problem_id: Any, row_difficulty: Any = None) -> int:
        """Current level of a problem: its stored level, else the row's ``difficulty``, else the initial level."""
        key = str(problem_id)
        if key in self.levels:
            return self.levels[key]
        return self.initial if row_difficulty is None else int(row_difficulty)

    def clip(self, level: int) -> int:
        """`level` clipped to [min_level, max_level]."""
        return int(min(max(int(level), self.min_level), self.max_level))

    def update(self, new_levels: dict[str, int]) -> None:
        """Set the levels of the given problems (in sorted order, so every process builds the same dict)."""
        for key in sorted(new_levels):
            self.levels[key] = self.clip(new_levels[key])

    def histogram(self) -> dict[int, float]:
        """Fraction of the stored problems at each level (empty store: all zeros)."""
        counts = dict.fromkeys(range(self.min_level, self.max_level + 1), 0)
        for level in self.levels.values():
            counts[level] += 1
        total = max(len(self.levels), 1)
        return {level: count / total for level, count in counts.items()}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (levels in sorted order and the round counter)."""
        return {"round_index": self.round_index, "levels": {key: self.levels[key] for key in sorted(self.levels)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.round_index = int(state.get("round_index", 0))
        self.levels = {str(key): self.clip(value) for key, value in state.get("levels", {}).items()}

    def digest(self) -> str:
        """SHA-256 of the state, to check that processes agree."""
        return hashlib.sha256(json.dumps(self.state_dict(), sort_keys=True).encode()).hexdigest()


class VariantSlotDataset(Dataset):
    """A map-style dataset seen as ``num_slots`` rows per problem: row ``i`` is problem ``i // num_slots`` with
    ``SLOT_KEY`` = ``i % num_slots`` added (0 = the original, v > 0 = where its v-th variant goes)."""

    def __init__(self, dataset: Any, num_slots: int) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.dataset = dataset
        self.num_slots = num_slots

    def __len__(self) -> int:
        return len(self.dataset) * self.num_slots

    def __getitem__(self, index: int) -> dict[str, Any]:
        problem, slot = divmod(int(index), self.num_slots)
        row = dict(self.dataset[problem])
        row[SLOT_KEY] = slot
        return row

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Batched access (what torch's DataLoader uses when present): one fetch from the underlying dataset."""
        problems = [int(index) // self.num_slots for index in indices]
        fetch = getattr(self.dataset, "__getitems__", None)
        rows = fetch(problems) if fetch is not None else [self.dataset[problem] for problem in problems]
        return [{**row, SLOT_KEY: int(index) % self.num_slots} for row, index in zip(rows, indices, strict=True)]


class ProblemRepeatSampler(Sampler[int]):
    """``RepeatSampler`` over whole problems: yields slot indices ``problem * num_slots + v`` for v = 0..V together.

    Args:
        data_source: the *unwrapped* dataset (one row per problem); only its length is used.
        num_slots: V + 1 rows per problem.
        mini_repeat_count: times each row index is repeated consecutively (``num_generations``).
        batch_size: unique rows per generation batch; must be a multiple of `num_slots`.
        repeat_count: times each generation batch's index list is replayed (``num_iterations * steps_per_generation``).
        shuffle: shuffle the problem order once per pass over the data.
        seed: seed of the shuffle (the same on every process).
    """

    def __init__(
        self,
        data_source: Sized,
        num_slots: int,
        mini_repeat_count: int,
        batch_size: int,
        repeat_count: int = 1,
        shuffle: bool = True,
        seed: int | None = None,
    ) -> None:
        if batch_size % num_slots != 0:
            raise ValueError(
                f"a generation batch of {batch_size} prompt rows cannot hold whole problems of {num_slots} rows "
                "(the original and diva_num_variants variants)"
            )
        self.num_problems = len(data_source)
        self.num_slots = num_slots
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.problems_per_batch = batch_size // num_slots
        self.repeat_count = repeat_count
        self.shuffle = shuffle
        self.seed = seed
        if shuffle:
            self.generator = torch.Generator()
            if seed is not None:
                self.generator.manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.num_problems, generator=self.generator).tolist()
        else:
            order = list(range(self.num_problems))
        per_batch = self.problems_per_batch
        for start in range(0, self.num_problems - per_batch + 1, per_batch):
            rows = [
                problem * self.num_slots + slot
                for problem in order[start : start + per_batch]
                for slot in range(self.num_slots)
            ]
            for _ in range(self.repeat_count):
                for index in rows:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        num_batches = self.num_problems // self.problems_per_batch
        return num_batches * self.batch_size * self.mini_repeat_count * self.repeat_count
