"""The statistics every experiment's verdict rests on (trl_ext.compare.evidence), on hand-made tables."""

from __future__ import annotations

import math
import statistics

import pytest

from trl_ext.compare import evidence
from trl_ext.compare.evidence import CONTRADICTED, NOT_SHOWN, SHOWN, paired_effect, t_quantile, verdict, worst


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (7, 2.3646), (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-4)


def test_t_quantile_refuses_what_it_cannot_compute():
    for p, df in ((0.4, 5), (1.0, 5), (0.975, 0)):
        with pytest.raises(ValueError, match="t_quantile"):
            t_quantile(p, df)


def test_paired_effect_by_hand():
    treatment = {0: 0.80, 1: 0.70, 2: 0.90, 3: 0.60, 9: 5.0}  # seed 9 has no baseline: left out
    baseline = {0: 0.70, 1: 0.72, 2: 0.75, 3: 0.50}
    effect = paired_effect(treatment, baseline)
    differences = [0.10, -0.02, 0.15, 0.10]
    mean, sd = statistics.fmean(differences), statistics.stdev(differences)
    half = 3.1824 * sd / 2  # t(0.975, 3) = 3.1824
    assert effect["n"] == 4 and effect["in_favour"] == 3
    assert effect["mean"] == pytest.approx(mean)
    assert (effect["low"], effect["high"]) == pytest.approx((mean - half, mean + half), abs=1e-4)
    # lower is better: the same numbers, the other sign
    flipped = paired_effect(treatment, baseline, higher_is_better=False)
    assert flipped["mean"] == pytest.approx(-mean) and flipped["in_favour"] == 1
    assert flipped["low"] == pytest.approx(-effect["high"]) and flipped["high"] == pytest.approx(-effect["low"])


def test_paired_effect_bootstrap_is_seeded_and_inside_the_range_of_differences():
    treatment = {s: 1.0 + 0.1 * s for s in range(10)}
    baseline = {s: 1.0 + 0.05 * s + (0.03 if s % 2 else -0.03) for s in range(10)}
    first = paired_effect(treatment, baseline, method="bootstrap")
    assert first == paired_effect(treatment, baseline, method="bootstrap")
    diffs = list(first["differences"].values())
    assert min(diffs) <= first["low"] <= first["mean"] <= first["high"] <= max(diffs)
    assert first["low"] < first["high"]


def test_paired_effect_refuses_too_few_seeds_and_non_finite_values():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        paired_effect({0: 1.0, 1: 2.0}, {1: 1.0})
    with pytest.raises(ValueError, match="non-finite"):
        paired_effect({0: 1.0, 1: math.nan}, {0: 1.0, 1: 1.0})
    with pytest.raises(ValueError, match="method"):
        paired_effect({0: 1.0, 1: 2.0}, {0: 1.0, 1: 1.0}, method="z")


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.05, 0.20, SHOWN),
        (0.02, 0.20, SHOWN),  # the interval starts exactly at the minimum effect
        (0.0199, 0.20, NOT_SHOWN),
        (-0.10, 0.30, NOT_SHOWN),
        (-0.10, 0.02, NOT_SHOWN),  # the interval reaches the minimum effect exactly
        (-0.10, 0.0199, CONTRADICTED),
        (0.001, 0.0199, CONTRADICTED),  # positive but smaller than what would count
        (-0.30, -0.10, CONTRADICTED),
    ],
)
def test_verdict_at_each_threshold(low, high, expected):
    assert verdict({"low": low, "high": high}, 0.02) == expected


def test_verdict_needs_a_positive_minimum_effect_and_worst_takes_the_weakest():
    with pytest.raises(ValueError, match="min_effect"):
        verdict({"low": 0.1, "high": 0.2}, 0.0)
    assert worst([SHOWN, NOT_SHOWN]) == NOT_SHOWN
    assert worst([SHOWN, CONTRADICTED, NOT_SHOWN]) == CONTRADICTED
    assert worst([SHOWN, SHOWN]) == SHOWN
    assert set(evidence.VERDICTS) == {SHOWN, NOT_SHOWN, CONTRADICTED}


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (-0.01, 0.03, SHOWN),  # worse by at most 1%: inside the 5% tie band
        (-0.05, 0.03, SHOWN),  # the interval starts exactly at the band's edge
        (-0.0501, 0.03, NOT_SHOWN),
        (-0.20, -0.05, NOT_SHOWN),  # the interval reaches the band's edge exactly
        (-0.20, -0.0501, CONTRADICTED),
        (-0.30, -0.10, CONTRADICTED),
    ],
)
def test_verdict_no_worse_at_each_threshold(low, high, expected):
    assert evidence.verdict_no_worse({"low": low, "high": high}, 0.05) == expected


def test_verdict_no_worse_needs_a_positive_band():
    with pytest.raises(ValueError, match="tie_band"):
        evidence.verdict_no_worse({"low": 0.0, "high": 0.1}, 0.0)


def test_worst_ranks_a_failed_control_below_every_verdict():
    assert worst([SHOWN, evidence.REGIME_NOT_REACHED, CONTRADICTED]) == evidence.REGIME_NOT_REACHED
    assert worst([NOT_SHOWN, CONTRADICTED]) == CONTRADICTED
