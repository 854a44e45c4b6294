"""Generation backends: the seam between what a method changes about sampling and what samples.

Backends: transformers ``generate`` (:class:`~trl_ext.generation.transformers_generate.TransformersBackend`), vLLM
colocated and vLLM server (:class:`~trl_ext.generation.vllm_engine.VLLMBackend`). This module is the one place in
trl-ext that reads which backend a config asks for (``use_vllm``, ``vllm_mode``,
``use_transformers_continuous_batching``): :func:`capabilities_of` answers what it can do from the config alone (for
checks before a model loads), :func:`open_backend` opens the trainer's backend for a rollout. A method states its
change once, as a :class:`~trl_ext.generation.base.SamplingChange` (how tokens are drawn) or a rollout that calls a
backend turn by turn (how many turns), and works on every backend. See ``docs/extending.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from trl_ext.generation.base import Capabilities, GenerationBackend, SamplingChange, SamplingSettings

__all__ = [
    "Capabilities",
    "GenerationBackend",
    "SamplingChange",
    "SamplingSettings",
    "capabilities_of",
    "open_backend",
]


def capabilities_of(args: Any, rollout_func: Any = None) -> Capabilities:
    """What the generation backend that ``args`` (a ``GRPOConfig``) selects can do.

    With a ``rollout_func``, TRL's batch carries whatever log-probs the rollout returns, so ``sampling_logprobs``
    is True (TRL requires the key).
    """
    from trl_ext.generation.transformers_generate import CONTINUOUS_BATCHING, TRANSFORMERS
    from trl_ext.generation.vllm_engine import VLLM_COLOCATE, VLLM_SERVER

    if bool(getattr(args, "use_vllm", False)):
        mode = getattr(args, "vllm_mode", "colocate")
        if mode not in ("colocate", "server"):
            raise ValueError(f"vllm_mode must be 'colocate' or 'server', got {mode!r}")
        capabilities = VLLM_SERVER if mode == "server" else VLLM_COLOCATE
    elif bool(getattr(args, "use_transformers_continuous_batching", False)):
        capabilities = CONTINUOUS_BATCHING
    else:
        capabilities = TRANSFORMERS
    if rollout_func is not None and not capabilities.sampling_logprobs:
        capabilities = Capabilities(
            capabilities.name, True, capabilities.sampling_changes, capabilities.samples_in_process
        )
    return capabilities


@contextlib.contextmanager
def open_backend(
    trainer: Any,
    *,
    stop_strings: Sequence[str] | None = None,
    sampling: SamplingChange | None = None,
    logits_processors: Sequence[Any] = (),
) -> Iterator[GenerationBackend]:
    """The trainer's generation backend, ready to sample with the current policy for the duration of the block.

    transformers: the model unwrapped for generation (ZeRO-3 parameters gathered, FSDP parameters summoned) with TRL's
    generation config; continuous batching generates through ``generate`` here, which cannot apply a sampling change
    (refused). vLLM: the training weights pushed into the engine if the step changed or sleep mode discarded them (as
    TRL does before it samples), and a colocated engine in sleep mode put back to sleep after the block (as TRL does
    after it samples).

    Args:
        trainer: a ``trl.GRPOTrainer``.
        stop_strings: strings that end a row (kept in its output).
        sampling: a change every call of the session applies (``generate`` may pass another).
        logits_processors: extra transformers processors (transformers only; refused on vLLM, which cannot run them).
    """
    from trl_ext import compat

    capabilities = capabilities_of(trainer.args)
    tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
    eos_token_ids = compat.trainer_attr(trainer, "eos_token_ids", None)
    if eos_token_ids is None and getattr(tokenizer, "eos_token_id", None) is not None:
        eos_token_ids = [tokenizer.eos_token_id]
    if sampling is not None and not capabilities.sampling_changes:
        raise ValueError(
            f"the {capabilities.name} backend cannot apply a sampling change ({type(sampling).__name__}): "
            "transformers' generate_batch takes no logits processor; set use_transformers_continuous_batching=False"
        )
    if bool(getattr(trainer.args, "use_vllm", False)):
        from trl_ext.generation.vllm_engine import VLLMBackend

        if logits_processors:
            raise ValueError(
                "logits_processors are transformers processors and cannot run inside vLLM; drop them or set "
                "use_vllm=False"
            )
        if compat.trainer_attr(trainer, "vllm_generation", None) is None:
            raise ValueError("the trainer has no vLLM engine (trainer.vllm_generation); was it built with use_vllm?")
        with compat.vllm_generation_session(trainer) as generation:  # weights in; asleep again after, in sleep mode
            yield VLLMBackend(generation, trainer.accelerator, stop_strings=stop_strings, sampling=sampling)
        return
    from trl_ext.generation.transformers_generate import TransformersBackend

    with compat.unwrapped_for_generation(trainer) as model:
        yield TransformersBackend(
            model,
            tokenizer,
            compat.trainer_attr(trainer, "generation_config", None),
            logits_processors=logits_processors,
            stop_strings=stop_strings,
            eos_token_ids=eos_token_ids,
            sampling=sampling,
            capabilities=capabilities,
        )
