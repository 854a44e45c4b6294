"""Step-time overhead of trl-ext trainers against trl.GRPOTrainer, measured in one interleaved run.

    python benchmarks/overhead.py                       # baseline `grpo` vs trl.GRPOTrainer, CPU
    python benchmarks/overhead.py --trainers grpo --repeats 5 --steps 8 --device cuda

Each repeat, every trainer (and ``trl.GRPOTrainer``) trains the same tiny model, task and seed, in an order that
alternates between repeats; per trainer the median of TRL's ``step_time`` (generation included, each run's first step
dropped) and its ratio to ``trl.GRPOTrainer`` (and the peak CUDA memory on a GPU). The ``diva`` arm's variants are
unchanged copies (:func:`copy_variants`), so its ratio measures DIVA's machinery, not longer prompts. Writes
``benchmarks/results/overhead.json`` with every step time (``runs``) for ``--replot`` (the stored one predates them).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from trl_ext.compare import harness
from trl_ext.compare.running import PeakMemory

harness.script_env()


def copy_variants(row, difficulty, num_variants, rng):
    """A DIVA variant generator that returns unchanged copies (prompt shapes identical to the other arms')."""
    return [(dict(row), difficulty) for _ in range(num_variants)]


#: Extra config fields per trainer arm.
ARM_EXTRAS = {"diva": {"diva_variant_generator": copy_variants}}


def run_once(name: str, checkpoint: str, dataset, reward_funcs, steps: int, device: str, seed: int) -> dict:
    config = dict(
        per_device_train_batch_size=64, num_generations=8, max_completion_length=8, learning_rate=1e-3,
        max_steps=steps, use_cpu=device == "cpu", bf16=False, **ARM_EXTRAS.get(name, {}),
    )  # fmt: skip
    run = harness.run_arm(
        name, model=checkpoint, reward_funcs=reward_funcs, train_dataset=dataset, seed=seed, config=config,
        memory=PeakMemory() if device == "cuda" else None,
    )  # fmt: skip
    step_times = [entry["step_time"] for entry in run.logs("step_time")]
    peak = run.memory.cuda_peak if run.memory else None
    return {"step_times": step_times[1:], "wall": run.seconds, "peak_memory_bytes": peak}


def summarise(report: dict) -> dict:
    """Per trainer: median step time (first step of each run dropped), quartiles, ratios to trl and grpo."""
    runs = report["runs"]
    samples = {name: [t for run in rows for t in run["step_times"]] for name, rows in runs.items()}
    peaks = {
        name: [run["peak_memory_bytes"] for run in rows if run["peak_memory_bytes"]] for name, rows in runs.items()
    }
    baseline = statistics.median(samples["trl"])
    grpo = statistics.median(samples["grpo"]) if "grpo" in samples else None
    summary = {}
    for name in runs:
        median = statistics.median(samples[name])
        q1, _, q3 = statistics.quantiles(samples[name], n=4)
        summary[name] = {
            "median_step_s": median, "p25_step_s": q1, "p75_step_s": q3, "ratio_vs_trl": median / baseline,
            "ratio_vs_grpo": median / grpo if grpo else None,
            "peak_memory_ratio_vs_trl": max(peaks[name]) / max(peaks["trl"]) if peaks[name] else None,
            "num_samples": len(samples[name]),
        }  # fmt: skip
    return summary


TABLE = ("median_step_s", "p25_step_s", "p75_step_s", "ratio_vs_trl", "ratio_vs_grpo", "peak_memory_ratio_vs_trl")


def print_summary(report: dict) -> None:
    harness.print_table(report["trainers"], TABLE, name="trainer")


def run(options) -> dict:
    from trl_ext.data import get_task
    from trl_ext.tiny_models import build_tiny_checkpoint
    from trl_ext.training import set_threads

    set_threads(options.threads)
    task = get_task("arithmetic")
    dataset = task.make_dataset(4096, 0)
    # Unique ids, and the 0-3 level renamed: DIVA reads `difficulty` as a 1-9 starting level.
    dataset = dataset.map(lambda _, index: {"id": f"row{index}"}, with_indices=True).rename_column(
        "difficulty", "level"
    )
    cache = Path(tempfile.gettempdir()) / f"trl-ext-bench-tiny-{options.hidden_size}"
    checkpoint = build_tiny_checkpoint(cache, alphabet=task.alphabet, hidden_size=options.hidden_size, num_layers=4)
    names = ["trl", *options.trainers]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(options.repeats):
        for name in names if repeat % 2 == 0 else list(reversed(names)):
            result = run_once(name, checkpoint, dataset, task.reward_funcs, options.steps, options.device, repeat)
            runs[name].append(result)
            print(f"repeat {repeat} {name:>8}: median step {statistics.median(result['step_times']):.4f}s")
    keys = ("device", "repeats", "steps", "threads")
    return {**{key: getattr(options, key) for key in keys}, "runs": runs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(parser, Path(__file__).parent / "results" / "overhead.json", seeds=None)
    parser.add_argument("--trainers", nargs="+", default=["grpo"], help="registered trainer names to compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is dropped)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is robust to a busy machine)")
    options = parser.parse_args(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    if "runs" not in report:
        raise SystemExit(f"{options.out} holds no step times (written before they were stored): nothing to re-derive")
    report["trainers"] = summarise(report)
    return harness.finish(options, report, argv, show=print_summary)


if __name__ == "__main__":
    main()
