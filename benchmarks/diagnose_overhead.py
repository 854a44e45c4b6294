"""Step-time overhead of ``RegimeCallback`` against the same trainer without it, measured in one interleaved run.

    python benchmarks/diagnose_overhead.py                          # grpo and trl.GRPOTrainer, with and without
    python benchmarks/diagnose_overhead.py --repeats 6 --steps 10 --device cuda

Each repeat trains four arms on the same tiny model, task, batch and seed, in an order reversed on every other repeat:
``grpo`` (trl-ext's base trainer; the callback observes its seams and measures everything), ``grpo+regime``,
``trl`` (``trl.GRPOTrainer``; the callback reads the rewards TRL keeps) and ``trl+regime``. Per arm: the median of
TRL's ``step_time`` (generation included, each run's first step dropped), the ratio of each ``+regime`` arm to
the same trainer without the callback, and the time spent inside the callback's own handlers per step (its cost
measured directly, as a share of the step: the step-time ratio of a busy machine moves by 10% either way). The batch is ``benchmarks/overhead.py``'s (64 completions of up to 8 tokens,
8 per group, hidden 128, 4 layers); ``--steps_per_generation 4`` makes 3 of every 4 micro-batches stale, so the
off-policy measures run on real log-ratios. Writes ``benchmarks/results/diagnose_overhead.json`` (every step time).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from trl_ext.compare import harness

harness.script_env()

ARMS = ("grpo", "grpo+regime", "trl", "trl+regime")


def timed_callback():
    """A ``RegimeCallback`` that adds up the wall time spent in its own handlers (``seconds``): its cost measured
    directly, which a busy machine's step-time noise (10% and more between arms) cannot hide."""
    import time

    from trl_ext import RegimeCallback

    class TimedRegimeCallback(RegimeCallback):
        seconds = 0.0

        def _timed(self, method, *args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        def on_advantages(self, *args, **kwargs):
            return self._timed(super().on_advantages, *args, **kwargs)

        def on_loss(self, *args, **kwargs):
            return self._timed(super().on_loss, *args, **kwargs)

        def on_step_end(self, *args, **kwargs):
            return self._timed(super().on_step_end, *args, **kwargs)

    return TimedRegimeCallback(write_file=False)


def run_once(arm: str, checkpoint: str, dataset, reward_funcs, options, seed: int) -> dict:
    trainer, _, regime = arm.partition("+")
    config = dict(
        per_device_train_batch_size=64, num_generations=8, max_completion_length=8, learning_rate=1e-3,
        max_steps=options.steps, use_cpu=options.device == "cpu", bf16=False,
        steps_per_generation=options.steps_per_generation,
    )  # fmt: skip
    callbacks = [timed_callback()] if regime else []
    run = harness.run_arm(
        trainer, model=checkpoint, reward_funcs=reward_funcs, train_dataset=dataset, seed=seed, config=config,
        callbacks=callbacks,
    )  # fmt: skip
    step_times = [entry["step_time"] for entry in run.logs("step_time")]
    logged = sorted({key for entry in run.history for key in entry if key.startswith("regime/")})
    seconds = callbacks[0].seconds if callbacks else 0.0
    return {
        "step_times": step_times[1:],
        "wall": run.seconds,
        "regime_metrics": len(logged),
        "callback_s_per_step": seconds / max(len(step_times), 1),
    }


def summarise(report: dict) -> dict:
    """Per arm: median step time (first step of each run dropped), quartiles, and the ratio to the same trainer
    without the callback."""
    samples = {arm: [t for run in rows for t in run["step_times"]] for arm, rows in report["runs"].items()}
    summary = {}
    for arm, values in samples.items():
        median = statistics.median(values)
        q1, _, q3 = statistics.quantiles(values, n=4)
        base = arm.partition("+")[0]
        inside = statistics.median(run.get("callback_s_per_step", 0.0) for run in report["runs"][arm])
        summary[arm] = {
            "median_step_s": median,
            "p25_step_s": q1,
            "p75_step_s": q3,
            "ratio_vs_without": median / statistics.median(samples[base]) if base in samples else None,
            "callback_s_per_step": inside,
            "callback_share_of_step": inside / median,
            "regime_metrics_logged": max(run["regime_metrics"] for run in report["runs"][arm]),
            "num_samples": len(values),
        }
    return summary


TABLE = (
    "median_step_s",
    "p25_step_s",
    "p75_step_s",
    "ratio_vs_without",
    "callback_s_per_step",
    "callback_share_of_step",
    "regime_metrics_logged",
)


def run(options) -> dict:
    from trl_ext.data import get_task
    from trl_ext.tiny_models import build_tiny_checkpoint
    from trl_ext.training import set_threads

    set_threads(options.threads)
    task = get_task("arithmetic")
    dataset = task.make_dataset(4096, 0)
    cache = Path(tempfile.gettempdir()) / f"trl-ext-bench-tiny-{options.hidden_size}"
    checkpoint = build_tiny_checkpoint(cache, alphabet=task.alphabet, hidden_size=options.hidden_size, num_layers=4)
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for repeat in range(options.repeats):
        for arm in ARMS if repeat % 2 == 0 else tuple(reversed(ARMS)):
            result = run_once(arm, checkpoint, dataset, task.reward_funcs, options, repeat)
            runs[arm].append(result)
            print(f"repeat {repeat} {arm:>12}: median step {statistics.median(result['step_times']):.4f}s")
    keys = ("device", "repeats", "steps", "threads", "steps_per_generation", "hidden_size")
    return {**{key: getattr(options, key) for key in keys}, "runs": runs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(parser, Path(__file__).parent / "results" / "diagnose_overhead.json", seeds=None)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (the first is dropped)")
    parser.add_argument("--steps_per_generation", type=int, default=4, help="micro-batches per generation batch")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is robust to a busy machine)")
    options = parser.parse_args(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    report["arms"] = summarise(report)
    return harness.finish(options, report, argv, show=lambda r: harness.print_table(r["arms"], TABLE, name="arm"))


if __name__ == "__main__":
    main()
