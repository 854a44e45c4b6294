"""Pre-registration: HAPO on a fork where keeping both branches open pays (issue 25).

Claim under test (arXiv 2509.16591): HAPO's token-adaptive temperature, advantage and clipping preserve exploration
at high-entropy "fork" tokens under off-policy clipping, and that exploration buys reward. The earlier version of
this experiment rewarded both branches of its fork equally, so keeping the fork open could not raise the reward;
this design makes it pay.

Task. The prompt is ``d=`` (d a digit). The first completion token is a fork: d+1 starts the *easy* branch (count up
for L = 6 digits, then EOS), d-1 the *better* branch (count down for 6 digits, then EOS). The reward is the correct
prefix of the 7 targets under the branch the first token chose, / 7, times the branch's value: 0.7 for the easy
branch, 1.0 for the better one. The warm start (60 supervised steps on a tiny random Qwen2, hidden 64, 2 layers)
teaches the fork balanced, the easy chain in full, and the better branch's first 3 tokens only (its remaining 3
digits and EOS are unlabelled). At the start the two branches are worth about the same per completion (pilot warm
starts: the easy one ~0.68, the better one ~0.65), so an early collapse of the fork on a prompt tends to settle on the easy branch
(at most 0.7), while a policy that keeps sampling the better branch can learn its chain and approach 1.0.

Regime (as the earlier experiment): 7 of 8 micro-batches stale (``steps_per_generation=8``, 32 prompts x 8
completions per generation, 32 completions per optimizer step), lr 2e-3 constant, no KL, ``loss_type="dapo"``,
eps 0.2 / 0.28 in every arm, T0 = 1, 160 optimizer steps, one torch thread.

Arms (paired: same warm start, data order and seed per seed):
* ``dapo``: the ``grpo`` trainer (the baseline);
* ``hapo_reference`` and ``hapo_signed``: the ``hapo`` trainer with every component on (temperature tau 0.05, TLGA,
  ADR, AAC, dual clip c = 10), in each ``hapo_entropy_sign_mode``;
* ``dapo_entropy``: ``grpo`` plus TRL's entropy bonus, ``entropy_coef`` 0.05 (positive control: keeping entropy up
  by brute force must buy reward here, or the task does not reward an open fork).

Primary metric (one number per run): the exact expected reward at T = 1, averaged over the 10 prompts, computed from
one teacher-forced forward pass over both correct completions (the reward is a sum of prefix indicators, so
E[R] = sum_branch value_b / 7 * sum_t prod_{j <= t} p_j), averaged over the evaluation points (every 4 optimizer
steps) after the first half of the run (steps 84-160, 20 points). No sampling noise enters the metric.

Comparisons: ``hapo_reference`` - ``dapo`` and ``hapo_signed`` - ``dapo``, each judged separately (two variants of
the method), paired over seeds 0-9, mean difference with a 95% Student-t interval; minimum effect 0.03 (reward, whose
range is 0-1): shown if the interval lies at or above 0.03, contradicted at this scale if it lies below 0.03, not
shown at this scale otherwise (:func:`trl_ext.compare.evidence.verdict`). Why 0.03: about three quarters of what the
entropy bonus bought in the pilot (+0.041 mean), and about a tenth of the baseline's distance to the ceiling of 1.0
(its pilot primary metric was 0.65-0.78): a method that keeps the fork open should buy at least that much here.

Controls (a failed control makes both verdicts "regime not reached"):
1. clipping acts: the baseline clips at least 1% of its off-policy loss tokens (mean over seeds);
2. the baseline's fork collapses: its direction entropy H(p_easy / (p_easy + p_better)) over the last quarter of the
   evaluations is below half its value at the start (means over seeds);
3. the baseline leaves reward on the table: at its last evaluation at least 20% of (seed, prompt) pairs have
   p_better / (p_easy + p_better) < 0.5 (the prompt settled on the easy branch);
4. positive control: ``dapo_entropy`` - ``dapo`` on the primary metric has a 95% interval whose lower end is above 0
   (keeping entropy up raises the reward in this task).

Secondary, reported without a verdict: the paired differences against ``dapo`` of the fork direction entropy averaged
over the run, of the high-entropy clip fraction (off-policy tokens above the micro-batch's 0.8-quantile of entropy),
and of the share of prompts on the better branch at the end; the positive control's own difference.

Pilots (reported as pilots; seeds 100-103, none of the registered seeds; about 20 runs and a smoke run of 16 steps):
``dapo`` on L = 10 with the easy branch worth 0.5 and 3 taught tokens (seeds 100-103: the better chain was barely
learned in 160 steps, exact reward 0.45 -> 0.47-0.66); ``dapo`` / ``dapo_entropy`` on L = 6 with 0.5 (seeds 100-102:
every baseline prompt went to the better branch, no trap); then this design (L = 6, 0.7; seeds 100-102), primary
metric of ``dapo`` 0.653 / 0.740 / 0.783, paired differences ``dapo_entropy`` +0.069 / +0.043 / +0.010,
``hapo_reference`` +0.060 / -0.042 / -0.013, ``hapo_signed`` +0.010 / -0.017 / -0.031. In those pilots the baseline's
fork collapsed (entropy 0.7-0.8 -> 0.05-0.09 nats) with 0.6-0.7 of the fork mass on the better branch at the end, and
it clipped about 3% of its off-policy tokens.

Compute of the final run: 4 arms x 10 seeds x 160 steps, 40 runs of about 16-20 s of one core each (26-73 s wall
each on the 2 shared cores during the pilots), so about 12-13 minutes of one core and 25-45 minutes wall on the shared
machine (``python experiments/hapo_fork.py``).
"""

from __future__ import annotations

import statistics
from typing import Any

from trl_ext.compare.evidence import REGIME_NOT_REACHED, paired_effect, verdict

NAME = "hapo_fork"
SEEDS = tuple(range(10))
BASELINE = "dapo"
TREATMENTS = ("hapo_reference", "hapo_signed")
POSITIVE_CONTROL = "dapo_entropy"
ARMS = (BASELINE, *TREATMENTS, POSITIVE_CONTROL)
SETTINGS = {
    "chain": 6, "easy_reward": 0.7, "better_known": 3, "steps": 160, "steps_per_generation": 8, "lr": 2e-3,
    "sft_steps": 60, "sft_lr": 3e-3,
}  # fmt: skip
ENTROPY_COEF = 0.05
MIN_EFFECT = 0.03
MIN_CLIP_FRACTION = 0.01
COLLAPSE_FACTOR = 0.5
MIN_EASY_SHARE = 0.2
AMENDMENTS: tuple[str, ...] = ()


def _seeds(report: dict[str, Any], arm: str) -> list[str]:
    return sorted(report["runs"].get(arm, {}), key=int)


def primary_of_run(run: dict[str, Any]) -> float:
    """The exact expected reward at T = 1 averaged over the evaluations after the first half of the run."""
    forks = run["fork"]
    last = forks[-1]["step"]
    return statistics.fmean(f["reward"] for f in forks if f["step"] > last / 2)


def primary(report: dict[str, Any], arm: str) -> dict[str, float]:
    """seed -> the arm's primary metric."""
    return {seed: primary_of_run(report["runs"][arm][seed]) for seed in _seeds(report, arm)}


def direction_entropy_mean(run: dict[str, Any]) -> float:
    """Secondary: the fork's direction entropy averaged over the evaluations after the start."""
    return statistics.fmean(f["direction_entropy"] for f in run["fork"][1:])


def better_share_end(run: dict[str, Any]) -> float:
    """Secondary: the share of prompts whose fork prefers the better branch at the last evaluation."""
    values = run["fork"][-1]["p_better_per_prompt"]
    return sum(p >= 0.5 for p in values) / len(values)


def clip_fraction(run: dict[str, Any], bucket: str = "all") -> float:
    """Clipped share of the off-policy loss tokens of ``bucket`` (``all``, ``high``, ...) over the whole run."""
    steps = run["loss_side"]
    tokens = sum(s.get(f"{bucket}_tokens", 0.0) for s in steps)
    return sum(s.get(f"{bucket}_clipped", 0.0) for s in steps) / tokens if tokens else 0.0


def _per_seed(report: dict[str, Any], arm: str, measure) -> dict[str, float]:
    return {seed: measure(report["runs"][arm][seed]) for seed in _seeds(report, arm)}


def controls(report: dict[str, Any]) -> dict[str, Any]:
    """The four controls; ``held`` is True only if every one holds."""
    base = [report["runs"][BASELINE][seed] for seed in _seeds(report, BASELINE)]
    clip = statistics.fmean(clip_fraction(run) for run in base)
    start = statistics.fmean(run["fork"][0]["direction_entropy"] for run in base)
    last_quarter = statistics.fmean(
        statistics.fmean(f["direction_entropy"] for f in run["fork"][-max(1, len(run["fork"]) // 4) :]) for run in base
    )
    easy = [p < 0.5 for run in base for p in run["fork"][-1]["p_better_per_prompt"]]
    easy_share = sum(easy) / len(easy)
    positive = paired_effect(primary(report, POSITIVE_CONTROL), primary(report, BASELINE))
    checks = {
        "baseline_clip_fraction": clip, "clipping_acts": clip >= MIN_CLIP_FRACTION,
        "baseline_direction_entropy_start": start, "baseline_direction_entropy_last_quarter": last_quarter,
        "fork_collapses": last_quarter < COLLAPSE_FACTOR * start,
        "baseline_easy_share_end": easy_share, "baseline_settles_on_easy": easy_share >= MIN_EASY_SHARE,
        "positive_control_effect": positive, "entropy_pays": positive["low"] > 0,
    }  # fmt: skip
    checks["held"] = all(
        checks[key] for key in ("clipping_acts", "fork_collapses", "baseline_settles_on_easy", "entropy_pays")
    )
    return checks


def judge(report: dict[str, Any]) -> dict[str, Any]:
    """The controls, each HAPO mode's paired effect and verdict against ``dapo``, and the secondary differences."""
    checks = controls(report)
    base = primary(report, BASELINE)
    effects = {arm: paired_effect(primary(report, arm), base) for arm in TREATMENTS}
    verdicts = {
        arm: verdict(effect, MIN_EFFECT) if checks["held"] else REGIME_NOT_REACHED for arm, effect in effects.items()
    }
    secondary: dict[str, Any] = {}
    for arm in (*TREATMENTS, POSITIVE_CONTROL):
        secondary[arm] = {
            name: paired_effect(_per_seed(report, arm, measure), _per_seed(report, BASELINE, measure))
            for name, measure in (
                ("direction_entropy_mean", direction_entropy_mean),
                ("clip_high", lambda run: clip_fraction(run, "high")),
                ("better_share_end", better_share_end),
            )
        }
    return {
        "controls": checks, "effects": effects, "verdicts": verdicts, "secondary": secondary,
        "min_effect": MIN_EFFECT,
        # The verdict counts only for the registered seeds and arms; any other run (a pilot, a smoke test) says so.
        "registered_seeds": all(_seeds(report, arm) == [str(s) for s in SEEDS] for arm in ARMS),
        "summary": dict(verdicts),
    }  # fmt: skip
