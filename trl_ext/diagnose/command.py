"""``trl-ext diagnose``: a short plain-GRPO run of a recipe, measured, and the table of regimes.

    trl-ext diagnose --config RECIPE.yaml [--steps 20] [--output_dir DIR] [--any train field ...]
    trl-ext diagnose --from OUTPUT_DIR            # the table of a run trained with a RegimeCallback
    trl-ext train --config RECIPE.yaml --diagnose true    # such a run (any trainer): writes OUTPUT_DIR/regime.json

The run is the recipe's model, data, rewards and batch geometry with the ``grpo`` trainer (the recipe's method fields
are left out and listed). A multi-turn ``calibadv`` recipe keeps its trainer with both calibrations off (the ``grpo``
arm of the project's CalibAdv ablation), because the search rollout is part of its data. Writes
``<output_dir>/regime.json`` (the callback's summary), ``diagnosis.json`` (the table) and ``diagnosis.png`` (the
trends).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from trl_ext.diagnose.regimes import assess
from trl_ext.errors import OneLineArgumentParser, user_input
from trl_ext.jsonio import write_json_atomic

__all__ = ["diagnose", "diagnose_from", "diagnose_main", "format_table", "plot_trends", "summary_from_log_history"]

#: Trainer-specific fields a plain-GRPO run leaves out of a recipe (with the prefix of every method's own fields).
_METHOD_PREFIXES = ("bnpo_", "diva_", "hapo_", "minpro_")
_METHOD_FIELDS = ("advantage_estimator", "policy_objective", "trainer")
#: What a calibadv recipe keeps, with its calibration off.
_CALIBADV_OFF = {"calibadv_soft_penalty": False, "calibadv_answer_rebalance": False}

_TREND_KEYS = (
    "regime/zero_signal_frac",
    "regime/zero_signal_all_fail",
    "regime/mixed_frac",
    "regime/bnpo_beta_ratio",
    "regime/logratio_abs_mean",
    "regime/entropy_mean",
    "regime/clip_frac_high_entropy",
    "regime/clip_frac_low_entropy",
    "regime/neg_traj_useful_step_frac",
)


def _plain_grpo_recipe(recipe: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The recipe for the diagnostic run and the fields it left out."""
    if recipe.get("trainer") == "calibadv":
        kept = {key: value for key, value in recipe.items() if not key.startswith(_METHOD_PREFIXES)}
        dropped = [key for key in recipe if key not in kept]
        kept.update(_CALIBADV_OFF)
        kept.pop("advantage_estimator", None)
        kept.pop("policy_objective", None)
        return kept, dropped
    kept = {
        key: value
        for key, value in recipe.items()
        if not key.startswith((*_METHOD_PREFIXES, "calibadv_")) and key not in _METHOD_FIELDS
    }
    kept["trainer"] = "grpo"
    dropped = [key for key in recipe if key not in kept and key != "trainer"]
    return kept, dropped


def format_table(rows: list[dict[str, Any]]) -> str:
    """The printed table: method, quantity, value on this run, where the run lies; under each method row, the range
    in which its mechanism acts, its source, its page and the project's verdict."""
    header = ("method", "quantity", "this run", "regime")
    lines = [header]
    notes: dict[int, list[str]] = {}
    for row in rows:
        measured = row["value"] is not None
        value = row["value"] if measured else f"not measurable: {row['why']}"
        lines.append((row["method"], row["quantity"], value, row["status"] if measured else ""))
        if row["method"]:
            notes[len(lines) - 1] = [
                f"acts where: {row['acts']}",
                f"source: {row['source']}; page: {row['docs']}; verdict: {row['verdict']}",
            ]
    widths = [max(len(line[i]) for line in lines if i < 2 or len(line[i]) < 60) for i in range(4)]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
        for note in notes.get(index, []):
            out.append(" " * (widths[0] + 2) + "  " + note)
    return "\n".join(out)


def plot_trends(summary: dict[str, Any], path: str | os.PathLike) -> Path | None:
    """A PNG of the main ``regime/*`` series against steps; None (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    series = {key: summary["series"][key] for key in _TREND_KEYS if key in summary.get("series", {})}
    if not series:
        return None
    columns = 3
    rows = (len(series) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.6 * rows), squeeze=False)
    for axis, (key, points) in zip(axes.flat, series.items(), strict=False):
        axis.plot([p[0] for p in points], [p[1] for p in points], marker=".", linewidth=1)
        axis.set_title(key.removeprefix("regime/"), fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(series) :]:
        axis.axis("off")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _report(summary: dict[str, Any], output_dir: Path, header: str, log=print) -> dict[str, Any]:
    rows = assess(summary)
    payload = {"header": header, "rows": rows, "summary": {k: v for k, v in summary.items() if k != "series"}}
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / "diagnosis.json", payload)
    log(header)
    log(format_table(rows))
    png = plot_trends(summary, output_dir / "diagnosis.png")
    written = [str(output_dir / "diagnosis.json")]
    if png is not None:
        written.append(str(png))
    else:
        log("(no trend plot: matplotlib is not installed, or no series was measured)")
    log("These are facts about this run, not a prediction of any method's gain. Written: " + ", ".join(written))
    return payload


def diagnose(
    config: str,
    *,
    steps: int = 20,
    output_dir: str | os.PathLike = "outputs/diagnose",
    extra_args: list[str] | None = None,
    log=print,
) -> dict[str, Any]:
    """Run ``steps`` steps of plain GRPO on the recipe ``config`` with a :class:`~trl_ext.diagnose.callback.RegimeCallback`; print and return
    the table (``{"header", "rows", "summary"}``), and write ``diagnosis.json``, ``diagnosis.png`` and
    ``regime.json`` under ``output_dir``."""
    import yaml

    from trl_ext.diagnose.callback import RegimeCallback
    from trl_ext.training import ProgressPrinter, build_trainer, make_train_parser, set_threads

    with user_input():
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"--steps must be at least 1, got {steps!r}")
        path = Path(config)
        if not path.is_file():
            raise ValueError(f"--config: no such file {config!r}")
        try:
            recipe = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"--config: {config!r} is not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(recipe, dict):
            raise ValueError(f"--config: {config!r} must hold a mapping of fields, got {type(recipe).__name__}")
        plain, dropped = _plain_grpo_recipe(recipe)
        output = Path(output_dir)
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=output, delete=False) as handle:
            yaml.safe_dump(plain, handle, sort_keys=False)
            plain_path = handle.name
        try:
            argv = ["--config", plain_path, *(extra_args or [])]
            argv += ["--max_steps", str(steps), "--output_dir", str(output), "--logging_steps", "1"]
            argv += ["--save_strategy", "no", "--report_to", "none"]
            parser = make_train_parser(plain["trainer"] if "trainer" in plain else "grpo")
            script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(argv)
        finally:
            os.unlink(plain_path)
        set_threads(script_args.threads, tiny_model=script_args.tiny_model)
        regime = RegimeCallback()
        callbacks = [ProgressPrinter(script_args.trainer), regime]
        trainer = build_trainer(script_args, training_args, model_args, dataset_args, callbacks=callbacks)
    trainer.train()
    summary = regime.summary()
    geometry = (
        f"{training_args.per_device_train_batch_size} completions per device-step, num_generations "
        f"{training_args.num_generations}, steps_per_generation {training_args.steps_per_generation}, "
        f"num_iterations {training_args.num_iterations}"
    )
    header = (
        f"trl-ext diagnose: {config}, {summary['steps']} steps of {script_args.trainer}"
        f"{' (calibration off)' if script_args.trainer == 'calibadv' else ''} ({geometry})"
        + (f"; left out of the recipe: {', '.join(dropped)}" if dropped else "")
    )
    return _report(summary, output, header, log)


def summary_from_log_history(history: list[dict[str, Any]], trainer: str | None = None) -> dict[str, Any]:
    """A :meth:`~trl_ext.diagnose.callback.RegimeCallback.summary`-shaped payload from TRL's ``log_history`` (the ``regime/*`` values as logged,
    one point per log entry; no reasons: a metric absent from the log reads "not logged in this run")."""
    series: dict[str, list[list[float]]] = {}
    for entry in history:
        for key, value in entry.items():
            if key.startswith("regime/") and isinstance(value, int | float) and math.isfinite(value):
                series.setdefault(key, []).append([int(entry.get("step", 0)), float(value)])
    measured = {
        key: {
            "mean": math.fsum(v for _, v in points) / len(points),
            "last": points[-1][1],
            "min": min(v for _, v in points),
            "max": max(v for _, v in points),
            "n": len(points),
        }
        for key, points in series.items()
    }
    steps = max((int(entry.get("step", 0)) for entry in history), default=0)
    return {"trainer": trainer, "steps": steps, "measured": measured, "series": series, "not_measurable": {}}


def _latest_trainer_state(run_dir: Path) -> Path | None:
    candidates = [run_dir / "trainer_state.json"]
    checkpoints = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: _step_of(p.parent.name))
    candidates += list(reversed(checkpoints))
    return next((path for path in candidates if path.is_file()), None)


def _step_of(name: str) -> int:
    tail = name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else -1


def diagnose_from(run_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None, log=print) -> dict:
    """The table of an existing run: ``<run_dir>/regime.json`` (written by a :class:`~trl_ext.diagnose.callback.RegimeCallback` at the end of
    training), else the ``regime/*`` metrics of its latest ``trainer_state.json`` (a checkpoint's log history)."""
    from trl_ext.diagnose.callback import REGIME_FILE

    with user_input():
        directory = Path(run_dir)
        if not directory.is_dir():
            raise ValueError(f"--from: no such directory {str(run_dir)!r}")
        path = directory / REGIME_FILE
        state = _latest_trainer_state(directory)
        if path.is_file():
            try:
                summary = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"--from: {str(path)!r} is not valid JSON ({exc.msg})") from None
            if not isinstance(summary, dict) or "measured" not in summary:
                raise ValueError(f"--from: {str(path)!r} is not a regime summary (no 'measured' field)")
            source = str(path)
        elif state is not None:
            try:
                history = json.loads(state.read_text()).get("log_history", [])
            except (json.JSONDecodeError, AttributeError):
                raise ValueError(f"--from: {str(state)!r} is not a trainer state (JSON with a log_history)") from None
            summary = summary_from_log_history(history)
            if not summary["measured"]:
                raise ValueError(
                    f"--from: {str(state)!r} logged no regime/* metric; train with `--diagnose true` (or "
                    "callbacks=[trl_ext.RegimeCallback()])"
                )
            source = str(state)
        else:
            raise ValueError(
                f"--from: {str(run_dir)!r} has no {REGIME_FILE} and no trainer_state.json; train with "
                "`trl-ext train ... --diagnose true` (or callbacks=[trl_ext.RegimeCallback()]), or run "
                "`trl-ext diagnose --config RECIPE`"
            )
    header = f"trl-ext diagnose: {source} ({summary.get('steps', '?')} steps of {summary.get('trainer') or 'a run'})"
    return _report(summary, Path(output_dir) if output_dir else directory, header, log)


def diagnose_main(argv: list[str] | None = None) -> dict:
    """``trl-ext diagnose``: parse the command line; see the module docstring."""
    parser = OneLineArgumentParser(
        prog="trl-ext diagnose",
        usage="trl-ext diagnose (--config RECIPE.yaml [--steps N] | --from OUTPUT_DIR) [--output_dir DIR] "
        "[--any train field ...]",
        description="Measure which method's regime a run is in: N steps of plain GRPO on the recipe (or a run's "
        "regime.json), then one table with the range in which each method's mechanism acts. States facts, never "
        "a gain.",
    )
    parser.add_argument("--config", help="recipe YAML (as for trl-ext train)")
    parser.add_argument("--from", dest="from_dir", help="output directory of a run trained with a RegimeCallback")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of the diagnostic run (default 20)")
    parser.add_argument("--output_dir", default=None, help="where the files go (default outputs/diagnose)")
    options, extra = parser.parse_known_args(argv)
    if (options.config is None) == (options.from_dir is None):
        parser.error("give exactly one of --config RECIPE.yaml and --from OUTPUT_DIR")
    if options.from_dir is not None:
        if extra:
            parser.error(f"--from reads a finished run; unrecognized arguments: {' '.join(extra)}")
        return diagnose_from(options.from_dir, options.output_dir)
    if options.steps < 1:
        parser.error(f"--steps must be at least 1, got {options.steps}")
    return diagnose(
        options.config, steps=options.steps, output_dir=options.output_dir or "outputs/diagnose", extra_args=extra
    )
