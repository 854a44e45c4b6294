"""Shared fixtures: an offline tiny checkpoint and a deterministic toy dataset and rewards."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# TRL 1.15 without Triton: a pure-torch chunked log-prob function, here and in every subprocess the tests start
# (tests/trl_compat/trl_compat_shims.py says when it acts; on any other TRL nothing happens).
_TRL_COMPAT = Path(__file__).resolve().parent / "trl_compat"
sys.path.insert(0, str(_TRL_COMPAT))
import trl_compat_shims  # noqa: E402

if trl_compat_shims.install():
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_TRL_COMPAT), os.environ.get("PYTHONPATH")]))

#: The installed TRL is a 1.15.x release (the older minor of the supported window; .ci/lane_trl.sh runs it).
TRL_1_15 = trl_compat_shims.trl_is_1_15()

#: Why a vision-language run fails under TRL 1.15 only: its transformers generation does not suppress the image token,
#: so the tiny random VLM samples it and the next forward finds more image tokens than image features (ValueError
#: "Image features and image tokens do not match"); TRL 1.16 passes ``suppress_tokens=[image_token_id]``.
TRL_1_15_SAMPLES_IMAGE_TOKENS = "TRL 1.15 lets generate() sample the image token (1.16 suppresses it)"


def xfail_on_trl_1_15(reason: str, **kwargs):
    """Expected failure under TRL 1.15 only, for a TRL 1.16 behaviour the test relies on; strict, so that a fix shows."""
    return pytest.mark.xfail(condition=TRL_1_15, reason=reason, strict=True, **kwargs)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """Path of a tiny randomly initialised Qwen2 + char tokenizer, built once per test session."""
    from trl_ext.tiny_models import build_tiny_checkpoint

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


@pytest.fixture(scope="session")
def tiny_vlm_checkpoint(tmp_path_factory) -> str:
    """Path of a tiny randomly initialised vision-language model (LLaVA) + processor, built once per test session."""
    from trl_ext.tiny_models import build_tiny_vlm_checkpoint

    return build_tiny_vlm_checkpoint(str(tmp_path_factory.mktemp("tiny-vlm")))


#: Colours of `make_image_dataset`, one per prompt.
IMAGE_COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 230), "yellow": (240, 220, 10)}


def make_image_dataset(num_prompts: int = 4):
    """Conversational ``prompt`` + PIL ``image`` + ``answer`` rows: plain-colour images from 28x28 up to 56x52 pixels.

    Sizes and modes vary (RGB, and a greyscale and an RGBA image from the fourth row on) so that the processor has to
    resize, crop and convert.
    """
    from datasets import Dataset
    from PIL import Image

    names = list(IMAGE_COLOURS)
    rows = {"prompt": [], "image": [], "answer": []}
    for i in range(num_prompts):
        name = names[i % len(names)]
        image = Image.new("RGB", (28 + 4 * (i % 8), 28 + 8 * (i % 4)), IMAGE_COLOURS[name])
        if i % 4 == 2:
            image = image.convert("L")
        elif i % 4 == 3:
            image = image.convert("RGBA")
        rows["prompt"].append([{"role": "user", "content": "what colour?"}])
        rows["image"].append(image)
        rows["answer"].append(name)
    return Dataset.from_dict(rows)


@pytest.fixture(scope="session")
def toy_image_dataset():
    """Four conversational prompts, each with one small image (see `make_image_dataset`)."""
    return make_image_dataset(4)


def char_sum_reward(completions, **kwargs):
    """Deterministic reward with spread on random (conversational or plain) completions: character-code sum mod 7."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [(sum(map(ord, text)) % 7) / 6 for text in texts]
