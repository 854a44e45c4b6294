"""The vLLM backends: TRL's colocated engine and a vLLM server (through TRL's ``VLLMGeneration``).

Per call, one request per context (its token ids) with TRL's own sampling settings (temperature, top-p, top-k, min-p,
repetition penalty, and the config's ``generation_kwargs``), ``max_tokens`` = the call's budget and ``logprobs=0``:
the sampled tokens come back with their log-probs under the final sampling distribution (TRL builds its engines with
``logprobs_mode="processed_logprobs"``; a server started by ``trl vllm-serve`` does the same). Stop strings, when
given, end a row and are kept in its output.

A :class:`~trl_ext.generation.base.SamplingChange` travels with every request as its ``vllm_extra_args()``: in
``SamplingParams.extra_args`` (colocate) or in the request body's ``vllm_xargs`` (server; vLLM copies them into
``extra_args``). The engine applies them through a logits processor it has loaded: trl-ext declares HAPO's under
vLLM's ``vllm.logits_processors`` entry-point group, so every vLLM engine in an environment with trl-ext installed
loads it, colocated or server, and leaves requests without those arguments untouched.

Engines:

* **colocate** (``vllm_generation.llm``): each process generates its own contexts. With
  ``vllm_tensor_parallel_size > 1`` the processes of a tensor-parallel group gather their contexts, generate them
  together (a collective) and keep their share.
* **server** (``vllm_generation.vllm_client``, main process only): every process's contexts are gathered, the main
  process sends them in one request, and the results are broadcast back (collectives). Processes may hold different
  numbers of contexts (unlike TRL's single-turn path).

In the collective cases :attr:`VLLMBackend.collective` is ``True``. This module does not import vLLM at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trl_ext.generation.base import BackendTurns, Capabilities, SamplingChange, SamplingSettings

__all__ = ["VLLM_COLOCATE", "VLLM_SERVER", "VLLMBackend"]

VLLM_COLOCATE = Capabilities("vllm-colocate", sampling_logprobs=True, sampling_changes=True, samples_in_process=True)
VLLM_SERVER = Capabilities("vllm-server", sampling_logprobs=True, sampling_changes=True, samples_in_process=False)

# Keyword arguments VLLMClient.generate takes by name; everything else goes into its generation_kwargs.
_CLIENT_ARGUMENTS = ("n", "repetition_penalty", "temperature", "top_p", "top_k", "min_p", "max_tokens", "logprobs")


def _sampled_logprob(step: Any, token: int) -> float:
    """The log-prob of ``token`` in one step of vLLM's per-token logprob dicts ({token: Logprob})."""
    entry = step[token]
    return float(getattr(entry, "logprob", entry))


class VLLMBackend(BackendTurns):
    """Samples with a TRL ``VLLMGeneration`` (colocate or server mode).

    Args:
        vllm_generation: the trainer's ``VLLMGeneration``: its engine (``llm`` or ``vllm_client``), mode,
            tensor-parallel group and sampling settings are used.
        accelerator: the trainer's accelerator (process index and the gathers of server mode).
        stop_strings: strings that end a row (kept in the output); none by default.
        sampling: the session's :class:`SamplingChange` (used by ``__call__`` and by ``generate`` without one).

    Attributes:
        collective: whether a call is a collective over processes (server mode, colocate with tensor parallelism).
        calls: how many engine requests this backend made (tests read it).
    """

    def __init__(
        self,
        vllm_generation: Any,
        accelerator: Any,
        stop_strings: Sequence[str] | None = None,
        sampling: SamplingChange | None = None,
    ) -> None:
        if vllm_generation is None:
            raise ValueError("the trainer has no vLLM engine (trainer.vllm_generation); was it built with use_vllm?")
        self.vllm_generation = vllm_generation
        self.accelerator = accelerator
        self.mode = vllm_generation.mode
        if self.mode not in ("colocate", "server"):
            raise ValueError(f"unknown vLLM mode {self.mode!r}")
        self.capabilities = VLLM_SERVER if self.mode == "server" else VLLM_COLOCATE
        self.tensor_parallel_size = int(getattr(vllm_generation, "tensor_parallel_size", 1) or 1)
        self.collective = self.mode == "server" or self.tensor_parallel_size > 1
        self.stop_strings = list(stop_strings or ())
        self.sampling = sampling
        self.calls = 0

    @property
    def settings(self) -> SamplingSettings:
        """TRL's sampling settings of the engine."""
        generation = self.vllm_generation
        return SamplingSettings(
            temperature=generation.temperature,
            top_k=generation.top_k,
            top_p=generation.top_p,
            min_p=generation.min_p,
            repetition_penalty=generation.repetition_penalty,
        )

    def sampling_kwargs(self, max_new_tokens: int, sampling: SamplingChange | None = None) -> dict[str, Any]:
        """TRL's sampling settings for one call, as ``SamplingParams`` keyword arguments."""
        generation = self.vllm_generation
        kwargs: dict[str, Any] = {
            "n": 1,
            "repetition_penalty": generation.repetition_penalty,
            "temperature": generation.temperature,
            "top_p": generation.top_p,
            "top_k": generation.top_k,
            "min_p": 0.0 if generation.min_p is None else generation.min_p,
            "max_tokens": int(max_new_tokens),
            "logprobs": 0,
        }
        kwargs.update(generation.generation_kwargs or {})
        # The backend's own settings win over generation_kwargs: one sample per request with its log-probs.
        kwargs.update(n=1, max_tokens=int(max_new_tokens), logprobs=0)
        if self.stop_strings:
            kwargs.update(stop=list(self.stop_strings), include_stop_str_in_output=True)
        if sampling is not None:
            key = "vllm_xargs" if self.mode == "server" else "extra_args"
            kwargs[key] = {**(kwargs.get(key) or {}), **sampling.vllm_extra_args()}
        return kwargs

    def generate(
        self,
        contexts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        sampling: SamplingChange | None = None,
    ) -> list[tuple[list[int], list[float]]]:
        """Sample for each context; returns (token ids, sampling log-probs) per context."""
        sampling = sampling if sampling is not None else self.sampling
        contexts = [list(ids) for ids in contexts]
        if self.mode == "server":
            return self._server(contexts, max_new_tokens, sampling)
        if self.tensor_parallel_size > 1:
            return self._colocate_tensor_parallel(contexts, max_new_tokens, sampling)
        if not contexts:
            return []
        return self._colocate(contexts, max_new_tokens, sampling)

    # ------------------------------------------------------------------------------------------------------------
    def _colocate(
        self, contexts: list[list[int]], max_new_tokens: int, sampling: SamplingChange | None
    ) -> list[tuple[list[int], list[float]]]:
        from vllm import SamplingParams

        generation = self.vllm_generation
        params = SamplingParams(**self.sampling_kwargs(max_new_tokens, sampling))
        if getattr(generation, "enable_sleep_mode", False):
            # TRL woke the weights for its sync; the KV cache is needed too.
            generation.llm.wake_up(tags=["kv_cache"])
        outputs = generation.llm.generate(
            [{"prompt_token_ids": ids} for ids in contexts], sampling_params=params, use_tqdm=False
        )
        self.calls += 1
        results = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            if completion.logprobs is None:
                raise RuntimeError("vLLM returned no log-probs (logprobs=0 was requested)")
            logprobs = [_sampled_logprob(step, token) for step, token in zip(completion.logprobs, ids, strict=True)]
            results.append((ids, logprobs))
        return results

    def _colocate_tensor_parallel(
        self, contexts: list[list[int]], max_new_tokens: int, sampling: SamplingChange | None
    ) -> list[tuple[list[int], list[float]]]:
        import torch.distributed as dist

        group = self.vllm_generation.tp_group
        gathered: list[Any] = [None] * self.tensor_parallel_size
        dist.all_gather_object(gathered, (contexts, int(max_new_tokens)), group=group)
        everything = [ids for part, _ in gathered for ids in part]
        budget = max(limit for _, limit in gathered)
        # Every rank of the group takes the same decision: the engine call is a collective over the group.
        results = self._colocate(everything, budget, sampling) if everything else []
        rank = dist.get_rank(group=group)
        start = sum(len(part) for part, _ in gathered[:rank])
        return results[start : start + len(contexts)]

    def _server(
        self, contexts: list[list[int]], max_new_tokens: int, sampling: SamplingChange | None
    ) -> list[tuple[list[int], list[float]]]:
        from accelerate.utils import broadcast_object_list, gather_object

        accelerator = self.accelerator
        gathered = gather_object([(contexts, int(max_new_tokens))])
        everything = [ids for part, _ in gathered for ids in part]
        payload: Any = None
        if accelerator.is_main_process and everything:
            budget = max(limit for _, limit in gathered)
            kwargs = self.sampling_kwargs(budget, sampling)
            client_kwargs = {key: kwargs.pop(key) for key in list(kwargs) if key in _CLIENT_ARGUMENTS}
            output = self.vllm_generation.vllm_client.generate(
                prompts=everything, **client_kwargs, generation_kwargs=kwargs
            )
            payload = []
            for ids, steps in zip(output["completion_ids"], output["logprobs"], strict=True):
                # logprobs=0: one entry per step, the sampled token's
                payload.append((list(ids), [float(step[0]) for step in steps]))
            self.calls += 1
        box = [payload]
        broadcast_object_list(box, from_process=0)
        results = box[0] or []
        start = sum(len(part) for part, _ in gathered[: accelerator.process_index])
        return results[start : start + len(contexts)]
