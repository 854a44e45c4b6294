"""Shared fixtures: an offline tiny checkpoint and a deterministic toy dataset and rewards."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """Path of a tiny randomly initialised Qwen2 + char tokenizer, built once per test session."""
    from trl_ext.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny-qwen2")))


@pytest.fixture(scope="session")
def toy_dataset():
    """Sixteen short plain-text prompts with an ``id`` column."""
    from datasets import Dataset

    prompts = [f"{a}+{b}=" for a in range(4) for b in range(4)]
    return Dataset.from_dict({"prompt": prompts, "id": [f"p{i}" for i in range(len(prompts))]})


def length_reward(completions, **kwargs):
    """Deterministic reward with spread on random completions: completion length mod 4, scaled to [0, 1]."""
    return [(len(c) % 4) / 3 for c in completions]


def digit_reward(completions, **kwargs):
    """Second reward with gaps: 1 if the completion holds a digit, None (unscorable) if it is empty."""
    return [None if len(c) == 0 else float(any(ch.isdigit() for ch in c)) for c in completions]
