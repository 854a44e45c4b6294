"""From a recipe to a trainer: the script arguments of ``recipes/train.py`` / ``trl-ext train``, reward resolution,
the argument parser, building and running the named trainer, the console progress line, and torch's thread count.

Used by the commands in :mod:`trl_ext.cli` and by ``trl-ext compare`` (:mod:`trl_ext.compare`); it imports neither.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from trl import ScriptArguments  # trl_ext/__init__.py has installed trl_ext._quiet's filters before this import

from trl_ext.errors import one_line_error

__all__ = [
    "ProgressPrinter",
    "TrainScriptArguments",
    "build_trainer",
    "make_train_parser",
    "method_metrics",
    "peek_trainer_name",
    "resolve_reward_funcs",
    "run_training",
    "set_threads",
    "to_conversational_prompts",
]


@dataclass
class TrainScriptArguments(ScriptArguments):
    """Script arguments of ``recipes/train.py`` / ``trl-ext train`` (beyond TRL's ``ScriptArguments``).

    Parameters:
        trainer (`str`, defaults to `"grpo"`): registered trainer name (`trl-ext list`).
        task (`str` or `None`): a built-in synthetic task (`trl_ext.data.list_tasks()`); replaces `dataset_name`
            and contributes the task's reward functions. Needs no download.
        task_num_rows (`int` or `None`): rows generated for `task`; default: the task's own (4096 for most tasks,
            100 for `arithmetic_variants`).
        tiny_model (`bool`, defaults to `False`): build a tiny randomly initialised Qwen2 with a character
            tokenizer offline (in `<output_dir>/tiny-model`) instead of loading `model_name_or_path`.
        reward_funcs (`list[str]`, `str` or `None`): extra reward functions: a name of the task's rewards, a TRL
            reward (`accuracy_reward`, `think_format_reward`, ...), or a dotted import path (`my_pkg.rewards.f`). A
            single name (`reward_funcs: think_format_reward` in YAML) counts as a list of one.
        reward_model_name_or_path (`str` or `None`): a reward model, as in TRL's GRPO script.
        dataset_prompt_column (`str` or `None`): build the conversational `prompt` from this column (e.g.
            `problem` in MATH) with `system_prompt` as the system message.
        system_prompt (`str` or `None`): the system message used with `dataset_prompt_column`.
        diagnose (`bool`, defaults to `False`): add a `trl_ext.RegimeCallback` (``regime/*`` metrics; writes
            `<output_dir>/regime.json` for `trl-ext diagnose --from`).
    """

    trainer: str = field(default="grpo", metadata={"help": "Registered trainer name (see `trl-ext list`)."})
    threads: int | None = field(
        default=None,
        metadata={
            "help": "torch CPU threads. Default: 1 with `tiny_model` on a machine without a GPU (as the quickstart: "
            "a tiny model gains nothing from more, and a busy CPU makes more much slower), else torch's default."
        },
    )
    task: str | None = field(
        default=None,
        metadata={"help": "Built-in synthetic task (offline); replaces dataset_name and adds the task's rewards."},
    )
    task_num_rows: int | None = field(
        default=None, metadata={"help": "Rows generated for `task` (default: the task's, 4096 for most)."}
    )
    tiny_model: bool = field(
        default=False,
        metadata={"help": "Build a tiny random Qwen2 + char tokenizer offline instead of loading a model."},
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward functions: task reward names, TRL reward names, or dotted import paths."},
    )
    reward_model_name_or_path: str | None = field(default=None, metadata={"help": "Reward model id or path."})
    dataset_prompt_column: str | None = field(
        default=None,
        metadata={
            "help": "Build the conversational `prompt` column from this dataset column (e.g. 'problem'), with "
            "`system_prompt` as the system message. Leave unset when the dataset already has `prompt`."
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message prepended when `dataset_prompt_column` builds prompts."}
    )
    diagnose: bool = field(
        default=False,
        metadata={
            "help": "Log regime/* metrics (trl_ext.RegimeCallback: which method's regime the run is in) and write "
            "<output_dir>/regime.json, which `trl-ext diagnose --from <output_dir>` prints as a table."
        },
    )


def _trl_reward_registry() -> dict[str, Any]:
    from trl.rewards import accuracy_reward, reasoning_accuracy_reward, think_format_reward

    return {
        "accuracy_reward": accuracy_reward,
        "reasoning_accuracy_reward": reasoning_accuracy_reward,
        "think_format_reward": think_format_reward,
    }


def _call_reward_factory(spec: str) -> Any:
    """``factory(args)`` in ``reward_funcs``: a TRL reward factory (``trl.rewards.get_*``) or a dotted import path,
    called with literal arguments, e.g. ``get_soft_overlong_punishment(max_completion_len=12288,
    soft_punish_cache=4096)`` (DAPO's soft overlong punishment, which needs its lengths)."""
    import ast

    try:
        call = ast.parse(spec.strip(), mode="eval").body
        if not isinstance(call, ast.Call):
            raise ValueError
        target = ast.unparse(call.func)
        args = [ast.literal_eval(arg) for arg in call.args]
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg is not None}
        if len(kwargs) != len(call.keywords):
            raise ValueError
    except (SyntaxError, ValueError) as exc:
        raise ValueError(
            f"reward_funcs: {spec!r} is not a call with literal arguments, e.g. "
            "'get_soft_overlong_punishment(max_completion_len=12288, soft_punish_cache=4096)'"
        ) from exc
    if "." in target:
        module_path, attr = target.rsplit(".", 1)
        sys.path.insert(0, os.getcwd())
        factory = getattr(importlib.import_module(module_path), attr, None)
    else:
        import trl.rewards

        factory = getattr(trl.rewards, target, None) if target.startswith("get_") else None
    if not callable(factory):
        raise ValueError(
            f"reward_funcs: {spec!r}: no reward factory {target!r} (TRL's trl.rewards.get_* or a dotted path)"
        )
    try:
        return factory(*args, **kwargs)
    except TypeError as exc:
        raise ValueError(f"reward_funcs: {spec!r}: {exc}") from exc


def resolve_reward_funcs(script_args: TrainScriptArguments, task: Any | None) -> list[Any]:
    """Reward functions for a run: the task's, then ``reward_funcs`` by name or import path, then a reward model.

    ``reward_funcs`` may be a single name (``reward_funcs: think_format_reward`` in a YAML recipe), read as a
    one-element list: iterating the string would resolve it one character at a time.
    """
    rewards: list[Any] = list(task.reward_funcs) if task is not None else []
    by_name = {getattr(f, "__name__", str(f)): f for f in rewards}
    names = script_args.reward_funcs
    if isinstance(names, str):
        names = [names]
    elif names is not None and not (isinstance(names, list | tuple) and all(isinstance(name, str) for name in names)):
        raise ValueError(
            f"reward_funcs: expected a name or a list of names (task rewards, TRL rewards, dotted import paths or "
            f"factory calls), got {names!r}"
        )
    trl_rewards = _trl_reward_registry() if names else {}
    for name in names or []:
        if task is not None and name in by_name:
            continue  # already included with the task
        if "(" in name:
            rewards.append(_call_reward_factory(name))
        elif name in trl_rewards:
            rewards.append(trl_rewards[name])
        elif "." in name:
            module_path, attr = name.rsplit(".", 1)
            sys.path.insert(0, os.getcwd())
            rewards.append(getattr(importlib.import_module(module_path), attr))
        else:
            raise ValueError(
                f"reward_funcs: cannot resolve {name!r}; expected one of the task's rewards "
                f"{sorted(by_name)}, TRL's {sorted(trl_rewards)}, a dotted import path, or a factory call such as "
                f"'get_soft_overlong_punishment(max_completion_len=12288, soft_punish_cache=4096)'"
            )
    if script_args.reward_model_name_or_path:
        rewards.append(script_args.reward_model_name_or_path)
    if not rewards:
        raise ValueError("reward_funcs: no reward function given; set `task`, `reward_funcs` or a reward model")
    return rewards


#: The ``regime/*`` metrics of :class:`trl_ext.diagnose.callback.RegimeCallback` shown on the console line when they are logged.
REGIME_CONSOLE_METRICS = ("regime/zero_signal_frac", "regime/logratio_abs_mean")


def method_metrics(logs: dict[str, Any], trainer_name: str | None = None) -> list[tuple[str, float]]:
    """The method metrics of one log to show on the console: the key metrics (``trl_ext.catalogue.KEY_METRICS``) of
    every built-in namespace present, else up to three of the trainer's own namespace (``<trainer_name>/...``, for a
    third-party trainer)."""
    from trl_ext.catalogue import KEY_METRICS

    shown = [key for keys in KEY_METRICS.values() for key in keys if key in logs]
    if not shown and trainer_name:
        shown = sorted(key for key in logs if key.startswith(f"{trainer_name}/"))[:3]
    shown += [key for key in REGIME_CONSOLE_METRICS if key in logs]  # with a RegimeCallback (trl-ext diagnose)
    return [(key, float(logs[key])) for key in shown if isinstance(logs[key], int | float)]


class ProgressPrinter:
    """A ``TrainerCallback`` printing one line per log: step, mean reward, loss, the method's key metrics
    (:func:`method_metrics`) and elapsed time."""

    def __new__(cls, trainer_name: str | None = None):  # build the real callback lazily: importing the CLI stays cheap
        from transformers import TrainerCallback

        class _ProgressPrinter(TrainerCallback):
            def __init__(self) -> None:
                self.start = time.perf_counter()
                self.rewards: list[float] = []
                self.steps: list[int] = []  # the step each reward was logged at (its window ends there)
                self.trainer_name = trainer_name

            def on_log(self, args, state, control, logs=None, **kwargs):
                if not state.is_world_process_zero or not logs or "reward" not in logs:
                    return
                self.rewards.append(float(logs["reward"]))
                self.steps.append(int(state.global_step))
                elapsed = time.perf_counter() - self.start
                loss = logs.get("loss", logs.get("train_loss"))  # the end-of-training log names it train_loss
                loss_text = f"{loss:8.4f}" if isinstance(loss, int | float) else "     n/a"
                metrics = " ".join(f"{key} {value:.4g}" for key, value in method_metrics(logs, self.trainer_name))
                print(
                    f"step {state.global_step:4d}/{state.max_steps} | reward {logs['reward']:.3f} | "
                    f"loss {loss_text} | {metrics + ' | ' if metrics else ''}{elapsed:6.1f}s",
                    flush=True,
                )

        return _ProgressPrinter()


def run_training(script_args, training_args, model_args, dataset_args=None, *, callbacks=None):
    """Build the named trainer from parsed arguments, train, save; returns the trainer."""
    trainer = build_trainer(script_args, training_args, model_args, dataset_args, callbacks=callbacks)
    return train_and_save(trainer, training_args)


def train_and_save(trainer, training_args):
    """Train a built trainer (resuming from ``resume_from_checkpoint`` when set), save the model; returns it."""
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}")
    return trainer


def build_trainer(script_args, training_args, model_args, dataset_args=None, *, callbacks=None):
    """The named trainer built from parsed arguments (data, model, rewards, PEFT), ready to ``train()``."""
    from datasets import load_dataset
    from trl import get_peft_config, get_quantization_config

    from trl_ext.registry import get_trainer

    trainer_cls, config_cls = get_trainer(script_args.trainer)
    if not isinstance(training_args, config_cls):
        raise ValueError(
            f"trainer: {script_args.trainer!r} needs a {config_cls.__name__}, got {type(training_args).__name__}"
        )

    task = None
    if script_args.task is not None:
        from trl_ext.data import get_task

        task = get_task(script_args.task)
        num_rows = task.default_num_rows if script_args.task_num_rows is None else script_args.task_num_rows
        train_dataset = task.make_dataset(num_rows, training_args.seed)
        eval_dataset = None
    elif dataset_args is not None and getattr(dataset_args, "datasets", None):
        from trl import get_dataset

        dataset = get_dataset(dataset_args)
        train_dataset = dataset[script_args.dataset_train_split]
        eval_dataset = dataset.get(script_args.dataset_test_split) if training_args.eval_strategy != "no" else None
    elif script_args.dataset_name:
        dataset = load_dataset(
            script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
        )
        train_dataset = dataset[script_args.dataset_train_split]
        eval_dataset = dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None
    else:
        raise ValueError("dataset_name: set `dataset_name`, `datasets`, or a built-in `task` (trl_ext.data)")

    if script_args.dataset_prompt_column:
        train_dataset = to_conversational_prompts(train_dataset, script_args)
        if eval_dataset is not None:
            eval_dataset = to_conversational_prompts(eval_dataset, script_args)

    if script_args.tiny_model:
        from accelerate import PartialState

        from trl_ext.data import QUICKSTART_SETTINGS
        from trl_ext.tiny_models import build_tiny_checkpoint

        # The quickstart's model: its initialisation scale is what lets a random model learn from scratch by RL.
        kwargs = {k: v for k, v in QUICKSTART_SETTINGS["model"].items() if k != "alphabet"}
        if task is not None:
            kwargs["alphabet"] = task.alphabet
        # Long tasks (e.g. deepsearch: ~1000-character prompts) need more positions than the default 256; with the
        # character tokenizer a prompt's length in characters bounds its length in tokens.
        longest_prompt = max(len(str(prompt)) for prompt in train_dataset[:1000]["prompt"])
        kwargs["max_position_embeddings"] = max(256, longest_prompt + (training_args.max_completion_length or 0))
        with PartialState().main_process_first():  # one process writes the checkpoint, the others reuse it
            model = build_tiny_checkpoint(os.path.join(training_args.output_dir, "tiny-model"), **kwargs)
    elif model_args.model_name_or_path:
        model = model_args.model_name_or_path
        looks_local = model.startswith(("/", "./", "../", "~")) or os.path.isabs(model)
        if looks_local and not os.path.isdir(os.path.expanduser(model)):
            raise ValueError(
                f"model_name_or_path: no such directory {model!r} (a local path must be a directory holding the "
                "model's config and weights; a Hub id has the form 'org/name')"
            )
    else:
        raise ValueError("model_name_or_path: give a model id or path, or set `tiny_model: true`")

    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    reward_funcs = resolve_reward_funcs(script_args, task)
    if getattr(script_args, "diagnose", False) and not any(
        type(callback).__name__ == "RegimeCallback" for callback in callbacks or []
    ):
        from trl_ext.diagnose.callback import RegimeCallback

        callbacks = [*(callbacks or []), RegimeCallback()]
    try:
        trainer = trainer_cls(
            model=model,
            reward_funcs=reward_funcs,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            quantization_config=get_quantization_config(model_args),
            peft_config=get_peft_config(model_args),
            callbacks=callbacks,
        )
    except OSError as exc:
        if exc.errno is not None:  # a system I/O error (permissions, disk): not about which model was named
            raise
        # transformers' own "cannot find / not a valid model identifier" errors (no errno): name the model
        offline = " (offline: HF_HUB_OFFLINE is set, so only the local cache is searched)" if _hub_offline() else ""
        raise ValueError(f"model_name_or_path: cannot load {model!r}{offline}: {exc}") from exc
    if training_args.disable_tqdm and any(type(c).__name__ == "_ProgressPrinter" for c in callbacks or []):
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # our one-line progress replaces the raw log dicts
    return trainer


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def to_conversational_prompts(dataset, script_args: TrainScriptArguments):
    """Add a conversational ``prompt`` column built from ``dataset_prompt_column`` (and ``system_prompt``)."""
    column = script_args.dataset_prompt_column
    if column not in dataset.column_names:
        raise ValueError(
            f"dataset_prompt_column: the dataset has no column {column!r} (columns: {dataset.column_names})"
        )
    system = [{"role": "system", "content": script_args.system_prompt}] if script_args.system_prompt else []

    def build(row):
        return {"prompt": [*system, {"role": "user", "content": row[column]}]}

    return dataset.map(build, remove_columns=["prompt"] if "prompt" in dataset.column_names else None)


def peek_trainer_name(argv: list[str]) -> str:
    """The trainer named by ``--trainer`` or, failing that, by the YAML's ``trainer:`` key (default ``grpo``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--trainer")
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(argv)
    if known.trainer:
        return known.trainer
    if known.config:
        import yaml

        if not os.path.isfile(known.config):
            raise ValueError(f"--config: no such file {known.config!r}")
        with open(known.config) as f:
            config = yaml.safe_load(f) or {}
        if not isinstance(config, dict):
            raise ValueError(f"--config {known.config} must contain a YAML mapping")
        return config.get("trainer", "grpo")
    return "grpo"


def make_train_parser(trainer_name: str):
    """``TrlParser`` over the script arguments, the trainer's config class, ``ModelConfig`` and dataset mixtures."""
    from trl import DatasetMixtureConfig, ModelConfig, TrlParser

    from trl_ext.registry import get_trainer

    _, config_cls = get_trainer(trainer_name)

    class TrainParser(TrlParser):
        """``--help`` lists the trainer's own fields first, then TRL's ``GRPOConfig``, the script's, the model's and
        the dataset mixture's, each under a heading (TRL's parser puts all of them in one list of ~250 options, the
        trainer's own at the very end)."""

        def error(self, message):
            one_line_error(self, message)  # trl_ext.errors: one line, exit 2

        def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
            """As HfArgumentParser's, but command-line options that name no field fail listing each with the nearest
            field names (HfArgumentParser reports them as 'not used by the HfArgumentParser')."""
            output = super().parse_args_into_dataclasses(args=args, return_remaining_strings=True, **kwargs)
            if return_remaining_strings:
                return output
            remaining = output[-1]
            if remaining:
                options = [item for item in remaining if item.startswith("-")] or remaining
                raise ValueError(
                    f"{', '.join(self._suggest(option.lstrip('-').replace('-', '_')) for option in options)}: "
                    f"{'is not an option' if len(options) == 1 else 'are not options'} of the {trainer_name!r} trainer "
                    f"({config_cls.__name__}); `trl-ext train --trainer {trainer_name} --help` lists them"
                )
            return output[:-1]

        def _suggest(self, name: str, prefix: str = "--") -> str:
            """``name`` as written, with the one or two field names nearest to it when any are close."""
            import difflib

            known = sorted({action.dest for action in self._actions if action.dest != "help"})
            near = difflib.get_close_matches(name, known, n=2, cutoff=0.75)
            shown = f"{prefix}{name}" if prefix else repr(name)
            return shown + (
                f" (did you mean {' or '.join(prefix + n if prefix else repr(n) for n in near)}?)" if near else ""
            )

        def set_defaults_with_config(self, **kwargs):
            """The recipe's values become defaults; a key that names no field fails here, every such key at once,
            each with the nearest field names (TRL's parser reports them as unparsed '--key value' strings)."""
            known = {action.dest for action in self._actions}
            unknown = [str(key) for key in kwargs if key not in known]
            if unknown:
                raise ValueError(
                    f"--config: {', '.join(self._suggest(key, prefix='') for key in unknown)} "
                    f"{'is not a field' if len(unknown) == 1 else 'are not fields'} of the {trainer_name!r} trainer "
                    f"({config_cls.__name__}), the script, ModelConfig or the dataset mixture; "
                    f"`trl-ext train --trainer {trainer_name} --help` lists them"
                )
            return super().set_defaults_with_config(**kwargs)

        def _add_dataclass_arguments(self, dtype):
            import dataclasses
            import typing

            from trl import GRPOConfig

            hints = typing.get_type_hints(dtype)
            members = [member for member in dataclasses.fields(dtype) if member.init]
            if dtype is config_cls:
                grpo_fields = {member.name for member in dataclasses.fields(GRPOConfig)}
                own = self.add_argument_group(
                    f"{trainer_name} options ({config_cls.__name__}'s own fields; docs/trainers/{trainer_name}.md)"
                )
                self._action_groups.insert(2, self._action_groups.pop())  # right after -h, before everything else
                inherited = self.add_argument_group("GRPOConfig options (TRL's, unchanged)")
                groups = [(own if m.name not in grpo_fields else inherited, m) for m in members]
            else:
                titles = {
                    TrainScriptArguments: "script options (data, rewards, model source)",
                    ModelConfig: "model options (TRL's ModelConfig: PEFT, quantization, dtype)",
                    DatasetMixtureConfig: "dataset mixture options (TRL's DatasetMixtureConfig)",
                }
                group = self.add_argument_group(titles.get(dtype, dtype.__name__))
                groups = [(group, member) for member in members]
            for group, member in groups:
                member.type = hints[member.name]
                self._parse_dataclass_field(group, member)

    return TrainParser(
        (TrainScriptArguments, config_cls, ModelConfig, DatasetMixtureConfig),
        prog="trl-ext train",
        usage="trl-ext train [--config FILE.yaml] [--trainer NAME] [--FIELD VALUE ...]",
        description=f"Train with the {trainer_name!r} trainer ({config_cls.__name__}). Every field below can be set in "
        "the YAML or on the command line; the command line wins. `trl-ext train --trainer NAME --help` shows another "
        "trainer's fields; `trl-ext list` lists the trainers.",
        # No abbreviations: `--per_device_train_batch_siz 8` is a typo to report (with the nearest names), not a prefix
        # to complete silently; a later field sharing the prefix would change what the same command line means.
        allow_abbrev=False,
    )


def set_threads(
    threads: int | None, *, default: int | None = None, tiny_model: bool = False, option: str = "threads"
) -> None:
    """Set torch's CPU threads: ``threads`` if given (at least 1, else ``ValueError`` naming ``option``), else
    ``default``, else the quickstart's setting (1) for a tiny model on a machine without a GPU, else leave torch's.

    The one place where ``trl-ext train``, ``trl-ext quickstart`` and ``trl-ext compare`` set it.
    """
    import torch

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"{option} must be at least 1, got {threads!r}")
    if threads is None:
        threads = default
    if threads is None and tiny_model and not torch.cuda.is_available():
        from trl_ext.data.quickstart import QUICKSTART_SETTINGS

        threads = QUICKSTART_SETTINGS.get("torch_num_threads", 1)
    if threads is not None:
        torch.set_num_threads(threads)
