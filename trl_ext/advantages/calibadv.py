"""The registered ``"calibadv"`` advantage estimator: CalibAdv's token-level calibration of GRPO advantages on the
gathered generation batch (Wu et al., arXiv 2604.18235).

What it reads (all gathered over processes by the advantage seam, so a group may span processes):

* the rewards ``rewards_per_func`` (combined as TRL does: sum_k w_k r_k over the non-None columns; NaN = unscorable);
* ``completion_mask``: the loss mask ``completion_mask * tool_mask`` (N, T) padded across processes. Its maximal runs
  of 1 are the trajectory's generated turns (observations are 0);
* the rollout's per-row fields (``trl_ext.rollout.search_agent``), merged by TRL into the input rows:
  ``calibadv_transcript``, ``calibadv_steps`` (``[{"think", "docs"}]`` per executed search),
  ``calibadv_invalid_action``; and the dataset column ``golden_answers``.

Then, in ``train`` mode (:mod:`trl_ext.advantages.calibadv_math` for the formulas):

1. A_i = (R_i - mean_g R) / (std_g R + ``calibadv_group_eps``) with the unbiased std; unscorable rows and groups with
   fewer than two scorable rows get 0;
2. F1 and format validity of every transcript with the reward's own pure functions
   (:func:`trl_ext.rewards.qa.qa_f1_format_score`), whatever reward functions are configured: they decide the
   silver-set eligibility (format-valid and F1 >= ``calibadv_silver_min_f1``). A row without ``golden_answers`` or
   without a transcript is never eligible and gets no step scores;
3. step scores s_ik against the in-group silver set, soft penalty A_i (1 - s_ik) on the search turns of negative
   trajectories, and the per-group answer rebalance kappa_g = -N_g / (lambda P_g);
4. the (N, T) tensor: 0 on observations and padding.

In ``eval`` mode it returns the per-row A_i (no calibration: evaluation does not train).

Decisions: the GRPO base uses the *configured* reward (so added reward functions count), not the recomputed
F1 x format, and ignores ``scale_rewards`` (CalibAdv's z-score is fixed by the spec). The per-row A_i of the last
call are kept in :attr:`CalibAdvAdvantage.last_row_advantages` for logging.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from trl_ext.advantages.base import AdvantageBatch, AdvantageEstimator, AdvantageOutput, combined_rewards
from trl_ext.advantages.calibadv_math import calibrate_advantages, group_advantages, group_step_scores
from trl_ext.registry import register_advantage_estimator
from trl_ext.rewards.qa import extract_answer, qa_f1_format_score

__all__ = [
    "CALIBADV_ADVANTAGE_DEFAULTS",
    "CalibAdvAdvantage",
    "combined_rewards",
    "validate_calibadv_advantage_fields",
]

#: The estimator's ``calibadv_*`` fields and their defaults (those of ``CalibAdvConfig``); a config without them gets
#: these.
CALIBADV_ADVANTAGE_DEFAULTS: dict[str, Any] = {
    "calibadv_silver_min_f1": 0.7,
    "calibadv_think_similarity_threshold": 0.5,
    "calibadv_max_shared_docs": 1,
    "calibadv_soft_penalty": True,
    "calibadv_answer_rebalance": True,
    "calibadv_rebalance_lambda": 1.0,
    "calibadv_group_eps": 1e-6,
}


def validate_calibadv_advantage_fields(
    silver_min_f1: float,
    think_similarity_threshold: float,
    max_shared_docs: int,
    rebalance_lambda: float,
    group_eps: float,
) -> None:
    """Raise ``ValueError`` naming the field and its accepted range for an out-of-range advantage setting."""
    for name, value in (
        ("calibadv_silver_min_f1", silver_min_f1),
        ("calibadv_think_similarity_threshold", think_similarity_threshold),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if isinstance(max_shared_docs, bool) or not isinstance(max_shared_docs, int) or max_shared_docs < 0:
        raise ValueError(f"calibadv_max_shared_docs must be an integer >= 0, got {max_shared_docs!r}")
    for name, value in (("calibadv_rebalance_lambda", rebalance_lambda), ("calibadv_group_eps", group_eps)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _golds(value: Any) -> list[str] | None:
    if value is None:
        return None
    golds = [value] if isinstance(value, str) else [str(g) for g in value]
    return golds or None


def _column(batch: AdvantageBatch, name: str) -> Sequence[Any]:
    values = batch.columns.get(name)
    return values if values is not None else [None] * batch.num_completions


@register_advantage_estimator("calibadv")
class CalibAdvAdvantage(AdvantageEstimator):
    """CalibAdv: in-group silver-document step scores, soft penalty on negative search steps, answer rebalance
    (token level)."""

    requires = frozenset({"completion_mask"})
    columns = ("golden_answers", "calibadv_transcript", "calibadv_steps", "calibadv_invalid_action")

    def __init__(self, args: Any) -> None:
        super().__init__(args)
        settings = {name: getattr(args, name, default) for name, default in CALIBADV_ADVANTAGE_DEFAULTS.items()}
        self.silver_min_f1 = settings["calibadv_silver_min_f1"]
        self.think_similarity_threshold = settings["calibadv_think_similarity_threshold"]
        self.max_shared_docs = settings["calibadv_max_shared_docs"]
        self.soft_penalty = bool(settings["calibadv_soft_penalty"])
        self.answer_rebalance = bool(settings["calibadv_answer_rebalance"])
        self.rebalance_lambda = settings["calibadv_rebalance_lambda"]
        self.group_eps = settings["calibadv_group_eps"]
        validate_calibadv_advantage_fields(
            self.silver_min_f1,
            self.think_similarity_threshold,
            self.max_shared_docs,
            self.rebalance_lambda,
            self.group_eps,
        )
        self.last_row_advantages: torch.Tensor | None = None

    def score_rows(self, batch: AdvantageBatch) -> tuple[list[float], list[bool], list[bool]]:
        """Per row: (F1 or NaN when unscorable, format validity, answered) from the gathered transcripts."""
        f1, valid, answered = [], [], []
        transcripts = _column(batch, "calibadv_transcript")
        golds_column = _column(batch, "golden_answers")
        invalid_column = _column(batch, "calibadv_invalid_action")
        for transcript, golds, invalid in zip(transcripts, golds_column, invalid_column, strict=True):
            golds = _golds(golds)
            if transcript is None:
                f1.append(math.nan)
                valid.append(False)
                answered.append(False)
                continue
            score, is_valid = qa_f1_format_score(str(transcript), golds or [], bool(invalid))
            f1.append(score if golds is not None else math.nan)
            valid.append(is_valid)
            answered.append(extract_answer(str(transcript)) is not None)
        return f1, valid, answered

    def __call__(self, batch: AdvantageBatch) -> AdvantageOutput:
        num_generations = batch.num_generations
        rewards = combined_rewards(batch.rewards_per_func, batch.reward_weights).double().cpu()
        advantages = group_advantages(rewards, num_generations, self.group_eps)
        self.last_row_advantages = advantages.float()
        if batch.mode != "train":
            return AdvantageOutput(advantages.float())

        f1, valid, answered = self.score_rows(batch)
        steps = [list(row or []) for row in _column(batch, "calibadv_steps")]
        scores, step_metrics = group_step_scores(
            f1,
            valid,
            steps,
            num_generations,
            min_f1=self.silver_min_f1,
            think_similarity_threshold=self.think_similarity_threshold,
            max_shared_docs=self.max_shared_docs,
        )
        mask = batch.completion_mask
        token_advantages, result = calibrate_advantages(
            advantages,
            scores,
            [len(row) for row in steps],
            mask.cpu(),
            num_generations,
            soft_penalty=self.soft_penalty,
            answer_rebalance=self.answer_rebalance,
            rebalance_lambda=self.rebalance_lambda,
        )
        n = batch.num_completions
        scorable_f1 = [x for x in f1 if x == x]
        metrics = {
            **step_metrics,
            **result.metrics,
            "calibadv/searches_mean": sum(len(row) for row in steps) / n if n else 0.0,
            "calibadv/format_valid_frac": sum(valid) / n if n else 0.0,
            "calibadv/answered_frac": sum(answered) / n if n else 0.0,
            "calibadv/f1_mean": sum(scorable_f1) / len(scorable_f1) if scorable_f1 else 0.0,
        }
        turns = batch.extras.get("calibadv_turns")
        if turns is not None and n:
            metrics["calibadv/turns_mean"] = sum(float(t or 0) for t in turns) / n
        for name, values in (
            ("calibadv/invalid_action_frac", batch.columns.get("calibadv_invalid_action")),
            ("calibadv/truncated_frac", batch.extras.get("calibadv_truncated")),
        ):
            if values is not None and n:
                metrics[name] = sum(bool(v) for v in values) / n
        return AdvantageOutput(token_advantages.to(mask.device), metrics)
