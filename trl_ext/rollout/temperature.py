"""HAPO's entropy-adaptive sampling temperature (arXiv 2509.16591).

At every decoding step, for each sequence with raw logits l (float32, before temperature / top-k / top-p / min-p)::

    H   = -sum softmax(l) log_softmax(l)                        (entropy at T = 1)
    z   = (log max(H, 1e-6) - m) / (s + 1e-6)
    h   = clamp(z scale_pos if z > 0 else z scale_neg, -1, 1)
    T_t = T0 (1 + tau h)

and the next token is sampled from softmax(l / T_t) after top-k / top-p / min-p. (m, s, scale_pos, scale_neg) are the
entropy statistics (:func:`trl_ext.objectives.hapo.entropy_statistics`) of the valid-token entropies of the
**previous** training batch, gathered over all processes. T_t lies in [0.95, 1.05] T0 in ``"signed"`` mode
(tau = 0.05) and in [T0, 1.05 T0] in ``"reference"`` mode.

This module holds the pure function (:func:`rollout_temperatures`), the checkpointed statistics
(:class:`TemperatureStatistics`, :class:`RolloutTemperatureState`) and the transformers ``LogitsProcessor``
(:class:`AdaptiveTemperatureLogitsProcessor`). The processor applies T0 and top-k / top-p / min-p itself, so it must
run with ``generate``'s own warpers neutralised (temperature 1.0, top_k 0, top_p 1.0, min_p 0.0): then the result
does not depend on where transformers places custom processors. The same T_t under vLLM is
:class:`trl_ext.rollout.vllm_temperature.HAPOTemperatureLogitsProcessor` (it scales the raw logits by 1 / (1 + tau h)
and leaves T0 and the filters to vLLM).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, NamedTuple

import torch
from transformers import LogitsProcessor, MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from trl_ext.objectives.hapo import entropy_statistics

ROLLOUT_LOG_ENTROPY_FLOOR = 1e-6
ROLLOUT_SCALE_EPS = 1e-6

__all__ = [
    "STAT_KEYS",
    "TAG_KEY",
    "TAU_KEY",
    "AdaptiveTemperature",
    "AdaptiveTemperatureLogitsProcessor",
    "RolloutTemperatureState",
    "TemperatureStatistics",
    "logits_entropy",
    "rollout_temperatures",
    "pop_temperature_summary",
    "record_temperature_summary",
    "record_temperatures",
    "temperature_extra_args",
]


@dataclass(frozen=True)
class TemperatureStatistics:
    """The entropy statistics that drive the rollout temperature (python floats, JSON-serialisable).

    Attributes:
        pivot: m, the q-quantile of log-entropy (nats, log scale).
        scale: s, the RMS deviation of log-entropy around m.
        scale_pos: 1 / max z.
        scale_neg: 1 / min z (``"reference"``, < 0) or 1 / |min z| (``"signed"``, > 0).
        num_tokens: how many token entropies they were computed from (after subsampling).
    """

    pivot: float
    scale: float
    scale_pos: float
    scale_neg: float
    num_tokens: int = 0

    @classmethod
    def from_entropies(
        cls,
        entropies: torch.Tensor,
        pivot_quantile: float,
        sign_mode: str,
        *,
        max_tokens: int | None = None,
        seed: int = 0,
    ) -> TemperatureStatistics | None:
        """Statistics of a 1-D set of valid token entropies (float64); ``None`` for an empty set.

        With ``max_tokens`` and more values than that, a uniform subsample of ``max_tokens`` values is drawn with a
        CPU generator seeded by ``seed``: the same input and seed give the same statistics on every process.
        """
        values = entropies.detach().reshape(-1).to(torch.float64)
        if max_tokens is not None and values.numel() > max_tokens:
            generator = torch.Generator().manual_seed(seed)
            keep = torch.randperm(values.numel(), generator=generator)[:max_tokens]
            values = values[keep.to(values.device)]
        stats = entropy_statistics(values, pivot_quantile, sign_mode)
        if stats is None:
            return None
        return cls(
            pivot=float(stats.pivot),
            scale=float(stats.scale),
            scale_pos=float(stats.scale_pos),
            scale_neg=float(stats.scale_neg),
            num_tokens=stats.num_tokens,
        )

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (floats round-trip exactly through JSON)."""
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any] | None) -> TemperatureStatistics | None:
        """Inverse of :meth:`state_dict`; ``None`` stays ``None``."""
        return None if state is None else cls(**state)


#: Shifted logits below this are clamped before ``exp`` in :func:`logits_entropy`: exp(-200) is 0 in float32 (and in
#: float64 it is 1e-87, far below any probability that moves an entropy), so the clamp changes no probability and
#: turns 0 * (-inf) into 0 * (-200) = 0 for masked (-inf) logits.
_ENTROPY_SHIFT_FLOOR = -200.0


def logits_entropy(logits: torch.Tensor, workspace: list[torch.Tensor] | None = None) -> torch.Tensor:
    """H = -sum_v p_v log p_v of softmax(logits) over the last dimension, in float32; 0 log 0 = 0 (masked logits).

    One ``exp`` pass over the vocabulary: with d = l - max(l) and e = exp(d), Z = sum e,
    H = log Z - sum(e d) / Z. (softmax followed by ``entr`` takes an ``exp`` and a ``log`` pass.)

    Args:
        logits: (..., V) logits.
        workspace: a list that holds two (..., V) float32 buffers between calls (filled on first use, replaced when
            the shape or device changes). A decoding loop that passes the same list every step allocates nothing per
            step; on CPU, fresh vocabulary-sized allocations made this 2-5x slower and erratic (page faults of
            memory mapped anew at every call; ``benchmarks/hapo_sampler.py``).
    """
    x = logits.float()
    workspace = [] if workspace is None else workspace
    if len(workspace) != 2 or workspace[0].shape != x.shape or workspace[0].device != x.device:
        workspace[:] = [torch.empty(x.shape, dtype=torch.float32, device=x.device) for _ in range(2)]
    shifted, weights = workspace
    torch.sub(x, x.amax(dim=-1, keepdim=True), out=shifted).clamp_(min=_ENTROPY_SHIFT_FLOOR)
    torch.exp(shifted, out=weights)
    total = weights.sum(dim=-1)
    # log Z - (sum e d) / Z in one op (addcdiv: the same bits as the subtraction of the quotient)
    return torch.addcdiv(torch.log(total), torch.linalg.vecdot(weights, shifted), total, value=-1.0)


def rollout_temperatures(
    logits: torch.Tensor,
    stats: TemperatureStatistics | None,
    tau: float,
    base_temperature: float,
    workspace: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-row sampling temperature T_t = T0 (1 + tau h_t) of HAPO (arXiv 2509.16591).

    Args:
        logits: (B, V) raw next-token logits (before any temperature or filtering).
        stats: the previous training batch's statistics; ``None`` gives T0 for every row.
        tau: adaptation strength in [0, 1).
        base_temperature: T0.
        workspace: reusable buffers for :func:`logits_entropy`.

    Returns:
        (B,) float32 temperatures in [T0 (1 - tau), T0 (1 + tau)].
    """
    if stats is None or tau == 0:
        return torch.full(logits.shape[:-1], float(base_temperature), dtype=torch.float32, device=logits.device)
    entropy = logits_entropy(logits, workspace)
    # In place on the fresh (B,) tensors: the values of the plain expressions, with fewer ops and allocations (the
    # vLLM processor calls this at every decoding step); T0 = 1 skips the last product (x * 1.0 == x).
    z = entropy.clamp_(min=ROLLOUT_LOG_ENTROPY_FLOOR).log_().sub_(stats.pivot).div_(stats.scale + ROLLOUT_SCALE_EPS)
    # z * (scale_pos where z > 0 else scale_neg): the products of where(z > 0, z * scale_pos, z * scale_neg), one fewer
    h = z.mul_(torch.where(z > 0, stats.scale_pos, stats.scale_neg)).clamp_(-1.0, 1.0)
    factors = h.mul_(tau).add_(1.0)
    return factors if base_temperature == 1.0 else factors.mul_(base_temperature)


class RolloutTemperatureState:
    """The cross-step state of the adaptive temperature: identical on every process and checkpointed.

    ``current`` are the statistics the latest training generation sampled with; ``pending`` those computed from the
    first pass over that generation's batch, to be used by the next training generation (:meth:`advance`). Both
    are saved, so a run resumed at a generation boundary samples exactly as an uninterrupted run.
    """

    def __init__(self) -> None:
        self.current: TemperatureStatistics | None = None
        self.pending: TemperatureStatistics | None = None
        self.updates = 0  # how many times pending statistics were computed (also seeds the subsampling)

    def advance(self) -> TemperatureStatistics | None:
        """At a training generation: promote pending statistics (if any) to current and return current."""
        if self.pending is not None:
            self.current, self.pending = self.pending, None
        return self.current

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {
            "current": None if self.current is None else self.current.state_dict(),
            "pending": None if self.pending is None else self.pending.state_dict(),
            "updates": self.updates,
        }

    @staticmethod
    def check_state_dict(state: Any, key: str = "hapo_temperature") -> None:
        """Refuse a saved state of the wrong structure, naming the entry (``key``, ``key.current.scale``, ...) and the
        expected type: ``{"current": stats or null, "pending": stats or null, "updates": int}``, stats an object of
        numbers ``pivot``, ``scale``, ``scale_pos``, ``scale_neg`` and an int ``num_tokens``."""

        def number(value: Any, integer: bool = False) -> bool:
            kinds = int if integer else int | float
            return isinstance(value, kinds) and not isinstance(value, bool)

        def refuse(where: str, expected: str, value: Any) -> None:
            raise ValueError(f"key {where!r} must be {expected}, got {type(value).__name__} {value!r:.60}")

        if not isinstance(state, dict):
            refuse(key, "a JSON object with 'current', 'pending' and 'updates'", state)
        if "updates" in state and not (number(state["updates"], integer=True) and state["updates"] >= 0):
            refuse(f"{key}.updates", "an integer >= 0", state["updates"])
        names = [f.name for f in fields(TemperatureStatistics)]
        for part in ("current", "pending"):
            stats = state.get(part)
            if stats is None:
                continue
            if not isinstance(stats, dict):
                refuse(f"{key}.{part}", f"null or a JSON object with {names}", stats)
            unknown = sorted(set(stats) - set(names))
            if unknown:
                raise ValueError(f"key {f'{key}.{part}'!r} has unknown entries {unknown}; expected {names}")
            for name in names:
                if name != "num_tokens" and name not in stats:
                    raise ValueError(f"key {f'{key}.{part}'!r} lacks {name!r}; expected {names}")
                if name in stats and not number(stats[name], integer=name == "num_tokens"):
                    refuse(f"{key}.{part}.{name}", "an integer" if name == "num_tokens" else "a number", stats[name])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a missing key leaves a fresh state)."""
        self.current = TemperatureStatistics.from_state_dict(state.get("current"))
        self.pending = TemperatureStatistics.from_state_dict(state.get("pending"))
        self.updates = int(state.get("updates", 0))


class AdaptiveTemperatureLogitsProcessor(LogitsProcessor):
    """transformers ``LogitsProcessor``: l -> l / T_t (HAPO), then top-k, top-p and min-p.

    Use it with ``generate``'s built-in warpers neutralised (``temperature=1.0, top_k=0, top_p=1.0, min_p=0.0``):
    it applies T0 itself (T_t = T0 when ``stats`` is ``None`` or ``tau == 0``) and then the filters in transformers'
    order, with transformers' own warper classes, so that with ``tau == 0`` its output equals transformers' T0 +
    top-k / top-p / min-p processing.

    Args:
        stats: statistics of the previous training batch (``None``: T0).
        tau: adaptation strength in [0, 1).
        base_temperature: T0 (TRL's ``temperature``).
        top_k, top_p, min_p: the filters to apply after the temperature (0, 1.0 and ``None`` disable them).
        finished_token_ids: token ids that mark a finished row when they are the row's last input id (eos and pad);
            such rows are left out of the temperature metrics.
        keep_history: also keep every step's (entropy, temperature, active) tensors in :attr:`history` (tests).

    After generation, :meth:`summary` gives the realised temperature range over the active rows and steps.
    """

    def __init__(
        self,
        stats: TemperatureStatistics | None,
        tau: float,
        base_temperature: float,
        *,
        top_k: int | None = 0,
        top_p: float | None = 1.0,
        min_p: float | None = None,
        finished_token_ids: Iterable[int] = (),
        keep_history: bool = False,
    ) -> None:
        if not 0.0 <= tau < 1.0:
            raise ValueError(f"hapo_temperature_tau must be in [0, 1), got {tau}")
        if not base_temperature > 0:
            raise ValueError(f"temperature must be > 0 for adaptive temperature sampling, got {base_temperature}")
        self.stats = stats
        self.tau = float(tau)
        self.base_temperature = float(base_temperature)
        self.warpers: list[LogitsProcessor] = []
        if top_k is not None and top_k != 0:
            self.warpers.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
        if top_p is not None and top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
        if min_p is not None:
            self.warpers.append(MinPLogitsWarper(min_p=min_p, min_tokens_to_keep=1))
        self.finished_token_ids = sorted(set(int(i) for i in finished_token_ids))
        self.history: list[dict[str, torch.Tensor]] | None = [] if keep_history else None
        self._finished: torch.Tensor | None = None
        self._steps: list[tuple[torch.Tensor, torch.Tensor]] = []  # (temperatures, active) per decoding step
        self._workspace: list[torch.Tensor] = []  # the entropy's two vocabulary-sized buffers, reused every step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        temperatures = rollout_temperatures(scores, self.stats, self.tau, self.base_temperature, self._workspace)
        processed = scores / temperatures.unsqueeze(-1).to(scores.dtype)
        for warper in self.warpers:
            processed = warper(input_ids, processed)
        self._record(input_ids, scores, temperatures)
        return processed

    def _record(self, input_ids: torch.LongTensor, scores: torch.Tensor, temperatures: torch.Tensor) -> None:
        # Kept as per-step tensors (no host sync, few ops per decoding step); reduced once in summary_tensor().
        if self.finished_token_ids:
            if self._finished is None or self._finished.device != input_ids.device:
                self._finished = torch.tensor(self.finished_token_ids, device=input_ids.device)
            active = ~torch.isin(input_ids[:, -1], self._finished)
        else:
            active = torch.ones_like(temperatures, dtype=torch.bool)
        self._steps.append((temperatures, active))
        if self.history is not None:
            self.history.append(
                {"entropy": logits_entropy(scores).detach(), "temperature": temperatures.detach(), "active": active}
            )

    def summary_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """[min, max, sum, count] of the realised temperatures over active rows (inf, -inf, 0, 0 if none)."""
        if not self._steps:
            return torch.tensor([float("inf"), float("-inf"), 0.0, 0.0], device=device)
        temperatures = torch.cat([t for t, _ in self._steps])
        active = torch.cat([a for _, a in self._steps])
        values = temperatures[active]
        if values.numel() == 0:
            summary = torch.tensor([float("inf"), float("-inf"), 0.0, 0.0], device=temperatures.device)
        else:
            count = torch.tensor(float(values.numel()), device=values.device)
            summary = torch.stack([values.min(), values.max(), values.sum(), count])
        return summary.to(device) if device is not None else summary


# ---------------------------------------------------------------------------------------------------------------------
# The same change for every backend (trl_ext.generation): a transformers processor or vLLM request arguments
# ---------------------------------------------------------------------------------------------------------------------

#: vLLM extra-args keys of the four entropy statistics, in :class:`TemperatureStatistics` field order.
STAT_KEYS: tuple[str, ...] = ("hapo_pivot", "hapo_scale", "hapo_scale_pos", "hapo_scale_neg")
TAU_KEY = "hapo_tau"
TAG_KEY = "hapo_tag"


class _StepTemperatures(NamedTuple):
    """One decoding step's realised temperatures, kept as they are until :func:`pop_temperature_summary`."""

    values: torch.Tensor


# tag -> per decoding step, what a vLLM engine in this process realised: a [min, max, sum, count] tensor
# (record_temperature_summary) or the temperatures themselves (record_temperatures)
_SUMMARIES: dict[str, list[torch.Tensor | _StepTemperatures]] = defaultdict(list)


def temperature_extra_args(stats: TemperatureStatistics, tau: float, tag: str | None = None) -> dict[str, Any]:
    """The flat ``extra_args`` / ``vllm_xargs`` dict that asks the vLLM processor for adaptive temperature.

    Args:
        stats: the previous training batch's statistics.
        tau: adaptation strength in [0, 1).
        tag: if given, the realised temperatures are summarised under it (:func:`pop_temperature_summary`).
    """
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"hapo_temperature_tau must be in [0, 1), got {tau}")
    values = (stats.pivot, stats.scale, stats.scale_pos, stats.scale_neg)
    if not all(math.isfinite(float(v)) for v in values):
        raise ValueError(f"HAPO adaptive temperature: statistics must be finite, got {values}")
    args: dict[str, Any] = {key: float(value) for key, value in zip(STAT_KEYS, values, strict=True)}
    args[TAU_KEY] = float(tau)
    if tag is not None:
        args[TAG_KEY] = str(tag)
    return args


def record_temperature_summary(tag: str, summary: torch.Tensor) -> None:
    """Add one decoding step's [min, max, sum, count] of realised temperatures under ``tag``."""
    _SUMMARIES[tag].append(summary)


def record_temperatures(tag: str, temperatures: torch.Tensor) -> None:
    """Add one decoding step's realised temperatures (1-D, not modified afterwards) under ``tag``: the vLLM
    processor's call at every decoding step, which does no tensor work; the step's [min, max, sum, count] is taken
    when the tag is popped (the same reductions of the same values, so the same bits as summarising at once)."""
    _SUMMARIES[tag].append(_StepTemperatures(temperatures))


def _step_summary(step: torch.Tensor | _StepTemperatures) -> torch.Tensor:
    if not isinstance(step, _StepTemperatures):
        return step.cpu()
    values = step.values
    low, high = torch.aminmax(values)
    return torch.stack([low, high, values.sum(), values.new_tensor(float(values.numel()))]).cpu()


def pop_temperature_summary(tag: str) -> torch.Tensor | None:
    """[min, max, sum, count] of the temperatures realised under ``tag`` in this process since the last call, or
    ``None`` if no request with that tag was processed here (e.g. the engine is a separate server)."""
    steps = _SUMMARIES.pop(tag, None)
    if not steps:
        return None
    return combine_summaries([_step_summary(step) for step in steps])


def combine_summaries(parts: list[torch.Tensor]) -> torch.Tensor:
    """One [min, max, sum, count] of several (min of the mins, max of the maxes, sums added)."""
    stacked = torch.stack(parts)
    return torch.stack([stacked[:, 0].min(), stacked[:, 1].max(), stacked[:, 2].sum(), stacked[:, 3].sum()])


_EMPTY_SUMMARY = (float("inf"), float("-inf"), 0.0, 0.0)


class AdaptiveTemperature:
    """HAPO's adaptive temperature as a :class:`~trl_ext.generation.base.SamplingChange`: one statement, every backend.

    transformers: :meth:`logits_processor` gives an :class:`AdaptiveTemperatureLogitsProcessor` for the backend's
    sampling settings (T0 and the filters). vLLM: :meth:`vllm_extra_args` sends the statistics with every request to
    :class:`trl_ext.rollout.vllm_temperature.HAPOTemperatureLogitsProcessor`, which the engine loads.
    :meth:`summary_tensor` reads back the realised temperatures of everything sampled in this process.

    Args:
        stats: the previous training batch's statistics (``None``: plain T0).
        tau: adaptation strength in [0, 1).
        tag: names this change's requests for the vLLM processor's summaries (unique per trainer).
        finished_token_ids: eos and pad ids (finished rows are left out of the summaries).
        build_processor: ``build_processor(settings)`` makes the transformers processor (default: the plain one).
    """

    def __init__(
        self,
        stats: TemperatureStatistics | None,
        tau: float,
        tag: str,
        finished_token_ids: Iterable[int] = (),
        build_processor: Callable[[Any], AdaptiveTemperatureLogitsProcessor] | None = None,
    ) -> None:
        self.stats = stats
        self.tau = float(tau)
        self.tag = str(tag)
        self.finished_token_ids = [int(i) for i in finished_token_ids]
        self._build = build_processor
        self.processors: list[AdaptiveTemperatureLogitsProcessor] = []

    def logits_processor(self, settings: Any) -> AdaptiveTemperatureLogitsProcessor:
        """A transformers processor applying T_t = T0 (1 + tau h_t) and then the settings' top-k / top-p / min-p."""
        if self._build is not None:
            processor = self._build(settings)
        else:
            processor = AdaptiveTemperatureLogitsProcessor(
                self.stats,
                self.tau,
                settings.temperature,
                top_k=settings.top_k,
                top_p=settings.top_p,
                min_p=settings.min_p,
                finished_token_ids=self.finished_token_ids,
            )
        self.processors.append(processor)
        return processor

    def vllm_extra_args(self) -> dict[str, Any]:
        """The statistics as vLLM request arguments (none with ``stats`` ``None``: the engine samples at T0)."""
        if self.stats is None:
            return {}
        return temperature_extra_args(self.stats, self.tau, self.tag)

    def summary_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """[min, max, sum, count] of the temperatures realised in this process by this change's transformers
        processors and the vLLM engines that ran here (inf, -inf, 0, 0 if none)."""
        parts = [processor.summary_tensor("cpu") for processor in self.processors]
        from_vllm = pop_temperature_summary(self.tag)
        if from_vllm is not None:
            parts.append(from_vllm.cpu())
        parts = [p for p in parts if p[3] > 0]
        if not parts:
            return torch.tensor(_EMPTY_SUMMARY, device=device)
        summary = combine_summaries(parts)
        return summary.to(device) if device is not None else summary
