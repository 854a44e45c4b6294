"""What data a run reads and whether the data has it, checked without downloading (``trl-ext plan``,
:mod:`trl_ext.plan`).

A run reads its prompt (``prompt``, or the ``dataset_prompt_column`` it builds the prompt from), the columns its
trainer insists on, and the required arguments of its reward functions (TRL passes every dataset column to them by
name). Where the data is local (a built-in task, a local directory, local data files of a ``datasets`` mixture) its
columns are read from the first row at most; a Hub dataset is not checked offline.
"""

from __future__ import annotations

import glob
import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

from trl_ext.errors import message_of

__all__ = ["dataset_columns", "looks_local", "required_columns", "reward_columns"]

#: Keyword arguments TRL passes every reward function itself (``GRPOTrainer._calculate_rewards``); any other
#: argument without a default is a dataset column the function needs.
_TRL_REWARD_ARGUMENTS = frozenset(
    {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}
)

#: Where a built-in trainer takes its prompt from when the data has no ``prompt`` column (any one of them will do):
#: CalibAdvTrainer._with_search_prompts builds it from ``question``.
_PROMPT_COLUMNS: dict[str, tuple[str, ...]] = {"calibadv": ("prompt", "question")}

#: Columns a built-in trainer reads from the training data besides the prompt, and where it insists on them:
#: DIVATrainer._validate_train_dataset (a unique ``id`` per problem); CalibAdvEstimator.columns (``golden_answers``).
_TRAINER_COLUMNS: dict[str, tuple[str, ...]] = {"diva": ("id",), "calibadv": ("golden_answers",)}

#: ``datasets``' packaged builders that read local files given as ``data_files`` / ``data_dir``.
_FILE_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow", "webdataset", "imagefolder", "audiofolder"})


def reward_columns(reward: Any) -> list[str]:
    """Dataset columns a reward function requires: its arguments without a default that TRL does not pass itself."""
    if isinstance(reward, str):
        return []  # a reward model reads the prompt and completion
    try:
        parameters = inspect.signature(reward).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        p.name
        for p in parameters
        if p.kind in kinds and p.default is inspect.Parameter.empty and p.name not in _TRL_REWARD_ARGUMENTS
    ]


def required_columns(trainer: str, script_args: Any, rewards: Sequence[Any]) -> list[tuple[tuple[str, ...], str]]:
    """``[(alternatives, who needs it)]``: the training data must have one of each ``alternatives``."""
    if script_args.dataset_prompt_column:
        needs = [((script_args.dataset_prompt_column,), "dataset_prompt_column")]
    else:
        needs = [(_PROMPT_COLUMNS.get(trainer, ("prompt",)), "prompts")]
    needs += [((column,), f"{trainer} trainer") for column in _TRAINER_COLUMNS.get(trainer, ())]
    for reward in rewards:
        name = getattr(reward, "__name__", str(reward))
        needs += [((column,), f"reward_funcs: {name}") for column in reward_columns(reward)]
    return needs


def _read_columns(path: str, *, name=None, data_dir=None, data_files=None, split: str = "train") -> list[str]:
    """Column names of a local dataset, from its first row at most (streamed: nothing is prepared or cached)."""
    from datasets import load_dataset

    dataset = load_dataset(path, name=name, data_dir=data_dir, data_files=data_files, split=split, streaming=True)
    columns = dataset.column_names
    if columns is None:
        first = next(iter(dataset), None)
        columns = list(first) if first is not None else []
    return list(columns)


def _missing_files(data_files: Any) -> list[str]:
    if data_files is None:
        return []
    if isinstance(data_files, Mapping):
        patterns = [p for value in data_files.values() for p in ([value] if isinstance(value, str) else value)]
    else:
        patterns = [data_files] if isinstance(data_files, str) else list(data_files)
    return [p for p in patterns if not glob.glob(os.path.expanduser(str(p)))]


def looks_local(path: str) -> bool:
    """A path the user meant as local (as :func:`trl_ext.training.build_trainer` reads a model path)."""
    return path.startswith(("/", "./", "../", "~")) or os.path.isabs(path)


def dataset_columns(script_args: Any, dataset_args: Any, seed: int) -> tuple[str, list[str] | None, list[str]]:
    """``(description, the training data's columns or None when not checked offline, problems)``."""
    if script_args.task is not None:
        from trl_ext.data import get_task

        task = get_task(script_args.task)
        rows = task.default_num_rows if script_args.task_num_rows is None else script_args.task_num_rows
        columns = task.make_dataset(rows, seed).column_names
        return f"built-in task {task.name} ({rows} rows, generated offline)", columns, []
    entries = getattr(dataset_args, "datasets", None) or []
    if entries:
        problems: list[str] = []
        described, column_sets = [], []
        for entry in entries:
            label = entry.path + (f" [{entry.name}]" if entry.name else "") + f" split {entry.split}"
            local = os.path.exists(os.path.expanduser(entry.path)) or (
                entry.path in _FILE_BUILDERS and (entry.data_files is not None or entry.data_dir is not None)
            )
            if not local:
                if looks_local(entry.path):
                    problems.append(f"datasets: no such file or directory {entry.path!r}")
                described.append(f"{label} (Hub: not checked offline)")
                column_sets.append(None)
                continue
            missing = _missing_files(entry.data_files)
            if missing:
                problems.append(f"datasets: {entry.path}: no file matches {', '.join(map(repr, missing))}")
                column_sets.append(None)
                continue
            try:
                found = _read_columns(
                    entry.path,
                    name=entry.name,
                    data_dir=entry.data_dir,
                    data_files=entry.data_files,
                    split=entry.split,
                )
            except Exception as exc:  # noqa: BLE001 - datasets raises many kinds for unreadable data: report it
                problems.append(f"datasets: cannot read {label}: {message_of(exc)}")
                column_sets.append(None)
                continue
            if entry.columns is not None:
                absent = [c for c in entry.columns if c not in found]
                if absent:
                    problems.append(f"datasets: {label}: columns {absent} are not in the data (columns: {found})")
                found = [c for c in entry.columns if c in found]
            described.append(f"{label} (local)")
            column_sets.append(found)
        if any(columns is None for columns in column_sets):
            return "mixture: " + "; ".join(described), None, problems
        shared = [c for c in column_sets[0] if all(c in other for other in column_sets[1:])]
        return "mixture: " + "; ".join(described), shared, problems
    name = script_args.dataset_name
    if not name:
        return "none", None, ["dataset_name: set `dataset_name`, `datasets`, or a built-in `task` (trl_ext.data)"]
    label = name + (f" [{script_args.dataset_config}]" if script_args.dataset_config else "")
    label += f" split {script_args.dataset_train_split}"
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        return (
            label,
            None,
            [
                f"dataset_name: {name!r} is a file; datasets.load_dataset reads files through a builder: use "
                f"`datasets: [{{path: json, data_files: {name}}}]` (or csv, parquet)"
            ],
        )
    if not os.path.isdir(path):
        if looks_local(name):
            return label, None, [f"dataset_name: no such directory {name!r}"]
        return f"{label} (Hub dataset: columns not checked offline)", None, []
    try:
        columns = _read_columns(path, name=script_args.dataset_config, split=script_args.dataset_train_split)
    except Exception as exc:  # noqa: BLE001 - as above
        return label, None, [f"dataset_name: cannot read {name!r}: {message_of(exc)}"]
    return f"{label} (local)", columns, []
