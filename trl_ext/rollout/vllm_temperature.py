"""HAPO's entropy-adaptive rollout temperature as a vLLM V1 logits processor (arXiv 2509.16591).

This module imports vLLM; ``import trl_ext`` never imports it (the HAPO trainer imports it only with
``use_vllm=True``).

**How it samples.** vLLM's sampler runs, per decoding step: the logits processors that are *not* argmax-invariant on
the raw float32 logits, then penalties, then the request's temperature, then min-p and top-k / top-p, and samples.
:class:`HAPOTemperatureLogitsProcessor` is not argmax-invariant, so it sees the raw logits l; for every request that
carries HAPO statistics it computes the per-row factor ``f = 1 + tau h`` from the entropy of l exactly as
:func:`~trl_ext.rollout.temperature.rollout_temperatures` does (with T0 = 1) and returns ``l / f``. vLLM then divides
by the request's temperature T0, so the sampling distribution is ``softmax(l / (T0 (1 + tau h)))`` followed by
top-k / top-p / min-p: the transformers processor's (:class:`~trl_ext.rollout.temperature.AdaptiveTemperatureLogitsProcessor`).
Requests without statistics are left untouched (plain T0).

**Log-probs.** TRL builds its engines with ``logprobs_mode="processed_logprobs"``: the returned log-prob of a sampled
token is taken from the final sampling distribution (after this processor, temperature and filtering). The log-probs
TRL receives are therefore those of the distribution actually sampled from, and TRL's importance-sampling correction
(``vllm_importance_sampling_correction``) compares the training policy at T0 against it.

**Per-request statistics** travel in ``SamplingParams.extra_args`` (colocate: TRL's ``generation_kwargs`` become
``SamplingParams`` fields) or in the OpenAI request's ``vllm_xargs`` (server mode; vLLM copies them into
``extra_args``). Both take a flat dict of numbers and strings, built by :func:`temperature_extra_args`.

**Both model runners.** vLLM 0.32 runs Model Runner V2 by default where Triton works (GPUs) and the V1 runner
elsewhere (CPU); each loads processors through its own interface, and the API server validates requests with the one
the engine will use. The class implements both (``update_state`` / ``apply(logits)`` for V1, ``add_request`` /
``apply(logits, ctx)`` for V2), so one name serves every engine. In both runners it runs on the raw logits before
temperature and filtering.

**Registering it.** trl-ext declares the class under vLLM's ``vllm.logits_processors`` entry-point group
(``pyproject.toml``), so every vLLM engine started in an environment where trl-ext is installed loads it: TRL's
colocated engine and ``trl vllm-serve`` / ``trl-ext vllm-serve`` alike, with no change to TRL. It is inert for
requests that carry no HAPO arguments (every request of other users of that engine). A second instance in the same
engine (the name also passed as ``--logits-processors``) stays inert, so the factor is applied once.

**Metrics.** When a request's extra args carry a ``hapo_tag``, the realised temperatures T0 (1 + tau h) of its rows
are summarised in this process (:func:`pop_temperature_summary`). That works when the engine runs in the training
process (colocate); a server's summaries stay in the server process.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, NamedTuple

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

try:  # Model Runner V2 (vLLM >= 0.32, the default on GPUs with Triton) has its own processor interface
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as RunnerV2LogitsProcessor
except ImportError:  # older vLLM: the V1 runner only
    RunnerV2LogitsProcessor = None

from trl_ext.rollout.temperature import (
    STAT_KEYS,
    TAG_KEY,
    TAU_KEY,
    TemperatureStatistics,
    pop_temperature_summary,
    record_temperatures,
    rollout_temperatures,
    temperature_extra_args,
)

__all__ = [
    "HAPOTemperatureLogitsProcessor",
    "LOGITS_PROCESSOR_FQCN",
    "STAT_KEYS",
    "TAG_KEY",
    "TAU_KEY",
    "pop_temperature_summary",
    "temperature_extra_args",
]

#: The processor's fully qualified class name: what trl-ext declares under vLLM's ``vllm.logits_processors`` entry-point
#: group (pyproject.toml), and what ``logits_processors=[...]`` / ``--logits-processors`` would take.
LOGITS_PROCESSOR_FQCN = "trl_ext.rollout.vllm_temperature:HAPOTemperatureLogitsProcessor"

# id(vllm_config) -> the config, for every engine in this process that has an active instance of the processor. A
# second instance in the same engine (the entry point plus the same name passed as --logits-processors) stays inert,
# so the factor is never applied twice. The config is kept referenced so that its id cannot be reused.
_ENGINES_WITH_PROCESSOR: dict[int, Any] = {}


class _Request(NamedTuple):
    stats: TemperatureStatistics
    tau: float
    base_temperature: float
    tag: str | None


def _parse(params: SamplingParams) -> _Request | None:
    """The request's HAPO settings from its extra args; ``None`` when it asks for none (plain T0)."""
    extra = params.extra_args or {}
    if not any(key in extra for key in (*STAT_KEYS, TAU_KEY)):
        return None
    missing = [key for key in (*STAT_KEYS, TAU_KEY) if key not in extra]
    if missing:
        raise ValueError(f"HAPO adaptive temperature: extra_args lacks {missing}")
    try:
        values = [float(extra[key]) for key in STAT_KEYS]
        tau = float(extra[TAU_KEY])
    except (TypeError, ValueError) as error:
        raise ValueError(f"HAPO adaptive temperature: non-numeric extra_args ({error})") from error
    if not all(math.isfinite(v) for v in values) or not 0.0 <= tau < 1.0:
        raise ValueError(f"HAPO adaptive temperature: invalid statistics {values} or tau {tau} (need 0 <= tau < 1)")
    tag = extra.get(TAG_KEY)
    return _Request(TemperatureStatistics(*values), tau, float(params.temperature), None if tag is None else str(tag))


_BASES: tuple[type, ...] = (
    (LogitsProcessor,)
    if RunnerV2LogitsProcessor is None
    else (
        LogitsProcessor,
        RunnerV2LogitsProcessor,
    )
)


class HAPOTemperatureLogitsProcessor(*_BASES):
    """vLLM logits processor: raw logits l -> l / (1 + tau h) for requests with HAPO statistics.

    vLLM divides the result by the request's temperature T0 afterwards, which gives HAPO's T_t = T0 (1 + tau h); see
    the module docstring. Rows of requests without statistics are returned unchanged. Implements vLLM's V1-runner
    interface and, where it exists, Model Runner V2's.
    """

    def __init__(self, vllm_config: Any, *args: Any) -> None:
        # V1: (vllm_config, device, is_pin_memory); V2: (vllm_config, req_states). Neither is needed.
        self._requests: dict[int, _Request] = {}  # V1: persistent-batch index -> settings; V2: request slot
        self.inert = id(vllm_config) in _ENGINES_WITH_PROCESSOR  # a duplicate in this engine: never applies
        _ENGINES_WITH_PROCESSOR.setdefault(id(vllm_config), vllm_config)
        self._version = 0  # bumped whenever _requests changes; the cached plan is keyed on it
        self._plan: _Plan | None = None
        self._workspace: list[torch.Tensor] = []  # the entropy's two buffers on CPU, reused every decoding step
        #: False: rows are always gathered and scattered back, even when one (statistics, tau) covers the whole batch
        #: (the general path; the tests check that both give the same bits).
        self.whole_batch_fast_path = True

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Reject malformed statistics when the request arrives (HTTP 400 in server mode)."""
        _parse(sampling_params)

    def is_argmax_invariant(self) -> bool:
        """False: the processor must run on the raw logits, before vLLM's temperature and top-k / top-p."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Track which persistent-batch rows carry statistics (added, removed and moved requests)."""
        if self.inert:
            return
        if process_dict_updates(self._requests, batch_update, lambda params, _prompt, _output: _parse(params)):
            self._version += 1

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        """Model Runner V2: (re)initialise a request slot; True when the request carries statistics."""
        request = None if self.inert else _parse(sampling_params)
        self._version += 1
        if request is None:
            self._requests.pop(req_idx, None)
            return False
        self._requests[req_idx] = request
        return True

    def apply_staged_writes(self) -> None:
        """Model Runner V2: nothing is staged on the device."""

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        """Divide the rows of requests with statistics by their factor 1 + tau h (in place).

        V1 calls ``apply(logits)`` with row = persistent-batch index; V2 calls ``apply(logits, ctx)`` with rows mapped
        to request slots by ``ctx``. Which rows share which statistics is worked out once per batch composition
        (:class:`_Plan`, rebuilt when a request is added, removed or moved, or the rows map to other slots); when
        every row shares one (statistics, tau), the common case, the whole batch is divided in place without
        gathering rows.
        """
        if not self._requests:
            self._workspace.clear()  # no HAPO request left: the vocabulary-sized buffers go
            return logits
        slots = None
        if ctx is not None:
            slots = ctx.idx_mapping_np
            if len(slots) != logits.shape[0]:  # speculative decoding: several rows per request
                slots = ctx.expanded_idx_mapping.cpu().numpy()
        plan = self._plan
        key = (self._version, logits.shape[0], logits.device, None if slots is None else slots.tobytes())
        if plan is None or plan.key != key:
            plan = self._plan = _Plan.build(key, self._row_requests(logits.shape[0], slots), logits.device)
        workspace = self._workspace if logits.device.type == "cpu" else None
        for group in plan.groups:
            if group.whole_batch and self.whole_batch_fast_path and logits.is_contiguous():
                factors = rollout_temperatures(logits, group.stats, group.tau, 1.0, workspace)
                logits.div_(factors.unsqueeze(-1).to(logits.dtype))
            else:
                selected = logits.index_select(0, group.rows)
                factors = rollout_temperatures(selected, group.stats, group.tau, 1.0, workspace)
                logits.index_copy_(0, group.rows, selected / factors.unsqueeze(-1).to(selected.dtype))
            for record in group.records:
                record.add(factors)
        return logits

    def _row_requests(self, num_rows: int, slots: Any) -> list[tuple[int, _Request]]:
        """(row, settings) of every row of the batch whose request carries statistics."""
        if slots is None:
            return [(row, self._requests[row]) for row in self._requests if row < num_rows]
        return [(row, self._requests[int(s)]) for row, s in enumerate(slots) if int(s) in self._requests]


class _Record(NamedTuple):
    """One tag's share of a group: adds each decoding step's realised temperatures T0 * factor of the tag's rows
    (:func:`~trl_ext.rollout.temperature.record_temperatures`)."""

    tag: str
    positions: torch.Tensor | None  # the tag's rows among the group's; None: all of them
    bases: torch.Tensor | None  # their T0; None: all 1 (T0 * factor == factor)

    def add(self, factors: torch.Tensor) -> None:
        # Kept on the logits' device (no host sync per decoding step) and reduced when popped: with every row tagged
        # at T0 = 1 a decoding step does no tensor work here (factors is a fresh tensor nothing modifies).
        temperatures = factors.detach() if factors.requires_grad else factors
        if temperatures.dtype != torch.float32:
            temperatures = temperatures.float()
        if self.positions is not None:
            temperatures = temperatures.index_select(0, self.positions)
        if self.bases is not None:
            temperatures = temperatures * self.bases
        record_temperatures(self.tag, temperatures)


class _Group(NamedTuple):
    """Rows that share one (statistics, tau), in row order."""

    stats: TemperatureStatistics
    tau: float
    rows: torch.Tensor
    whole_batch: bool  # the rows are every row of the batch (0, 1, ..., n - 1)
    records: tuple[_Record, ...]


class _Plan(NamedTuple):
    """How one batch composition is processed: its groups, in the order their first members appear in the request
    table (as before the plan existed, so that a tag's per-step summaries are added up in the same order)."""

    key: tuple[Any, ...]
    groups: tuple[_Group, ...]

    @classmethod
    def build(cls, key: tuple[Any, ...], row_requests: list[tuple[int, _Request]], device: torch.device) -> _Plan:
        members: dict[tuple[TemperatureStatistics, float], list[tuple[int, _Request]]] = defaultdict(list)
        for row, request in row_requests:
            members[(request.stats, request.tau)].append((row, request))
        num_rows = key[1]
        groups = []
        for (stats, tau), group in members.items():
            group.sort(key=lambda member: member[0])
            rows = [row for row, _ in group]
            by_tag: dict[str, list[int]] = defaultdict(list)
            for position, (_, request) in enumerate(group):
                if request.tag is not None:
                    by_tag[request.tag].append(position)
            records = tuple(
                _Record(
                    tag,
                    None if len(positions) == len(group) else torch.tensor(positions, device=device),
                    None
                    if all(group[p][1].base_temperature == 1.0 for p in positions)
                    else torch.tensor([group[p][1].base_temperature for p in positions], device=device),
                )
                for tag, positions in by_tag.items()
            )
            whole = len(members) == 1 and rows == list(range(num_rows))
            groups.append(_Group(stats, tau, torch.tensor(rows, device=device), whole, records))
        return cls(key, tuple(groups))
