"""The regime measures: pure functions of tensors (no TRL import), each returning ``(values, reasons)``.

``values`` maps a ``regime/...`` metric name to a finite float; ``reasons`` maps a metric that could not be measured
on this data to the reason (a quantity that needs data the batch lacks is never reported as NaN, 0 or a guess).

* :func:`group_measures`: from one generation batch's rewards: the zero-signal fraction split into all-fail and
  all-pass groups, the histogram of per-prompt success rates, their method-of-moments Beta(a, b), the normaliser a
  Beta normaliser (BNPO, :mod:`trl_ext.advantages.beta_normalization`) would fit, the range of its weights 1/f and
  how far they depart from a rescaled GRPO (max/min of std_g / f(p_g) over mixed groups: 1 means BNPO is GRPO times
  a constant on this batch).
* :class:`TokenAccumulator`: from the loss pipeline's per-token tensors, over the micro-batches of one optimizer
  step: |log ratio| by position quarter, the spread of the cumulative prefix log-ratio against the token log-ratio,
  the weight range MinPRO's prefix minimum would apply, the sampler (vLLM) mismatch, entropy quantiles and the clip
  fractions of high- against low-entropy tokens.
* :func:`useful_step_share`: for multi-turn search rollouts, the share of negatively advantaged trajectories that
  contain a step retrieving a supporting document no earlier step of the trajectory retrieved.
* :func:`slope`: the least-squares trend of a series (the entropy trend).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "HIST_BINS",
    "STALE_LOG_RATIO",
    "TokenAccumulator",
    "group_measures",
    "slope",
    "useful_step_share",
]

Measured = tuple[dict[str, float], dict[str, str]]

#: A micro-batch whose mean |log pi_theta - log pi_old| exceeds this counts as stale (trained by a policy that has
#: moved since it was sampled); below it, the difference is the rounding of two forward passes of the same weights.
STALE_LOG_RATIO = 1e-4
#: A variance below this share of the second moment is float rounding of a constant (the one-pass variance
#: E[x^2] - E[x]^2 of a constant offset is not exactly 0), not a spread to divide by.
_RELATIVE_VARIANCE_FLOOR = 1e-6

#: Success-rate histogram bins: (metric suffix, lower bound, upper bound, inclusive upper); 0 and 1 are their own bins
#: because they are the zero-signal groups.
HIST_BINS: tuple[tuple[str, float, float], ...] = (
    ("p0", 0.0, 0.0),
    ("p0_25", 0.0, 0.25),
    ("p25_50", 0.25, 0.5),
    ("p50_75", 0.5, 0.75),
    ("p75_100", 0.75, 1.0),
    ("p100", 1.0, 1.0),
)

_BETA_KEYS = (
    "regime/success_beta_a",
    "regime/success_beta_b",
    "regime/bnpo_alpha",
    "regime/bnpo_beta",
    "regime/bnpo_beta_ratio",
    "regime/bnpo_weight_min",
    "regime/bnpo_weight_max",
    "regime/bnpo_vs_grpo_spread",
)


def _histogram_bin(p: float) -> str:
    if p <= 0.0:
        return "p0"
    if p >= 1.0:
        return "p100"
    return next(name for name, low, high in HIST_BINS[1:-1] if low <= p < high)


def group_measures(
    rewards: torch.Tensor,
    num_generations: int,
    *,
    success_threshold: float = 0.5,
    reward_range: tuple[float, float] = (0.0, 1.0),
) -> Measured:
    """Zero-signal groups and the per-prompt success-rate distribution of one generation batch.

    Args:
        rewards: (N,) total reward per completion (NaN: unscorable, left out); groups are contiguous blocks of
            ``num_generations`` rows, as TRL orders them.
        num_generations: G, completions per prompt.
        success_threshold: a reward at or above it counts as a pass (splits zero-signal groups into all-pass and
            all-fail). Default 0.5, for rewards in [0, 1] such as every built-in task's.
        reward_range: rewards are mapped to success rates by ``(r - low) / (high - low)``, clipped to [0, 1], as
            BNPO's ``bnpo_reward_min`` / ``bnpo_reward_max`` do.

    Returns:
        ``(values, reasons)``: ``regime/zero_signal_frac``, ``regime/zero_signal_all_fail``,
        ``regime/zero_signal_all_pass``, ``regime/mixed_frac`` (shares of the groups),
        ``regime/success_hist/<bin>`` (shares of groups per success-rate bin), and when at least two groups have
        signal: ``regime/success_beta_a``, ``..._b`` (method of moments), ``regime/bnpo_alpha``, ``..._beta``,
        ``regime/bnpo_beta_ratio`` (larger over smaller), ``regime/bnpo_weight_min``, ``..._max`` (1/f over mixed
        groups) and ``regime/bnpo_vs_grpo_spread``.
    """
    from trl_ext.advantages.beta_normalization import beta_log_pdf, fit_beta

    low, high = reward_range
    if not high > low:
        raise ValueError(f"reward_range: the upper bound must exceed the lower, got {reward_range!r}")
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations!r}")
    values: dict[str, float] = {}
    reasons: dict[str, str] = {}
    rewards = rewards.detach().to(torch.float64).flatten().cpu()
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not form groups of num_generations={num_generations}")
    groups = rewards.view(-1, num_generations)
    rates: list[float] = []
    stds: list[float] = []
    zero = fail = passed = 0
    counted = 0
    hist = dict.fromkeys((name for name, _, _ in HIST_BINS), 0)
    for group in groups:
        scored = group[~torch.isnan(group)]
        if scored.numel() == 0:
            continue
        counted += 1
        scaled = ((scored - low) / (high - low)).clamp(0.0, 1.0)
        rate = float(scaled.mean())
        hist[_histogram_bin(rate)] += 1
        if scored.numel() < 2 or bool(torch.isclose(scored.max(), scored.min())):
            zero += 1
            if float(scored[0]) >= success_threshold:
                passed += 1
            else:
                fail += 1
        else:
            rates.append(rate)
            stds.append(float(scaled.std(unbiased=True)))
    if counted == 0:
        reason = "no scorable completion in the batch (every reward function returned None)"
        for key in ("zero_signal_frac", "zero_signal_all_fail", "zero_signal_all_pass", "mixed_frac"):
            reasons[f"regime/{key}"] = reason
        for key in _BETA_KEYS:
            reasons[key] = reason
        return values, reasons
    values["regime/zero_signal_frac"] = zero / counted
    values["regime/zero_signal_all_fail"] = fail / counted
    values["regime/zero_signal_all_pass"] = passed / counted
    values["regime/mixed_frac"] = (counted - zero) / counted
    for name, count in hist.items():
        values[f"regime/success_hist/{name}"] = count / counted

    if len(rates) < 2:
        reason = (
            f"{len(rates)} of {counted} groups have signal (rewards not all equal); a Beta fit needs at least 2"
            if num_generations > 1
            else "num_generations is 1: no group has a success rate"
        )
        for key in _BETA_KEYS:
            reasons[key] = reason
        return values, reasons
    # The fit over every scorable group (zero-signal ones included), as BNPO fits it; the weights over mixed groups,
    # the only ones whose advantages a normaliser scales.
    all_rates = torch.tensor(
        [float(((g[~torch.isnan(g)] - low) / (high - low)).clamp(0, 1).mean()) for g in groups if (~g.isnan()).any()],
        dtype=torch.float64,
    )
    fit = fit_beta(all_rates)
    m, v = fit.m, fit.v
    if v > 0.0 and 0.0 < m < 1.0 and m * (1.0 - m) / v - 1.0 > 0.0:
        k = m * (1.0 - m) / v - 1.0
        values["regime/success_beta_a"] = k * m
        values["regime/success_beta_b"] = k * (1.0 - m)
    else:
        reason = (
            "the success rates' variance is at least m(1 - m) (mass piled at 0 and 1): no Beta has these moments"
            if v > 0.0
            else "every group has the same success rate"
        )
        reasons["regime/success_beta_a"] = reasons["regime/success_beta_b"] = reason
    values["regime/bnpo_alpha"] = fit.alpha
    values["regime/bnpo_beta"] = fit.beta
    values["regime/bnpo_beta_ratio"] = max(fit.alpha, fit.beta) / min(fit.alpha, fit.beta)
    mixed = torch.tensor(rates, dtype=torch.float64)
    weights = torch.exp(-beta_log_pdf(mixed, fit.alpha, fit.beta))
    values["regime/bnpo_weight_min"] = float(weights.min())
    values["regime/bnpo_weight_max"] = float(weights.max())
    relative = weights * torch.tensor(stds, dtype=torch.float64)
    values["regime/bnpo_vs_grpo_spread"] = float(relative.max() / relative.min())
    return values, reasons


def slope(series: Sequence[float]) -> float:
    """Least-squares slope of ``series`` against its index (units of the series per step); needs >= 2 points."""
    n = len(series)
    if n < 2:
        raise ValueError(f"a slope needs at least 2 points, got {n}")
    mean_x = (n - 1) / 2.0
    mean_y = math.fsum(series) / n
    num = math.fsum((i - mean_x) * (y - mean_y) for i, y in enumerate(series))
    den = math.fsum((i - mean_x) ** 2 for i in range(n))
    return num / den


def _supporting(docs: Any) -> set[str]:
    return {str(doc) for doc in (docs or [])}


def useful_step_share(
    steps: Sequence[Sequence[dict[str, Any]] | None],
    supporting_doc_ids: Sequence[Sequence[str] | None],
    negative: Sequence[bool],
) -> Measured:
    """The share of negatively advantaged trajectories containing a useful step.

    A step is *useful* if it retrieves a supporting document that no earlier step of its trajectory retrieved
    (the ground truth of ``docs/results.md``, "CalibAdv: step judgement"). Each trajectory's ``steps`` are the search
    rollout's ``[{"docs": [doc key, ...], ...}, ...]``.

    Returns ``regime/neg_traj_useful_step_frac`` and ``regime/neg_traj_frac`` (share of trajectories with a negative
    advantage), or reasons.
    """
    key = "regime/neg_traj_useful_step_frac"
    if not (len(steps) == len(supporting_doc_ids) == len(negative)):
        raise ValueError(
            f"steps, supporting_doc_ids and negative differ in length: {len(steps)}, {len(supporting_doc_ids)}, "
            f"{len(negative)}"
        )
    values: dict[str, float] = {}
    if not steps:
        return values, {key: "no trajectory in the batch"}
    values["regime/neg_traj_frac"] = sum(bool(n) for n in negative) / len(negative)
    if not any(negative):
        return values, {key: "no trajectory has a negative advantage (every group's rewards are equal)"}
    count = useful = 0
    for traj_steps, support, is_negative in zip(steps, supporting_doc_ids, negative, strict=True):
        if not is_negative:
            continue
        count += 1
        wanted = _supporting(support)
        seen: set[str] = set()
        for step in traj_steps or []:
            docs = {str(doc) for doc in step.get("docs", []) or []}
            if (docs & wanted) - seen:
                useful += 1
                break
            seen |= docs
    values[key] = useful / count
    return values, {}


class TokenAccumulator:
    """Per-token statistics over the micro-batches of one optimizer step (this process's tokens, or every process's
    after :meth:`all_reduce`).

    :meth:`add` takes one micro-batch; :meth:`result` returns ``(values, reasons)`` and resets. Entropies are kept up
    to ``max_entropy_tokens`` per step (a uniform subsample beyond), so the cost stays bounded on long completions.
    """

    def __init__(self, *, entropy_pivot: float = 0.8, max_entropy_tokens: int = 8192) -> None:
        if not 0.0 < entropy_pivot < 1.0:
            raise ValueError(f"entropy_pivot must lie in (0, 1), got {entropy_pivot!r}")
        if isinstance(max_entropy_tokens, bool) or not isinstance(max_entropy_tokens, int) or max_entropy_tokens < 1:
            raise ValueError(f"max_entropy_tokens must be a positive integer, got {max_entropy_tokens!r}")
        self.entropy_pivot = entropy_pivot
        self.max_entropy_tokens = max_entropy_tokens
        self.reset()

    def reset(self) -> None:
        self.tokens = 0.0
        self.stale_batches = 0
        self.batches = 0
        self.abs_sum = 0.0
        self.position_sums = [0.0] * 4
        self.position_counts = [0.0] * 4
        self.token_sq = 0.0
        self.token_sum = 0.0
        self.prefix_sq = 0.0
        self.prefix_sum = 0.0
        self.weight_min = math.inf
        self.weight_max = -math.inf
        self.sampler_sum = 0.0
        self.sampler_count = 0.0
        self.sampler_token_sq = self.sampler_token_sum = 0.0
        self.sampler_prefix_sq = self.sampler_prefix_sum = 0.0
        self.entropies: list[torch.Tensor] = []
        self.clip_high = [0.0, 0.0]  # clipped, tokens
        self.clip_low = [0.0, 0.0]
        self.clip_measured = False

    @torch.no_grad()
    def add(
        self,
        *,
        logps: torch.Tensor,
        old_logps: torch.Tensor | None,
        mask: torch.Tensor,
        entropies: torch.Tensor | None = None,
        sampling_logps: torch.Tensor | None = None,
        clipped: torch.Tensor | None = None,
    ) -> None:
        """One micro-batch: (B, T) tensors; ``old_logps`` None means on-policy (pi_old = pi_theta, log ratio 0);
        ``clipped`` marks tokens whose ratio left the clip range on the side that zeroes the gradient."""
        from trl_ext.objectives.minpro import prefix_min_weights

        # Every statistic is a 0-d tensor until one transfer at the end: on a GPU one synchronisation per micro-batch.
        valid = mask.detach().bool()
        weight = valid.float()
        logps = logps.detach().float()
        if old_logps is None:
            log_ratio = torch.zeros_like(logps)
        else:
            log_ratio = torch.nan_to_num(logps - old_logps.detach().float(), nan=0.0) * weight
        magnitude = log_ratio.abs()
        lengths = valid.sum(dim=1, keepdim=True).clamp(min=1)
        index = valid.long().cumsum(dim=1) - 1  # position among the row's valid tokens
        quarter = (index * 4 // lengths).clamp(0, 3)
        in_quarter = [(quarter == q).float() * weight for q in range(4)]
        prefix = log_ratio.cumsum(dim=1) * weight
        minpro = prefix_min_weights(log_ratio, valid)
        stats = [
            weight.sum(),
            magnitude.sum(),
            log_ratio.sum(),
            (log_ratio**2).sum(),
            prefix.sum(),
            (prefix**2).sum(),
            torch.where(valid, minpro, torch.full_like(minpro, math.inf)).min(),
            torch.where(valid, minpro, torch.full_like(minpro, -math.inf)).max(),
            *[(magnitude * part).sum() for part in in_quarter],
            *[part.sum() for part in in_quarter],
        ]
        if sampling_logps is not None:
            reference = logps if old_logps is None else old_logps.detach().float()
            delta = reference - sampling_logps.detach().float()
            usable = valid & ~torch.isnan(delta)
            delta = torch.where(usable, delta, torch.zeros_like(delta))
            sampler_prefix = delta.cumsum(dim=1) * usable
            stats += [
                usable.sum(),
                delta.abs().sum(),
                delta.sum(),
                (delta**2).sum(),
                sampler_prefix.sum(),
                (sampler_prefix**2).sum(),
            ]
        sample = None
        if entropies is not None:
            flat = torch.where(valid, entropies.detach().float(), torch.full_like(logps, math.nan)).flatten()
            if clipped is not None:
                pivot = torch.nanquantile(flat, self.entropy_pivot)
                clip = clipped.detach().bool()
                high = (entropies.detach().float() >= pivot) & valid
                low = valid & ~high
                stats += [(clip & high).sum(), high.sum(), (clip & low).sum(), low.sum()]
            sample = flat
            if flat.numel() > self.max_entropy_tokens:
                sample = flat[torch.randperm(flat.numel(), device=flat.device)[: self.max_entropy_tokens]]
        numbers = torch.stack([stat.float() for stat in stats]).tolist()
        count = numbers[0]
        if count == 0:
            return
        self.batches += 1
        self.tokens += count
        abs_sum, token_sum, token_sq, prefix_sum, prefix_sq, weight_min, weight_max = numbers[1:8]
        # TRL also computes pi_old for the fresh micro-batch of an off-policy schedule: equal up to rounding, not stale.
        self.stale_batches += int(abs_sum / count > STALE_LOG_RATIO)
        self.abs_sum += abs_sum
        self.token_sum += token_sum
        self.token_sq += token_sq
        self.prefix_sum += prefix_sum
        self.prefix_sq += prefix_sq
        self.weight_min = min(self.weight_min, weight_min)
        self.weight_max = max(self.weight_max, weight_max)
        for q in range(4):
            self.position_sums[q] += numbers[8 + q]
            self.position_counts[q] += numbers[12 + q]
        rest = numbers[16:]
        if sampling_logps is not None:
            usable_count, delta_abs, delta_sum, delta_sq, sp_sum, sp_sq = rest[:6]
            rest = rest[6:]
            self.sampler_count += usable_count
            self.sampler_sum += delta_abs
            self.sampler_token_sum += delta_sum
            self.sampler_token_sq += delta_sq
            self.sampler_prefix_sum += sp_sum
            self.sampler_prefix_sq += sp_sq
        if entropies is not None and clipped is not None:
            self.clip_measured = True
            self.clip_high[0] += rest[0]
            self.clip_high[1] += rest[1]
            self.clip_low[0] += rest[2]
            self.clip_low[1] += rest[3]
        if sample is not None:
            self.entropies.append(sample)  # on the device; moved once per step in result()

    def all_reduce(self, accelerator: Any) -> None:
        """Pool this step's statistics over every process (sums added, weight extremes taken, the entropy samples
        gathered), so that :meth:`result` describes the tokens of all processes alike on each. A collective: call it
        on every process, once per step, before :meth:`result`."""
        device = accelerator.device
        sums = [
            self.tokens,
            self.batches,
            self.stale_batches,
            self.abs_sum,
            self.token_sum,
            self.token_sq,
            self.prefix_sum,
            self.prefix_sq,
            *self.position_sums,
            *self.position_counts,
            self.sampler_sum,
            self.sampler_count,
            self.sampler_token_sq,
            self.sampler_token_sum,
            self.sampler_prefix_sq,
            self.sampler_prefix_sum,
            *self.clip_high,
            *self.clip_low,
            float(self.clip_measured),
        ]
        total = accelerator.reduce(torch.tensor(sums, dtype=torch.float64, device=device), reduction="sum").tolist()
        (self.tokens, self.batches, self.stale_batches, self.abs_sum, self.token_sum, self.token_sq) = total[:6]
        self.prefix_sum, self.prefix_sq = total[6:8]
        self.position_sums, self.position_counts = total[8:12], total[12:16]
        (self.sampler_sum, self.sampler_count, self.sampler_token_sq, self.sampler_token_sum) = total[16:20]
        self.sampler_prefix_sq, self.sampler_prefix_sum = total[20:22]
        self.clip_high, self.clip_low = total[22:24], total[24:26]
        self.clip_measured = total[26] > 0
        extremes = torch.tensor([[-self.weight_min, self.weight_max]], dtype=torch.float64, device=device)
        widest = accelerator.gather(extremes).max(dim=0).values.tolist()
        self.weight_min, self.weight_max = -widest[0], widest[1]
        local = torch.cat(self.entropies) if self.entropies else torch.empty(0, device=device)
        padded = accelerator.pad_across_processes(local.to(device).float(), dim=0, pad_index=math.nan)
        pooled = accelerator.gather(padded)
        self.entropies = [pooled] if pooled.numel() else []

    def result(self) -> Measured:
        values: dict[str, float] = {}
        reasons: dict[str, str] = {}
        if self.tokens == 0:
            self.reset()
            return values, {}
        n = self.tokens
        values["regime/stale_batch_frac"] = self.stale_batches / self.batches
        values["regime/logratio_abs_mean"] = self.abs_sum / n
        for q in range(4):
            if self.position_counts[q]:
                values[f"regime/logratio_abs_q{q + 1}"] = self.position_sums[q] / self.position_counts[q]
        token_var = max(self.token_sq / n - (self.token_sum / n) ** 2, 0.0)
        prefix_var = max(self.prefix_sq / n - (self.prefix_sum / n) ** 2, 0.0)
        values["regime/token_logratio_std"] = math.sqrt(token_var)
        values["regime/prefix_logratio_std"] = math.sqrt(prefix_var)
        if token_var > _RELATIVE_VARIANCE_FLOOR * self.token_sq / n:
            values["regime/prefix_to_token_spread"] = math.sqrt(prefix_var / token_var)
        else:
            reasons["regime/prefix_to_token_spread"] = (
                "every log-ratio is 0 (or the same): the step trained on-policy (pi_old = pi_theta), so there is no "
                "drift to compare"
            )
        values["regime/minpro_weight_min"] = self.weight_min
        values["regime/minpro_weight_max"] = self.weight_max
        if self.sampler_count:
            m = self.sampler_count
            values["regime/sampler_logratio_abs_mean"] = self.sampler_sum / m
            token = max(self.sampler_token_sq / m - (self.sampler_token_sum / m) ** 2, 0.0)
            prefix = max(self.sampler_prefix_sq / m - (self.sampler_prefix_sum / m) ** 2, 0.0)
            if token > _RELATIVE_VARIANCE_FLOOR * self.sampler_token_sq / m:  # not the rounding of a constant offset
                values["regime/sampler_prefix_to_token_spread"] = math.sqrt(prefix / token)
            else:
                reasons["regime/sampler_prefix_to_token_spread"] = "the sampler's and the trainer's log-probs agree"
        else:
            reasons["regime/sampler_prefix_to_token_spread"] = reasons["regime/sampler_logratio_abs_mean"] = (
                "no sampler log-probs in the batch (vLLM with vllm_importance_sampling_correction, or a rollout "
                "that returns its own, such as the multi-turn search rollout, provides them)"
            )
        if self.entropies:
            ent = torch.cat([sample.cpu() for sample in self.entropies])
            ent = ent[~torch.isnan(ent)]
        if self.entropies and ent.numel():
            quantiles = torch.quantile(ent, torch.tensor([0.1, 0.5, 0.9])).tolist()
            values["regime/entropy_p10"], values["regime/entropy_p50"], values["regime/entropy_p90"] = quantiles
            values["regime/entropy_mean"] = float(ent.mean())
        else:
            for key in ("entropy_p10", "entropy_p50", "entropy_p90", "entropy_mean"):
                reasons[f"regime/{key}"] = "the loss computed no token entropies"
        if self.clip_measured and self.clip_high[1] and self.clip_low[1]:
            values["regime/clip_frac_high_entropy"] = self.clip_high[0] / self.clip_high[1]
            values["regime/clip_frac_low_entropy"] = self.clip_low[0] / self.clip_low[1]
        else:
            reason = (
                "the loss type has no clip range (only the clipped-surrogate loss types clip)"
                if not self.clip_measured
                else "too few tokens to split at the entropy pivot"
            )
            reasons["regime/clip_frac_high_entropy"] = reasons["regime/clip_frac_low_entropy"] = reason
        self.reset()
        return values, reasons
