"""Shared pieces of the vLLM lane scripts: an offline tiny checkpoint vLLM's CPU backend accepts, and the colocated
engine settings TRL uses.

vLLM's CPU attention rejects the default tiny model's head size (16), so these checkpoints use 2 heads of 32 over a
width of 64. ``sharpened=True`` rescales the random weights so that next-token distributions have a wide spread of
entropies (the default initialisation gives nearly uniform ones, which would make temperature checks vacuous).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # vllm_shims, calibadv_helpers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_vllm_checkpoint(directory: str, *, alphabet: str | None = None, sharpened: bool = False) -> str:
    """A tiny Qwen2 (head size 32, 4096 positions) + char tokenizer in ``directory``; reused if already built."""
    import torch
    from transformers import AutoModelForCausalLM

    from trl_ext.tiny_models import DEFAULT_ALPHABET, build_tiny_checkpoint

    base = os.path.join(directory, "base")
    path = build_tiny_checkpoint(
        base, alphabet=alphabet or DEFAULT_ALPHABET, num_heads=2, num_kv_heads=1, max_position_embeddings=4096
    )
    if not sharpened:
        return path
    target = os.path.join(directory, "sharpened")
    if os.path.exists(os.path.join(target, "done")):
        return target
    model = AutoModelForCausalLM.from_pretrained(path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:  # wider weights: logits of a few units, entropies spread over a wide range
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(target)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(path).save_pretrained(target)
    Path(target, "done").write_text("1")
    return target


def colocated_llm(path: str, logits_processors: list[str] | None = None, port: int = 29611):
    """``vllm.LLM`` built as TRL 1.16's colocate mode builds it (one process), float32 so that comparisons with the
    transformers model are at float tolerance."""
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from vllm import LLM

    return LLM(
        model=path,
        dtype="float32",
        max_model_len=4096,
        max_num_seqs=32,
        distributed_executor_backend="external_launcher",
        seed=0,
        max_num_batched_tokens=4096,
        logprobs_mode="processed_logprobs",
        gpu_memory_utilization=0.3,
        logits_processors=logits_processors or [],
    )
