"""CalibAdv: token-level calibration of GRPO advantages for search agents (Wu et al., "Negative Advantage Is a
Double-Edged Sword: Calibrating Advantage in GRPO for Deep Search", arXiv 2604.18235).

Pure functions of Python lists and tensors (no TRL import). The pipeline, per generation batch of N trajectories in
contiguous groups of G:

1. **GRPO base**: A_i = (R_i - mean_g R) / (std_g R + eps), unbiased std; unscorable rows (NaN reward) are
   left out of the statistics and get 0; a group with fewer than two scorable rows gives 0.
   -> :func:`group_advantages`.
2. **Silver set and step scores**: per group, the eligible trajectories are format-valid with
   F1 >= ``min_f1``; with M their best F1, the silver set S_g is the union of the doc keys retrieved by the eligible
   trajectories with F1 == M. For every format-valid trajectory i and search step k (docs d_k, think text th_k):

       new_k  = #{docs of step k in S_g, not seen in steps < k nor earlier in step k}
       repeat = exists j < k: sim(th_k, th_j) > think_threshold  or  |d_k ∩ d_j| > max_shared_docs
       s_ik   = new_k / |d_k|   if new_k > 0 and not repeat,   else 0   (0 when |d_k| = 0)

   with the word-level edit similarity sim(a, b) = 1 - Lev_words(a, b) / max(|a|, |b|) (0 if both are empty).
   -> :func:`word_edit_similarity`, :func:`silver_documents`, :func:`trajectory_step_scores`,
   :func:`group_step_scores`.
3. **Segments**: the maximal runs of 1 in the loss mask ``completion_mask * tool_mask`` of row i. With K_i
   recorded search steps, K_i + 1 runs are expected: runs 0..K_i-1 are the search steps, the last run is the
   *answer component* (for a trajectory that never answered, its last generated block). Any other run count is a
   *segment mismatch*: the row's scores are dropped (no soft penalty) and its last run is still the answer.
   -> :func:`mask_runs`, :func:`run_statistics`.
4. **Soft penalty**: if A_i < 0 and s_ik > 0, every token of run k gets A_i (1 - s_ik); every other generated token
   keeps A_i. Positive trajectories are never changed.
5. **Answer rebalance**, per group g over the answer components (n_i tokens each; untouched by step 4):

       P_g = sum_{A_i > 0} A_i n_i,   N_g = sum_{A_i < 0} A_i n_i <= 0,   kappa_g = -N_g / (lambda P_g)

   positive answer tokens become kappa_g A_i, negative ones keep A_i; if P_g = 0 or N_g = 0 every answer token of
   the group becomes 0. Afterwards the positive answer mass equals the negative answer mass divided by lambda.
   -> :func:`calibrate_run_values` (global, per-row run values), :func:`expand_run_values` (local, tokens).

Multi-process split: steps 1, 2 and 4-5 need only per-row scalars and lists, so they run on the gathered
batch (identical on every process): rewards, F1, format flags, steps, and from each row's mask its run count and
answer-run length (:func:`run_statistics`, gathered with ``accelerator.gather``). :func:`calibrate_run_values`
turns them into one advantage value per run, and each process expands its own rows into tokens with
:func:`expand_run_values` from its own mask. :func:`calibrate_advantages` does all of it on one process.

Units: advantages are in the GRPO z-score units of the reward; step scores are fractions of a step's documents in
[0, 1]; lengths and run counts are in tokens and runs.

Degenerate inputs are finite by construction (float64 internally): no negative token anywhere (P, N and every ratio
metric are guarded and report 0), P = 0 or N = 0 groups (answer tokens 0), mismatched runs (no soft penalty,
counted), empty retrieval (s = 0, no division), unscorable rows (A = 0), fully masked rows (no run: the row is 0).
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "CalibrationResult",
    "SearchStep",
    "calibrate_advantages",
    "calibrate_run_values",
    "expand_run_values",
    "group_advantages",
    "group_step_scores",
    "mask_runs",
    "run_statistics",
    "silver_documents",
    "step_think_text",
    "trajectory_step_scores",
    "word_edit_similarity",
]

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


# ---------------------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------------------


def word_edit_similarity(a: str, b: str) -> float:
    """sim(a, b) = 1 - Lev(a_words, b_words) / max(|a_words|, |b_words|), in [0, 1].

    Words are whitespace-split; Lev is the Levenshtein distance over words (unit insert, delete, substitute).
    0 if both are empty (an empty think text is not evidence of a repeat). E.g. "who directed the film Inception" vs
    the same plus " exactly": 1 - 1/6 = 0.8333.
    """
    x, y = a.split(), b.split()
    longest = max(len(x), len(y))
    if longest == 0:
        return 0.0
    previous = list(range(len(y) + 1))
    for i, word in enumerate(x, start=1):
        current = [i] + [0] * len(y)
        for j, other in enumerate(y, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
        previous = current
    return 1.0 - previous[-1] / longest


def step_think_text(turn_text: str, prepend_think_token: bool = False) -> str:
    """The think text of a search step: the stripped content of the first ``<think>...</think>`` block of the
    turn's generated text; "" if there is none. With ``prepend_think_token`` the turn starts inside ``<think>`` (the
    tag sits in the context), so a ``<think>`` is put in front before matching."""
    text = "<think>" + turn_text if prepend_think_token else turn_text
    match = _THINK.search(text)
    return match.group(1).strip() if match else ""


# ---------------------------------------------------------------------------------------------------------------------
# Step scores
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchStep:
    """One executed search step: the think text of its turn and the keys of the documents it retrieved, in rank
    order. Keys are compared by equality (a retriever id, else ``"(Title: T) text"``)."""

    think: str
    docs: tuple[Hashable, ...]


StepLike = SearchStep | Mapping[str, Any] | Sequence[Any]


def _as_step(step: StepLike) -> SearchStep:
    """Accept a :class:`SearchStep`, a mapping ``{"think": str, "docs": list}`` (the rollout's ``calibadv_steps``
    entries) or a pair ``(think, docs)``."""
    if isinstance(step, SearchStep):
        return step
    if isinstance(step, Mapping):
        return SearchStep(str(step.get("think") or ""), tuple(step.get("docs") or ()))
    if isinstance(step, Sequence) and not isinstance(step, str) and len(step) == 2:
        return SearchStep(str(step[0] or ""), tuple(step[1] or ()))
    raise ValueError(f"a search step must be {{'think': str, 'docs': list}} or (think, docs), got {step!r}")


def _eligible(f1: float, valid: bool, min_f1: float) -> bool:
    return bool(valid) and f1 == f1 and f1 >= min_f1  # f1 == f1 rejects NaN (unscorable)


def silver_documents(
    f1: Sequence[float],
    format_valid: Sequence[bool],
    steps: Sequence[Sequence[StepLike] | None],
    min_f1: float = 0.7,
) -> set[Hashable] | None:
    """The silver document set S_g of one group, or None if no trajectory is eligible.

    Eligible: format-valid and F1 >= ``min_f1`` (NaN F1 never is). With M the best eligible F1, S_g is the union of
    every doc key retrieved, in any step, by the eligible trajectories with F1 == M. It may be empty (the best
    trajectories retrieved nothing), which is not the same as None: an empty set scores every step 0.
    """
    eligible = [i for i in range(len(f1)) if _eligible(f1[i], format_valid[i], min_f1)]
    if not eligible:
        return None
    best = max(f1[i] for i in eligible)
    silver: set[Hashable] = set()
    for i in eligible:
        if f1[i] == best:
            for step in steps[i] or ():
                silver.update(_as_step(step).docs)
    return silver


def trajectory_step_scores(
    steps: Sequence[StepLike],
    silver: set[Hashable],
    think_similarity_threshold: float = 0.5,
    max_shared_docs: int = 1,
) -> list[float]:
    """s_ik for every search step of one format-valid trajectory, in [0, 1] (see the module docstring, step 2).

    The "seen" set grows doc by doc, so a doc repeated within a step counts once; a repeat step still adds its docs
    to the seen set. With 3 docs per step, s is one of 0, 1/3, 2/3, 1.
    """
    parsed = [_as_step(step) for step in steps]
    seen: set[Hashable] = set()
    scores: list[float] = []
    for k, step in enumerate(parsed):
        new = 0
        for doc in step.docs:
            if doc in silver and doc not in seen:
                new += 1
            seen.add(doc)
        docs_k = set(step.docs)
        repeat = any(
            word_edit_similarity(step.think, earlier.think) > think_similarity_threshold
            or len(docs_k & set(earlier.docs)) > max_shared_docs
            for earlier in parsed[:k]
        )
        n_docs = len(step.docs)
        scores.append(new / n_docs if n_docs > 0 and new > 0 and not repeat else 0.0)
    return scores


def _check_unit_interval(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_groups(n: int, num_generations: int) -> None:
    if not isinstance(num_generations, int) or num_generations < 1:
        raise ValueError(f"num_generations must be a positive integer, got {num_generations!r}")
    if n % num_generations != 0:
        raise ValueError(f"{n} completions are not a whole number of groups of num_generations={num_generations}")


def group_step_scores(
    f1: Sequence[float],
    format_valid: Sequence[bool],
    steps: Sequence[Sequence[StepLike] | None],
    num_generations: int,
    *,
    min_f1: float = 0.7,
    think_similarity_threshold: float = 0.5,
    max_shared_docs: int = 1,
) -> tuple[list[list[float] | None], dict[str, float]]:
    """Step scores for a whole (gathered) batch of N trajectories in contiguous groups of ``num_generations``.

    Args:
        f1: (N,) answer F1 of each trajectory (NaN for unscorable rows: never eligible).
        format_valid: (N,) format validity.
        steps: N lists of search steps (``{"think": str, "docs": [key, ...]}`` or ``(think, docs)``); None = none.
        num_generations: G.
        min_f1: ``calibadv_silver_min_f1``, in [0, 1].
        think_similarity_threshold: ``calibadv_think_similarity_threshold``, in [0, 1].
        max_shared_docs: ``calibadv_max_shared_docs``, >= 0.

    Returns:
        ``(scores, metrics)``: ``scores[i]`` is the list of s_ik (one per step of row i), or None when the row gets
        no scores (invalid format, or no eligible trajectory in its group). Metrics (all 0 when their denominator
        is 0): ``calibadv/frac_groups_with_silver`` (groups with an eligible trajectory), ``calibadv/frac_steps_correct``
        (scored steps with s > 0), ``calibadv/step_score_mean`` (mean s over scored steps),
        ``calibadv/frac_trajectories_scored``.
    """
    n = len(f1)
    if len(format_valid) != n or len(steps) != n:
        raise ValueError(
            f"f1, format_valid and steps must have one entry per row, got {n}, {len(format_valid)}, {len(steps)}"
        )
    _check_groups(n, num_generations)
    _check_unit_interval(min_f1, "calibadv_silver_min_f1")
    _check_unit_interval(think_similarity_threshold, "calibadv_think_similarity_threshold")
    if not isinstance(max_shared_docs, int) or max_shared_docs < 0:
        raise ValueError(f"calibadv_max_shared_docs must be an integer >= 0, got {max_shared_docs!r}")

    scores: list[list[float] | None] = [None] * n
    groups_with_silver = 0
    for start in range(0, n, num_generations):
        rows = range(start, start + num_generations)
        silver = silver_documents(
            [f1[i] for i in rows], [format_valid[i] for i in rows], [steps[i] for i in rows], min_f1
        )
        if silver is None:
            continue
        groups_with_silver += 1
        for i in rows:
            if format_valid[i]:
                scores[i] = trajectory_step_scores(steps[i] or (), silver, think_similarity_threshold, max_shared_docs)

    flat = [s for row in scores if row is not None for s in row]
    metrics = {
        "calibadv/frac_groups_with_silver": groups_with_silver / (n // num_generations) if n else 0.0,
        "calibadv/frac_steps_correct": sum(s > 0 for s in flat) / len(flat) if flat else 0.0,
        "calibadv/step_score_mean": sum(flat) / len(flat) if flat else 0.0,
        "calibadv/frac_trajectories_scored": sum(row is not None for row in scores) / n if n else 0.0,
    }
    return scores, metrics


# ---------------------------------------------------------------------------------------------------------------------
# GRPO base
# ---------------------------------------------------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor | Sequence[float], num_generations: int, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (R_i - mean_g R) / (std_g R + eps), unbiased std over the scorable rows of the group, in float64.

    NaN rewards (unscorable rows) are excluded from the statistics and get 0. A group with fewer than two scorable
    rows gives 0 (the reference's mean 0 / std 1 would give A = R for a single-row group); an all-equal group gives 0.

    Args:
        rewards: (N,) rewards, groups are contiguous blocks of ``num_generations``.
        num_generations: G.
        eps: ``calibadv_group_eps`` (> 0), in reward units.

    Returns:
        (N,) float64 advantages, finite.
    """
    r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
    _check_groups(r.numel(), num_generations)
    if not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"calibadv_group_eps must be a finite number > 0, got {eps}")
    if torch.isinf(r).any():
        raise ValueError("rewards must be finite or NaN (unscorable); got an infinite reward")
    grouped = r.view(-1, num_generations)
    scorable = ~torch.isnan(grouped)
    count = scorable.sum(dim=1, keepdim=True)
    mean = torch.where(scorable, grouped, 0.0).sum(dim=1, keepdim=True) / count.clamp(min=1)
    deviation = torch.where(scorable, grouped - mean, 0.0)
    std = torch.sqrt((deviation**2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1))
    advantages = torch.where(scorable & (count >= 2), deviation / (std + eps), 0.0)
    return advantages.reshape(-1)


# ---------------------------------------------------------------------------------------------------------------------
# Segments
# ---------------------------------------------------------------------------------------------------------------------


def _run_starts(mask: torch.Tensor) -> torch.Tensor:
    if mask.dim() != 2:
        raise ValueError(f"the loss mask must be (B, T), got shape {tuple(mask.shape)}")
    on = mask > 0
    before = torch.zeros_like(on)
    before[:, 1:] = on[:, :-1]
    return on & ~before


def mask_runs(mask: torch.Tensor) -> list[list[tuple[int, int]]]:
    """The maximal runs of nonzero entries of each row of a (B, T) loss mask, as half-open ``[start, end)`` spans."""
    runs: list[list[tuple[int, int]]] = []
    for row in (mask > 0).tolist():
        spans, start = [], None
        for t, on in enumerate(row):
            if on and start is None:
                start = t
            elif not on and start is not None:
                spans.append((start, t))
                start = None
        if start is not None:
            spans.append((start, len(row)))
        runs.append(spans)
    return runs


def run_statistics(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(num_runs, answer_lengths)``, each (B,) long: the number of maximal runs of nonzero entries in each row of
    the (B, T) loss mask ``completion_mask * tool_mask``, and the length in tokens of the last run (the answer
    component; 0 for a fully masked row). These are the per-row facts a trainer gathers across processes."""
    starts = _run_starts(mask)
    num_runs = starts.sum(dim=1)
    run_id = starts.long().cumsum(dim=1)  # 1-based id of the run a token belongs to (0 before the first run)
    in_last = (mask > 0) & (run_id == num_runs.unsqueeze(1))
    return num_runs.long(), in_last.sum(dim=1).long()


# ---------------------------------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class CalibrationResult:
    """Per-row, per-run calibrated advantages of a whole (gathered) batch, plus per-group and batch facts.

    Attributes:
        run_values: (N, R) float64, R = max(num_runs, 1): the advantage of every token of run r of row i
            (r < num_runs[i]); 0 beyond a row's runs. Expand to tokens with :func:`expand_run_values`.
        num_runs: (N,) long, the run counts it was built for.
        advantages: (N,) float64, the per-row A_i it started from (what a trainer logs).
        kappa: (G_count,) float64, kappa_g for groups where the rebalance scaled (P_g > 0 and N_g < 0); 1 where the
            rebalance is off, 0 where the group's answer tokens were zeroed.
        answer_zeroed: (G_count,) bool, groups whose answer tokens were set to 0 (P_g = 0 or N_g = 0).
        segment_mismatch: (N,) bool, rows whose run count is not num_steps + 1.
        metrics: scalar metrics, all finite (see :func:`calibrate_run_values`).
    """

    run_values: torch.Tensor
    num_runs: torch.Tensor
    advantages: torch.Tensor
    kappa: torch.Tensor
    answer_zeroed: torch.Tensor
    segment_mismatch: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def _as_long_vector(values: torch.Tensor | Sequence[int], n: int, name: str) -> torch.Tensor:
    out = torch.as_tensor(values).reshape(-1)
    if out.numel() != n:
        raise ValueError(f"{name} must have one entry per row ({n}), got {out.numel()}")
    if out.is_floating_point():
        if not torch.equal(out, out.round()):
            raise ValueError(f"{name} must hold integers, got {out.tolist()}")
    out = out.long()
    if (out < 0).any():
        raise ValueError(f"{name} must be >= 0, got {out.tolist()}")
    return out


def calibrate_run_values(
    advantages: torch.Tensor | Sequence[float],
    step_scores: Sequence[Sequence[float] | None],
    num_steps: torch.Tensor | Sequence[int],
    num_runs: torch.Tensor | Sequence[int],
    answer_lengths: torch.Tensor | Sequence[int],
    num_generations: int,
    *,
    soft_penalty: bool = True,
    answer_rebalance: bool = True,
    rebalance_lambda: float = 1.0,
) -> CalibrationResult:
    """The global part of CalibAdv: one calibrated advantage per (row, run) for the whole gathered batch.

    Args:
        advantages: (N,) per-row GRPO advantages A_i (:func:`group_advantages`); NaN is read as 0 (unscorable).
        step_scores: N entries: the s_ik of row i (one per recorded step, each in [0, 1]) or None for no scores
            (:func:`group_step_scores`).
        num_steps: (N,) K_i, the number of search steps the rollout recorded for row i (``len(calibadv_steps)``).
        num_runs: (N,) run count of row i's loss mask (:func:`run_statistics`, gathered).
        answer_lengths: (N,) tokens in row i's last run, n_i (:func:`run_statistics`, gathered).
        num_generations: G; groups are contiguous blocks of G rows.
        soft_penalty: ``calibadv_soft_penalty``: A_i (1 - s_ik) on the scored search runs of negative rows.
        answer_rebalance: ``calibadv_answer_rebalance``: scale positive answer runs by kappa_g per group.
        rebalance_lambda: ``calibadv_rebalance_lambda`` (lambda > 0): target ratio negative / positive answer mass.

    Returns:
        A :class:`CalibrationResult`. Its metrics (ratios are 0 when their denominator is 0):

        * ``calibadv/segment_mismatch``: rows whose run count is not K_i + 1 (their scores are dropped);
        * ``calibadv/frac_neg_traj_calibrated``: among rows with A_i < 0, the fraction with a soft-penalised step;
        * ``calibadv/kappa_mean``: mean kappa_g over the groups the rebalance scaled;
        * ``calibadv/frac_answer_groups_zeroed``: fraction of groups whose answer tokens were set to 0;
        * ``calibadv/neg_pos_mass_ratio``: (-sum_g N_g) / (sum_g P_g) over the answer runs, before the rebalance.

    Raises:
        ValueError: naming the argument, for inconsistent lengths, scores outside [0, 1] or whose count differs from
            ``num_steps``, an infinite advantage, or ``rebalance_lambda`` <= 0.
    """
    adv = torch.as_tensor(advantages, dtype=torch.float64).reshape(-1).cpu()
    n = adv.numel()
    _check_groups(n, num_generations)
    if torch.isinf(adv).any():
        raise ValueError("advantages must be finite (NaN is read as an unscorable row); got an infinite value")
    adv = torch.nan_to_num(adv, nan=0.0)
    if not (rebalance_lambda > 0 and math.isfinite(rebalance_lambda)):
        raise ValueError(f"calibadv_rebalance_lambda must be a finite number > 0, got {rebalance_lambda}")
    if len(step_scores) != n:
        raise ValueError(f"step_scores must have one entry per row ({n}), got {len(step_scores)}")
    steps_k = _as_long_vector(num_steps, n, "num_steps")
    runs = _as_long_vector(num_runs, n, "num_runs")
    answer_n = _as_long_vector(answer_lengths, n, "answer_lengths")
    if ((runs == 0) & (answer_n > 0)).any():
        raise ValueError("answer_lengths must be 0 for rows with no run (num_runs == 0)")

    width = max(int(runs.max()) if n else 0, 1)
    mismatch = runs != steps_k + 1
    # Scores padded into run columns; a row keeps them only if its runs match its steps (then K_i < width).
    scores = torch.zeros(n, width, dtype=torch.float64)
    for i, row in enumerate(step_scores):
        if row is None:
            continue
        row = [float(s) for s in row]
        if len(row) != int(steps_k[i]):
            raise ValueError(f"step_scores[{i}] has {len(row)} scores but num_steps[{i}] = {int(steps_k[i])}")
        if any(not 0.0 <= s <= 1.0 for s in row):
            raise ValueError(f"step scores must be in [0, 1], got step_scores[{i}] = {row}")
        if row and not bool(mismatch[i]):
            scores[i, : len(row)] = torch.tensor(row, dtype=torch.float64)

    columns = torch.arange(width).unsqueeze(0)
    in_row = columns < runs.unsqueeze(1)
    is_answer = columns == (runs - 1).unsqueeze(1)  # never true for a row with no run
    base = adv.unsqueeze(1).expand(n, width)
    penalised = (base < 0) & (scores > 0) & ~is_answer if soft_penalty else torch.zeros(n, width, dtype=torch.bool)
    values = torch.where(penalised, base * (1.0 - scores) + 0.0, base)  # + 0.0 turns -0.0 (s = 1) into 0.0

    # Answer rebalance (closed form: answer runs are untouched by the soft penalty).
    num_groups = n // num_generations
    mass = adv * answer_n.to(torch.float64)
    positive = torch.where(adv > 0, mass, 0.0).view(num_groups, num_generations).sum(dim=1)  # P_g
    negative = torch.where(adv < 0, mass, 0.0).view(num_groups, num_generations).sum(dim=1)  # N_g
    if answer_rebalance:
        zeroed = (positive == 0) | (negative == 0)
        kappa = torch.where(zeroed, 0.0, -negative / (rebalance_lambda * torch.where(zeroed, 1.0, positive)))
        row_kappa = kappa.repeat_interleave(num_generations)
        row_zeroed = zeroed.repeat_interleave(num_generations)
        answer_value = torch.where(row_zeroed, 0.0, torch.where(adv > 0, row_kappa * adv, adv))
    else:
        zeroed = torch.zeros(num_groups, dtype=torch.bool)
        kappa = torch.ones(num_groups, dtype=torch.float64)
        answer_value = adv
    values = torch.where(is_answer, answer_value.unsqueeze(1).expand(n, width), values)
    values = torch.where(in_row, values, 0.0)

    negative_rows = adv < 0
    scaled = ~zeroed if answer_rebalance else torch.zeros(num_groups, dtype=torch.bool)
    total_positive, total_negative = float(positive.sum()), float(-negative.sum())
    metrics = {
        "calibadv/segment_mismatch": float(mismatch.sum()),
        "calibadv/frac_neg_traj_calibrated": (
            float((penalised.any(dim=1) & negative_rows).sum()) / int(negative_rows.sum())
            if negative_rows.any()
            else 0.0
        ),
        "calibadv/kappa_mean": float(kappa[scaled].mean()) if scaled.any() else 0.0,
        "calibadv/frac_answer_groups_zeroed": float(zeroed.double().mean()) if num_groups else 0.0,
        "calibadv/neg_pos_mass_ratio": total_negative / total_positive if total_positive > 0 else 0.0,
    }
    return CalibrationResult(
        run_values=values,
        num_runs=runs,
        advantages=adv,
        kappa=kappa,
        answer_zeroed=zeroed,
        segment_mismatch=mismatch,
        metrics=metrics,
    )


def expand_run_values(
    run_values: torch.Tensor,
    mask: torch.Tensor,
    num_runs: torch.Tensor | Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The local part of CalibAdv: token-level advantages (B, T) from per-run values and this process's loss mask.

    Token t of row i gets ``run_values[i, r]`` where r is the index of the mask run containing t, and 0 where the
    mask is 0 (observations, padding). Works for any width T: only run indices matter.

    Args:
        run_values: (B, R) values for this process's rows (a slice of :attr:`CalibrationResult.run_values`).
        mask: (B, T) loss mask ``completion_mask * tool_mask`` of the same rows.
        num_runs: optional (B,) run counts the values were built for; checked against the mask.
        dtype: output dtype (float32 by default, as TRL's loss expects).

    Raises:
        ValueError: if the mask has more runs than ``run_values`` has columns, or differs from ``num_runs``.
    """
    if run_values.dim() != 2 or run_values.shape[0] != mask.shape[0]:
        raise ValueError(
            f"run_values must be (B, R) with the mask's B = {mask.shape[0]} rows, got {tuple(run_values.shape)}"
        )
    starts = _run_starts(mask)
    local_runs = starts.sum(dim=1)
    if num_runs is not None and not torch.equal(local_runs.cpu(), torch.as_tensor(num_runs).reshape(-1).long().cpu()):
        raise ValueError(
            f"the mask has {local_runs.tolist()} runs per row but the values were built for {list(num_runs)}"
        )
    width = run_values.shape[1]
    if mask.shape[1] == 0 or width == 0:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    if int(local_runs.max()) > width:
        raise ValueError(f"the mask has up to {int(local_runs.max())} runs per row but run_values has {width} columns")
    run_index = (starts.long().cumsum(dim=1) - 1).clamp(min=0)
    tokens = torch.gather(run_values.to(device=mask.device, dtype=torch.float64), 1, run_index)
    return torch.where(mask > 0, tokens, 0.0).to(dtype)


def calibrate_advantages(
    advantages: torch.Tensor | Sequence[float],
    step_scores: Sequence[Sequence[float] | None],
    num_steps: torch.Tensor | Sequence[int],
    mask: torch.Tensor,
    num_generations: int,
    *,
    soft_penalty: bool = True,
    answer_rebalance: bool = True,
    rebalance_lambda: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, CalibrationResult]:
    """CalibAdv token-level advantages on one process: :func:`run_statistics`, :func:`calibrate_run_values` and
    :func:`expand_run_values` in a row.

    Args:
        advantages: (N,) per-row A_i.
        step_scores: as in :func:`calibrate_run_values`.
        num_steps: as in :func:`calibrate_run_values`.
        mask: (N, T) loss mask ``completion_mask * tool_mask`` (1 = generated token, 0 = observation or padding).
        num_generations: as in :func:`calibrate_run_values`.
        soft_penalty: as in :func:`calibrate_run_values`.
        answer_rebalance: as in :func:`calibrate_run_values`.
        rebalance_lambda: as in :func:`calibrate_run_values`.

    Returns:
        ``((N, T) advantages in ``dtype``, the CalibrationResult)``. Masked tokens are exactly 0.
    """
    num_runs, answer_lengths = run_statistics(mask)
    result = calibrate_run_values(
        advantages,
        step_scores,
        num_steps,
        num_runs,
        answer_lengths,
        num_generations,
        soft_penalty=soft_penalty,
        answer_rebalance=answer_rebalance,
        rebalance_lambda=rebalance_lambda,
    )
    return expand_run_values(result.run_values, mask, num_runs, dtype), result
