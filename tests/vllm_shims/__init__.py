"""Test-only shim: TRL's colocated vLLM weight sync, made to work when vLLM runs on the CPU platform.

Why it exists: TRL 1.16's colocate mode pushes the training weights into the engine with
``model_runner.model.load_weights([(name, tensor)])``, one tensor at a time. On vLLM's CPU platform the linear layers'
weights are repacked into kernel layouts after loading (the ``Parameter`` objects left behind are empty and have no
``weight_loader``), so the first sync fails with ``'Parameter' object has no attribute 'weight_loader'``. On a GPU the
original path works and this shim is never active.

What it does: :func:`install` replaces ``VLLMGeneration.sync_weights`` for colocate mode, **only when vLLM's current
platform is the CPU**, with vLLM's own in-place reload (``model_runner.reload_weights(weights_iterator=...)``), which
restores the checkpoint layout, loads every tensor and repacks. A tied ``lm_head`` is not part of the weights TRL
sends (transformers yields a tied tensor once, as the input embedding): it is re-tied to the reloaded embedding and
its packed copy for the logits GEMM is rebuilt. Server mode and GPU platforms keep TRL's method. The tests use it through ``tests/scripts/vllm_*.py``;
nothing in ``trl_ext`` imports it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["install", "is_cpu_platform", "retie_lm_head"]

_INSTALLED = False


def is_cpu_platform() -> bool:
    """Whether vLLM's current platform is the CPU (the only case the shim changes anything)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def _sync_weights_cpu(self: Any, original: Any) -> None:
    if self.mode != "colocate":
        return original(self)
    runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
    # Copies, taken while TRL's iterator yields them: with a PEFT model it merges the adapter into the base weights,
    # yields those very tensors and unmerges when exhausted, so references collected first would hold the base again.
    weights = [(name, tensor.detach().clone()) for name, tensor in self._iter_named_params()]
    runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
    retie_lm_head(runner.get_model())
    self.llm.reset_prefix_cache()


def retie_lm_head(model: Any) -> None:
    """After an in-place reload on the CPU platform: copy the reloaded embedding into a tied ``lm_head`` and repack it.

    The CPU logits GEMM reads a packed copy of the lm_head made at load time (the embedding's quant method keeps the
    weight and adds the copy); vLLM's layerwise reload does not revisit the tied head (its weight is never sent), so
    without this the engine would keep computing logits with the initial head. Also used by
    ``vllm_shims.gloo_transfer`` (server mode)."""
    import torch

    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    lm_head = getattr(model, "lm_head", None)
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    if tied and embed is not None and lm_head is not None:
        if lm_head.weight is not embed.weight:
            with torch.no_grad():
                lm_head.weight.copy_(embed.weight)
        method = getattr(lm_head, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(lm_head)


def install() -> bool:
    """Patch TRL's ``VLLMGeneration.sync_weights`` when vLLM runs on the CPU; returns whether it patched."""
    global _INSTALLED
    if _INSTALLED:
        return True
    if not is_cpu_platform():
        return False
    from trl.generation import vllm_generation

    original = vllm_generation.VLLMGeneration.sync_weights

    def sync_weights(self: Any) -> None:
        _sync_weights_cpu(self, original)

    sync_weights.__doc__ = "TRL's sync_weights, with vLLM's in-place reload in colocate mode (CPU test shim)."
    vllm_generation.VLLMGeneration.sync_weights = sync_weights
    _INSTALLED = True
    return True
