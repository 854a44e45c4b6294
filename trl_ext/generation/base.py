"""What every generation backend offers, and how a method states a change to sampling once for all of them.

A **backend** samples completions for token-id contexts: ``backend.generate(contexts, max_new_tokens)`` returns, per
context, the sampled token ids and their sampling log-probs (the log-prob of each token under the final sampling
distribution: after temperature, top-k / top-p / min-p and any sampling change). A backend is also a
``TurnGenerator`` (``backend(contexts, max_new_tokens, rows, turn)``), so a multi-turn rollout drives it turn by turn.

A **sampling change** is what a method alters about how tokens are drawn (HAPO's per-token temperature). It says it
once, in two forms that mean the same distribution:

* :meth:`SamplingChange.logits_processor`: a transformers ``LogitsProcessor`` that maps raw logits to the final
  sampling logits, temperature and filters included (the transformers backend switches ``generate``'s own
  temperature / top-k / top-p / min-p off while it runs, so they act once);
* :meth:`SamplingChange.vllm_extra_args`: per-request extra arguments for a vLLM logits processor that the engine
  loads (vLLM then applies the request's temperature and filters itself).

**Capabilities** (:class:`Capabilities`) are what a trainer may ask instead of branching on the backend: whether the
sampler's log-probs reach TRL's batch (``sampling_per_token_logps``), whether a sampling change can be applied,
whether sampling runs in this process (so that a change can observe it), and whether a call is a collective that
every process must make the same number of times.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["BackendTurns", "Capabilities", "GenerationBackend", "SamplingChange", "SamplingSettings"]


@dataclass(frozen=True)
class Capabilities:
    """What a generation backend can do; decided from the trainer's config alone (before any engine exists).

    Attributes:
        name: ``"transformers"``, ``"transformers-continuous-batching"``, ``"vllm-colocate"`` or ``"vllm-server"``
            (for messages and metrics; code asks the flags below, never the name).
        sampling_logprobs: TRL's batch carries the sampler's log-probs (``sampling_per_token_logps``) for
            single-turn generation (vLLM returns them; TRL's transformers paths do not).
        sampling_changes: a :class:`SamplingChange` can be applied (every backend but transformers continuous
            batching, whose ``generate_batch`` takes no logits processor).
        samples_in_process: tokens are sampled in this process, so a sampling change can observe what it did
            (False for a vLLM server).
    """

    name: str
    sampling_logprobs: bool
    sampling_changes: bool
    samples_in_process: bool

    @property
    def vllm_engine(self) -> bool:
        """A vLLM engine generates (colocated or a server): its limits (``vllm_max_model_length``) apply."""
        return self.name.startswith("vllm")


@dataclass(frozen=True)
class SamplingSettings:
    """TRL's sampling settings as the backend applies them (``None`` leaves a filter off)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None


@runtime_checkable
class SamplingChange(Protocol):
    """A change to how tokens are sampled, stated once for every backend (see the module docstring)."""

    def logits_processor(self, settings: SamplingSettings) -> Any:
        """A transformers ``LogitsProcessor``: raw logits -> final sampling logits, applying ``settings``'
        temperature and filters itself."""
        ...

    def vllm_extra_args(self) -> dict[str, Any]:
        """Flat per-request extra arguments (numbers and strings) for the vLLM logits processor of this change."""
        ...


class GenerationBackend(Protocol):
    """Samples token ids for contexts (see the module docstring).

    Attributes:
        capabilities: the backend's :class:`Capabilities`.
        collective: each call takes part in a collective with the other processes (ZeRO-3 / FSDP ``generate``, a vLLM
            server, vLLM tensor parallelism): every process must call it the same number of times, with an empty
            context list where it has nothing to generate.
    """

    capabilities: Capabilities
    collective: bool

    def generate(
        self,
        contexts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        sampling: SamplingChange | None = None,
    ) -> list[tuple[list[int], list[float]]]:
        """Sample up to ``max_new_tokens`` for each context: (token ids, sampling log-probs) per context."""
        ...

    def __call__(
        self, contexts: list[list[int]], max_new_tokens: int, rows: list[int] | None = None, turn: int | None = None
    ) -> list[tuple[list[int], list[float]]]:
        """The ``TurnGenerator`` protocol of :mod:`trl_ext.rollout.search_agent`: ``generate`` with the session's
        sampling change."""
        ...


class BackendTurns:
    """A backend's ``TurnGenerator`` call: ``backend(contexts, max_new_tokens, rows, turn)`` is ``generate`` with the
    session's sampling change (the rows and turn number are for scripted generators; a backend does not need them)."""

    def __call__(
        self, contexts: list[list[int]], max_new_tokens: int, rows: list[int] | None = None, turn: int | None = None
    ) -> list[tuple[list[int], list[float]]]:
        return self.generate(contexts, max_new_tokens)  # type: ignore[attr-defined]
