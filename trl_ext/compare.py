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
rerun). The Python entry point is :func:`compare`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl_ext.catalogue import KEY_METRICS  # the method metrics shown in the Markdown table
from trl_ext.jsonio import write_json_atomic
from trl_ext.training import set_threads

__all__ = ["Arm", "compare", "compare_main", "parse_arm", "summarise"]

#: Fractions of the best reward (over every arm and seed) whose first crossing the table reports.
FRACTIONS = (0.5, 0.9)
RESULT_VERSION = 1


@dataclass
class Arm:
    """One arm of a comparison: a label, a registered trainer, and config overrides for that arm only."""

    label: str
    trainer: str
    overrides: dict[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        out: list[str] = []
        for key, value in self.overrides.items():
            out += [f"--{key}", value]
        return out


def parse_arm(spec: str) -> Arm:
    """``NAME:field=value[,field=value]`` or ``LABEL=TRAINER:field=value,...`` (a new arm with its own label)."""
    head, sep, rest = spec.partition(":")
    if not sep or not head:
        raise ValueError(f"--arm {spec!r}: expected NAME:field=value[,field=value] or LABEL=TRAINER:field=value")
    label, _, trainer = head.partition("=")
    trainer = trainer or label
    overrides: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--arm {spec!r}: {item!r} is not field=value")
        overrides[key.strip().lstrip("-")] = value.strip()
    return Arm(label=label.strip(), trainer=trainer.strip(), overrides=overrides)


def build_arms(trainers: list[str], arm_specs: list[str]) -> list[Arm]:
    """The arms: one per ``--trainers`` entry, with ``--arm`` overrides applied or added as new labelled arms."""
    from trl_ext.registry import list_trainers

    arms = {name: Arm(label=name, trainer=name) for name in trainers}
    for spec in arm_specs:
        arm = parse_arm(spec)
        if arm.label in arms:
            if arm.trainer != arms[arm.label].trainer:
                raise ValueError(f"--arm {spec!r}: arm {arm.label!r} already runs {arms[arm.label].trainer!r}")
            arms[arm.label].overrides.update(arm.overrides)
        else:
            arms[arm.label] = arm
    if not arms:
        raise ValueError("--trainers: name at least one trainer (see `trl-ext list`)")
    known = set(list_trainers())
    for arm in arms.values():
        if arm.trainer not in known:
            raise ValueError(f"arm {arm.label!r}: unknown trainer {arm.trainer!r}; registered: {sorted(known)}")
        if not arm.label.replace("-", "_").replace(".", "_").isidentifier():
            raise ValueError(f"arm {arm.label!r}: use letters, digits, '_', '-' or '.' in an arm's label")
    return list(arms.values())


# ---------------------------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------------------------


def _run_argv(arm: Arm, seed: int, config: str | None, max_steps: int | None, run_dir: Path, extra: list[str]):
    """The ``trl-ext train`` arguments of one run: compare's defaults, then the shared extras, then the arm's."""
    argv = ["--config", config] if config else []
    argv += ["--trainer", arm.trainer, "--output_dir", str(run_dir)]
    argv += ["--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]
    argv += list(extra)
    if max_steps is not None:
        argv += ["--max_steps", str(max_steps)]
    argv += arm.argv()
    argv += ["--seed", str(seed)]
    return argv


def _parse_run(arm: Arm, argv: list[str]):
    """Parse one run's arguments with the arm's trainer config; errors name the arm."""
    from trl_ext.training import make_train_parser

    parser = make_train_parser(arm.trainer)
    try:
        parsed = parser.parse_args_and_config(argv, return_remaining_strings=True)
    except SystemExit as exc:  # argparse reports bad values on stderr and exits
        raise ValueError(f"arm {arm.label!r}: its arguments do not parse ({' '.join(argv)})") from exc
    except (ValueError, TypeError) as exc:  # a config's own validation (e.g. a field out of range)
        raise ValueError(f"arm {arm.label!r}: {exc}") from exc
    *values, remaining = parsed
    if remaining:
        from trl_ext.registry import get_trainer

        fields = [item for item in remaining if item.startswith("--")] or remaining
        raise ValueError(
            f"arm {arm.label!r}: {', '.join(fields)} {'names' if len(fields) == 1 else 'name'} no field of "
            f"{get_trainer(arm.trainer)[1].__name__} (`trl-ext train --trainer {arm.trainer} --help` lists them)"
        )
    script_args, training_args, model_args, dataset_args = values
    return script_args, training_args, model_args, dataset_args


class _PeakMemory:
    """Peak memory of this process during a run: CUDA's allocator peak on a GPU, resident set size on a CPU."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _PeakMemory:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            import psutil

            process = psutil.Process()

            def sample() -> None:
                while not self._stop.is_set():
                    self.peak = max(self.peak, process.memory_info().rss)
                    self._stop.wait(0.05)

            self.peak = process.memory_info().rss
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.cuda else "cpu_rss"


def _make_recorder(progress):
    """A callback that records every log entry with a reward (and reports progress)."""
    from transformers import TrainerCallback

    class _Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.entries: list[dict[str, float]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs:
                return
            entry = {key: float(value) for key, value in logs.items() if isinstance(value, int | float)}
            entry["step"] = float(state.global_step)
            self.entries.append(entry)
            if state.is_world_process_zero:
                progress(state.global_step, state.max_steps, entry["reward"])

    return _Recorder()


def _completions_per_step(training_args, num_processes: int) -> float:
    """Completions generated per optimizer step: the generation batch spread over its optimizer steps."""
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * num_processes
    return per_step / max(int(getattr(training_args, "num_iterations", 1) or 1), 1)


def _run_key(arm: Arm, argv: list[str]) -> str:
    """What makes a stored run reusable: the trainer, the run's arguments and the recipe's *contents* (not where
    the output or the recipe file live, so a moved or copied comparison still resumes)."""
    kept, recipe, skip = [], "", False
    for index, item in enumerate(argv):
        if skip:
            skip = False
            continue
        if item in ("--output_dir", "--config"):
            skip = True
            if item == "--config":
                recipe = Path(argv[index + 1]).read_text()
            continue
        kept.append(item)
    blob = json.dumps(
        {"trainer": arm.trainer, "argv": kept, "recipe": recipe, "version": RESULT_VERSION}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_json(path: Path, payload: dict) -> None:
    """Write atomically (a half-written result must never look finished), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, payload, indent=1)


def _train_one(arm: Arm, seed: int, parsed, model_factory, progress) -> dict:
    from trl_ext.training import build_trainer

    script_args, training_args, model_args, dataset_args = parsed
    if model_factory is not None:
        model_args.model_name_or_path = model_factory(seed)
        script_args.tiny_model = False
    recorder = _make_recorder(progress)
    started = time.perf_counter()
    with _PeakMemory() as memory:
        trainer = build_trainer(script_args, training_args, model_args, dataset_args, callbacks=[recorder])
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
        trainer.train()
    wall = time.perf_counter() - started
    per_step = _completions_per_step(training_args, trainer.accelerator.num_processes)
    entries = recorder.entries
    namespace = f"{arm.trainer}/"
    metric_keys = sorted({key for entry in entries for key in entry if key.startswith(namespace)})
    result = {
        "version": RESULT_VERSION,
        "arm": arm.label,
        "trainer": arm.trainer,
        "overrides": arm.overrides,
        "seed": seed,
        "steps": [int(entry["step"]) for entry in entries],
        "reward": [entry["reward"] for entry in entries],
        "step_time": [entry.get("step_time", math.nan) for entry in entries],
        "frac_reward_zero_std": [entry.get("frac_reward_zero_std", math.nan) for entry in entries],
        "completions": [int(entry["step"]) * per_step for entry in entries],
        "metrics": {key: [entry.get(key, math.nan) for entry in entries] for key in metric_keys},
        "peak_memory_bytes": int(memory.peak),
        "peak_memory_kind": memory.kind,
        "num_processes": trainer.accelerator.num_processes,
        "wall_seconds": wall,
    }
    del trainer
    import gc

    gc.collect()
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Summary, table, plot
# ---------------------------------------------------------------------------------------------------------------------


def _window(n: int) -> int:
    return max(1, n // 10)


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _spread(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(results: list[dict], arms: list[Arm]) -> dict:
    """Per arm over seeds: final and best reward, steps to fractions of the best reward, step time and its ratio to
    the first arm, peak memory, and the trainer's own metrics (means over the run)."""
    by_arm: dict[str, list[dict]] = {arm.label: [] for arm in arms}
    for result in results:
        by_arm.setdefault(result["arm"], []).append(result)
    curves = {
        (r["arm"], r["seed"]): _moving_average(r["reward"], _window(len(r["reward"]))) for r in results if r["reward"]
    }
    best = max((max(curve) for curve in curves.values()), default=0.0)
    summary: dict[str, Any] = {"best_reward": best, "fractions": list(FRACTIONS), "arms": {}}
    first_time = None
    for arm in arms:
        runs = sorted(by_arm.get(arm.label, []), key=lambda r: r["seed"])
        row: dict[str, Any] = {"trainer": arm.trainer, "overrides": arm.overrides, "seeds": [r["seed"] for r in runs]}
        finals, bests, times, memory = [], [], [], []
        reach: dict[str, list[int | None]] = {f"{f:g}": [] for f in FRACTIONS}
        metrics: dict[str, list[float]] = {}
        for run in runs:
            n = len(run["reward"])
            if not n:
                continue
            curve = curves[(run["arm"], run["seed"])]
            finals.append(statistics.fmean(run["reward"][-_window(n) :]))
            bests.append(max(curve))
            for fraction in FRACTIONS:
                target = fraction * best
                step = next((s for s, v in zip(run["steps"], curve) if v >= target), None) if best > 0 else None
                reach[f"{fraction:g}"].append(step)
            times.extend(t for t in run["step_time"][1:] if not math.isnan(t))  # the first step includes warm-up
            memory.append(run["peak_memory_bytes"] / 2**20)
            for key, values in run["metrics"].items():
                finite = [v for v in values if not math.isnan(v)]
                if finite:
                    metrics.setdefault(key, []).append(statistics.fmean(finite))
        row["final_reward"] = _spread(finals)
        row["best_reward"] = _spread(bests)
        row["steps_to_fraction_of_best"] = {
            key: {
                "mean": statistics.fmean(s for s in steps if s is not None),
                "reached": sum(s is not None for s in steps),
            }
            if any(s is not None for s in steps)
            else {"mean": None, "reached": 0}
            for key, steps in reach.items()
        }
        row["median_step_time"] = statistics.median(times) if times else None
        if first_time is None:
            first_time = row["median_step_time"]
        row["step_time_ratio"] = (
            row["median_step_time"] / first_time if row["median_step_time"] and first_time else None
        )
        row["peak_memory_mb"] = max(memory) if memory else None
        row["peak_memory_kind"] = runs[0]["peak_memory_kind"] if runs else None
        row["metrics"] = {key: _spread(values) for key, values in sorted(metrics.items())}
        summary["arms"][arm.label] = row
    return summary


def _fmt(spread: dict | None, digits: int = 3) -> str:
    if spread is None:
        return "n/a"
    if spread["n"] == 1 or spread["min"] == spread["max"]:
        return f"{spread['mean']:.{digits}f}"
    return f"{spread['mean']:.{digits}f} [{spread['min']:.{digits}f}, {spread['max']:.{digits}f}]"


def markdown_table(summary: dict, arms: list[Arm]) -> str:
    """The comparison as a Markdown table (mean [min, max] over seeds)."""
    fractions = summary["fractions"]
    header = ["arm", "trainer", "final reward", "best reward"]
    header += [f"steps to {f:g} x best" for f in fractions]
    header += ["median step (s)", "/ first", "peak memory (MiB)", "own metrics (run means)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in arms:
        row = summary["arms"][arm.label]
        n = len(row["seeds"])
        cells = [
            arm.label + (f" ({', '.join(f'{k}={v}' for k, v in arm.overrides.items())})" if arm.overrides else "")
        ]
        cells += [arm.trainer, _fmt(row["final_reward"]), _fmt(row["best_reward"])]
        for f in fractions:
            reach = row["steps_to_fraction_of_best"][f"{f:g}"]
            cells.append("never" if reach["mean"] is None else f"{reach['mean']:.0f} ({reach['reached']}/{n})")
        cells.append("n/a" if row["median_step_time"] is None else f"{row['median_step_time']:.3f}")
        cells.append("n/a" if row["step_time_ratio"] is None else f"{row['step_time_ratio']:.3f}")
        cells.append("n/a" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}")
        shown = [k for k in KEY_METRICS.get(arm.trainer, ()) if k in row["metrics"]] or list(row["metrics"])[:3]
        cells.append("; ".join(f"{k} {_fmt(row['metrics'][k])}" for k in shown) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    memory_kind = next((r["peak_memory_kind"] for r in summary["arms"].values() if r["peak_memory_kind"]), None)
    note = (
        f"\nReward: the training reward logged at each step; final = mean over the last 10% of steps, best = the "
        f"highest moving average (window: 10% of the steps); fractions are of the best moving average of any arm and seed "
        f"({summary['best_reward']:.3f}); (k/n) = seeds that reached it. Step time: median over steps after the "
        f"first. Peak memory: {'the CUDA allocator peak' if memory_kind == 'cuda_max_allocated' else 'the process resident set'} "
        f"of the main process "
        f"during the run (largest over seeds).\n"
    )
    return "\n".join(lines) + "\n" + note


def plot(results: list[dict], arms: list[Arm], path: Path) -> bool:
    """Reward against steps and against completions consumed; mean and min-max band over seeds per arm."""
    try:
        import matplotlib
    except ImportError:
        print("trl-ext compare: matplotlib is not installed (pip install 'trl-ext[bench]'); no plot written")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, arm in enumerate(arms):
        runs = [r for r in results if r["arm"] == arm.label and r["reward"]]
        if not runs:
            continue
        length = min(len(r["reward"]) for r in runs)
        curves = [_moving_average(r["reward"][:length], _window(length)) for r in runs]
        mean = [statistics.fmean(c[i] for c in curves) for i in range(length)]
        low = [min(c[i] for c in curves) for i in range(length)]
        high = [max(c[i] for c in curves) for i in range(length)]
        color = f"C{index % 10}"
        for axis, x in ((axes[0], runs[0]["steps"][:length]), (axes[1], runs[0]["completions"][:length])):
            axis.plot(x, mean, color=color, label=f"{arm.label} ({len(runs)} seeds)")
            axis.fill_between(x, low, high, color=color, alpha=0.15)
    axes[0].set_xlabel("optimizer step")
    axes[1].set_xlabel("completions consumed")
    for axis in axes:
        axis.set_ylabel("training reward (moving average)")
        axis.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("trl-ext compare: mean over seeds, band = min-max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------------------------------


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

    output = Path(output_dir)
    extra = list(extra_args or [])
    arm_list = build_arms(list(trainers), list(arms or []))

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
    first = _parse_run(arm_list[0], _run_argv(arm_list[0], 0, config_path, max_steps, output, extra)[:-2])
    state = PartialState()
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"--seeds: give at least one seed, got {seeds}")
        seed_list = [first[1].seed + i for i in range(seeds)]
    else:
        seed_list = [int(s) for s in seeds]
        if not seed_list or len(set(seed_list)) != len(seed_list):
            raise ValueError(f"--seeds: give distinct seeds, got {seed_list}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"--max_steps: must be at least 1, got {max_steps}")

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
            argv = _run_argv(arm, seed, config_path, max_steps, run_dir, extra)
            parsed = _parse_run(arm, argv)
            if parsed[1].max_steps is None or parsed[1].max_steps < 1:
                raise ValueError(
                    f"arm {arm.label!r}: set max_steps (in the recipe or --max_steps) to a positive value"
                )
            key = _run_key(arm, argv)
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
            script_args, training_args, model_args, dataset_args = _parse_run(arm, argv)
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
            _write_json(result_path(arm, seed), result)
        state.wait_for_everyone()
        results.append(result)

    summary = summarise(results, arm_list)
    command = "trl-ext compare " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["compare"] else None
    report = {
        "command": command,
        "arms": [vars(arm) for arm in arm_list],
        "seeds": seed_list,
        "config": config_path,
        "extra_args": extra,
        "summary": summary,
        "results": results,
    }
    if state.is_main_process:
        _write_json(output / "comparison.json", report)
        table = markdown_table(summary, arm_list)
        (output / "comparison.md").write_text(table)
        plotted = plot(results, arm_list, output / "comparison.png")
        say("\n" + table)
        ranked = sorted(
            arm_list,
            key=lambda a: -(summary["arms"][a.label]["final_reward"] or {"mean": -math.inf})["mean"],
        )
        leader = summary["arms"][ranked[0].label]["final_reward"]
        say(
            f"highest final reward: {ranked[0].label} {leader['mean']:.3f} (mean over {len(seed_list)} seed{'s' if len(seed_list) != 1 else ''})"
            if leader
            else "no rewards were logged"
        )
        say(
            f"wrote {output / 'comparison.md'}, {output / 'comparison.json'}"
            + (f", {output / 'comparison.png'}" if plotted else "")
        )
    state.wait_for_everyone()
    return report


def compare_main(argv: list[str] | None = None) -> dict:
    """Entry point of ``trl-ext compare``."""
    parser = argparse.ArgumentParser(
        prog="trl-ext compare",
        description="Train several trainers on the same recipe and seeds, interleaved, and compare them "
        "(table, JSON, plot). Arguments not listed here go to every run (any `trl-ext train` option).",
        epilog="Example: trl-ext compare --trainers grpo bnpo hapo --config recipes/grpo/quickstart.yaml "
        "--seeds 2 --max_steps 60",
    )
    parser.add_argument("--trainers", nargs="+", required=True, help="registered trainer names, one arm each")
    parser.add_argument("--config", help="recipe YAML (as for `trl-ext train --config`)")
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[3],
        help="a number of seeds (from the recipe's seed), or --seeds 0 1 2",
    )
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
    if options.threads is not None and options.threads < 1:
        parser.error(f"--threads must be at least 1 (torch CPU threads), got {options.threads}")
    seeds: int | list[int] = options.seeds
    if len(options.seeds) == 1 and not options.seed_list:
        seeds = options.seeds[0]
    set_threads(options.threads, option="--threads")
    try:
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
    except ValueError as exc:
        print(f"trl-ext compare: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
