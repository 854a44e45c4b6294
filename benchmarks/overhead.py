"""Step-time overhead of trl-ext trainers against trl.GRPOTrainer, measured in one interleaved run.

    python benchmarks/overhead.py                       # baseline `grpo` vs trl.GRPOTrainer, CPU
    python benchmarks/overhead.py --trainers grpo --repeats 5 --steps 8 --device cuda

For every repeat, each trainer (and ``trl.GRPOTrainer``) trains the same tiny model on the same built-in task with
the same seed, in an order that alternates between repeats. We read TRL's own ``step_time`` metric (wall time of
``training_step``, generation included), drop the first step of each run (warm-up), and report the median per
trainer and its ratio to ``trl.GRPOTrainer``. On CUDA the peak allocated memory is reported too. Results go to
``benchmarks/results/overhead.json``.

Every row gets a unique ``id`` (DIVA needs one; the other trainers ignore it). The ``diva`` arm builds its variants
with :func:`copy_variants` (unchanged copies), so that its prompts have exactly the shapes of the others' and the
ratio measures DIVA's machinery (slot dataset, variant bookkeeping, store, advantage), not longer hinted prompts.
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
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def copy_variants(row, difficulty, num_variants, rng):
    """A DIVA variant generator that returns unchanged copies (prompt shapes identical to the other arms')."""
    return [(dict(row), difficulty) for _ in range(num_variants)]


#: Extra config fields per trainer arm.
ARM_EXTRAS = {"diva": {"diva_variant_generator": copy_variants}}


def run_once(name: str, checkpoint: str, dataset, reward_funcs, steps: int, device: str, seed: int) -> dict:
    import torch
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from trl_ext import get_trainer

    if name == "trl":
        trainer_cls, config_cls = GRPOTrainer, GRPOConfig
    else:
        trainer_cls, config_cls = get_trainer(name)
    with tempfile.TemporaryDirectory() as output_dir:
        args = config_cls(
            output_dir=output_dir,
            per_device_train_batch_size=64,
            num_generations=8,
            max_completion_length=8,
            learning_rate=1e-3,
            max_steps=steps,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=device == "cpu",
            bf16=False,
            seed=seed,
            disable_tqdm=True,
            **ARM_EXTRAS.get(name, {}),
        )
        trainer = trainer_cls(model=checkpoint, reward_funcs=reward_funcs, args=args, train_dataset=dataset)
        trainer.remove_callback(PrinterCallback)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
        step_times = [entry["step_time"] for entry in trainer.state.log_history if "step_time" in entry]
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return {"step_times": step_times[1:], "wall": wall, "peak_memory_bytes": peak}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", nargs="+", default=["grpo"], help="registered trainer names to compare")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is dropped)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is robust to a busy machine)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "overhead.json"))
    options = parser.parse_args(argv)

    import torch

    from trl_ext.data import get_task
    from trl_ext.tiny_models import build_tiny_checkpoint

    torch.set_num_threads(options.threads)

    task = get_task("arithmetic")
    dataset = task.make_dataset(4096, 0)
    # Unique ids, and the 0-3 level renamed: DIVA reads `difficulty` as a 1-9 starting level.
    dataset = dataset.map(lambda _, index: {"id": f"row{index}"}, with_indices=True).rename_column(
        "difficulty", "level"
    )
    cache = Path(tempfile.gettempdir()) / f"trl-ext-bench-tiny-{options.hidden_size}"
    checkpoint = build_tiny_checkpoint(
        str(cache), alphabet=task.alphabet, hidden_size=options.hidden_size, num_layers=4
    )

    names = ["trl", *options.trainers]
    samples: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, list[int]] = {name: [] for name in names}
    for repeat in range(options.repeats):
        order = names if repeat % 2 == 0 else list(reversed(names))
        for name in order:
            result = run_once(name, checkpoint, dataset, task.reward_funcs, options.steps, options.device, repeat)
            samples[name].extend(result["step_times"])
            if result["peak_memory_bytes"] is not None:
                peaks[name].append(result["peak_memory_bytes"])
            print(f"repeat {repeat} {name:>8}: median step {statistics.median(result['step_times']):.4f}s", flush=True)

    baseline = statistics.median(samples["trl"])
    grpo = statistics.median(samples["grpo"]) if "grpo" in samples else None
    report = {
        "device": options.device,
        "repeats": options.repeats,
        "steps": options.steps,
        "threads": options.threads,
        "trainers": {},
    }
    header = (
        f"{'trainer':>10} {'median step (s)':>16} {'p25-p75 (s)':>15} {'vs trl':>7} {'vs grpo':>8} {'peak mem':>10}"
    )
    print("\n" + header)
    for name in names:
        median = statistics.median(samples[name])
        q1, _, q3 = statistics.quantiles(samples[name], n=4)
        memory_ratio = max(peaks[name]) / max(peaks["trl"]) if peaks[name] else None
        report["trainers"][name] = {
            "median_step_s": median,
            "p25_step_s": q1,
            "p75_step_s": q3,
            "ratio_vs_trl": median / baseline,
            "ratio_vs_grpo": median / grpo if grpo else None,
            "peak_memory_ratio_vs_trl": memory_ratio,
            "num_samples": len(samples[name]),
        }
        memory_text = f"{memory_ratio:10.3f}" if memory_ratio is not None else f"{'n/a (cpu)':>10}"
        grpo_text = f"{median / grpo:8.3f}" if grpo else f"{'':>8}"
        print(f"{name:>10} {median:16.4f} {q1:7.4f}-{q3:7.4f} {median / baseline:7.3f} {grpo_text} {memory_text}")
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    Path(options.output).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {options.output}; command: python {' '.join(sys.argv)}")
    return report


if __name__ == "__main__":
    main()
