"""`grpo` versus `hapo` on the built-in task: policy-entropy trajectories over seeds, and HAPO's step-time overhead.

Superseded for the learning question by ``experiments/hapo_fork.py``: its task has 2-token completions and trains
on-policy, so HAPO's clip terms never act and no fork token exists; its entropy comparison is not evidence about
HAPO's mechanism. Kept for the step-time measurements quoted in ``docs/trainers/hapo.md``.

    python experiments/hapo_entropy.py                                  # the measured configuration (CPU, 5-10 minutes)
    python experiments/hapo_entropy.py --seeds 0 --steps 60 --repeats 2  # a quick look

Learning runs. The quickstart's settings (``trl_ext.data.QUICKSTART_SETTINGS``: a tiny randomly initialised Qwen2,
the ``arithmetic`` task, 16 prompts x 8 completions per step, lr 1e-3, T0 = 1) with two arms:

* ``grpo``: the baseline (``trl.GRPOTrainer``'s advantage and loss);
* ``hapo``: the ``hapo`` trainer with the spec's defaults (all four components, ``"signed"`` mode, tau 0.05, c = 10).

Per seed (model init, data order and sampling, all from the one seed) both arms train ``--steps`` optimizer steps with
``logging_steps=1``; we record TRL's ``entropy`` (mean token entropy of the policy at T0 on the loss tokens), the mean
reward, and for ``hapo`` the realised rollout temperature range. The plot shows the mean over seeds with the range
over seeds as a band.

Step time. On a wider model with longer completions (the shape of ``benchmarks/overhead.py``: hidden 128, 4 layers,
64 completions of exactly ``--timing_tokens`` tokens, forced with ``min_new_tokens`` so that every arm generates the
same number of tokens), three arms train ``--timing_steps`` steps each, back to back, in an order that rotates
between repeats: ``grpo``, ``hapo`` without adaptive temperature and ``hapo`` with it. The same is repeated in the
``quickstart`` shape (the learning runs' model and batch, 2-token completions, ``2 * --timing_steps`` steps), where a
step is ~4x shorter and HAPO's fixed per-step bookkeeping weighs more. We time every optimizer step
(generation included) twice: TRL's ``step_time`` (wall clock) and the process CPU time (one torch thread). On shared
cores the two agree closely (other processes slow this one down rather than deschedule it), so neither removes the
noise; the repeats and the robust statistics below do. Dropping the
first step of each run (warm-up), we report per arm and clock the median over repeats of the paired ratio (median
step time of the arm / that of ``grpo`` in the same repeat), the ratio of the pooled medians, and the ratio of the
pooled 10th percentiles (contention only adds time, so the fast tail is the most robust view of the work done).

Writes ``experiments/results/hapo_entropy.json`` and ``experiments/results/hapo_entropy.png``. Run with one torch
thread (set here): on shared CPU cores more threads are slower and noisier.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from trl_ext.compare.harness import moving_average  # noqa: E402

RESULTS = Path(__file__).parent / "results"
COLORS = {"grpo": "tab:blue", "hapo": "tab:red"}
#: timing arm -> (registered trainer, extra config fields)
TIMING_ARMS: dict[str, tuple[str, dict]] = {
    "grpo": ("grpo", {}),
    "hapo_no_temperature": ("hapo", {"hapo_adaptive_temperature": False}),
    "hapo": ("hapo", {}),
}


def _cpu_time_callback(cpu_times: list[float]):
    """A TrainerCallback appending the process CPU time of every optimizer step (generation included) to cpu_times."""
    from transformers import TrainerCallback

    class CPUTime(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            cpu_times.append(time.process_time() - self.start)

    return CPUTime()


def _train(
    trainer_name: str,
    checkpoint: str,
    dataset,
    reward_funcs,
    config: dict,
    extra: dict,
    cpu_times: list[float] | None = None,
) -> list[dict]:
    """Train one run; returns the per-step log entries (those with a loss)."""
    from transformers import PrinterCallback

    from trl_ext import get_trainer

    trainer_cls, config_cls = get_trainer(trainer_name)
    with tempfile.TemporaryDirectory() as output_dir:
        args = config_cls(output_dir=output_dir, disable_tqdm=True, **config, **extra)
        trainer = trainer_cls(model=checkpoint, reward_funcs=reward_funcs, args=args, train_dataset=dataset)
        trainer.remove_callback(PrinterCallback)
        if cpu_times is not None:
            trainer.add_callback(_cpu_time_callback(cpu_times))
        trainer.train()
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def learning_runs(options, task) -> dict:
    from trl_ext.data import QUICKSTART_SETTINGS
    from trl_ext.testing import build_tiny_checkpoint

    results: dict = {"grpo": {}, "hapo": {}}
    for seed in options.seeds:
        model_kwargs = {k: v for k, v in QUICKSTART_SETTINGS["model"].items() if k != "alphabet"}
        model_kwargs["seed"] = seed
        cache = Path(tempfile.gettempdir()) / f"trl-ext-hapo-bench-quickstart-{seed}"
        checkpoint = build_tiny_checkpoint(str(cache), alphabet=task.alphabet, **model_kwargs)
        dataset = task.make_dataset(QUICKSTART_SETTINGS["dataset"]["num_rows"], seed)
        config = dict(QUICKSTART_SETTINGS["config"])
        config.update(seed=seed, max_steps=options.steps, logging_steps=1)
        order = ["grpo", "hapo"] if seed % 2 == 0 else ["hapo", "grpo"]
        for arm in order:
            start = time.perf_counter()
            steps = _train(arm, checkpoint, dataset, task.reward_funcs, config, {})
            keep = ["entropy", "reward", "hapo/temperature_min", "hapo/temperature_max", "hapo/tlga_fallback_frac"]
            results[arm][str(seed)] = {key: [entry.get(key) for entry in steps] for key in keep}
            last = steps[-10:]
            print(
                f"seed {seed} {arm:>5}: {time.perf_counter() - start:5.1f}s | entropy first {steps[0]['entropy']:.3f} "
                f"last10 {statistics.mean(e['entropy'] for e in last):.3f} | reward last10 "
                f"{statistics.mean(e['reward'] for e in last):.3f}",
                flush=True,
            )
    return results


def timing_runs(options, task) -> dict:
    """Step-time ratios in two shapes: ``overhead`` (benchmarks/overhead.py's) and ``quickstart`` (the learning runs')."""
    from trl_ext.data import QUICKSTART_SETTINGS
    from trl_ext.testing import build_tiny_checkpoint

    common = dict(learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, bf16=False)
    cache = Path(tempfile.gettempdir()) / "trl-ext-hapo-bench-timing-128"
    overhead_model = build_tiny_checkpoint(str(cache), alphabet=task.alphabet, hidden_size=128, num_layers=4)
    overhead_config = dict(
        common,
        per_device_train_batch_size=64,
        num_generations=8,
        max_completion_length=options.timing_tokens,
        generation_kwargs={"min_new_tokens": options.timing_tokens},  # every arm generates the same tokens
        max_steps=options.timing_steps,
    )
    model_kwargs = {k: v for k, v in QUICKSTART_SETTINGS["model"].items() if k != "alphabet"}
    cache = Path(tempfile.gettempdir()) / "trl-ext-hapo-bench-quickstart-0"
    quickstart_model = build_tiny_checkpoint(str(cache), alphabet=task.alphabet, **model_kwargs)
    quickstart_config = dict(QUICKSTART_SETTINGS["config"])
    quickstart_config.update(logging_steps=1, max_steps=2 * options.timing_steps)
    dataset = task.make_dataset(4096, 0)
    return {
        "overhead": _time_arms(options, task, overhead_model, dataset, overhead_config, "overhead"),
        "quickstart": _time_arms(options, task, quickstart_model, dataset, quickstart_config, "quickstart"),
    }


def _time_arms(options, task, checkpoint: str, dataset, config: dict, label: str) -> dict:
    arms = list(TIMING_ARMS)
    clocks = ("wall", "cpu")
    samples = {clock: {arm: [] for arm in arms} for clock in clocks}
    paired = {clock: {arm: [] for arm in arms} for clock in clocks}
    for repeat in range(options.repeats):
        order = arms[repeat % len(arms) :] + arms[: repeat % len(arms)]
        medians: dict[str, dict[str, float]] = {clock: {} for clock in clocks}
        for arm in order:
            trainer_name, extra = TIMING_ARMS[arm]
            cpu_times: list[float] = []
            steps = _train(
                trainer_name, checkpoint, dataset, task.reward_funcs, {**config, "seed": repeat}, extra, cpu_times
            )
            # The first step of each run is warm-up.
            for clock, times in (("wall", [entry["step_time"] for entry in steps][1:]), ("cpu", cpu_times[1:])):
                samples[clock][arm].extend(times)
                medians[clock][arm] = statistics.median(times)
        for clock in clocks:
            for arm in arms:
                paired[clock][arm].append(medians[clock][arm] / medians[clock]["grpo"])
        print(
            f"{label} repeat {repeat}: "
            + " | ".join(f"{arm} wall {medians['wall'][arm]:.4f}s cpu {medians['cpu'][arm]:.4f}s" for arm in arms),
            flush=True,
        )
    report: dict = {}
    for clock in clocks:
        baseline = statistics.median(samples[clock]["grpo"])
        report[clock] = {
            arm: {
                "median_step_s": statistics.median(samples[clock][arm]),
                "pooled_ratio_vs_grpo": statistics.median(samples[clock][arm]) / baseline,
                # Contention on shared cores only adds time: the fast tail is the most robust view of the work done.
                "p10_step_s": _quantile(samples[clock][arm], 0.1),
                "p10_ratio_vs_grpo": _quantile(samples[clock][arm], 0.1) / _quantile(samples[clock]["grpo"], 0.1),
                "paired_ratio_vs_grpo_median": statistics.median(paired[clock][arm]),
                "paired_ratios": paired[clock][arm],
                "num_samples": len(samples[clock][arm]),
            }
            for arm in arms
        }
    return report


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _mean_and_range(runs: dict, key: str) -> tuple[list[float], list[float], list[float]]:
    series = [values[key] for values in runs.values()]
    length = min(len(s) for s in series)
    columns = [[s[i] for s in series] for i in range(length)]
    return [statistics.mean(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns]


def summarise(learning: dict) -> dict:
    """Per arm: entropy at the first step and over the last 10, reward over the last 10 (means over seeds)."""
    summary = {}
    for arm in ("grpo", "hapo"):
        runs = learning[arm].values()
        summary[arm] = {
            "entropy_first_step_mean": statistics.mean(r["entropy"][0] for r in runs),
            "entropy_last10_mean": statistics.mean(statistics.mean(r["entropy"][-10:]) for r in runs),
            "entropy_last10_per_seed": [statistics.mean(r["entropy"][-10:]) for r in runs],
            "reward_last10_mean": statistics.mean(statistics.mean(r["reward"][-10:]) for r in runs),
            "reward_last10_per_seed": [statistics.mean(r["reward"][-10:]) for r in runs],
        }
    return summary


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learning = report["learning"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for arm in ("grpo", "hapo"):
        for ax, key, title in ((axes[0], "entropy", "policy entropy (nats)"), (axes[1], "reward", "mean reward")):
            mean, low, high = _mean_and_range(learning[arm], key)
            steps = list(range(1, len(mean) + 1))
            if key == "reward":
                mean, low, high = (moving_average(v, 10) for v in (mean, low, high))
            ax.plot(steps, mean, color=COLORS[arm], label=f"{arm} (mean of {len(learning[arm])} seeds)")
            ax.fill_between(steps, low, high, color=COLORS[arm], alpha=0.2)
            ax.set_title(title + (" (10-step moving average)" if key == "reward" else ""))
            ax.set_xlabel("optimizer step")
    axes[0].legend()
    mean_min, _, _ = _mean_and_range(learning["hapo"], "hapo/temperature_min")
    mean_max, _, _ = _mean_and_range(learning["hapo"], "hapo/temperature_max")
    steps = list(range(1, len(mean_min) + 1))
    axes[2].plot(steps, mean_min, color=COLORS["hapo"], linestyle="--", label="min over rollout tokens")
    axes[2].plot(steps, mean_max, color=COLORS["hapo"], label="max over rollout tokens")
    axes[2].axhline(1.0, color="gray", linewidth=0.8)
    axes[2].set_title("hapo: realised rollout temperature (T0 = 1)")
    axes[2].set_xlabel("optimizer step")
    axes[2].legend()
    timing = report["timing"]["overhead"]["wall"]
    fig.suptitle(
        "Built-in arithmetic task, tiny random Qwen2 (quickstart settings). Step-time ratio vs grpo (overhead shape, "
        "wall, 10th percentile / paired median): hapo without adaptive temperature "
        f"{timing['hapo_no_temperature']['p10_ratio_vs_grpo']:.3f} / "
        f"{timing['hapo_no_temperature']['paired_ratio_vs_grpo_median']:.3f}, with it "
        f"{timing['hapo']['p10_ratio_vs_grpo']:.3f} / {timing['hapo']['paired_ratio_vs_grpo_median']:.3f}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per learning run")
    parser.add_argument("--repeats", type=int, default=10, help="timing repeats (arms interleaved)")
    parser.add_argument("--timing_steps", type=int, default=10, help="optimizer steps per timing run (first dropped)")
    parser.add_argument("--timing_tokens", type=int, default=8, help="completion tokens per timing completion")
    parser.add_argument("--output", default=str(RESULTS / "hapo_entropy.json"))
    parser.add_argument("--replot", action="store_true", help="re-summarise and re-plot --output without training")
    options = parser.parse_args(argv)
    if options.replot:  # the timing section stores ratios, not its samples: it is kept as measured
        output = Path(options.output)
        report = json.loads(output.read_text())
        report["summary"] = summarise(report["learning"])
        output.write_text(json.dumps(report, indent=1))
        plot(report, output.with_suffix(".png"))
        print(json.dumps(report["summary"], indent=1))
        return report

    import torch

    torch.set_num_threads(1)
    import trl_ext.trainers.hapo  # noqa: F401  (registers "hapo")
    from trl_ext.data import get_task

    task = get_task("arithmetic")
    start = time.perf_counter()
    learning = learning_runs(options, task)
    timing = timing_runs(options, task)
    report = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            "seeds": options.seeds,
            "steps": options.steps,
            "repeats": options.repeats,
            "timing_steps": options.timing_steps,
            "timing_tokens": options.timing_tokens,
        },
        "timing": timing,
        "summary": {},
        "learning": learning,
    }
    report["summary"] = summarise(learning)
    report["wall_s"] = time.perf_counter() - start
    output = Path(options.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    plot(report, output.with_suffix(".png"))
    print(json.dumps({"timing": timing, "summary": report["summary"]}, indent=1))
    print(f"wrote {output} and {output.with_suffix('.png')} in {report['wall_s']:.0f}s")
    return report


if __name__ == "__main__":
    main()
