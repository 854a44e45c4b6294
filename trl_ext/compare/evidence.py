"""Paired effects with intervals, and verdicts worded for the scale they were measured at.

An experiment compares arms run on the same seeds. For each seed it takes one number per arm (the pre-named primary
metric) and the difference between a treatment and its baseline, oriented so that a positive difference favours the
treatment. :func:`paired_effect` gives the mean difference, a 95% interval (Student's t over the seeds, or a paired
bootstrap) and the count of seeds in favour. :func:`verdict` reads the interval against the minimum effect stated
before the run (``min_effect`` > 0, in the metric's units):

* ``"shown"``: the whole interval lies at or above ``min_effect``;
* ``"contradicted at this scale"``: the whole interval lies below ``min_effect`` (an effect as large as the one that
  would count is ruled out, including when the treatment is worse);
* ``"not shown at this scale"``: the interval contains ``min_effect`` (too noisy or too small to tell).

A verdict is about the setting it was run in (model size, task, seeds); the words say so, and the page that quotes a
verdict states the regime in one line.
"""

from __future__ import annotations

import functools
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "CONTRADICTED", "NOT_SHOWN", "REGIME_NOT_REACHED", "SHOWN", "VERDICTS", "paired_effect", "t_quantile", "verdict",
    "verdict_no_worse", "worst",
]  # fmt: skip

SHOWN = "shown"
NOT_SHOWN = "not shown at this scale"
CONTRADICTED = "contradicted at this scale"
VERDICTS = (SHOWN, NOT_SHOWN, CONTRADICTED)
#: An experiment's verdict when one of its pre-registered controls failed, whatever the comparison says.
REGIME_NOT_REACHED = "regime not reached"


def _t_density(x: float, df: int) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def _t_cdf_above_zero(x: float, df: int, steps: int = 2000) -> float:
    """P(0 <= T <= x) by Simpson's rule on the density (x >= 0)."""
    h = x / steps
    total = _t_density(0.0, df) + _t_density(x, df)
    total += sum((4 if i % 2 else 2) * _t_density(i * h, df) for i in range(1, steps))
    return total * h / 3


@functools.lru_cache(maxsize=256)  # a judge asks for the same few quantiles many times; each costs ~10^5 evaluations
def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom, for 0.5 < p < 1 (bisection; ~1e-6)."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    target = p - 0.5
    low, high = 0.0, 1.0
    while _t_cdf_above_zero(high, df) < target:
        low, high = high, high * 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_cdf_above_zero(middle, df) < target else (low, middle)
    return (low + high) / 2


def paired_effect(
    treatment: Mapping[Any, float],
    baseline: Mapping[Any, float],
    *,
    higher_is_better: bool = True,
    method: str = "t",
    level: float = 0.95,
    draws: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """The treatment's effect against the baseline, paired by seed.

    Args:
        treatment, baseline: seed -> the primary metric of that arm on that seed. Only seeds present in both count.
        higher_is_better: orientation of the metric; differences are reported so that > 0 favours the treatment.
        method: ``"t"`` (mean difference +- t quantile x standard error) or ``"bootstrap"`` (percentile interval of
            the mean difference over seeds drawn with replacement).
        level: the interval's coverage.

    Returns:
        ``{"n", "mean", "low", "high", "in_favour", "differences", "method", "level"}``; ``in_favour`` counts seeds
        whose difference is > 0.
    """
    seeds = [seed_ for seed_ in treatment if seed_ in baseline]
    if len(seeds) < 2:
        raise ValueError(f"paired_effect needs at least 2 seeds in both arms, got {len(seeds)}")
    sign = 1.0 if higher_is_better else -1.0
    differences = [sign * (float(treatment[s]) - float(baseline[s])) for s in seeds]
    if not all(math.isfinite(d) for d in differences):
        raise ValueError(f"paired_effect: non-finite difference in {differences}")
    mean = statistics.fmean(differences)
    if method == "t":
        half = t_quantile(0.5 + level / 2, len(seeds) - 1) * statistics.stdev(differences) / math.sqrt(len(seeds))
        low, high = mean - half, mean + half
    elif method == "bootstrap":
        rng = random.Random(seed)
        means = sorted(statistics.fmean(rng.choices(differences, k=len(differences))) for _ in range(draws))
        tail = (1 - level) / 2
        low, high = means[int(tail * draws)], means[min(draws - 1, int((1 - tail) * draws))]
    else:
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    return {
        "n": len(seeds), "mean": mean, "low": low, "high": high, "in_favour": sum(d > 0 for d in differences),
        "differences": dict(zip(map(str, seeds), differences, strict=True)), "method": method, "level": level,
    }  # fmt: skip


def verdict(effect: Mapping[str, Any], min_effect: float) -> str:
    """:data:`SHOWN`, :data:`NOT_SHOWN` or :data:`CONTRADICTED` for a :func:`paired_effect` against the minimum
    effect stated before the run (see the module docstring)."""
    if not min_effect > 0:
        raise ValueError(f"min_effect must be > 0 (in the metric's units, favouring the treatment), got {min_effect}")
    if effect["low"] >= min_effect:
        return SHOWN
    if effect["high"] < min_effect:
        return CONTRADICTED
    return NOT_SHOWN


def verdict_no_worse(effect: Mapping[str, Any], tie_band: float) -> str:
    """The verdict on "the treatment is no worse than the baseline by more than ``tie_band``" (a non-inferiority claim,
    e.g. "the fitted normaliser is at the variance minimum" against the best normaliser found on other batches), for a
    :func:`paired_effect` oriented as usual (> 0 favours the treatment) and the band stated before the run (> 0):

    * :data:`SHOWN`: the whole interval lies at or above ``-tie_band``;
    * :data:`CONTRADICTED`: the whole interval lies below ``-tie_band`` (the treatment is worse by more than the band);
    * :data:`NOT_SHOWN`: the interval contains ``-tie_band``.
    """
    if not tie_band > 0:
        raise ValueError(f"tie_band must be > 0 (in the metric's units), got {tie_band}")
    if effect["low"] >= -tie_band:
        return SHOWN
    if effect["high"] < -tie_band:
        return CONTRADICTED
    return NOT_SHOWN


def worst(verdicts: Sequence[str]) -> str:
    """The weakest of several verdicts (a claim judged against several baselines holds only if it holds against each):
    regime not reached before contradicted before not shown before shown."""
    order = {REGIME_NOT_REACHED: -1, CONTRADICTED: 0, NOT_SHOWN: 1, SHOWN: 2}
    return min(verdicts, key=order.__getitem__)
