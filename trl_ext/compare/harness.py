"""What ``trl-ext compare``, ``benchmarks/`` and ``experiments/`` share: train one arm for one seed (``run_arm``), the
common arguments (``--seeds``, ``--out``, ``--replot``), result JSON with provenance (``write_report``), the moving
average and spread of every summary, band plots and tables. A script's ``--replot`` re-derives its summary and plot
from the stored JSON (``load_report``) without training. Nothing heavy is imported until a function needs it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Packages whose versions every result records.
PACKAGES = ("trl-ext", "trl", "transformers", "torch", "accelerate", "peft", "datasets", "vllm")


def script_env(*, one_thread: bool = False) -> None:
    """Offline (nothing is ever downloaded), quiet, progress lines printed as they come (line-buffered stdout); with
    ``one_thread``, one OpenMP thread (set before torch)."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.update(TOKENIZERS_PARALLELISM="false", **({"OMP_NUM_THREADS": "1"} if one_thread else {}))
    for key, value in env.items():
        os.environ.setdefault(key, value)


# Statistics


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean: entry t is the mean of ``values[max(0, t - window + 1) : t + 1]``."""
    return [statistics.fmean(values[max(0, t - window + 1) : t + 1]) for t in range(len(values))]


def spread(values, *, mean: Callable = statistics.fmean, count: bool = True) -> dict | None:
    """``{"mean", "min", "max", "n"}`` of the values that are neither None nor NaN (None if there are none).

    ``mean=statistics.mean`` (exact) where a stored result was summarised with it; ``count=False`` leaves out ``n``.
    """
    numbers = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not numbers:
        return None
    out = {"mean": mean(numbers), "min": min(numbers), "max": max(numbers)}
    return {**out, "n": len(numbers)} if count else out


# One arm, one seed


@dataclass
class Run:
    """A finished run: the trainer (its model, its own records), TRL's log history and the wall time of ``train()``."""

    trainer: Any
    history: list[dict]
    seconds: float
    memory: Any = None

    def logs(self, key: str = "loss") -> list[dict]:
        """The log entries that have ``key`` (``"loss"``: one per optimizer step)."""
        return [entry for entry in self.history if key in entry]


def train(trainer, *, before: Callable | None = None, memory=None) -> Run:
    """Train a built trainer without its console printer: ``before(trainer)`` first, then ``train()`` inside the
    context manager ``memory`` (a :class:`~trl_ext.compare.running.PeakMemory`, say)."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    if before is not None:
        before(trainer)
    start = time.perf_counter()
    with memory or nullcontext():
        trainer.train()
    return Run(trainer, trainer.state.log_history, time.perf_counter() - start, memory)


def run_arm(
    name: str,
    *,
    model: str,
    reward_funcs,
    train_dataset,
    seed: int,
    config: dict | None = None,
    trainer_cls: type | None = None,
    callbacks: Sequence = (),
    before: Callable | None = None,
    memory=None,
    **trainer_kwargs: Any,
) -> Run:
    """Train the registered trainer ``name`` (``"trl"``: ``trl.GRPOTrainer``) for one seed in a temporary output
    directory: one log per step, no checkpoint, no report, ``config``'s fields over these. ``trainer_cls`` replaces
    the trainer class (an instrumented subclass); ``trainer_kwargs`` go to its constructor."""
    if name == "trl":
        from trl import GRPOConfig as config_cls
        from trl import GRPOTrainer as default_cls
    else:
        from trl_ext import get_trainer

        default_cls, config_cls = get_trainer(name)
    fields = {"logging_steps": 1, "report_to": "none", "save_strategy": "no", "disable_tqdm": True, **(config or {})}
    with tempfile.TemporaryDirectory() as output_dir:
        args = config_cls(output_dir=output_dir, **{**fields, "seed": seed})
        trainer_kwargs.update(reward_funcs=reward_funcs, args=args, callbacks=list(callbacks) or None)
        trainer = (trainer_cls or default_cls)(model=model, train_dataset=train_dataset, **trainer_kwargs)
        return train(trainer, before=before, memory=memory)


def tiny_model(name: str, *, seed: int, **settings: Any) -> str:
    """The quickstart's tiny random Qwen2 (``QUICKSTART_SETTINGS["model"]``, ``settings`` over it) initialised with
    ``seed``, built once under the temporary directory as ``trl-ext-<name>``."""
    from trl_ext.data import QUICKSTART_SETTINGS
    from trl_ext.tiny_models import build_tiny_checkpoint

    return build_tiny_checkpoint(
        Path(tempfile.gettempdir()) / f"trl-ext-{name}", **{**QUICKSTART_SETTINGS["model"], **settings, "seed": seed}
    )


# Arguments and results


def add_common_args(parser: argparse.ArgumentParser, out: Path | None, *, seeds=(0, 1, 2), seeds_help=None):
    """``--seeds`` (unless ``seeds`` is None), ``--out`` (alias ``--output``; unless ``out`` is None), ``--replot``."""
    if seeds is not None:
        text = seeds_help or "seeds: one run per arm and seed"
        parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds), help=text)
    if out is not None:
        parser.add_argument("--out", "--output", type=Path, default=out, help="the result JSON (plot: same name .png)")
    text = "re-derive the summary and plots from the stored JSON, without training"
    parser.add_argument("--replot", action="store_true", help=text)
    return parser


def provenance(argv: Sequence[str] | None = None) -> dict:
    """Where a result comes from: the command, the git commit, package versions, the machine, the time."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    try:
        git = ["git", "rev-parse", "HEAD"]
        commit = subprocess.run(git, cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        commit = ""
    torch = sys.modules.get("torch")
    cuda = torch is not None and torch.cuda.is_available()
    script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return {
        "command": " ".join(["python", script, *(sys.argv[1:] if argv is None else argv)]),
        "git_commit": commit.strip() or None,
        "versions": {"python": platform.python_version(), **{name: installed(name) for name in PACKAGES}},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads() if torch is not None else None,
            "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        },
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def load_report(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def write_report(
    path, report: dict, *, rederived=False, plot=None, show=None, dump=None, argv=None, log=print
) -> dict:
    """Write ``report`` as JSON (atomically) with its provenance: a new result under ``"provenance"``, a re-derived
    one (``--replot``) keeps the original's and adds ``"rederived"``. Then ``plot(report, <path>.png)`` when
    matplotlib is installed, and ``show(report)``. ``dump``: the JSON text (default: indent 1)."""
    from trl_ext.jsonio import write_json_atomic

    report["rederived" if rederived else "provenance"] = provenance(argv)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if dump is None:
        write_json_atomic(path, report, indent=1)
    else:
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(dump(report))
        os.replace(tmp, path)
    written = [str(path)]
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("matplotlib is not installed (pip install matplotlib): no plot")
        else:
            plot(report, path.with_suffix(".png"))
            written.append(str(path.with_suffix(".png")))
    if show is not None:
        show(report)
    if log is not None:
        log(f"wrote {' and '.join(written)}")
    return report


# Plots


@contextmanager
def figure(path: str | os.PathLike, nrows: int = 1, ncols: int = 1, *, dpi: int = 110, **subplots: Any):
    """``(fig, axes)`` of ``plt.subplots``, saved to ``path`` (tight layout) and closed when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, **subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def band(axis, x, curves, *, color=None, label=None, linestyle="-", linewidth=None, alpha=0.15, fill=True) -> None:
    """The mean of ``curves`` over ``x`` (all cut to the shortest) as a line, and their min-max band."""
    length = min(len(x), *(len(curve) for curve in curves))
    columns = [[curve[i] for curve in curves] for i in range(length)]
    xs = list(x)[:length]
    axis.plot(xs, [statistics.fmean(c) for c in columns], linestyle, color=color, label=label, linewidth=linewidth)
    if fill and len(curves) > 1:
        axis.fill_between(xs, [min(c) for c in columns], [max(c) for c in columns], color=color, alpha=alpha)


def print_table(rows: dict, keys: Sequence[str], *, name: str = "arm") -> None:
    """One line per row of ``rows`` (name -> {key: value}), one column per key: a spread as ``mean [min, max]``, a
    number to 4 significant digits, None as ``-``."""

    def cell(value) -> str:
        if isinstance(value, dict) and "mean" in value:
            return f"{value['mean']:.4g} [{value['min']:.4g}, {value['max']:.4g}]"
        return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    table = [[name, *keys]] + [[str(row), *(cell(values.get(key)) for key in keys)] for row, values in rows.items()]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(text.rjust(width) for text, width in zip(line, widths)))


def finish(options, report: dict, argv: Sequence[str] | None = None, **kwargs: Any) -> dict:
    """A script's last step: :func:`write_report` to ``options.out``, as re-derived when ``options.replot``."""
    return write_report(options.out, report, rederived=options.replot, argv=argv, **kwargs)
