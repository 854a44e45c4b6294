"""DIVA-GRPO's model family: a tiny Qwen2.5-VL and Qwen2-VL built offline, their processors built without torchvision,
and ``max_pixels`` bounding the patches of an image."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import IMAGE_COLOURS
from PIL import Image

from trl_ext.processors import load_processor, pixel_limits, set_pixel_limits
from trl_ext.tiny_models import IMAGE_TOKEN, QWEN_VL_FAMILIES, QWEN_VL_PIXEL_LIMITS, build_tiny_qwen_vl_checkpoint

PATCH = 14  # the family's patch size; 2x2 patches merge into one image token
MAX_PIXELS = 28 * 28 * 4  # at most 16 patches (4 image tokens) per image
MIN_PIXELS = 28 * 28
MAX_PATCHES = MAX_PIXELS // PATCH**2
DEFAULT_LIMITS = QWEN_VL_PIXEL_LIMITS  # the tiny checkpoint's, as on the Hub: up to 12.8M pixels


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    """``qwen_checkpoint(family)``: the path of a tiny checkpoint of that family, built once per module."""
    paths: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in paths:
            paths[family] = build_tiny_qwen_vl_checkpoint(tmp_path_factory.mktemp(family), family=family)
        return paths[family]

    return get


def _messages(image, text="what colour?"):
    return [[{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]]


def _encode(processor, image):
    return processor.apply_chat_template(
        _messages(image), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def _image_tokens(processor, input_ids) -> int:
    return int((input_ids == processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)).sum())


# ----------------------------------------------------------------------------------------------------------------
# The checkpoint and its processor
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(QWEN_VL_FAMILIES))
def test_checkpoint_loads_without_torchvision_and_sees_images(family, qwen_checkpoint):
    import transformers
    from transformers import AutoModelForImageTextToText

    path = qwen_checkpoint(family)
    model_name, _, processor_name = QWEN_VL_FAMILIES[family]
    # An ordinary checkpoint of the family: the processor saves under the family's class name.
    assert json.loads((Path(path) / "processor_config.json").read_text())["processor_class"] == processor_name
    processor = load_processor(path)
    assert isinstance(processor, getattr(transformers, processor_name))
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert pixel_limits(processor) == DEFAULT_LIMITS
    assert (processor.tokenizer.padding_side, processor.tokenizer.truncation_side) == ("left", "left")
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert type(model).__name__ == model_name
    assert 5e4 < sum(p.numel() for p in model.parameters()) < 1e6

    # 56x56 pixels: 4x4 patches of 14 (image_grid_thw = 1, 4, 4), merged 2x2 into 4 image tokens.
    red = _encode(processor, Image.new("RGB", (56, 56), IMAGE_COLOURS["red"]))
    assert red["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert red["pixel_values"].shape == (16, 3 * 2 * PATCH * PATCH)  # RGB x 2 frames (a still image repeated)
    assert _image_tokens(processor, red["input_ids"]) == 4
    # Smaller images are enlarged to min_pixels (56 * 56): a 28x28 image gets the same grid.
    small = _encode(processor, Image.new("RGB", (28, 28), IMAGE_COLOURS["red"]))
    assert small["image_grid_thw"].tolist() == [[1, 4, 4]]
    blue = _encode(processor, Image.new("RGB", (56, 56), IMAGE_COLOURS["blue"]))
    with torch.no_grad():
        red_logits, blue_logits = model(**red).logits, model(**blue).logits
    assert torch.isfinite(red_logits).all() and torch.isfinite(blue_logits).all()
    assert not torch.allclose(red_logits[0, -1], blue_logits[0, -1])  # the image reaches the language model

    with pytest.raises(ValueError, match="video"):
        processor(text=["x"], videos=[[Image.new("RGB", (28, 28))] * 2])
    # The class is built on first use, yet found by name (as pickle, e.g. a DataLoader worker, looks it up).
    copy = pickle.loads(pickle.dumps(processor))
    assert type(copy) is type(processor) and pixel_limits(copy) == DEFAULT_LIMITS


def test_max_pixels_bounds_the_patches_of_an_image(qwen_checkpoint):
    path = qwen_checkpoint("qwen2_5_vl")
    large = Image.new("RGB", (200, 150), IMAGE_COLOURS["green"])
    unlimited = _encode(load_processor(path), large)
    limited_processor = load_processor(path, max_pixels=MAX_PIXELS, min_pixels=MIN_PIXELS)
    assert pixel_limits(limited_processor) == (MIN_PIXELS, MAX_PIXELS)
    limited = _encode(limited_processor, large)
    # Without the limit this image has more patches than MAX_PIXELS allows, so the bound below can fail.
    assert int(unlimited["image_grid_thw"].prod()) > MAX_PATCHES
    patches = int(limited["image_grid_thw"].prod())
    assert 0 < patches <= MAX_PATCHES
    assert limited["pixel_values"].shape[0] == patches
    assert _image_tokens(limited_processor, limited["input_ids"]) == patches // 4

    # set_pixel_limits changes a processor in place; None keeps a limit.
    processor = load_processor(path)
    assert set_pixel_limits(processor, max_pixels=MAX_PIXELS) is processor
    assert pixel_limits(processor) == (DEFAULT_LIMITS[0], MAX_PIXELS)


def test_pixel_limits_are_refused_when_invalid_or_inapplicable(tiny_vlm_checkpoint):
    for bad in ({"max_pixels": 0}, {"min_pixels": -1}, {"max_pixels": True}, {"max_pixels": 784, "min_pixels": 3136}):
        with pytest.raises(ValueError, match="pixels"):
            load_processor(tiny_vlm_checkpoint, **bad)
    # LLaVA's CLIP image processor crops to a fixed size: a pixel limit would be silently meaningless.
    with pytest.raises(ValueError, match="no pixel limits"):
        load_processor(tiny_vlm_checkpoint, max_pixels=MAX_PIXELS)
