"""The transformers ``generate`` backend.

Samples with a causal LM's ``generate``, following a ``GenerationConfig`` (TRL's: ``do_sample``, temperature, top-k,
top-p, min-p, repetition penalty, eos and pad ids). Temperature / top-k / top-p / min-p are applied by this backend's
own processor list (transformers' warper classes, in transformers' order), or by a :class:`SamplingChange`'s processor
in their place, followed by a recorder that reads off the log-prob of every sampled token under the final sampling
distribution (what vLLM reports as processed log-probs); ``generate``'s own copies of those warpers are switched off
so that they act once. Extra ``logits_processors`` run before them (transformers' place for custom processors). Other
warpers set through ``generation_kwargs`` (typical-p, epsilon / eta cutoffs) stay in ``generate`` and therefore act
before temperature.

:attr:`TransformersBackend.collective` is :func:`generate_is_synchronised` for the model (ZeRO-3 or FSDP with more
than one process). A call with no contexts then still runs ``generate`` on one dummy row for one new token, greedily
(no random numbers drawn): under ``synced_gpus`` that ``generate`` keeps stepping, without sampling, until every other
process has finished its call, which keeps the ranks' collectives matched. Otherwise an empty call returns ``[]``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from trl_ext.generation.base import BackendTurns, Capabilities, SamplingChange, SamplingSettings

__all__ = [
    "StopOnStrings",
    "TransformersBackend",
    "generate_is_synchronised",
    "sampling_settings",
]

TRANSFORMERS = Capabilities("transformers", sampling_logprobs=False, sampling_changes=True, samples_in_process=True)
CONTINUOUS_BATCHING = Capabilities(
    "transformers-continuous-batching", sampling_logprobs=False, sampling_changes=False, samples_in_process=True
)


class StopOnStrings(StoppingCriteria):
    """A transformers ``StoppingCriteria``: a row is done once the decoded text of its *new* tokens contains one of
    ``stop_strings``. Only the last ``window`` new tokens are decoded at each step (the stop string completes at the
    newest token)."""

    def __init__(self, tokenizer: Any, start: int, stop_strings: Sequence[str], window: int = 32):
        self.tokenizer = tokenizer
        self.start = start
        self.stop_strings = tuple(stop_strings)
        self.window = max(window, max(len(s) for s in self.stop_strings) + 1)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        tail = input_ids[:, max(self.start, input_ids.shape[1] - self.window) :]
        texts = self.tokenizer.batch_decode(tail.tolist(), skip_special_tokens=True)
        done = [any(stop in text for stop in self.stop_strings) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _SamplingLogprobRecorder(LogitsProcessor):
    """Last logits processor: keeps the final (processed) scores of one step and, at the next step, reads off the
    log-prob of the token that was sampled from them, so only one (B, V) tensor is held."""

    def __init__(self) -> None:
        super().__init__()
        self.logprobs: list[torch.Tensor] = []
        self._scores: torch.Tensor | None = None
        self._lse: torch.Tensor | None = None

    def _flush(self, tokens: torch.Tensor) -> None:
        if self._scores is not None:
            picked = self._scores.gather(1, tokens.view(-1, 1).to(self._scores.device)).squeeze(1)
            self.logprobs.append((picked - self._lse).float().cpu())
            self._scores = self._lse = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._flush(input_ids[:, -1])
        self._scores = scores.detach()
        self._lse = torch.logsumexp(self._scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """(B, S) log-probs of the S sampled steps, once ``generate`` has returned."""
        self._flush(last_tokens)
        if not self.logprobs:
            return torch.zeros(last_tokens.shape[0], 0)
        return torch.stack(self.logprobs, dim=1)


def generate_is_synchronised(model: Any) -> bool:
    """Whether transformers ``generate`` on ``model`` synchronises the ranks at every decoding step.

    The same condition as transformers' default ``synced_gpus``: DeepSpeed ZeRO-3 or an FSDP-managed model (FSDP1
    wrapper or FSDP2 ``fully_shard``), with a torch.distributed world size above one.
    """
    import torch.distributed as dist
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    from transformers.integrations.fsdp import is_fsdp_managed_module

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return False
    return bool(is_deepspeed_zero3_enabled() or is_fsdp_managed_module(model))


def sampling_settings(generation_config: Any, model: Any = None) -> SamplingSettings:
    """What ``generate`` samples with: ``generation_config``'s temperature and filters, a ``None`` filled from the
    model's own ``generation_config`` (as transformers does), temperature 1.0 if still unset."""
    model_config = getattr(model, "generation_config", None)
    values: dict[str, Any] = {}
    for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
        value = getattr(generation_config, name, None)
        if value is None and model_config is not None:
            value = getattr(model_config, name, None)
        values[name] = value
    if values["temperature"] is None:
        values["temperature"] = 1.0
    return SamplingSettings(**values)


def _sampling_warpers(settings: SamplingSettings) -> list[Any]:
    """temperature, top-k, top-p, min-p as transformers applies them when sampling (same order, same conditions)."""
    from transformers import MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers: list[Any] = []
    if settings.temperature is not None and settings.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k is not None and settings.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=settings.top_k, min_tokens_to_keep=1))
    if settings.top_p is not None and settings.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=settings.top_p, min_tokens_to_keep=1))
    if settings.min_p is not None:
        warpers.append(MinPLogitsWarper(min_p=settings.min_p, min_tokens_to_keep=1))
    return warpers


class TransformersBackend(BackendTurns):
    """:class:`~trl_ext.generation.base.GenerationBackend` over a transformers causal LM's ``generate``.

    Args:
        model: the (unwrapped) model.
        tokenizer: its tokenizer (padding, the stop-string check).
        generation_config: a ``transformers.GenerationConfig`` (``trainer.generation_config``); copied, not modified.
            ``None``: sampling at temperature 1.
        logits_processors: extra ``LogitsProcessor`` objects, run before the sampling warpers.
        stop_strings: strings that end a row's generation (kept in the output); none by default.
        eos_token_ids: a row's tokens after its first one of these are dropped (the EOS itself is kept).
        sampling: the session's :class:`SamplingChange` (used by ``__call__`` and by ``generate`` without one).
        capabilities: what to report (:data:`TRANSFORMERS` by default).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        generation_config: Any | None = None,
        logits_processors: Sequence[Any] = (),
        stop_strings: Sequence[str] | None = None,
        eos_token_ids: Sequence[int] | None = None,
        sampling: SamplingChange | None = None,
        capabilities: Capabilities = TRANSFORMERS,
    ) -> None:
        from transformers import GenerationConfig

        self.model = model
        self.tokenizer = tokenizer
        base = copy.deepcopy(generation_config) if generation_config is not None else GenerationConfig(do_sample=True)
        self.do_sample = bool(base.do_sample)
        self.settings = sampling_settings(base, model)
        self.warpers = _sampling_warpers(self.settings) if self.do_sample else []
        base.temperature, base.top_k, base.top_p, base.min_p = 1.0, None, 1.0, None
        base.return_dict_in_generate = False
        base.output_scores = base.output_logits = False
        if base.pad_token_id is None:
            base.pad_token_id = tokenizer.pad_token_id
        if base.eos_token_id is None:
            base.eos_token_id = tokenizer.eos_token_id
        self.generation_config = base
        self.logits_processors = list(logits_processors)
        self.stop_strings = tuple(stop_strings) if stop_strings else ()
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids) if eos_token_ids else ()
        self.sampling = sampling
        self.capabilities = capabilities
        self.collective = generate_is_synchronised(model)

    def generate(
        self,
        contexts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        sampling: SamplingChange | None = None,
    ) -> list[tuple[list[int], list[float]]]:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        if not contexts:
            if self.collective:
                self._join_synchronised_generate()
            return []
        sampling = sampling if sampling is not None else self.sampling
        if sampling is not None and self.do_sample:
            warpers = [sampling.logits_processor(self.settings)]
        else:
            warpers = self.warpers
        pad_id = self.generation_config.pad_token_id
        width = max(len(ids) for ids in contexts)
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in contexts], dtype=torch.long)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in contexts])
        device = next(self.model.parameters()).device
        config = copy.copy(self.generation_config)
        config.max_new_tokens = int(max_new_tokens)
        recorder = _SamplingLogprobRecorder()
        stopping = [StopOnStrings(self.tokenizer, width, self.stop_strings)] if self.stop_strings else []
        with torch.no_grad():
            sequences = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
                logits_processor=LogitsProcessorList([*self.logits_processors, *warpers, recorder]),
                stopping_criteria=StoppingCriteriaList(stopping),
            )
        new_tokens = sequences[:, width:].cpu()
        logprobs = recorder.finish(new_tokens[:, -1]) if new_tokens.shape[1] else torch.zeros(len(contexts), 0)
        steps = min(new_tokens.shape[1], logprobs.shape[1])
        results = []
        for i in range(len(contexts)):
            ids, lps = new_tokens[i, :steps].tolist(), logprobs[i, :steps].tolist()
            end = next((k + 1 for k, token in enumerate(ids) if token in self.eos_token_ids), len(ids))
            results.append((ids[:end], lps[:end]))
        return results

    def _join_synchronised_generate(self) -> None:
        """One greedy token for one dummy row: under ``synced_gpus`` this ``generate`` keeps running forward passes
        (and the per-step all-reduce) until every process's ``generate`` of this call has finished."""
        token = self.generation_config.pad_token_id
        if token is None:
            token = self.generation_config.eos_token_id
        if isinstance(token, (list, tuple)):
            token = token[0]
        config = copy.copy(self.generation_config)
        config.do_sample = False  # draws no random numbers, so this process's sampling stream is untouched
        config.max_new_tokens = 1
        device = next(self.model.parameters()).device
        with torch.no_grad():
            self.model.generate(
                input_ids=torch.tensor([[int(token)]], dtype=torch.long, device=device),
                attention_mask=torch.ones(1, 1, dtype=torch.long, device=device),
                generation_config=config,
            )
