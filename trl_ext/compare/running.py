"""One run of a comparison: train one arm for one seed (through the shared harness) and return its record: the
log history's per-step reward, step time, completions consumed and the trainer's own metrics, and peak memory."""

from __future__ import annotations

import gc
import math
import threading
import time
from typing import Any

from trl_ext.compare.arms import RESULT_VERSION, Arm
from trl_ext.compare.harness import train

__all__ = ["PeakMemory", "train_one"]


class PeakMemory:
    """Peak memory of this process while the block runs: CUDA's allocator peak when a GPU is there, and the resident
    set size sampled every ``interval`` seconds (on CPU, or always with ``rss=True``; ``rss_before`` on entry)."""

    def __init__(self, interval: float = 0.05, *, rss: bool | None = None) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        self.sample_rss = not self.cuda if rss is None else rss
        self.interval = interval
        self.cuda_peak: int | None = None
        self.rss_before = self.rss_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if self.sample_rss:
            import psutil

            process = psutil.Process()

            def sample() -> None:
                while not self._stop.is_set():
                    self.rss_peak = max(self.rss_peak, process.memory_info().rss)
                    self._stop.wait(self.interval)

            self.rss_before = self.rss_peak = process.memory_info().rss
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.cuda:
            self.cuda_peak = torch.cuda.max_memory_allocated()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    @property
    def peak(self) -> int:
        return self.cuda_peak if self.cuda else self.rss_peak

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


def train_one(arm: Arm, seed: int, parsed, model_factory, progress) -> dict:
    """Build and train one run from its parsed ``trl-ext train`` arguments; its record for ``runs/<arm>/seed-N.json``."""
    from trl_ext.training import build_trainer

    script_args, training_args, model_args, dataset_args = parsed
    if model_factory is not None:
        model_args.model_name_or_path = model_factory(seed)
        script_args.tiny_model = False
    recorder = _make_recorder(progress)
    started = time.perf_counter()
    with PeakMemory() as memory:  # building the trainer (model, data) counts too
        trainer = build_trainer(script_args, training_args, model_args, dataset_args, callbacks=[recorder])
        train(trainer)
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
    gc.collect()
    return result
