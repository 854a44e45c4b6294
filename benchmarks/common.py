"""Small helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so this imports as
``common``)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean: entry t is the mean of ``values[max(0, t - window + 1) : t + 1]``."""
    return [statistics.fmean(values[max(0, t - window + 1) : t + 1]) for t in range(len(values))]


def spread(values: list) -> dict | None:
    """``{"mean", "min", "max", "n"}`` of the values that are not None (None if there are none)."""
    numbers = [value for value in values if value is not None]
    if not numbers:
        return None
    return {"mean": statistics.fmean(numbers), "min": min(numbers), "max": max(numbers), "n": len(numbers)}


def replot(out: Path, summarise: Callable, plot: Callable, print_summary: Callable) -> dict:
    """Re-summarise the runs stored in `out` (a benchmark's JSON), rewrite it and its PNG, print the summary."""
    report = json.loads(out.read_text())
    report["summary"] = summarise(report["runs"])
    out.write_text(json.dumps(report, indent=1))
    plot(report, out.with_suffix(".png"))
    print_summary(report["summary"])
    return report
