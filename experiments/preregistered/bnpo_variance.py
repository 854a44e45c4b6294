"""Pre-registration: BNPO's variance claim, in the simulation and on the tiny LLM (both measure, neither trains).

Claim under test (arXiv 2506.02864): the normaliser f_Beta(p; 1 + a/3, 1 + b/3), with Beta(a, b) fitted to the
batch's success rates by the method of moments (the shipped ``beta_normalized_advantages``, refitted on every batch),
minimises the variance of the policy gradient, and so lowers it against GRPO's std where success rates are skewed.

Measure. RV = E||g - Eg||^2 / ||Eg||^2 of the batch gradient g (||Eg||^2 estimated without bias), for ``grpo``,
``bnpo`` and every fixed normaliser 1 / f_Beta(p_hat; alpha, beta) on the scripts' log grids, all on the same rewards
and scores. The batches of a cell are split by parity of their index into halves A and B.

Two claims, each judged per cell (a policy model and a skewed population, or the LLM), paired over the seeds, on the
natural log of RV:

* ``below_grpo``: log RV(grpo) - log RV(bnpo) on all batches; minimum effect -log(0.95) (a 5% reduction);
  :func:`trl_ext.compare.evidence.verdict`.
* ``at_minimum`` (selection without bias): the grid point with the smallest RV on half A is scored on half B, and the
  other way round; the seed's difference is the mean over the two folds of log RV_score(selected) - log
  RV_score(bnpo) (negative when BNPO is above the held-out minimum). Tie band log(1.05) in the simulation, log(1.10)
  on the LLM, whose halves have 80 batches instead of 2000; :func:`trl_ext.compare.evidence.verdict_no_worse`.

A model's (or the LLM's) verdict on each claim is the weaker over its skewed populations
(:func:`trl_ext.compare.evidence.worst`). Student-t 95% intervals over the seeds.

Controls (a failed control makes that claim's verdict "regime not reached"):

* machinery (simulation, both claims): for each skewed population the grid argmin of the paper's own objective
  E[p(1-p)/f^2] lies within one grid step of (1 + a/3, 1 + b/3), and ``fit_beta`` on 10^6 true rates is within 2%;
* ``below_grpo``: the population tells GRPO from REINFORCE, |mean over seeds of RV(grpo) / RV(alpha = beta = 1) - 1|
  >= 0.05 (else GRPO's std does nothing there for BNPO to improve on);
* ``at_minimum``, resolution: the held-out selection costs less than the tie band, the mean over seeds and folds of
  RV_score(selected) / min_grid RV_score <= the band's factor (1.05; 1.10 on the LLM); and every seed's held-out RVs
  of ``bnpo`` and of the selected point are measurable (positive signal estimate);
* LLM, regime: the measured batches are skewed and informative, mean fitted beta / alpha >= 1.3 and mean share of
  mixed groups >= 0.25 (the decomposition's agreement with the direct gradients, < 1e-3, is asserted in the run).

Seeds: simulation 10-19 (10), LLM 10-17 (8). Seeds 0-2 were the earlier runs, which now count as pilots, and no
pilot preceded this design. Simulation: 4000 batches of 32 prompts x 16 rewards per cell, models ``tabular``,
``shared_noise0``, ``shared_noise1``, ``shared_noise64``, populations Beta(0.5, 3) and Beta(3, 0.5). LLM: the
quickstart model after 30 GRPO steps, 160 batches of 32 x 16 on the carry-weighted mixture. Compute: about 12
minutes (simulation) and 40 minutes (LLM) on 2 shared cores.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from trl_ext.compare.evidence import REGIME_NOT_REACHED, paired_effect, verdict, verdict_no_worse, worst

NAME = "bnpo_variance"
SIMULATION_SEEDS = tuple(range(10, 20))
LLM_SEEDS = tuple(range(10, 18))
SIMULATION_MODELS = ("tabular", "shared_noise0", "shared_noise1", "shared_noise64")
SKEWED_POPULATIONS = {"hard_skewed": (0.5, 3.0), "easy_skewed": (3.0, 0.5)}
SIMULATION_BATCHES, LLM_BATCHES, LLM_STAGE = 4000, 160, 30
MIN_REDUCTION = -math.log(0.95)  # below_grpo: a 5% lower RV
TIE_FACTOR = {"simulation": 1.05, "llm": 1.10}
GRPO_VS_REINFORCE = 0.05
LLM_MIN_SKEW, LLM_MIN_MIXED = 1.3, 0.25
CLAIMS = ("below_grpo", "at_minimum")
AMENDMENTS: tuple[str, ...] = ()


def heldout_difference(cell: dict[str, Any]) -> float | None:
    """Mean over the two folds of log RV_score(selected) - log RV_score(bnpo); None if a needed RV is unmeasurable."""
    values = []
    for fold in cell["heldout"]:
        if not (fold["rv_selected"] > 0 and fold["rv_bnpo"] > 0):
            return None
        values.append(math.log(fold["rv_selected"]) - math.log(fold["rv_bnpo"]))
    return statistics.fmean(values)


def selection_cost(cell: dict[str, Any]) -> float | None:
    """Mean over the folds of RV_score(selected) / min over the grid of RV_score (what choosing on other batches costs)."""
    values = [fold["rv_selected"] / fold["rv_score_min"] for fold in cell["heldout"] if fold["rv_score_min"] > 0]
    return statistics.fmean(values) if len(values) == len(cell["heldout"]) else None


def judge_cells(cells: list[dict[str, Any]], tie_factor: float, extra_controls: dict[str, bool]) -> dict[str, Any]:
    """Both claims on one cell's runs (one per seed, at least 2): effects, controls, verdicts. An RV whose signal
    estimate is not positive cannot be compared: the claims it enters get "regime not reached"."""
    by_seed = {run["seed"]: run for run in cells}
    full_measurable = all(run["rv"][arm] > 0 for run in by_seed.values() for arm in ("grpo", "bnpo", "reinforce"))
    below = None
    if full_measurable:
        log_grpo = {seed: math.log(run["rv"]["grpo"]) for seed, run in by_seed.items()}
        log_bnpo = {seed: math.log(run["rv"]["bnpo"]) for seed, run in by_seed.items()}
        below = paired_effect(log_bnpo, log_grpo, higher_is_better=False)
    differences = {seed: heldout_difference(run) for seed, run in by_seed.items()}
    costs = [selection_cost(run) for run in by_seed.values()]
    measurable = all(value is not None for value in differences.values()) and all(c is not None for c in costs)
    at_min = paired_effect(differences, dict.fromkeys(differences, 0.0)) if measurable else None
    grpo_over_reinforce = (
        statistics.fmean(run["rv"]["grpo"] / run["rv"]["reinforce"] for run in by_seed.values())
        if full_measurable
        else None
    )
    mean_cost = statistics.fmean(costs) if measurable else None
    controls = {
        **extra_controls,
        "grpo_over_reinforce": grpo_over_reinforce,
        "all_batches_measurable": full_measurable,
        "tells_grpo_from_reinforce": full_measurable and abs(grpo_over_reinforce - 1) >= GRPO_VS_REINFORCE,
        "heldout_measurable": measurable,
        "selection_cost": mean_cost,
        "selection_resolves_the_band": measurable and mean_cost <= tie_factor,
    }
    base = all(extra_controls.values())
    held = {
        "below_grpo": base and controls["tells_grpo_from_reinforce"],
        "at_minimum": base and controls["selection_resolves_the_band"],
    }
    verdicts = {
        "below_grpo": verdict(below, MIN_REDUCTION) if held["below_grpo"] else REGIME_NOT_REACHED,
        "at_minimum": (verdict_no_worse(at_min, math.log(tie_factor)) if held["at_minimum"] else REGIME_NOT_REACHED),
    }
    return {"effects": {"below_grpo": below, "at_minimum": at_min}, "controls": controls, "verdicts": verdicts}


def judge_simulation(report: dict[str, Any]) -> dict[str, Any]:
    """Per model and skewed population, then per model (the weaker over the populations)."""
    machinery = {
        name: bool(
            report["controls"][name]["argmin_within_one_grid_step"] and report["controls"][name]["fit_within_2pct"]
        )
        for name in SKEWED_POPULATIONS
    }
    result: dict[str, Any] = {"cells": {}, "summary": {}}
    for model in SIMULATION_MODELS:
        per_population = {}
        for name in SKEWED_POPULATIONS:
            cells = [run for run in report["runs"] if run["model"] == model and run["population"] == name]
            if len(cells) < 2:
                continue
            judged = judge_cells(cells, TIE_FACTOR["simulation"], {"machinery": machinery[name]})
            per_population[name] = judged
            result["cells"][f"{model} / {name}"] = judged
        if per_population:
            result["summary"][model] = {
                claim: worst([judged["verdicts"][claim] for judged in per_population.values()]) for claim in CLAIMS
            }
    seeds = sorted({run["seed"] for run in report["runs"]})
    result["registered_seeds"] = seeds == list(SIMULATION_SEEDS)
    return result


def judge_llm(report: dict[str, Any]) -> dict[str, Any]:
    """The LLM's one cell (the carry-weighted mixture at the registered stage)."""
    runs = report["runs"]
    if len({run["seed"] for run in runs}) < 2:
        return {"registered_seeds": False, "summary": "a verdict needs at least 2 seeds"}
    skew = statistics.fmean(run["fit_mean"]["beta"] for run in runs) / statistics.fmean(
        run["fit_mean"]["alpha"] for run in runs
    )
    mixed = statistics.fmean(run["frac_mixed_groups"] for run in runs)
    extra = {"skewed": skew >= LLM_MIN_SKEW, "mixed": mixed >= LLM_MIN_MIXED}
    judged = judge_cells(runs, TIE_FACTOR["llm"], extra)
    judged["controls"].update(fit_beta_over_alpha=skew, frac_mixed_groups=mixed)
    seeds = sorted({run["seed"] for run in runs})
    judged["registered_seeds"] = seeds == list(LLM_SEEDS) and all(run["stage"] == LLM_STAGE for run in runs)
    judged["summary"] = dict(judged["verdicts"])
    return judged
