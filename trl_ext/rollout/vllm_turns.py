"""A :class:`~trl_ext.rollout.search_agent.TurnGenerator` that samples each turn with the trainer's vLLM engine.

CalibAdv's multi-turn search rollout (:class:`~trl_ext.rollout.search_agent.SearchAgentRollout`) picks it when the
trainer runs with ``use_vllm=True``. TRL pushes the current weights into the engine before it calls the rollout, so
every turn samples from the current policy. Per turn, one request per active trajectory (its prompt + completion so
far as token ids) with TRL's own sampling settings (temperature, top-p, top-k, min-p, repetition penalty, and the
config's ``generation_kwargs``), ``max_tokens`` = the turn budget, the stop strings with
``include_stop_str_in_output=True``, and ``logprobs=0``: the sampled tokens come back with their log-probs under the
final sampling distribution (TRL's engines use ``logprobs_mode="processed_logprobs"``), which is what the rollout
records and what TRL's importance-sampling correction needs.

Engines:

* **colocate** (``trainer.vllm_generation.llm``): each process generates its own contexts. With
  ``vllm_tensor_parallel_size > 1`` the processes of a tensor-parallel group gather their contexts, generate them
  together (a collective) and keep their share.
* **server** (``trainer.vllm_generation.vllm_client``, main process only): every process's contexts are gathered,
  the main process sends them in one request, and the results are broadcast back (collectives).

In the collective cases :attr:`VLLMTurnGenerator.collective` is ``True``: the rollout must call the generator the same
number of times on every process, with an empty context list on a process that has no active trajectory left (the
generator still takes part in the gathers and returns ``[]``). Unlike TRL's single-turn path, the gathers here allow
different numbers of contexts per process.

This module does not import vLLM at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["VLLMTurnGenerator"]


def _sampled_logprob(step: Any, token: int) -> float:
    """The log-prob of ``token`` in one step of vLLM's per-token logprob dicts ({token: Logprob})."""
    entry = step[token]
    return float(getattr(entry, "logprob", entry))


class VLLMTurnGenerator:
    """Samples one turn per context with a TRL ``VLLMGeneration`` (colocate or server mode).

    Args:
        vllm_generation: the trainer's ``trainer.vllm_generation`` (TRL's ``VLLMGeneration``): its engine
            (``llm`` or ``vllm_client``), mode, tensor-parallel group and sampling settings are used.
        accelerator: the trainer's accelerator (process index and the gathers of server mode).
        stop_strings: strings that end a turn (kept in the output).

    Attributes:
        collective: whether a call is a collective over processes (server mode, colocate with tensor parallelism).
        calls: how many turns this generator sampled (engine requests made; tests read it).
    """

    def __init__(self, vllm_generation: Any, accelerator: Any, stop_strings: Sequence[str] | None = None) -> None:
        from trl_ext.rollout.search_agent import STOP_STRINGS

        self.vllm_generation = vllm_generation
        self.accelerator = accelerator
        self.mode = vllm_generation.mode
        if self.mode not in ("colocate", "server"):
            raise ValueError(f"unknown vLLM mode {self.mode!r}")
        self.tensor_parallel_size = int(getattr(vllm_generation, "tensor_parallel_size", 1) or 1)
        self.collective = self.mode == "server" or self.tensor_parallel_size > 1
        self.stop_strings = list(STOP_STRINGS if stop_strings is None else stop_strings)
        self.calls = 0

    @classmethod
    def from_trainer(cls, trainer: Any, stop_strings: Sequence[str] | None = None) -> VLLMTurnGenerator:
        """The generator for a ``trl.GRPOTrainer`` built with ``use_vllm=True``."""
        generation = getattr(trainer, "vllm_generation", None)
        if generation is None:
            raise ValueError("the trainer has no vLLM engine (trainer.vllm_generation); was it built with use_vllm?")
        return cls(generation, trainer.accelerator, stop_strings)

    def sampling_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        """TRL's sampling settings for one turn, as ``SamplingParams`` keyword arguments."""
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
        # The turn protocol's own settings win over generation_kwargs: the rollout needs them.
        kwargs.update(
            n=1,
            max_tokens=int(max_new_tokens),
            logprobs=0,
            stop=list(self.stop_strings),
            include_stop_str_in_output=True,
        )
        return kwargs

    def __call__(
        self, contexts: list[list[int]], max_new_tokens: int, rows: list[int] | None = None, turn: int | None = None
    ) -> list[tuple[list[int], list[float]]]:
        """Sample one turn for each context; returns (token ids, sampling log-probs) per context."""
        if self.mode == "server":
            return self._server(contexts, max_new_tokens)
        if self.tensor_parallel_size > 1:
            return self._colocate_tensor_parallel(contexts, max_new_tokens)
        if not contexts:
            return []
        return self._colocate(contexts, max_new_tokens)

    # ------------------------------------------------------------------------------------------------------------
    def _colocate(self, contexts: list[list[int]], max_new_tokens: int) -> list[tuple[list[int], list[float]]]:
        from vllm import SamplingParams

        generation = self.vllm_generation
        params = SamplingParams(**self.sampling_kwargs(max_new_tokens))
        if getattr(generation, "enable_sleep_mode", False):
            # TRL woke the weights for its sync; the KV cache is needed too and stays up for the following turns.
            generation.llm.wake_up(tags=["kv_cache"])
        outputs = generation.llm.generate(
            [{"prompt_token_ids": list(ids)} for ids in contexts], sampling_params=params, use_tqdm=False
        )
        self.calls += 1
        results = []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            if completion.logprobs is None:
                raise RuntimeError("vLLM returned no log-probs for a turn (logprobs=0 was requested)")
            logprobs = [_sampled_logprob(step, token) for step, token in zip(completion.logprobs, ids, strict=True)]
            results.append((ids, logprobs))
        return results

    def _colocate_tensor_parallel(
        self, contexts: list[list[int]], max_new_tokens: int
    ) -> list[tuple[list[int], list[float]]]:
        import torch.distributed as dist

        group = self.vllm_generation.tp_group
        gathered: list[Any] = [None] * self.tensor_parallel_size
        dist.all_gather_object(gathered, (list(contexts), int(max_new_tokens)), group=group)
        everything = [ids for part, _ in gathered for ids in part]
        budget = max(limit for _, limit in gathered)
        # Every rank of the group takes the same decision: the engine call is a collective over the group.
        results = self._colocate(everything, budget) if everything else []
        rank = dist.get_rank(group=group)
        start = sum(len(part) for part, _ in gathered[:rank])
        return results[start : start + len(contexts)]

    def _server(self, contexts: list[list[int]], max_new_tokens: int) -> list[tuple[list[int], list[float]]]:
        from accelerate.utils import broadcast_object_list, gather_object

        accelerator = self.accelerator
        gathered = gather_object([(list(contexts), int(max_new_tokens))])
        everything = [ids for part, _ in gathered for ids in part]
        payload: Any = None
        if accelerator.is_main_process and everything:
            budget = max(limit for _, limit in gathered)
            kwargs = self.sampling_kwargs(budget)
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


# Keyword arguments VLLMClient.generate takes by name; everything else goes into its generation_kwargs.
_CLIENT_ARGUMENTS = ("n", "repetition_penalty", "temperature", "top_p", "top_k", "min_p", "max_tokens", "logprobs")
