"""``trl-ext compare``: several trainers on the same recipe, model, data and seeds, side by side.

    trl-ext compare --trainers grpo bnpo hapo --config my_recipe.yaml --seeds 3 [--max_steps N] [--output_dir D]
    trl-ext compare --trainers grpo hapo --arm hapo_ref=hapo:hapo_entropy_sign_mode=reference --task arithmetic \\
        --tiny_model --max_steps 50 --seeds 2
    accelerate launch -m trl_ext.cli compare ...      # every run uses all the launched processes

Every *run* (one arm, one seed) is a normal ``trl-ext train`` run of the recipe with that trainer and seed; any
argument ``compare`` does not know goes to every run (``--learning_rate 1e-4``, ``--task arithmetic``, ...), and an
arm's overrides (``--arm NAME:field=value[,field=value]``) go to that arm only. Runs are interleaved (seed by seed,
arm order reversed on every other seed), so machine noise falls on every arm alike.

Before any training, every arm is parsed with its trainer's config and its trainer is built once (model, data,
rewards) on the first seed: an unknown trainer, an override that names no field of the arm's config, or a recipe the
trainer cannot run (DIVA without an ``id`` column, say) fails with a message naming the arm. ``--no_preflight`` skips
the build (the parse still runs).

Writes, under ``--output_dir``: ``runs/<arm>/seed-<seed>.json`` (one per finished run: per-step reward, step time,
completions consumed and the trainer's own metrics), ``comparison.json`` and ``comparison.md`` (the table) and
``comparison.png`` (reward against steps and against completions consumed, a band over seeds per arm). A finished
run is not rerun: run the same command again to resume an interrupted comparison (a run whose settings changed is
rerun). ``--replot --output_dir D`` re-derives the summary, table and plot from the runs stored in
``D/comparison.json`` without training. The Python entry point is :func:`compare`.

The package: :mod:`~trl_ext.compare.arms` (arm specs, each run's arguments), :mod:`~trl_ext.compare.running` (one
arm, one seed), :mod:`~trl_ext.compare.reporting` (summary, table, plot) and :mod:`~trl_ext.compare.harness` (what
``benchmarks/`` and ``experiments/`` share with it). No module here imports torch or TRL until it trains.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from trl_ext.compare.arms import Arm, build_arms, parse_arm, parse_run, run_argv, run_key
from trl_ext.compare.harness import add_common_args
from trl_ext.compare.reporting import markdown_table, plot, replot, summarise, write_comparison
from trl_ext.compare.running import train_one as _train_one
from trl_ext.errors import OneLineArgumentParser, UserInputError, user_input
from trl_ext.jsonio import write_json_atomic

__all__ = ["Arm", "compare", "compare_main", "markdown_table", "parse_arm", "plot", "replot", "summarise"]


def compare(
    trainers: list[str],
    *,
    config: str | dict | None = None,
    seeds: int | list[int] = 3,
    max_steps: int | None = None,
    output_dir: str | os.PathLike = "outputs/compare",
    arms: list[str] | None = None,
    extra_args: list[str] | None = None,
    preflight: bool = True,
    model_factory=None,
    log=print,
) -> dict:
    """Train every arm on the same recipe and seeds; write the runs, the table, the JSON and the plot.

    Args:
        trainers: registered trainer names, one arm each (the first is the reference of the step-time ratio).
        config: a recipe YAML path (as for ``trl-ext train --config``) or a dict of the same fields.
        seeds: a number of seeds (the recipe's ``seed`` and the following ones) or an explicit list.
        max_steps: optimizer steps per run (default: the recipe's).
        output_dir: where runs and reports go; rerunning with the same arguments resumes.
        arms: ``--arm`` specs (``NAME:field=value,...`` or ``LABEL=TRAINER:field=value,...``).
        extra_args: further ``trl-ext train`` arguments for every run (``["--task", "arithmetic"]``).
        preflight: build each arm's trainer once before any training, so that a recipe an arm cannot run fails first.
        model_factory: ``seed -> model path``, a model per seed (replaces ``model_name_or_path`` / ``tiny_model``).
        log: where progress lines go (the main process only).

    Returns:
        the ``comparison.json`` payload: ``{"arms", "seeds", "summary", "results", "command"}``.
    """
    from accelerate import PartialState

    def say(*args: Any) -> None:  # the main process speaks; asked each time (the state is set up by the first parse)
        if PartialState().is_main_process:
            log(*args)

    # Set-up, up to and including the preflight build: anything raised here is the user's input to fix (a bad arm,
    # value, path, recipe or model), reported as a UserInputError naming it; the command line prints it in one line.
    with user_input():
        output = Path(output_dir)
        extra = list(extra_args or [])
        arm_list = build_arms(list(trainers), list(arms or []))
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
            # Before any parse (a run's config would refuse 0 too, but naming the arm rather than the option).
            raise ValueError(f"--max_steps must be at least 1, got {max_steps!r}")

        config_path: str | None
        if isinstance(config, dict):
            import yaml

            # Written by every process (same text, atomic rename): the distributed state is not set up before the
            # first parse, so no process can tell yet whether it is the main one.
            config_path = str(output / "recipe.yaml")
            output.mkdir(parents=True, exist_ok=True)
            tmp = output / f"recipe.yaml.{os.getpid()}.tmp"
            tmp.write_text(yaml.safe_dump(config, sort_keys=False))
            os.replace(tmp, config_path)
        else:
            config_path = str(config) if config is not None else None
            if config_path is not None and not Path(config_path).is_file():
                raise ValueError(f"--config: no such file {config_path!r}")

        # Seeds: a count starts at the recipe's seed (parsed with the first arm's config). Parsing builds the training
        # arguments, which set up the distributed state under `accelerate launch`.
        first = parse_run(arm_list[0], run_argv(arm_list[0], 0, config_path, max_steps, output, extra)[:-2])
        state = PartialState()
        if isinstance(seeds, int):
            if seeds < 1:
                raise ValueError(f"--seeds: give at least one seed, got {seeds}")
            seed_list = [first[1].seed + i for i in range(seeds)]
        else:
            seed_list = [int(s) for s in seeds]
            if not seed_list or len(set(seed_list)) != len(seed_list):
                raise ValueError(f"--seeds: give distinct seeds, got {seed_list}")

        def result_path(arm: Arm, seed: int) -> Path:
            return output / "runs" / arm.label / f"seed-{seed}.json"

        def finished(arm: Arm, seed: int, key: str) -> dict | None:
            path = result_path(arm, seed)
            if not path.is_file():
                return None
            try:
                result = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return None
            return result if result.get("key") == key else None

        # Every run's arguments, parsed now (a bad override or value fails before any training), with its resume key and
        # its stored result if it already finished. A run trains with the arguments parsed here.
        plan: list[tuple[Arm, int, list[str], tuple, str, dict | None]] = []
        for index, seed in enumerate(seed_list):
            order = arm_list if index % 2 == 0 else list(reversed(arm_list))
            for arm in order:
                run_dir = output / "runs" / arm.label / f"seed-{seed}"
                argv = run_argv(arm, seed, config_path, max_steps, run_dir, extra)
                parsed = parse_run(arm, argv)
                if parsed[1].max_steps is None or parsed[1].max_steps < 1:
                    raise ValueError(
                        f"arm {arm.label!r}: set max_steps (in the recipe or --max_steps) to a positive value"
                    )
                key = run_key(arm, argv)
                plan.append((arm, seed, argv, parsed, key, finished(arm, seed, key)))

        todo = [entry for entry in plan if entry[5] is None]
        say(
            f"trl-ext compare: {len(arm_list)} arms x {len(seed_list)} seeds = {len(plan)} runs"
            + (f" ({len(plan) - len(todo)} already finished)" if len(todo) < len(plan) else "")
            + f"; output in {output}"
        )

        if preflight and todo:
            checked: set[str] = set()
            from trl_ext.training import build_trainer

            for arm, _seed, argv, _parsed, _key, _done in todo:
                if arm.label in checked:
                    continue
                checked.add(arm.label)
                # parsed afresh: building a trainer mutates its arguments, and the run itself uses the plan's copy
                script_args, training_args, model_args, dataset_args = parse_run(arm, argv)
                if model_factory is not None:
                    model_args.model_name_or_path = model_factory(_seed)
                    script_args.tiny_model = False
                try:
                    trainer = build_trainer(script_args, training_args, model_args, dataset_args)
                except Exception as exc:  # report which arm cannot run the recipe, before anything trains
                    raise ValueError(f"arm {arm.label!r} ({arm.trainer}) cannot run this recipe: {exc}") from exc
                del trainer
            say(f"preflight: every arm builds ({', '.join(a.label for a in arm_list)})")

    started = time.perf_counter()
    steps_total = sum(entry[3][1].max_steps for entry in todo)
    steps_done = 0
    results: list[dict] = []
    for number, (arm, seed, _argv, parsed, key, done) in enumerate(plan, start=1):
        if done is not None:
            results.append(done)
            continue
        run_steps = parsed[1].max_steps
        say(f"[{number}/{len(plan)}] arm {arm.label} ({arm.trainer}) seed {seed}: {run_steps} steps")
        every = max(1, run_steps // 10)

        def progress(
            step: int, total: int, reward: float, _label=arm.label, _seed=seed, _base=steps_done, _every=every
        ) -> None:
            if step % _every and step != total:
                return
            elapsed = time.perf_counter() - started
            remaining = steps_total - (_base + step)
            eta = elapsed / max(_base + step, 1) * remaining
            say(f"  {_label} seed {_seed} step {step}/{total} reward {reward:.3f} | ETA {eta / 60:.1f} min")

        result = _train_one(arm, seed, parsed, model_factory, progress)
        result["key"] = key
        steps_done += run_steps
        if state.is_main_process:
            path = result_path(arm, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, result, indent=1)  # a half-written result must never look finished
        state.wait_for_everyone()
        results.append(result)

    command = "trl-ext compare " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["compare"] else None
    report = {
        "command": command,
        "arms": [vars(arm) for arm in arm_list],
        "seeds": seed_list,
        "config": config_path,
        "extra_args": extra,
        "summary": summarise(results, arm_list),
        "results": results,
    }
    if state.is_main_process:
        write_comparison(output, report, arm_list, say)
    state.wait_for_everyone()
    return report


def compare_main(argv: list[str] | None = None) -> dict:
    """Entry point of ``trl-ext compare``."""
    parser = OneLineArgumentParser(
        prog="trl-ext compare",
        description="Train several trainers on the same recipe and seeds, interleaved, and compare them "
        "(table, JSON, plot). Arguments not listed here go to every run (any `trl-ext train` option).",
        epilog="Example: trl-ext compare --trainers grpo bnpo hapo --config recipes/grpo/quickstart.yaml "
        "--seeds 2 --max_steps 60",
    )
    parser.add_argument("--trainers", nargs="+", help="registered trainer names, one arm each")
    parser.add_argument("--config", help="recipe YAML (as for `trl-ext train --config`)")
    add_common_args(parser, None, seeds=[3], seeds_help="a number of seeds (from the recipe's seed), or --seeds 0 1 2")
    parser.add_argument("--seed_list", action="store_true", help="read one --seeds value as a seed, not a count")
    parser.add_argument("--max_steps", type=int, default=None, help="optimizer steps per run (default: the recipe's)")
    parser.add_argument("--output_dir", default="outputs/compare", help="runs and reports; rerun to resume")
    parser.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="SPEC",
        help="per-arm overrides: NAME:field=value[,field=value] for an arm of --trainers, or "
        "LABEL=TRAINER:field=value,... for an extra arm",
    )
    parser.add_argument("--no_preflight", action="store_true", help="do not build each arm's trainer before training")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 suits tiny models)"
    )
    options, extra = parser.parse_known_args(argv)
    if options.replot:  # comparison.json, .md and .png from the runs stored in --output_dir
        if not (Path(options.output_dir) / "comparison.json").is_file():
            raise UserInputError(
                f"--replot: no comparison.json in --output_dir {options.output_dir!r} (run the comparison first)"
            )
        return replot(options.output_dir)
    if not options.trainers:
        parser.error("the following arguments are required: --trainers")
    if options.threads is not None and options.threads < 1:
        parser.error(f"--threads must be at least 1 (torch CPU threads), got {options.threads}")
    seeds: int | list[int] = options.seeds
    if len(options.seeds) == 1 and not options.seed_list:
        seeds = options.seeds[0]
    from trl_ext.training import set_threads

    set_threads(options.threads, option="--threads")
    return compare(
        options.trainers,
        config=options.config,
        seeds=seeds,
        max_steps=options.max_steps,
        output_dir=options.output_dir,
        arms=options.arm,
        extra_args=extra,
        preflight=not options.no_preflight,
    )
