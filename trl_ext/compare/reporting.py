"""A comparison's summary over seeds, its Markdown table and its plot (reward bands against steps and completions)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from trl_ext.catalogue import KEY_METRICS  # the method metrics shown in the Markdown table
from trl_ext.compare.arms import Arm
from trl_ext.compare.harness import band, figure, load_report, moving_average, spread, write_report

__all__ = ["markdown_table", "plot", "replot", "summarise", "write_comparison"]

#: Fractions of the best reward (over every arm and seed) whose first crossing the table reports.
FRACTIONS = (0.5, 0.9)


def _window(n: int) -> int:
    return max(1, n // 10)


def summarise(results: list[dict], arms: list[Arm]) -> dict:
    """Per arm over seeds: final and best reward, steps to fractions of the best reward, step time and its ratio to
    the first arm, peak memory, and the trainer's own metrics (means over the run)."""
    by_arm: dict[str, list[dict]] = {arm.label: [] for arm in arms}
    for result in results:
        by_arm.setdefault(result["arm"], []).append(result)
    curves = {
        (r["arm"], r["seed"]): moving_average(r["reward"], _window(len(r["reward"]))) for r in results if r["reward"]
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
        row["final_reward"] = spread(finals)
        row["best_reward"] = spread(bests)
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
        row["metrics"] = {key: spread(values) for key, values in sorted(metrics.items())}
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
        import matplotlib  # noqa: F401
    except ImportError:
        print("trl-ext compare: matplotlib is not installed (pip install matplotlib); no plot written")
        return False
    with figure(path, 1, 2, figsize=(11, 4.2)) as (fig, axes):
        for index, arm in enumerate(arms):
            runs = [r for r in results if r["arm"] == arm.label and r["reward"]]
            if not runs:
                continue
            length = min(len(r["reward"]) for r in runs)
            curves = [moving_average(r["reward"][:length], _window(length)) for r in runs]
            for axis, x in ((axes[0], runs[0]["steps"]), (axes[1], runs[0]["completions"])):
                band(axis, x, curves, color=f"C{index % 10}", label=f"{arm.label} ({len(runs)} seeds)")
        axes[0].set_xlabel("optimizer step")
        axes[1].set_xlabel("completions consumed")
        for axis in axes:
            axis.set_ylabel("training reward (moving average)")
            axis.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle("trl-ext compare: mean over seeds, band = min-max")
    return True


def write_comparison(output: Path, report: dict, arms: list[Arm], say=print, *, rederived: bool = False) -> None:
    """``comparison.json`` (with provenance), ``comparison.md`` and ``comparison.png`` under ``output``; the table."""
    summary = report["summary"]
    write_report(output / "comparison.json", report, rederived=rederived, log=None)
    table = markdown_table(summary, arms)
    (output / "comparison.md").write_text(table)
    plotted = plot(report["results"], arms, output / "comparison.png")
    say("\n" + table)
    ranked = sorted(arms, key=lambda a: -(summary["arms"][a.label]["final_reward"] or {"mean": -math.inf})["mean"])
    leader = summary["arms"][ranked[0].label]["final_reward"]
    seeds = len(report["seeds"])
    say(
        f"highest final reward: {ranked[0].label} {leader['mean']:.3f} (mean over {seeds} seed{'s' if seeds != 1 else ''})"
        if leader
        else "no rewards were logged"
    )
    say(
        f"wrote {output / 'comparison.md'}, {output / 'comparison.json'}"
        + (f", {output / 'comparison.png'}" if plotted else "")
    )


def replot(output_dir: str | Path, say=print) -> dict:
    """Re-derive a comparison's summary, table and plot from the runs stored in its ``comparison.json``."""
    output = Path(output_dir)
    report = load_report(output / "comparison.json")
    arms = [Arm(**arm) for arm in report["arms"]]
    report["summary"] = summarise(report["results"], arms)
    write_comparison(output, report, arms, say, rederived=True)
    return report
