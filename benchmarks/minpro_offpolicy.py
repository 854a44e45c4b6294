"""`grpo` versus `minpro` under strong off-policy drift on the built-in task, and MinPRO's step-time overhead.

    python benchmarks/minpro_offpolicy.py                          # the measured configuration (CPU, ~10-20 min)
    python benchmarks/minpro_offpolicy.py --seeds 0 --steps 64     # a quick look

Learning runs. A tiny randomly initialised Qwen2 (the quickstart's model: hidden 64, 2 layers) learns the built-in
``arithmetic`` task by RL alone, with every generation batch replayed ``--num_iterations`` times (8 by default), so
that later iterations train on rollouts of a policy that has drifted far from the current one, at two learning rates
(``--learning_rates``: the quickstart's 3e-3 and a high 1e-2). Three arms share every other setting
(``loss_type="dapo"``, eps 0.2, no KL, ``max_grad_norm=1``, 640 optimizer steps = 80 generation batches):

* ``grpo``: the baseline (``trl.GRPOTrainer``'s loss);
* ``minpro``: MinPRO with the spec's defaults (exclusive prefix, **uncapped**, ratio source ``old``);
* ``minpro_capped``: MinPRO with ``minpro_cap_at_one=True`` (the weight can only down-weight).

For every seed (model init, data order and sampling) the arms run in an order that rotates between seeds. Per run we
record the mean reward of every generation batch, the gradient norm of every optimizer step (before clipping) and
MinPRO's weight statistics, and summarise stability as

* final reward: mean reward of the last 5 generation batches; peak reward: the best 3-batch moving average;
* largest reward drop: the largest peak-to-trough fall of the 3-batch moving average, max_{s<t} (r_s - r_t);
* gradient-norm spikes: optimizer steps whose gradient norm exceeds 10x the median gradient norm of all active steps
  (gradient norm > 1e-6) of all runs of all arms (one shared threshold); and the largest gradient norm;
* collapse step: the first optimizer step from which the gradient norm stays below 1e-6 to the end of the run (the
  policy became deterministic on the training prompts, so every group has zero reward variance); none if never.

Step time. With the learning settings (and, separately, with longer completions on a wider model, the shape of
``benchmarks/overhead.py``), at the last learning rate, ``grpo`` and ``minpro`` train a few steps each, back to back, over repeats in alternating
order; from TRL's ``step_time`` (first step of each run dropped) we report the median over repeats of the paired ratio
of median step times, minpro / grpo (and the ratio of the pooled medians).

Writes ``benchmarks/results/minpro_offpolicy.json`` and ``benchmarks/results/minpro_offpolicy.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

#: arm -> (registered trainer, extra config fields)
ARMS: dict[str, tuple[str, dict]] = {
    "grpo": ("grpo", {}),
    "minpro": ("minpro", {}),
    "minpro_capped": ("minpro", {"minpro_cap_at_one": True}),
}
COLORS = {"grpo": "tab:blue", "minpro": "tab:orange", "minpro_capped": "tab:green"}
from common import moving_average  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SPIKE_FACTOR = 10.0
ACTIVE_GRAD_NORM = 1e-6
SMOOTHING = 3
FINAL_WINDOW = 5


# ----------------------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------------------
def _checkpoint(task, seed: int, **model_kwargs) -> str:
    from trl_ext.testing import build_tiny_checkpoint

    name = "-".join(f"{k}{v}" for k, v in sorted(model_kwargs.items()))
    cache = Path(tempfile.gettempdir()) / f"trl-ext-minpro-bench-{name}-seed{seed}"
    return build_tiny_checkpoint(str(cache), alphabet=task.alphabet, seed=seed, **model_kwargs)


def train_run(name: str, checkpoint: str, task, dataset, seed: int, **config) -> list[dict]:
    """Train the registered trainer ``name`` and return its log history."""
    from transformers import PrinterCallback

    import trl_ext.trainers.minpro  # noqa: F401  (registers "minpro")
    from trl_ext import get_trainer

    trainer_cls, config_cls = get_trainer(name)
    with tempfile.TemporaryDirectory() as output_dir:
        args = config_cls(
            output_dir=output_dir,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            bf16=False,
            disable_tqdm=True,
            seed=seed,
            **config,
        )
        trainer = trainer_cls(model=checkpoint, reward_funcs=task.reward_funcs, args=args, train_dataset=dataset)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        return [dict(entry) for entry in trainer.state.log_history]


def curves(history: list[dict]) -> dict:
    """Per-step and per-generation-batch series from a log history."""
    steps = [entry for entry in history if "grad_norm" in entry]

    def series(key: str) -> list[float]:
        return [entry[key] for entry in steps if key in entry]

    return {
        "reward_step": [entry["step"] for entry in steps if "reward" in entry],
        "reward": series("reward"),
        "grad_norm": series("grad_norm"),
        "step_time": series("step_time"),
        "entropy": series("entropy"),
        "weight_min": series("minpro/weight_min"),
        "weight_mean": series("minpro/weight_mean"),
        "weight_max": series("minpro/weight_max"),
        "frac_weight_below_half": series("minpro/frac_weight_below_half"),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Stability measures (pure functions of the curves)
# ----------------------------------------------------------------------------------------------------------------------
def largest_drop(values: list[float]) -> float:
    """Largest peak-to-trough fall, max_{s<t} (v_s - v_t), of a sequence (0 if it never falls)."""
    peak, drop = -math.inf, 0.0
    for value in values:
        peak = max(peak, value)
        drop = max(drop, peak - value)
    return drop


def collapse_step(grad_norms: list[float], threshold: float = ACTIVE_GRAD_NORM) -> int | None:
    """First (1-based) step from which every gradient norm is below ``threshold``; None if the run never collapses."""
    step = None
    for index in range(len(grad_norms) - 1, -1, -1):
        if grad_norms[index] >= threshold:
            break
        step = index + 1
    return step


def summarise(run: dict, spike_threshold: float) -> dict:
    reward, grad_norms = run["reward"], run["grad_norm"]
    smoothed = moving_average(reward, SMOOTHING)
    return {
        "final_reward": statistics.fmean(reward[-FINAL_WINDOW:]),
        "peak_reward": max(smoothed),
        "largest_reward_drop": largest_drop(smoothed),
        "grad_norm_spikes": sum(g > spike_threshold for g in grad_norms),
        "max_grad_norm": max(grad_norms),
        "collapse_step": collapse_step(grad_norms),
    }


def _aggregate(values: list) -> dict:
    numbers = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(numbers) if numbers else None,
        "std": statistics.stdev(numbers) if len(numbers) > 1 else 0.0,
        "per_seed": values,
    }


def _rounded(value, digits: int = 5):
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {key: _rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item, digits) for item in value]
    return value


def dump_report(report: dict) -> str:
    """The report as JSON: floats to 5 significant digits; the per-run series one line each."""
    text = json.dumps(_rounded(report), indent=1)
    # Collapse lists of numbers onto one line (the per-step series would otherwise take a line per value).
    return re.sub(r"\[\s*([-0-9.eE+, \nNaInfitynul]+?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


# ----------------------------------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------------------------------
def plot(report: dict, path: Path) -> None:
    """One row of three panels (reward, gradient norm, MinPRO weight range) per learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = report["settings"]
    sweeps = report["sweeps"]
    fig, grid = plt.subplots(len(sweeps), 3, figsize=(18, 4.6 * len(sweeps)), squeeze=False)
    for axes, sweep in zip(grid, sweeps):
        _plot_sweep(axes, sweep, report["spike_threshold"], settings["num_iterations"])
    fig.suptitle(
        f"grpo vs minpro under off-policy drift: built-in '{settings['task']}' task, num_iterations "
        f"{settings['num_iterations']}, {settings['batch_size']} completions per generation batch, "
        f"{len(settings['seeds'])} seeds per arm (tiny model, CPU)",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_sweep(axes, sweep: dict, spike_threshold: float, num_iterations: int) -> None:
    lr = sweep["learning_rate"]
    for arm, runs in sweep["runs"].items():
        color = COLORS[arm]
        stats = sweep["summary"][arm]
        width = min(len(r["reward"]) for r in runs)
        steps = runs[0]["reward_step"][:width]
        smoothed = [moving_average(r["reward"][:width], SMOOTHING) for r in runs]
        label = (
            f"{arm}: final {stats['final_reward']['mean']:.2f}, "
            f"largest drop {stats['largest_reward_drop']['mean']:.2f}"
        )
        axes[0].plot(steps, [statistics.fmean(c) for c in zip(*smoothed)], color=color, label=label)
        axes[0].fill_between(
            steps, [min(c) for c in zip(*smoothed)], [max(c) for c in zip(*smoothed)], color=color, alpha=0.15
        )
        spikes = sum(stats["grad_norm_spikes"]["per_seed"])
        for index, run in enumerate(runs):
            # The largest gradient norm of each generation batch (its num_iterations optimizer steps), per run.
            norms, every = run["grad_norm"], num_iterations
            # A batch whose every group had equal rewards has zero gradient: left as a gap on the log scale.
            batch_max = [max(norms[i : i + every]) for i in range(0, len(norms), every)]
            batch_max = [g if g > ACTIVE_GRAD_NORM else float("nan") for g in batch_max]
            axes[1].plot(
                [i + 1 for i in range(0, len(norms), every)],
                batch_max,
                color=color,
                alpha=0.7,
                linewidth=0.8,
                label=f"{arm}: {spikes} spikes in all seeds, largest {max(stats['max_grad_norm']['per_seed']):.1f}"
                if index == 0
                else None,
            )
        if runs[0]["weight_mean"]:
            width = min(len(r["weight_max"]) for r in runs)
            for key, style in (("weight_max", "-"), ("weight_min", ":")):
                worst = max if key == "weight_max" else min
                values = [worst(c) for c in zip(*(r[key][:width] for r in runs))]
                axes[2].plot(range(1, width + 1), values, style, color=color, linewidth=0.8, label=f"{arm}: {key}")
    axes[1].axhline(spike_threshold, color="black", linestyle="--", linewidth=0.8, label="spike threshold")
    axes[1].set_yscale("log")
    axes[2].axhline(1.0, color="grey", linewidth=0.6)
    axes[2].set_yscale("log")
    axes[0].set(
        xlabel="optimizer step",
        ylabel=f"reward per generation batch ({SMOOTHING}-batch avg)",
        title=f"lr {lr:g}: reward, mean and min-max band over seeds",
    )
    axes[1].set(
        xlabel="optimizer step",
        ylabel="max grad norm before clipping (gaps: zero gradient)",
        title=f"lr {lr:g}: largest gradient norm per generation batch, every run",
    )
    axes[2].set(
        xlabel="optimizer step",
        ylabel="MinPRO weight M",
        title=f"lr {lr:g}: largest and smallest M in the batch (worst seed)",
    )
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="best")


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------
def timing(task, dataset, repeats: int, steps: int, model_kwargs: dict, config: dict) -> dict:
    """Interleaved step times of ``grpo`` and ``minpro`` on one setting.

    Each repeat runs both trainers back to back (the order alternates), so each repeat gives one paired ratio of
    median step times, minpro / grpo, taken close together in time; we report the median of these paired ratios
    (robust to load on a shared machine drifting between repeats) and the ratio of the pooled medians.
    """
    checkpoint = _checkpoint(task, 0, **model_kwargs)
    names = ("grpo", "minpro")
    samples: dict[str, list[float]] = {name: [] for name in names}
    paired: list[float] = []
    for repeat in range(repeats):
        medians = {}
        for name in names if repeat % 2 == 0 else tuple(reversed(names)):
            history = train_run(name, checkpoint, task, dataset, repeat, max_steps=steps, **config)
            step_times = curves(history)["step_time"][1:]
            samples[name].extend(step_times)
            medians[name] = statistics.median(step_times)
        paired.append(medians["minpro"] / medians["grpo"])
    pooled = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "model": model_kwargs,
        "config": config,
        "repeats": repeats,
        "steps": steps,
        "median_step_s": pooled,
        "num_samples": {name: len(values) for name, values in samples.items()},
        "ratio_of_medians": pooled["minpro"] / pooled["grpo"],
        "paired_ratios": paired,
        "ratio_minpro_vs_grpo": statistics.median(paired),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--task", default="arithmetic", help="built-in task (trl_ext.data.list_tasks())")
    parser.add_argument("--steps", type=int, default=640, help="optimizer steps per learning run")
    parser.add_argument("--num_iterations", type=int, default=8, help="updates per generation batch")
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[3e-3, 1e-2])
    parser.add_argument("--batch_size", type=int, default=128, help="completions per generation batch")
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--timing_repeats", type=int, default=10)
    parser.add_argument("--timing_steps", type=int, default=9, help="steps per timing run (the first is dropped)")
    parser.add_argument("--skip_timing", action="store_true")
    parser.add_argument("--replot", action="store_true", help="only redraw --plot from an existing --output JSON")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: robust to other jobs on a shared machine)"
    )
    parser.add_argument("--output", default=str(RESULTS / "minpro_offpolicy.json"))
    parser.add_argument("--plot", default=str(RESULTS / "minpro_offpolicy.png"))
    options = parser.parse_args(argv)
    if options.replot:
        report = json.loads(Path(options.output).read_text())
        plot(report, Path(options.plot))
        return report

    import torch

    from trl_ext.data import get_task
    from trl_ext.data.tasks import QUICKSTART_SETTINGS

    torch.set_num_threads(options.threads)
    start = time.perf_counter()
    task = get_task(options.task)
    model_kwargs = {k: v for k, v in QUICKSTART_SETTINGS["model"].items() if k not in ("alphabet", "seed")}
    config = dict(
        per_device_train_batch_size=options.batch_size,
        num_generations=options.num_generations,
        max_completion_length=task.max_completion_length,
        num_iterations=options.num_iterations,
        temperature=1.0,
        beta=0.0,
        loss_type="dapo",
    )

    arms = list(ARMS)
    runs: dict[float, dict[str, list[dict]]] = {lr: {arm: [] for arm in arms} for lr in options.learning_rates}
    for lr in options.learning_rates:
        for index, seed in enumerate(options.seeds):
            checkpoint = _checkpoint(task, seed, **model_kwargs)
            dataset = task.make_dataset(8192, seed)
            for arm in arms[index % len(arms) :] + arms[: index % len(arms)]:
                name, extra = ARMS[arm]
                run_start = time.perf_counter()
                history = train_run(
                    name, checkpoint, task, dataset, seed, learning_rate=lr, max_steps=options.steps, **config, **extra
                )
                run = curves(history)
                run["seed"] = seed
                runs[lr][arm].append(run)
                print(
                    f"lr {lr:g} seed {seed} {arm:>13}: final reward "
                    f"{statistics.fmean(run['reward'][-FINAL_WINDOW:]):.3f}, max grad norm "
                    f"{max(run['grad_norm']):.2f} ({time.perf_counter() - run_start:.0f}s)",
                    flush=True,
                )

    # One spike threshold for every arm and learning rate.
    active = [
        g
        for by_arm in runs.values()
        for arm in arms
        for run in by_arm[arm]
        for g in run["grad_norm"]
        if g > ACTIVE_GRAD_NORM
    ]
    spike_threshold = SPIKE_FACTOR * statistics.median(active)
    sweeps = []
    for lr in options.learning_rates:
        summary = {}
        for arm in arms:
            per_run = [summarise(run, spike_threshold) for run in runs[lr][arm]]
            summary[arm] = {key: _aggregate([stats[key] for stats in per_run]) for key in per_run[0]}
        sweeps.append({"learning_rate": lr, "summary": summary, "runs": runs[lr]})

    timings = []
    if not options.skip_timing:
        dataset = task.make_dataset(4096, 0)
        base = dict(config, learning_rate=options.learning_rates[-1])
        timings.append(timing(task, dataset, options.timing_repeats, options.timing_steps, model_kwargs, base))
        wide = {"hidden_size": 128, "num_layers": 4, "num_heads": 4}
        long_config = dict(base, per_device_train_batch_size=64, max_completion_length=8, num_iterations=2)
        timings.append(timing(task, dataset, options.timing_repeats, options.timing_steps, wide, long_config))

    report = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "settings": {
            "task": task.name,
            "seeds": options.seeds,
            "steps": options.steps,
            "num_iterations": options.num_iterations,
            "learning_rates": options.learning_rates,
            "batch_size": options.batch_size,
            "num_generations": options.num_generations,
            "max_completion_length": task.max_completion_length,
            "model": model_kwargs,
            "loss_type": "dapo",
            "arms": {arm: {"trainer": name, **extra} for arm, (name, extra) in ARMS.items()},
        },
        "spike_threshold": spike_threshold,
        "timing": timings,
        "sweeps": sweeps,
    }
    report["wall_s"] = time.perf_counter() - start

    keys = ("final_reward", "peak_reward", "largest_reward_drop", "grad_norm_spikes", "max_grad_norm")
    for sweep in sweeps:
        print(f"\nlr {sweep['learning_rate']:g}")
        print(f"{'arm':>13} " + " ".join(f"{key:>20}" for key in keys) + f" {'collapse step':>22}")
        for arm in arms:
            stats = sweep["summary"][arm]
            cells = [f"{stats[key]['mean']:.3f} ± {stats[key]['std']:.3f}" for key in keys]
            collapse = stats["collapse_step"]["per_seed"]
            print(f"{arm:>13} " + " ".join(f"{cell:>20}" for cell in cells) + f" {collapse!s:>22}")
    print(f"spike threshold: {spike_threshold:.3f} ({SPIKE_FACTOR:g} x the median active gradient norm)")
    for entry in timings:
        print(
            f"step time (model {entry['model']}, max_completion_length {entry['config']['max_completion_length']}, "
            f"num_iterations {entry['config']['num_iterations']}): grpo {entry['median_step_s']['grpo']:.4f}s, "
            f"minpro {entry['median_step_s']['minpro']:.4f}s; median paired ratio {entry['ratio_minpro_vs_grpo']:.3f} "
            f"(ratio of pooled medians {entry['ratio_of_medians']:.3f})"
        )
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    Path(options.output).write_text(dump_report(report))
    plot(report, Path(options.plot))
    print(f"\nwrote {options.output} and {options.plot} in {report['wall_s']:.0f}s; command: {report['command']}")
    return report


if __name__ == "__main__":
    main()
