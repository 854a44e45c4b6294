"""DIVA-GRPO on its paper's model family: a tiny Qwen2.5-VL and Qwen2-VL built offline, their processors built without
torchvision, ``max_pixels`` (from the config and from the paper recipe) reaching the image processor, and `diva`
(with its image variants) and `grpo` (the control) training within it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import IMAGE_COLOURS, TRL_1_15_SAMPLES_IMAGE_TOKENS, char_sum_reward, xfail_on_trl_1_15
from datasets import Dataset
from harness import config_kwargs, train_two_steps
from PIL import Image

from trl_ext import BaseGRPOConfig, get_trainer
from trl_ext.processors import load_processor, pixel_limits, set_pixel_limits
from trl_ext.tiny_models import IMAGE_TOKEN, QWEN_VL_FAMILIES, QWEN_VL_PIXEL_LIMITS, build_tiny_qwen_vl_checkpoint

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "diva" / "qwen2.5-vl-7b_mmk12.yaml"

PATCH = 14  # the family's patch size; 2x2 patches merge into one image token
MAX_PIXELS = 28 * 28 * 4  # at most 16 patches (4 image tokens) per image
MIN_PIXELS = 28 * 28
MAX_PATCHES = MAX_PIXELS // PATCH**2
DEFAULT_LIMITS = QWEN_VL_PIXEL_LIMITS  # the tiny checkpoint's, as on the Hub: up to 12.8M pixels

#: (width, height) of the training images: two within MAX_PIXELS, two over it (so the limit has to act).
IMAGE_SIZES = [(28, 28), (40, 36), (120, 90), (64, 150)]


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


def test_pixel_limits_are_refused_when_invalid_or_inapplicable(tiny_vlm_checkpoint, tmp_path):
    for bad in ({"max_pixels": 0}, {"min_pixels": -1}, {"max_pixels": True}, {"max_pixels": 784, "min_pixels": 3136}):
        with pytest.raises(ValueError, match="pixels"):
            load_processor(tiny_vlm_checkpoint, **bad)
        with pytest.raises(ValueError, match="pixels"):
            BaseGRPOConfig(**config_kwargs(tmp_path, **bad))
    # LLaVA's CLIP image processor crops to a fixed size: a pixel limit would be silently meaningless.
    with pytest.raises(ValueError, match="no pixel limits"):
        load_processor(tiny_vlm_checkpoint, max_pixels=MAX_PIXELS)


def test_vllm_generation_is_warned_that_its_processor_keeps_its_own_limits(qwen_checkpoint, caplog):
    from types import SimpleNamespace

    from trl_ext import BaseGRPOTrainer, compat

    path = qwen_checkpoint("qwen2_5_vl")
    bound = compat.grpo_trainer_arguments((), {"model": path})
    settings = dict(max_pixels=MAX_PIXELS, min_pixels=None, model_init_kwargs=None, trust_remote_code=False)
    for use_vllm in (False, True):
        caplog.clear()
        config = SimpleNamespace(use_vllm=use_vllm, vllm_mode="colocate", **settings)
        with caplog.at_level("WARNING", logger="trl_ext.trainers.base"):
            processor = BaseGRPOTrainer._processor_with_pixel_limits(bound, config)
        assert pixel_limits(processor) == (DEFAULT_LIMITS[0], MAX_PIXELS)
        assert ("not vLLM's" in caplog.text) == use_vllm


# ----------------------------------------------------------------------------------------------------------------
# The paper recipe's max_pixels reaches the processor
# ----------------------------------------------------------------------------------------------------------------
def test_recipe_max_pixels_reaches_the_processor(qwen_checkpoint, tmp_path):
    import yaml

    from trl_ext.training import make_train_parser, resolve_reward_funcs

    recipe_max_pixels = yaml.safe_load(RECIPE.read_text())["max_pixels"]
    assert recipe_max_pixels == 1024 * 1024  # the authors' cap
    # The recipe as written, made small enough to construct on a CPU (batch sizes, device, output directory; generation
    # with transformers, as vLLM is not in this lane).
    overrides = {
        "use_vllm": "false",
        "use_cpu": "true",
        "bf16": "false",
        "output_dir": str(tmp_path),
        "per_device_train_batch_size": "10",
        "steps_per_generation": "1",
        "gradient_accumulation_steps": "1",
    }
    argv = ["--config", str(RECIPE), *(item for key, value in overrides.items() for item in (f"--{key}", value))]
    script_args, training_args, _, _ = make_train_parser("diva").parse_args_and_config(argv)
    assert training_args.max_pixels == recipe_max_pixels
    trainer_cls, _ = get_trainer("diva")
    trainer = trainer_cls(
        model=qwen_checkpoint("qwen2_5_vl"),
        reward_funcs=resolve_reward_funcs(script_args, None),  # constructed only: the rewards are never called
        args=training_args,
        train_dataset=_image_dataset(),
    )
    processor = trainer.processing_class
    assert pixel_limits(processor) == (DEFAULT_LIMITS[0], recipe_max_pixels)
    # 1400x1000 = 1.4M pixels: over the recipe's cap, under the checkpoint's own (12.8M pixels); so it is resized to
    # at most recipe_max_pixels / 14**2 patches only if the recipe's value reached the processor.
    grid = _encode(processor, Image.new("RGB", (1400, 1000), IMAGE_COLOURS["red"]))["image_grid_thw"]
    assert 1400 * 1000 > recipe_max_pixels
    assert int(grid.prod()) <= recipe_max_pixels // PATCH**2


# ----------------------------------------------------------------------------------------------------------------
# diva (with image variants) and grpo (the control) train within max_pixels
# ----------------------------------------------------------------------------------------------------------------
def _image_dataset() -> Dataset:
    """Four problems with plain-colour images of `IMAGE_SIZES`, a rewording each, all at difficulty 1 (DIVA's
    variants of them: rotation + noise or the question rendered into the image, so every variant's image changes)."""
    colours = list(IMAGE_COLOURS.values())
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": "what colour?"}]] * len(IMAGE_SIZES),
            "image": [Image.new("RGB", size, colours[i]) for i, size in enumerate(IMAGE_SIZES)],
            "id": [f"img{i}" for i in range(len(IMAGE_SIZES))],
            "difficulty": [1] * len(IMAGE_SIZES),
            "variants": [["which colour is it?"]] * len(IMAGE_SIZES),
        }
    )


class ImageSizeReward:
    """`char_sum_reward`, recording the (width, height) of every scored row's image."""

    __name__ = "image_size_reward"

    def __init__(self):
        self.sizes: list[list[tuple[int, int]]] = []

    def __call__(self, prompts, completions, **kwargs):
        self.sizes.append([image.size for image in kwargs["image"]])
        return char_sum_reward(completions)


@xfail_on_trl_1_15(TRL_1_15_SAMPLES_IMAGE_TOKENS, raises=ValueError)
@pytest.mark.parametrize(
    ("family", "trainer_name"),
    [("qwen2_5_vl", "diva"), ("qwen2_5_vl", "grpo"), ("qwen2_vl", "diva"), ("qwen2_vl", "grpo")],
    ids=["qwen2.5-vl-diva", "qwen2.5-vl-grpo", "qwen2-vl-diva", "qwen2-vl-grpo"],
)
def test_trains_two_steps_within_max_pixels(family, trainer_name, qwen_checkpoint, tmp_path):
    """diva loads the processor itself (as from a recipe); grpo gets one built without limits, which it adjusts."""
    trainer_cls, config_cls = get_trainer(trainer_name)
    torch.manual_seed(0)
    args = config_cls(
        **config_kwargs(
            tmp_path,
            per_device_train_batch_size=4,
            num_generations=2,  # diva: one problem and its variant per generation batch
            max_completion_length=4,
            max_pixels=MAX_PIXELS,
            min_pixels=MIN_PIXELS,
        )
    )
    reward = ImageSizeReward()
    given = load_processor(qwen_checkpoint(family)) if trainer_name == "grpo" else None
    trainer = trainer_cls(
        model=qwen_checkpoint(family),
        reward_funcs=[reward],
        args=args,
        train_dataset=_image_dataset(),
        processing_class=given,
    )
    processor = trainer.processing_class
    assert given is None or processor is given
    assert pixel_limits(processor) == (MIN_PIXELS, MAX_PIXELS)
    batches = []
    generate = trainer._generate_and_score_completions

    def recording_generate(inputs):
        output = generate(inputs)
        batches.append({key: output[key] for key in ("prompt_ids", "prompt_mask", "image_grid_thw", "num_images")})
        return output

    trainer._generate_and_score_completions = recording_generate
    changed = train_two_steps(trainer)
    assert any(name.startswith("model.language_model.") for name in changed)
    assert any(name.startswith("model.visual.") for name in changed)  # the images train the vision tower

    # Some image of every run is larger than MAX_PIXELS, so the bound below holds only if the limit was applied.
    sizes = [size for call in reward.sizes for size in call]
    assert any(width * height > MAX_PIXELS for width, height in sizes)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert len(batches) == 2
    for batch in batches:
        patches = batch["image_grid_thw"].prod(dim=-1)
        assert (patches <= MAX_PATCHES).all(), batch["image_grid_thw"].tolist()
        # image_grid_thw agrees with the prompts: each prompt holds one image token per 2x2 patches of its image.
        assert batch["num_images"] == [1] * len(patches)
        tokens = ((batch["prompt_ids"] == image_token_id) & batch["prompt_mask"].bool()).sum(dim=1)
        assert tokens.tolist() == (patches // 4).tolist()
    if trainer_name == "diva":
        # The variants' images are the transformed ones (rotated on a larger canvas, or with a question band).
        assert trainer.difficulty_store.round_index == 2
        for call in reward.sizes:
            assert call[0] == call[1] and call[2] == call[3]  # original x 2 completions, then its variant x 2
            assert call[0] != call[2]
