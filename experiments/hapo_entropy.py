"""`grpo` versus `hapo` on the built-in task: policy-entropy trajectories over seeds, and HAPO's step-time overhead.

    python experiments/hapo_entropy.py                                  # the measured configuration (CPU, 5-10 minutes)
    python experiments/hapo_entropy.py --seeds 0 --steps 60 --repeats 2  # a quick look

Superseded for the learning question by ``hapo_fork.py`` (2-token completions, on-policy: HAPO's clip terms never act);
kept for the step-time measurements quoted in ``docs/trainers/hapo.md``. Learning runs: the quickstart's settings,
``grpo`` against ``hapo`` (spec defaults) per seed; TRL's ``entropy``, the reward and HAPO's rollout temperature range.
Step time: ``grpo``, ``hapo`` without and with the adaptive temperature, back to back in a rotating order, in the
``overhead`` shape (``benchmarks/overhead.py``'s model, ``--timing_tokens`` forced tokens) and the ``quickstart``
shape;
every step timed by TRL's ``step_time`` and the process CPU time, first step of each run dropped; per arm and clock the
median paired ratio to ``grpo`` and the ratios of pooled medians and 10th percentiles (contention only adds time). The
timing keeps ratios, not samples, so ``--replot`` re-derives the learning summary only. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from trl_ext.compare import harness

harness.script_env(one_thread=True)
RESULTS = Path(__file__).parent / "results"
COLORS = {"grpo": "tab:blue", "hapo": "tab:red"}
#: timing arm -> (registered trainer, extra config fields)
TIMING_ARMS: dict[str, tuple[str, dict]] = {
    "grpo": ("grpo", {}), "hapo_no_temperature": ("hapo", {"hapo_adaptive_temperature": False}), "hapo": ("hapo", {}),
}  # fmt: skip


def _cpu_time_callback(cpu_times: list[float]):
    """A TrainerCallback appending the process CPU time of every optimizer step (generation included) to cpu_times."""
    from transformers import TrainerCallback

    class CPUTime(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            cpu_times.append(time.process_time() - self.start)

    return CPUTime()


def _train(trainer_name: str, checkpoint: str, dataset, reward_funcs, config: dict, cpu_times=None) -> list[dict]:
    """Train one run; returns the per-step log entries (those with a loss)."""
    callbacks = [_cpu_time_callback(cpu_times)] if cpu_times is not None else []
    run = harness.run_arm(
        trainer_name, model=checkpoint, reward_funcs=reward_funcs, train_dataset=dataset, seed=config["seed"],
        config=config, callbacks=callbacks,
    )  # fmt: skip
    return run.logs("loss")


def learning_runs(options, task) -> dict:
    from trl_ext.data import QUICKSTART_SETTINGS

    results: dict = {"grpo": {}, "hapo": {}}
    for seed in options.seeds:
        checkpoint = harness.tiny_model(f"hapo-bench-quickstart-{seed}", seed=seed, alphabet=task.alphabet)
        dataset = task.make_dataset(QUICKSTART_SETTINGS["dataset"]["num_rows"], seed)
        config = dict(QUICKSTART_SETTINGS["config"])
        config.update(seed=seed, max_steps=options.steps, logging_steps=1)
        order = ["grpo", "hapo"] if seed % 2 == 0 else ["hapo", "grpo"]
        for arm in order:
            start = time.perf_counter()
            steps = _train(arm, checkpoint, dataset, task.reward_funcs, config)
            keep = ["entropy", "reward", "hapo/temperature_min", "hapo/temperature_max", "hapo/tlga_fallback_frac"]
            results[arm][str(seed)] = {key: [entry.get(key) for entry in steps] for key in keep}
            last = steps[-10:]
            print(
                f"seed {seed} {arm:>5}: {time.perf_counter() - start:5.1f}s | entropy first {steps[0]['entropy']:.3f} "
                f"last10 {statistics.mean(e['entropy'] for e in last):.3f} | reward last10 "
                f"{statistics.mean(e['reward'] for e in last):.3f}"
            )
    return results


def timing_runs(options, task) -> dict:
    """Step-time ratios in two shapes: ``overhead`` (benchmarks/overhead.py's) and ``quickstart`` (the learning runs')."""
    from trl_ext.data import QUICKSTART_SETTINGS
    from trl_ext.tiny_models import build_tiny_checkpoint

    cache = Path(tempfile.gettempdir()) / "trl-ext-hapo-bench-timing-128"
    overhead_model = build_tiny_checkpoint(cache, alphabet=task.alphabet, hidden_size=128, num_layers=4)
    overhead_config = dict(
        learning_rate=1e-3, use_cpu=True, bf16=False, per_device_train_batch_size=64, num_generations=8,
        max_completion_length=options.timing_tokens,
        generation_kwargs={"min_new_tokens": options.timing_tokens},  # every arm generates the same tokens
        max_steps=options.timing_steps,
    )  # fmt: skip
    quickstart_model = harness.tiny_model("hapo-bench-quickstart-0", seed=0, alphabet=task.alphabet)
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
            config_run = {**config, "seed": repeat, **extra}
            steps = _train(trainer_name, checkpoint, dataset, task.reward_funcs, config_run, cpu_times)
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
    learning = report["learning"]
    with harness.figure(path, 1, 3, figsize=(16, 4.5)) as (fig, axes):
        for arm in ("grpo", "hapo"):
            seeds = list(learning[arm].values())
            label = f"{arm} (mean of {len(seeds)} seeds)"
            entropy = [run["entropy"] for run in seeds]
            reward = [harness.moving_average(run["reward"], 10) for run in seeds]
            for axis, curves in ((axes[0], entropy), (axes[1], reward)):
                harness.band(axis, range(1, len(curves[0]) + 1), curves, color=COLORS[arm], label=label, alpha=0.2)
        axes[0].set_title("policy entropy (nats)")
        axes[1].set_title("mean reward (10-step moving average)")
        axes[0].legend()
        hapo = list(learning["hapo"].values())
        for key, style, label in (("min", "--", "min over rollout tokens"), ("max", "-", "max over rollout tokens")):
            curves = [run[f"hapo/temperature_{key}"] for run in hapo]
            x = range(1, len(curves[0]) + 1)
            harness.band(axes[2], x, curves, color=COLORS["hapo"], label=label, linestyle=style, fill=False)
        axes[2].axhline(1.0, color="gray", linewidth=0.8)
        axes[2].set_title("hapo: realised rollout temperature (T0 = 1)")
        axes[2].legend()
        for axis in axes:
            axis.set_xlabel("optimizer step")
        timing = report["timing"]["overhead"]["wall"]
        fig.suptitle(
            "Built-in arithmetic task, tiny random Qwen2 (quickstart settings). Step-time ratio vs grpo (overhead "
            "shape, wall, 10th percentile / paired median): hapo without adaptive temperature "
            f"{timing['hapo_no_temperature']['p10_ratio_vs_grpo']:.3f} / "
            f"{timing['hapo_no_temperature']['paired_ratio_vs_grpo_median']:.3f}, with it "
            f"{timing['hapo']['p10_ratio_vs_grpo']:.3f} / {timing['hapo']['paired_ratio_vs_grpo_median']:.3f}",
            fontsize=10,
        )


def run(options) -> dict:
    import trl_ext.trainers.hapo  # noqa: F401  (registers "hapo")
    from trl_ext.data import get_task
    from trl_ext.training import set_threads

    set_threads(1)
    task = get_task("arithmetic")
    start = time.perf_counter()
    learning = learning_runs(options, task)
    timing = timing_runs(options, task)
    keys = ("seeds", "steps", "repeats", "timing_steps", "timing_tokens")
    return {
        "settings": {key: getattr(options, key) for key in keys}, "timing": timing, "learning": learning,
        "wall_s": time.perf_counter() - start,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(parser, RESULTS / "hapo_entropy.json")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per learning run")
    parser.add_argument("--repeats", type=int, default=10, help="timing repeats (arms interleaved)")
    parser.add_argument("--timing_steps", type=int, default=10, help="optimizer steps per timing run (first dropped)")
    parser.add_argument("--timing_tokens", type=int, default=8, help="completion tokens per timing completion")
    options = parser.parse_args(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    report["summary"] = summarise(report["learning"])
    show = lambda r: print(json.dumps({"timing": r["timing"], "summary": r["summary"]}, indent=1))  # noqa: E731
    return harness.finish(options, report, argv, plot=plot, show=show)


if __name__ == "__main__":
    main()
