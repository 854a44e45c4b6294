"""Checks that refuse bad input before or during training, each naming the field or component at fault.

A dataset without a prompt column, a training set too small for one generation batch (TRL would run 0 steps), prompts
longer than the model's positions, reward functions that return something other than numbers, non-finite or absurd rewards, an advantage estimator's
output of the wrong shape or with NaN, a checkpoint to resume whose weights are truncated or that another model wrote;
and whether a GPU-like device exists (TRL's bf16 default). The base trainer calls them; they hold no state.
"""

from __future__ import annotations

import functools
import inspect
import json
import numbers
import os
from typing import Any

import torch

from trl_ext.advantages.base import AdvantageBatch
from trl_ext.errors import UserInputError

__all__ = [
    "MAX_ABS_REWARD",
    "CheckedRewardFunction",
    "check_advantages",
    "check_checkpoint_model",
    "check_checkpoint_weights",
    "check_prompt_column",
    "check_prompt_lengths",
    "check_reward_values",
    "check_rewards",
    "check_train_dataset_size",
    "checked_reward_funcs",
    "has_accelerator",
    "tied_parameter_names",
]

#: Largest reward magnitude accepted (:func:`check_rewards`); beyond it float32 advantages and losses
#: lose precision or overflow, and such a value is almost always a bug in the reward function.
MAX_ABS_REWARD: float = 1e6


def has_accelerator() -> bool:
    """Whether torch sees a GPU-like device (CUDA/ROCm, XPU, MPS) on which TRL's bf16 default makes sense."""
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _columns(dataset: Any) -> list[str] | None:
    """A dataset's columns: ``column_names``, else the keys of a map-style dataset's first row; None when unknown (a
    streaming dataset without features, an empty or non-mapping dataset)."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        return list(columns)
    if type(dataset).__name__ == "IterableDataset" or not (
        hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")
    ):
        return None
    try:
        first = dataset[0] if len(dataset) else None
    except Exception:  # not indexable by position: not checked
        return None
    return list(first) if isinstance(first, dict) else None


def check_prompt_column(dataset: Any, name: str, accepted: tuple[str, ...] = ("prompt",)) -> None:
    """Refuse a dataset (``name``: ``train_dataset``, ``eval_dataset``, ``eval_dataset['key']``) with none of the
    ``accepted`` prompt columns, listing its columns. TRL reads ``row["prompt"]`` at the first generation: a
    ``KeyError: 'prompt'`` at step 1, after the model has loaded. A dict of eval datasets is checked per key."""
    if isinstance(dataset, dict):
        for key, value in dataset.items():
            check_prompt_column(value, f"{name}[{key!r}]", accepted)
        return
    columns = None if dataset is None else _columns(dataset)
    if columns is None or any(column in columns for column in accepted):
        return
    wanted = " or ".join(repr(column) for column in accepted)
    hint = next((c for c in ("problem", "question", "query", "instruction", "input", "text") if c in columns), None)
    rename = f"dataset.rename_column({hint!r}, 'prompt')" if hint else "dataset.rename_column(<column>, 'prompt')"
    raise UserInputError(
        f"{name}: no {wanted} column; the dataset has columns {columns}. The trainers generate from 'prompt' (a "
        f"string or a list of chat messages): rename a column ({rename}), or with `trl-ext train` set "
        "dataset_prompt_column to build it (with system_prompt)"
    )


def check_prompt_lengths(trainer: Any, max_rows: int = 1000) -> None:
    """Refuse text prompts longer than the model's positions (``max_position_embeddings``).

    The first ``max_rows`` rows of the training set are tokenized as TRL will (the chat template for
    conversational prompts). Vision-language processors and models without ``max_position_embeddings`` are not
    checked. Raises before training, naming the row and the lengths.
    """
    from transformers import ProcessorMixin

    dataset = trainer.train_dataset
    config = getattr(getattr(trainer, "model", None), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    tokenizer = trainer.processing_class
    if (
        dataset is None
        or not hasattr(dataset, "__len__")
        or not positions
        or isinstance(tokenizer, ProcessorMixin)
        or "prompt" not in (getattr(dataset, "column_names", None) or [])
    ):
        return
    prompts = dataset.select(range(min(len(dataset), max_rows)))["prompt"]
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        elif isinstance(prompt, list) and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt
        ):
            if getattr(tokenizer, "chat_template", None) is None:
                return
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            return  # multimodal or custom content: not checked
        if length > int(positions):
            raise UserInputError(
                f"train_dataset: the prompt of row {index} has {length} tokens, more than the model's {positions} "
                "positions (max_position_embeddings). Shorten or filter the prompts, or use a model with a "
                "longer context"
            )


def check_train_dataset_size(trainer: Any, needed: int) -> None:
    """Refuse a training set too small for one generation batch (``needed`` distinct rows): TRL would run 0 steps
    and report success."""
    dataset = trainer.train_dataset
    if dataset is None or not hasattr(dataset, "__len__") or type(dataset).__name__ == "IterableDataset":
        return
    if len(dataset) < needed:
        raise UserInputError(
            f"train_dataset: {len(dataset)} row(s), but one generation batch draws {needed} distinct rows "
            f"(generation_batch_size {trainer.args.generation_batch_size} / num_generations "
            f"{trainer.num_generations}); with fewer, TRL's sampler yields no batch and training would run 0 steps. "
            "Add rows or lower per_device_train_batch_size / steps_per_generation / generation_batch_size"
        )


def check_rewards(rewards_per_func: torch.Tensor, reward_names: list[str]) -> None:
    """Refuse infinite or absurdly large rewards (|r| > :data:`MAX_ABS_REWARD`), naming the reward function.

    Every trainer handles them the same way (before, some zeroed the advantages silently, some raised without
    naming the function). NaN stays allowed: it is TRL's "unscorable" (a reward function returned None). The
    gathered (N, F) tensor is the same on every process, so every process raises together.
    """
    bad = torch.isinf(rewards_per_func) | (rewards_per_func.abs() > MAX_ABS_REWARD)
    if not bool(bad.any()):
        return
    row, column = (int(i) for i in bad.nonzero()[0].tolist())
    names = list(reward_names) or [f"reward_funcs[{i}]" for i in range(bad.size(1))]
    value = float(rewards_per_func[row, column])
    raise UserInputError(
        f"reward function {names[column]!r} returned {value!r} for completion {row} of the generation batch "
        f"({int(bad[:, column].sum())} such value(s)); rewards must be finite with |r| <= {MAX_ABS_REWARD:g}. "
        "Return None for a completion that cannot be scored"
    )


def _is_reward_value(value: Any) -> bool:
    """What TRL's ``torch.tensor(rewards)`` turns into one float: None (NaN), a real number (bool, int, float, numpy
    scalars) or a 0-d numeric tensor / array."""
    if value is None or (isinstance(value, numbers.Real) and not isinstance(value, str)):
        return True
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_complex()
    dtype = getattr(value, "dtype", None)  # numpy scalars and 0-d arrays (numpy is not imported for this)
    return getattr(value, "ndim", None) == 0 and getattr(dtype, "kind", "") in ("b", "i", "u", "f")


def check_reward_values(values: Any, name: str) -> Any:
    """``values`` as returned by reward function ``name``, or a ``ValueError`` naming the function and the completion.

    TRL turns a reward function's list into a tensor; a string in it failed at step 1 with torch's "too many
    dimensions 'str'" and no function named. A reward must be a number, or None for a completion that cannot be
    scored (TRL's NaN). The list's length is TRL's check.
    """
    if isinstance(values, str | bytes | dict) or not hasattr(values, "__iter__"):
        raise UserInputError(
            f"reward function {name!r} returned {type(values).__name__} {values!r:.80}, not a list; return one float "
            "(or None) per completion"
        )
    if isinstance(values, torch.Tensor) and not values.is_complex() and values.dim() == 1:
        return values
    if not isinstance(values, list | tuple):
        values = list(values)  # a generator or an array: read once, here
    for index, value in enumerate(values):
        if not _is_reward_value(value):
            raise UserInputError(
                f"reward function {name!r} returned {type(value).__name__} {value!r:.80} for completion {index}; "
                "return float or None (None: the completion cannot be scored)"
            )
    return values


def _callable_name(func: Any) -> str:
    """The name TRL gives a reward function (``trl.trainer.utils.get_callable_name``)."""
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__name__", type(func).__name__)


class CheckedRewardFunction:
    """A reward function whose output is checked by :func:`check_reward_values`; same name as the function (TRL
    reads ``__name__``), the function itself in ``__wrapped__``, picklable if the function is."""

    def __init__(self, func: Any) -> None:
        self.__wrapped__ = func
        self.__name__ = _callable_name(func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return check_reward_values(self.__wrapped__(*args, **kwargs), self.__name__)

    def __repr__(self) -> str:
        return f"checked({self.__wrapped__!r})"


class _AsyncCheckedRewardFunction(CheckedRewardFunction):
    """:class:`CheckedRewardFunction` of an async reward function (TRL awaits it with the others)."""

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return check_reward_values(await self.__wrapped__(*args, **kwargs), self.__name__)


def _is_async(func: Any) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(func.__call__)


def checked_reward_funcs(reward_funcs: Any) -> Any:
    """``GRPOTrainer``'s ``reward_funcs`` argument with every reward *function* wrapped in a
    :class:`CheckedRewardFunction` (a list stays a list, one function stays one); reward models (ids, modules) and
    already wrapped functions are left as they are."""
    if isinstance(reward_funcs, list | tuple):
        return [checked_reward_funcs(func) for func in reward_funcs]
    if (
        isinstance(reward_funcs, str | torch.nn.Module | CheckedRewardFunction)
        or reward_funcs is None
        or not callable(reward_funcs)
    ):
        return reward_funcs
    return (_AsyncCheckedRewardFunction if _is_async(reward_funcs) else CheckedRewardFunction)(reward_funcs)


def check_advantages(advantages: torch.Tensor, batch: AdvantageBatch, name: str) -> torch.Tensor:
    """Refuse an estimator's output of the wrong shape or with NaN / inf values, naming the estimator ``name``."""
    n = batch.num_completions
    if advantages.dim() not in (1, 2) or advantages.size(0) != n:
        raise ValueError(
            f"advantage estimator {name!r} returned shape {tuple(advantages.shape)}; expected ({n},) or ({n}, T)"
        )
    if advantages.dim() == 2:
        if batch.completion_mask is None:
            raise ValueError(
                f"advantage estimator {name!r} returned token-level advantages but does not list "
                "'completion_mask' in `requires`, so the gathered completion width is unknown"
            )
        if advantages.size(1) != batch.completion_mask.size(1):
            raise ValueError(
                f"advantage estimator {name!r} returned width {advantages.size(1)}; the gathered completion "
                f"width is {batch.completion_mask.size(1)}"
            )
    if not torch.isfinite(advantages).all():
        raise FloatingPointError(f"advantage estimator {name!r} produced NaN or inf advantages")
    return advantages


def _safetensors_problem(path: str) -> str | None:
    """What is wrong with a safetensors file's layout (8-byte header length, JSON header, then the tensors up to the
    largest ``data_offsets`` end), or None. Reads the header only."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, less than the 8-byte header length"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"its header announces {length} bytes, the file holds {size - 8} after the length"
        try:
            header = json.loads(f.read(length))
            end = max(
                (int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"), default=0
            )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            return f"its header is not a safetensors header ({type(error).__name__})"
    if 8 + length + end > size:
        return f"its header describes {end} bytes of tensors, the file holds {size - 8 - length}"
    return None


def check_checkpoint_weights(checkpoint: str) -> None:
    """Refuse a checkpoint whose ``*.safetensors`` files (full weights, shards, adapters) are truncated or corrupt,
    naming the file. Without this, loading them on resume fails in safetensors ("incomplete metadata") naming none."""
    for name in sorted(os.listdir(checkpoint)):
        path = os.path.join(checkpoint, name)
        if name.endswith(".safetensors") and os.path.isfile(path):
            problem = _safetensors_problem(path)
            if problem is not None:
                raise UserInputError(
                    f"resume_from_checkpoint: {path} is truncated or corrupt ({problem}); the checkpoint was cut off "
                    "while saving or copying. Resume from another checkpoint, or copy this one again"
                )


#: The config entries that decide a model's parameter shapes, compared by :func:`check_checkpoint_model`.
SHAPE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)


def _shape_entries(config: dict[str, Any]) -> dict[str, Any]:
    """The :data:`SHAPE_KEYS` of a config dict and of its ``text_config`` / ``vision_config`` (as ``text_config.x``),
    without unset (None) ones."""
    entries = {key: config[key] for key in SHAPE_KEYS if config.get(key) is not None}
    for part in ("text_config", "vision_config"):
        if isinstance(config.get(part), dict):
            entries.update({f"{part}.{key}": value for key, value in _shape_entries(config[part]).items()})
    return entries


def check_checkpoint_model(checkpoint: str, model: Any) -> None:
    """Refuse to resume a checkpoint that another model wrote: its ``config.json`` against the run's model config
    (:data:`SHAPE_KEYS`, also inside ``text_config`` / ``vision_config``), naming both. Without this the mismatch
    surfaced as torch's "size mismatch for model.embed_tokens.weight" deep in ``train()``. A checkpoint without
    ``config.json`` (an adapter-only one, say) or a model without a config is not checked."""
    path = os.path.join(checkpoint, "config.json")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict") or not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as error:
        raise UserInputError(f"resume_from_checkpoint: {path} cannot be read ({error})") from None
    if not isinstance(saved, dict):
        return
    ours, theirs = _shape_entries(config.to_dict()), _shape_entries(saved)
    differ = [key for key in theirs if key in ours and theirs[key] != ours[key]]
    if not differ:
        return
    source = saved.get("_name_or_path")
    run_model = getattr(config, "_name_or_path", None) or "?"
    raise UserInputError(
        f"resume_from_checkpoint: checkpoint {checkpoint} was saved from a different model"
        f"{f' ({source})' if source else ''} with "
        + ", ".join(f"{key} {theirs[key]!r}" for key in differ)
        + f"; this run's model ({run_model}) has "
        + ", ".join(f"{key} {ours[key]!r}" for key in differ)
        + ". Resume with the model the checkpoint was trained from (model_name_or_path), or start a new run without "
        "resume_from_checkpoint"
    )


def tied_parameter_names(model: Any, names: list[str]) -> set[str]:
    """Those of ``names`` (state-dict keys) whose parameter is the same tensor as a parameter not in ``names``: tied
    weights (a tied ``lm_head.weight``), which a checkpoint need not hold because loading the other fills them."""
    wanted = set(names)
    groups: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(parameter), []).append(name)
    tied: set[str] = set()
    for group in groups.values():
        if any(name not in wanted for name in group):
            tied.update(name for name in group if name in wanted)
    return tied
