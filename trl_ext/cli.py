"""The ``trl-ext`` console script and the training entry point shared with ``recipes/train.py``.

    trl-ext list                                   # the trainer table
    trl-ext train --config recipes/grpo/quickstart.yaml [--any_config_field value ...]
    trl-ext quickstart [--trainer grpo] [--max_steps N] [--seed S] [--output_dir DIR]
    trl-ext compare --trainers grpo bnpo hapo --config RECIPE.yaml --seeds 3 [--max_steps N] [--output_dir DIR]
    trl-ext vllm-serve --model MODEL [any `trl vllm-serve` option]

``vllm-serve`` is TRL's ``trl vllm-serve`` (vLLM's OpenAI server with TRL's weight-transfer settings) with HAPO's
vLLM logits processor (:mod:`trl_ext.rollout.vllm_temperature`) registered, for ``vllm_mode="server"`` runs of the
HAPO trainer with adaptive temperature. Other trainers run with either server command.

``train`` parses ``(TrainScriptArguments, <trainer config>, ModelConfig, DatasetMixtureConfig)`` with TRL's
``TrlParser``; the trainer comes from ``--trainer`` or the YAML's ``trainer:`` key, and its config class decides
which fields ``--help`` lists (``trl-ext train --trainer grpo --help``).
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
        reward_funcs (`list[str]` or `None`): extra reward functions: a name of the task's rewards, a TRL reward
            (`accuracy_reward`, `think_format_reward`, ...), or a dotted import path (`my_pkg.rewards.f`).
        reward_model_name_or_path (`str` or `None`): a reward model, as in TRL's GRPO script.
        dataset_prompt_column (`str` or `None`): build the conversational `prompt` from this column (e.g.
            `problem` in MATH) with `system_prompt` as the system message.
        system_prompt (`str` or `None`): the system message used with `dataset_prompt_column`.
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
    """Reward functions for a run: the task's, then ``reward_funcs`` by name or import path, then a reward model."""
    rewards: list[Any] = list(task.reward_funcs) if task is not None else []
    by_name = {getattr(f, "__name__", str(f)): f for f in rewards}
    trl_rewards = _trl_reward_registry() if script_args.reward_funcs else {}
    for name in script_args.reward_funcs or []:
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


def method_metrics(logs: dict[str, Any], trainer_name: str | None = None) -> list[tuple[str, float]]:
    """The method metrics of one log to show on the console: the key metrics (``trl_ext.catalogue.KEY_METRICS``) of
    every built-in namespace present, else up to three of the trainer's own namespace (``<trainer_name>/...``, for a
    third-party trainer)."""
    from trl_ext.catalogue import KEY_METRICS

    shown = [key for keys in KEY_METRICS.values() for key in keys if key in logs]
    if not shown and trainer_name:
        shown = sorted(key for key in logs if key.startswith(f"{trainer_name}/"))[:3]
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

    trainer = trainer_cls(
        model=model,
        reward_funcs=resolve_reward_funcs(script_args, task),
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )
    if training_args.disable_tqdm and any(type(c).__name__ == "_ProgressPrinter" for c in callbacks or []):
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # our one-line progress replaces the raw log dicts
    return trainer


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


def _peek_trainer_name(argv: list[str]) -> str:
    """The trainer named by ``--trainer`` or, failing that, by the YAML's ``trainer:`` key (default ``grpo``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--trainer")
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(argv)
    if known.trainer:
        return known.trainer
    if known.config:
        import yaml

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
    )


def _set_threads(script_args: TrainScriptArguments) -> None:
    """Apply ``threads`` (see :class:`TrainScriptArguments`)."""
    import torch

    threads = script_args.threads
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if threads is None and script_args.tiny_model and not torch.cuda.is_available():
        from trl_ext.data.quickstart import QUICKSTART_SETTINGS

        threads = QUICKSTART_SETTINGS.get("torch_num_threads", 1)
    if threads is not None:
        torch.set_num_threads(threads)


def train_main(argv: list[str] | None = None):
    """Entry point of ``recipes/train.py`` and ``trl-ext train``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    trainer_name = _peek_trainer_name(argv)
    parser = make_train_parser(trainer_name)
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(argv)
    _set_threads(script_args)
    if script_args.trainer != trainer_name:  # the YAML and --trainer disagree after parsing: trust the parsed value
        raise ValueError(f"trainer: parsed {script_args.trainer!r} but the config class is for {trainer_name!r}")
    return run_training(
        script_args, training_args, model_args, dataset_args, callbacks=[ProgressPrinter(script_args.trainer)]
    )


def quickstart_main(argv: list[str] | None = None):
    """Train a named trainer on the built-in default task with a tiny model, offline, and report the reward."""
    from trl_ext.data import get_task
    from trl_ext.data.quickstart import QUICKSTART_SETTINGS
    from trl_ext.registry import get_trainer

    parser = argparse.ArgumentParser(prog="trl-ext quickstart", description=quickstart_main.__doc__)
    parser.add_argument("--trainer", default="grpo", help="registered trainer name (default: grpo)")
    parser.add_argument("--output_dir", default="outputs/quickstart", help="where checkpoints and the model go")
    parser.add_argument("--max_steps", type=int, default=None, help="override the number of optimizer steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: the quickstart setting, 1; a tiny model gains nothing from more)",
    )
    options = parser.parse_args(argv)
    if options.max_steps is not None and options.max_steps < 1:
        parser.error(f"--max_steps must be at least 1, got {options.max_steps}")
    if options.threads is not None and options.threads < 1:
        parser.error(f"--threads must be at least 1, got {options.threads}")

    import torch

    torch.set_num_threads(options.threads or QUICKSTART_SETTINGS.get("torch_num_threads", 1))

    from trl_ext.data.quickstart import QUICKSTART_TRAINER_OVERRIDES

    override = QUICKSTART_TRAINER_OVERRIDES.get(options.trainer, {})
    task = get_task(override.get("task", QUICKSTART_SETTINGS["task"]))
    num_rows = override.get("num_rows", QUICKSTART_SETTINGS["dataset"]["num_rows"])
    model_kwargs = dict(QUICKSTART_SETTINGS["model"])
    model_kwargs.setdefault("alphabet", task.alphabet)
    config = dict(QUICKSTART_SETTINGS["config"])
    config.update(override.get("config", {}))
    config.update(output_dir=options.output_dir, seed=options.seed, disable_tqdm=True, save_strategy="no")
    config.setdefault("report_to", "none")
    if options.max_steps is not None:
        config["max_steps"] = options.max_steps
    _, config_cls = get_trainer(options.trainer)
    training_args = config_cls(**config)
    script_args = TrainScriptArguments(trainer=options.trainer, task=task.name, task_num_rows=num_rows)

    from trl import ModelConfig

    from trl_ext.tiny_models import build_tiny_checkpoint

    if override:
        # The trainer's own task: `tiny_model` builds the quickstart's model in <output_dir>/tiny-model with the task's
        # alphabet and positions for its longest prompt plus the completion (build_trainer).
        script_args.tiny_model = True
        model_args = ModelConfig()
    else:
        checkpoint = build_tiny_checkpoint(os.path.join(options.output_dir, "tiny-model"), **model_kwargs)
        model_args = ModelConfig(model_name_or_path=checkpoint)
    print(
        f"trl-ext quickstart: trainer={options.trainer} task={task.name} ({task.description}); "
        f"{training_args.max_steps} steps on {'CPU' if training_args.use_cpu else 'the default device'}",
        flush=True,
    )
    progress = ProgressPrinter(options.trainer)
    start = time.perf_counter()
    run_training(script_args, training_args, model_args, callbacks=[progress])
    rewards, steps = progress.rewards, progress.steps
    elapsed = time.perf_counter() - start
    if not rewards:
        print(f"no reward was logged in {training_args.max_steps} step(s) ({elapsed:.0f}s)", flush=True)
        return None, None
    if len(rewards) < 2:  # one logging window: nothing to compare it with
        print(
            f"mean reward over steps 1-{steps[0]}: {rewards[0]:.3f} (a single logging window: run more steps to see "
            f"the trend; {elapsed:.0f}s)",
            flush=True,
        )
        return rewards[0], rewards[0]
    first, last = rewards[0], rewards[-1]
    print(
        f"mean reward over steps 1-{steps[0]}: {first:.3f}; over steps {steps[-2] + 1}-{steps[-1]}: {last:.3f} "
        f"({'rising' if last > first else 'NOT rising'}; {elapsed:.0f}s)",
        flush=True,
    )
    return first, last


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def list_main(argv: list[str] | None = None) -> None:
    """Print the trainers (name, what it changes, paper), then the advantage estimators and policy objectives.

    The built-in components are described by :mod:`trl_ext.catalogue` without importing them (no torch, no TRL
    trainer), so this prints at once; trainers, estimators or objectives that other packages register through entry
    points are loaded (and listed) only when such packages are installed.
    """
    from importlib.metadata import entry_points

    from trl_ext.catalogue import BUILTIN_ESTIMATORS, BUILTIN_OBJECTIVES, BUILTIN_TRAINERS

    trainers = {name: entry for name, entry in BUILTIN_TRAINERS.items()}
    estimators, objectives = dict(BUILTIN_ESTIMATORS), dict(BUILTIN_OBJECTIVES)
    groups = ("trl_ext.trainers", "trl_ext.advantage_estimators", "trl_ext.policy_objectives")
    if any(entry_points(group=group) for group in groups):  # third-party components: ask the registry
        from trl_ext.registry import (
            get_trainer_entry,
            list_advantage_estimators,
            list_policy_objectives,
            list_trainers,
        )

        for name in list_trainers():
            entry = get_trainer_entry(name)
            trainers.setdefault(name, (entry.changes, entry.paper))
        for name in list_advantage_estimators():
            estimators.setdefault(name, "(registered by another package)")
        for name in list_policy_objectives():
            objectives.setdefault(name, "(registered by another package)")
    _table([("name", "changes", "paper")] + [(n, *trainers[n]) for n in sorted(trainers)])
    print()
    _table([("advantage_estimator", "what it computes")] + [(n, estimators[n]) for n in sorted(estimators)])
    print()
    _table([("policy_objective", "what it computes")] + [(n, objectives[n]) for n in sorted(objectives)])
    print("\nCombine them in any config: advantage_estimator=NAME, policy_objective=NAME (docs/extending.md).")


def vllm_serve_command(argv: list[str]) -> list[str]:
    """The command ``trl vllm-serve`` would run for ``argv``, with HAPO's logits processor added to vLLM's
    ``--logits-processors`` (appended to the user's list if the option is given)."""
    from trl_ext.compat import vllm_serve_tools
    from trl_ext.rollout.vllm_temperature import LOGITS_PROCESSOR_FQCN

    make_parser, build_command = vllm_serve_tools()

    script_args, extra_args = make_parser(prog="trl-ext vllm-serve").parse_args_and_config(
        argv, return_remaining_strings=True
    )
    extra_args = list(extra_args or [])
    if "--logits-processors" in extra_args:
        position = extra_args.index("--logits-processors") + 1
        extra_args.insert(position, LOGITS_PROCESSOR_FQCN)
    else:
        extra_args += ["--logits-processors", LOGITS_PROCESSOR_FQCN]
    return build_command(script_args, extra_args)


def vllm_serve_main(argv: list[str] | None = None) -> None:
    """Replace this process with the vLLM server (see :func:`vllm_serve_command`), as ``trl vllm-serve`` does."""
    command = vllm_serve_command(list(sys.argv[1:] if argv is None else argv))
    env = os.environ.copy()
    env["VLLM_SERVER_DEV_MODE"] = "1"  # TRL's weight-transfer and prefix-cache endpoints live behind vLLM's dev mode
    print("trl-ext vllm-serve:", " ".join(command), flush=True)
    os.execve(command[0], command, env)


def compare_main(argv: list[str] | None = None):
    """``trl-ext compare``: see :mod:`trl_ext.compare`."""
    from trl_ext.compare import compare_main as main

    return main(argv)


COMMANDS = {
    "list": list_main,
    "train": train_main,
    "quickstart": quickstart_main,
    "compare": compare_main,
    "vllm-serve": vllm_serve_main,
}


def main(argv: list[str] | None = None) -> int:
    """``trl-ext {list,train,quickstart,compare,vllm-serve} ...``"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--version", "-V"):
        from importlib.metadata import version

        import trl

        print(f"trl-ext {version('trl-ext')} (trl {trl.__version__})")
        return 0
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        print(
            f"trl-ext: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)} (trl-ext --help)",
            file=sys.stderr,
        )
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: trl-ext {list,train,quickstart,compare,vllm-serve} [options]\n\n"
            "  list        the registered trainers (name, what it changes, paper)\n"
            "  train       train from a YAML recipe: trl-ext train --config recipes/grpo/quickstart.yaml\n"
            "  quickstart  train the default trainer on the built-in task with a tiny model, offline\n"
            "  compare     several trainers on one recipe and seeds, interleaved: table, JSON and plot\n"
            "  vllm-serve  `trl vllm-serve` with HAPO's vLLM logits processor registered (vllm_mode=server)\n\n"
            "`trl-ext train --trainer NAME --help` lists every config field of that trainer; "
            "`trl-ext --version` prints the versions."
        )
        return 0
    COMMANDS[argv[0]](argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
