"""Pre-registration: DIVA-GRPO's easier variants on hard problems, against the best GRPO at equal completions.

Claim under test (arXiv 2603.01106, in this library's ``diva`` trainer): on problems the model rarely solves, training
each problem together with an easier variant (a partial-solution hint) and DIVA's local + global advantages makes the
model learn the *original* problems faster, per completion generated, than GRPO.

Regime: a 2-layer, 64-wide Qwen2 on CPU; the last digit of ``a+b+c`` (digits 0..7, 512 problems); binary reward.
Starting model: the quickstart's random tiny model after a seeded supervised warm start on two-operand sums ``x+y=``
(150 steps, label smoothing 0.3 on the answer digit; half of the sums after an unrelated ``u+v+w=`` prefix), so that
it can finish a sum whose first step is done but not the three-operand originals. Hint: that first step, never the
answer: the hinted prompt is ``a+b+c=s+c=`` with ``s = a+b`` (DIVA's built-in generator, template
``{question}{hints}=``).

Arms, each 128 completions per optimizer step, same starting model, optimizer (lr 1e-3, linear decay), loss and
steps per seed (150 steps, 19,200 completions):

* ``grpo4``, ``grpo8``, ``grpo16``: GRPO with 4, 8, 16 completions per problem (32, 16, 8 distinct problems per
  step): the baselines, at equal completions consumed;
* ``diva``: DIVA-GRPO, one variant per problem (V = 1), 8 completions per prompt row (8 problems x 2 rows per step),
  initial level 7 so that hard problems get hints; the library's default batch statistic (``responses``), the one a
  user gets (one mode, for the budget: the ``reference`` mode's statistic depends on the padded completion length);
  otherwise the library defaults;
* ``diva_copy``: the same trainer and settings, but each variant is a copy of the original problem: it isolates
  "more rows per problem with DIVA's advantage" from "easier rows".

Primary metric (pre-named), per run: the area under the accuracy curve against completions consumed, divided by the
completions (the mean accuracy over training, trapezoid rule over the evaluations at steps 0, 25, ..., 150), where
accuracy is the exact expected accuracy of sampling at T = 1 on the 512 original problems.

Comparisons, paired by seed (8 seeds, 0-7), mean difference with a 95% Student-t interval; minimum effect 0.01 (mean
accuracy over training: one accuracy point, about a fifth of what the best pilot arm gained over its start in 200
steps):

* claim 1, "diva beats GRPO": ``diva - grpo4``, ``diva - grpo8``, ``diva - grpo16``; the verdict is the weakest of
  the three (:func:`trl_ext.compare.evidence.worst`);
* claim 2, "the easier variants are what helps": ``diva - diva_copy``.

Controls (a failed control makes both verdicts "regime not reached"):

* hints easier before training: on every seed, the starting model's exact expected accuracy on the 512 hinted prompts
  exceeds its accuracy on the originals by at least 0.2;
* sparse regime: ``grpo8``'s zero-signal fraction (problems whose completions all got the same reward) over the first
  half of training is at least 0.5, mean over seeds;
* the mechanism engages: in ``diva`` over the first half of training, on the problems trained with a hint, hint rows
  are answered at least 0.1 more often than the original rows of the same batch, mean over seeds.

Reported without a verdict: ``diva_copy - grpo16`` ("more rows per problem with DIVA's advantage"), final accuracy,
zero-signal and all-wrong fractions.

Pilots (seeds 100-103, not registered): the warm start's settings (seed 100: without label smoothing the originals
a model gets wrong have probability < 0.01 of a right answer; with 0.3 they keep 0.01-0.03, and the hinted prompts
are answered 0.72 of the time against 0.11); one seed (101) of all five arms for 200 steps (mean accuracy over
training grpo4 0.164, grpo8 0.151, diva 0.149, diva_copy 0.118, grpo16 0.109), which sized the run; seeds 102-103 for
20 steps (the pipeline, the controls: 0.61, 0.72 and 0.65 against the thresholds 0.2, 0.5 and 0.1).

Compute: two processes on 2 shared cores (``diva`` + ``grpo8``, and ``diva_copy`` + ``grpo4`` + ``grpo16``), then
merged; about 30-40 minutes wall while the machine is shared by four jobs (``python experiments/diva_hard.py`` in one
process gives the same runs).
"""

from __future__ import annotations

import statistics
from typing import Any

from trl_ext.compare import harness
from trl_ext.compare.evidence import REGIME_NOT_REACHED, paired_effect, verdict, worst

NAME = "diva_hard"
SEEDS = tuple(range(8))
ARMS = ("grpo4", "grpo8", "grpo16", "diva", "diva_copy")
COMPLETIONS_PER_STEP = 128
STEPS = 150
EVAL_EVERY = 25
FINAL_EVALUATIONS = 3
MIN_EFFECT = 0.01
BASELINES = ("grpo4", "grpo8", "grpo16")
TREATMENT = "diva"
COPY = "diva_copy"
MIN_HINT_GAP_AT_START = 0.2
MIN_ZERO_SIGNAL = 0.5
MIN_HINT_GAP_IN_TRAINING = 0.1
CLAIMS = ("diva beats GRPO", "easier variants help")
AMENDMENTS: tuple[str, ...] = ()


def accuracy_area(completions: list[int], accuracy: list[float]) -> float:
    """Trapezoid area under accuracy against completions, divided by the completions spanned (a mean accuracy)."""
    if len(completions) < 2 or len(completions) != len(accuracy):
        raise ValueError("accuracy_area needs at least two evaluations, one accuracy per evaluation")
    area = sum(
        (completions[i + 1] - completions[i]) * (accuracy[i] + accuracy[i + 1]) / 2 for i in range(len(accuracy) - 1)
    )
    return area / (completions[-1] - completions[0])


def primary(report: dict[str, Any], arm: str) -> dict[str, float]:
    """seed -> the arm's accuracy area (the pre-named primary metric)."""
    return {
        seed: accuracy_area(run["eval_completions"], run["eval_accuracy"])
        for seed, run in report["runs"].get(arm, {}).items()
    }


def _first_half(values: list) -> list:
    return values[: max(len(values) // 2, 1)]


def controls(report: dict[str, Any]) -> dict[str, Any]:
    """The three controls (None where a partial report lacks the data); ``held`` is True only if every one holds."""
    start, runs = report["start"], report["runs"]
    gaps = [start[seed]["hint"] - start[seed]["original"] for seed in start]
    zero = [statistics.fmean(_first_half(run["problems_constant"])) for run in runs.get("grpo8", {}).values()]
    in_training = []
    for run in runs.get(TREATMENT, {}).values():
        hinted = _first_half(run["hinted_problems"])
        count = sum(entry[0] for entry in hinted)
        in_training.append((sum(entry[2] for entry in hinted) - sum(entry[1] for entry in hinted)) / count)
    checks: dict[str, Any] = {
        "hint_minus_original_at_start": harness.spread(gaps, count=False) if gaps else None,
        "hints_easier_at_start": bool(gaps) and min(gaps) >= MIN_HINT_GAP_AT_START,
        "grpo8_zero_signal_first_half": harness.spread(zero, count=False) if zero else None,
        "sparse_regime": bool(zero) and statistics.fmean(zero) >= MIN_ZERO_SIGNAL,
        "diva_hint_minus_original_in_training": harness.spread(in_training, count=False) if in_training else None,
        "hints_easier_in_training": bool(in_training) and statistics.fmean(in_training) >= MIN_HINT_GAP_IN_TRAINING,
    }
    checks["held"] = all(checks[key] for key in ("hints_easier_at_start", "sparse_regime", "hints_easier_in_training"))
    return checks


def _effect(report: dict[str, Any], treatment: str, baseline: str) -> dict[str, Any] | None:
    """The paired effect of `treatment` over `baseline`, or None where they share fewer than 2 seeds (a part or a
    one-seed pilot)."""
    treated, base = primary(report, treatment), primary(report, baseline)
    return paired_effect(treated, base) if len(set(treated) & set(base)) >= 2 else None


def judge(report: dict[str, Any]) -> dict[str, Any]:
    """The controls, each comparison's paired effect and verdict, and the verdict of each claim."""
    checks = controls(report)
    effects = {f"{TREATMENT} - {base}": _effect(report, TREATMENT, base) for base in (*BASELINES, COPY)}
    if any(effect is None for effect in effects.values()):  # a part of the run: no verdict
        return {"controls": checks, "effects": effects, "summary": None, "registered_seeds": False}
    verdicts = {name: verdict(effect, MIN_EFFECT) for name, effect in effects.items()}
    claims = {
        CLAIMS[0]: worst([verdicts[f"{TREATMENT} - {base}"] for base in BASELINES]),
        CLAIMS[1]: verdicts[f"{TREATMENT} - {COPY}"],
    }
    secondary = {f"{COPY} - grpo16": paired_effect(primary(report, COPY), primary(report, "grpo16"))}
    seeds = sorted(
        {int(seed) for by_seed in report["runs"].values() for seed in by_seed} | set(map(int, report["start"]))
    )
    return {
        "controls": checks, "effects": effects, "verdicts": verdicts, "secondary": secondary, "min_effect": MIN_EFFECT,
        # The verdict counts only for the registered seeds and steps; any other run (a pilot, a smoke test) says so.
        "registered_seeds": seeds == list(SEEDS) and all(
            run["eval_steps"][-1] == STEPS for by_seed in report["runs"].values() for run in by_seed.values()
        ),
        "summary": {claim: value if checks["held"] else REGIME_NOT_REACHED for claim, value in claims.items()},
    }  # fmt: skip
