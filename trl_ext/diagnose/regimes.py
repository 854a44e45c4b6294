"""Each method's regime: the quantity that shows it, the range in which its mechanism acts (from its paper and from
this project's own experiments, each cited), and whether a run's measured value lies in it.

The thresholds are the ones this project's experiments used to *establish* each regime (their controls, in
``docs/results.md``), or the paper's premise where the project measured no range; each row says which. A row states
where the run lies; it never predicts a gain (the experiments' verdicts are linked beside it, several are negative).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["REGIMES", "Regime", "assess", "verdicts"]

RESULTS = "docs/results.md"


@dataclass(frozen=True)
class Regime:
    """One method's regime.

    Attributes:
        method: the trainer name.
        quantity: what is measured, in words.
        keys: the ``regime/*`` metrics the row needs (the first one is the row's value).
        acts: the range in which the mechanism acts, with its source.
        source: the section of ``docs/results.md`` (or the trainer page) the range comes from.
        docs: the method's page.
        verdict: the project's experiment verdict, in a few words.
        inside: ``run-mean values -> bool``: whether the run lies in the range (only called when every key is there).
        show: ``run-mean values -> str``: the row's value as printed.
    """

    method: str
    quantity: str
    keys: tuple[str, ...]
    acts: str
    source: str
    docs: str
    verdict: str
    inside: Callable[[dict[str, float]], bool]
    show: Callable[[dict[str, float]], str]


def _f(value: float) -> str:
    return f"{value:.3g}"


REGIMES: tuple[Regime, ...] = (
    Regime(
        method="diva",
        quantity="groups without signal (all-fail + all-pass)",
        keys=("regime/zero_signal_frac", "regime/zero_signal_all_fail", "regime/zero_signal_all_pass"),
        acts=">= 0.5 of groups, all-fail above all (the DIVA experiment's regime control; grpo-8 had 0.66, 0.65 "
        "all-fail)",
        source=f"{RESULTS}#diva-on-hard-problems",
        docs="docs/trainers/diva.md",
        verdict="contradicted at this scale against the best grpo at equal completions",
        inside=lambda v: v["regime/zero_signal_frac"] >= 0.5,
        show=lambda v: (
            f"{_f(v['regime/zero_signal_frac'])} (fail {_f(v['regime/zero_signal_all_fail'])}, "
            f"pass {_f(v['regime/zero_signal_all_pass'])})"
        ),
    ),
    Regime(
        method="bnpo",
        quantity="skew of the fitted Beta (larger/smaller of alpha, beta); mixed groups",
        keys=("regime/bnpo_beta_ratio", "regime/mixed_frac", "regime/bnpo_alpha", "regime/bnpo_beta"),
        acts="ratio >= 1.3 with >= 0.25 of groups mixed (the BNPO experiment's regime control; its LLM batches had "
        "1.84 and 0.45)",
        source=f"{RESULTS}#bnpo-the-fitted-beta-normaliser-against-the-gradient-variance-minimum",
        docs="docs/trainers/bnpo.md",
        verdict="contradicted at this scale in simulation; not shown on the tiny LLM",
        inside=lambda v: v["regime/bnpo_beta_ratio"] >= 1.3 and v["regime/mixed_frac"] >= 0.25,
        show=lambda v: (
            f"{_f(v['regime/bnpo_beta_ratio'])} (alpha {_f(v['regime/bnpo_alpha'])}, beta {_f(v['regime/bnpo_beta'])}"
            f"; mixed {_f(v['regime/mixed_frac'])})"
        ),
    ),
    Regime(
        method="minpro",
        quantity="mean |log ratio| per token (pi_theta / pi_old)",
        keys=("regime/logratio_abs_mean", "regime/stale_batch_frac"),
        acts="mean |log rho| >= 0.25 on 12-token completions (pre-registered estimator run, 10 seeds: the prefix "
        "minimum's cosine to the true gradient above GRPO's token weights' by 0.05 at 0.25, 0.02 at 0.12; shown for >= 0.5)",
        source=f"{RESULTS}#minpro-far-off-policy-on-long-completions",
        docs="docs/trainers/minpro.md",
        verdict="estimator shown at this scale; training contradicted at this scale (grpo unstable)",
        inside=lambda v: v["regime/logratio_abs_mean"] >= 0.25,
        show=lambda v: f"{_f(v['regime/logratio_abs_mean'])} (stale micro-batches {_f(v['regime/stale_batch_frac'])})",
    ),
    Regime(
        method="hapo",
        quantity="clip fraction of high- vs low-entropy tokens",
        keys=("regime/clip_frac_high_entropy", "regime/clip_frac_low_entropy"),
        acts="> 0 on high-entropy tokens: HAPO's adaptive clip bounds act only on clipped tokens (paper); in the "
        "project's fork experiment DAPO clipped 0.128 of high-entropy off-policy tokens, its fork's direction entropy "
        "falling 0.61 -> 0.016",
        source=f"{RESULTS}#hapo-fork-token-entropy-under-off-policy-clipping",
        docs="docs/trainers/hapo.md",
        verdict="regime not reached (the positive control failed)",
        inside=lambda v: v["regime/clip_frac_high_entropy"] > 0,
        show=lambda v: f"{_f(v['regime/clip_frac_high_entropy'])} vs {_f(v['regime/clip_frac_low_entropy'])}",
    ),
    Regime(
        method="calibadv",
        quantity="negative-advantage trajectories with a useful search step",
        keys=("regime/neg_traj_useful_step_frac",),
        acts="> 0: GRPO penalises those steps, CalibAdv's soft penalty spares them (paper's premise; the project "
        "measured no range, only that 0.970 of warm-start steps were useful)",
        source=f"{RESULTS}#calibadv-step-judgement-and-ablation-on-the-deepsearch-task",
        docs="docs/trainers/calibadv.md",
        verdict="judgement shown at this scale; stability not shown at this scale",
        inside=lambda v: v["regime/neg_traj_useful_step_frac"] > 0,
        show=lambda v: _f(v["regime/neg_traj_useful_step_frac"]),
    ),
)

#: Context rows: measured facts without a method range of their own.
CONTEXT: tuple[tuple[str, str], ...] = (
    ("regime/entropy_slope", "entropy trend (nats per step; < 0: falling)"),
    ("regime/entropy_p50", "token entropy, median"),
    ("regime/prefix_to_token_spread", "prefix log-ratio spread / token log-ratio spread"),
    ("regime/minpro_weight_min", "MinPRO weight range, min"),
    ("regime/minpro_weight_max", "MinPRO weight range, max"),
    ("regime/sampler_logratio_abs_mean", "sampler (vLLM) vs trainer |log ratio|"),
    ("regime/sampler_prefix_to_token_spread", "sampler vs trainer: prefix / token log-ratio spread"),
    ("regime/bnpo_weight_min", "BNPO weight 1/f, min over mixed groups"),
    ("regime/bnpo_weight_max", "BNPO weight 1/f, max over mixed groups"),
    ("regime/bnpo_vs_grpo_spread", "BNPO/GRPO advantage scale, max/min over groups"),
)


def assess(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method and per context quantity from a :meth:`~trl_ext.diagnose.callback.RegimeCallback.summary` payload: ``{"method",
    "quantity", "value", "status" ("inside", "outside", "not measurable"), "why", "acts", "source", "docs",
    "verdict"}``. Values are run means of the logged metrics."""
    measured = {key: stats["mean"] for key, stats in summary.get("measured", {}).items()}
    reasons = summary.get("not_measurable", {})
    rows = []
    for regime in REGIMES:
        missing = [key for key in regime.keys if key not in measured]
        row = {
            "method": regime.method,
            "quantity": regime.quantity,
            "acts": regime.acts,
            "source": regime.source,
            "docs": regime.docs,
            "verdict": regime.verdict,
        }
        if missing:
            why = reasons.get(missing[0], "not logged in this run")
            row.update(value=None, status="not measurable", why=why)
        else:
            row.update(value=regime.show(measured), status="inside" if regime.inside(measured) else "outside", why="")
        rows.append(row)
    for key, label in CONTEXT:
        row = {"method": "", "quantity": label, "acts": "", "source": "", "docs": "", "verdict": ""}
        if key in measured:
            row.update(value=_f(measured[key]), status="", why="")
        else:
            row.update(value=None, status="not measurable", why=reasons.get(key, "not logged in this run"))
        rows.append(row)
    return rows


def verdicts(rows: list[dict[str, Any]]) -> dict[str, str]:
    """method -> status, for the method rows of :func:`assess`."""
    return {row["method"]: row["status"] for row in rows if row["method"]}
