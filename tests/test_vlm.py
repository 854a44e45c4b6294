"""The tiny vision-language checkpoint: it loads, sees its images, trains under trl.GRPOTrainer, and BaseGRPOTrainer
matches trl.GRPOTrainer on image batches (loss, gradients of every parameter, vision tower included, and metrics)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from conftest import (
    IMAGE_COLOURS,
    TRL_1_15_SAMPLES_IMAGE_TOKENS,
    char_sum_reward,
    make_image_dataset,
    xfail_on_trl_1_15,
)
from harness import NUM_GENERATIONS, NUM_PROMPTS, config_kwargs, loss_grads_metrics, train_two_steps
from trl import GRPOConfig, GRPOTrainer

from trl_ext import BaseGRPOConfig, BaseGRPOTrainer
from trl_ext.tiny_models import VLM_SPECIAL_TOKENS, build_char_tokenizer, build_tiny_vlm_checkpoint

VISION_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.")


def _vlm_config_kwargs(output_dir, **overrides):
    """The shared small-run config (`harness.config_kwargs`) with 4-token completions."""
    return config_kwargs(output_dir, **{"max_completion_length": 4, **overrides})


def _make_vlm_trainer(trainer_cls, config_cls, checkpoint, dataset, output_dir, **overrides):
    """A trainer on the VLM checkpoint; the processor is left to TRL (``AutoProcessor``), as with a Hub model."""
    torch.manual_seed(0)
    args = config_cls(**_vlm_config_kwargs(output_dir, **overrides))
    trainer = trainer_cls(model=checkpoint, reward_funcs=[char_sum_reward], args=args, train_dataset=dataset)
    if not hasattr(trainer, "current_gradient_accumulation_steps"):  # set by train(); compute_loss needs it
        trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    return trainer


def _generate(trainer, dataset, seed=1):
    """One seeded generation batch: each prompt (with its image) repeated NUM_GENERATIONS times."""
    rows = [dict(dataset[i]) for i in range(NUM_PROMPTS) for _ in range(NUM_GENERATIONS)]
    torch.manual_seed(seed)
    trainer.model.train()
    return trainer._generate_and_score_completions(rows)


def _file_stats(path):
    """``{name: (inode, mtime in ns)}`` of the entries of `path`: any rewrite or atomic replace changes them."""
    stats = {}
    for name in os.listdir(path):
        st = os.stat(os.path.join(path, name))
        stats[name] = (st.st_ino, st.st_mtime_ns)
    return stats


# ----------------------------------------------------------------------------------------------------------------
# The checkpoint
# ----------------------------------------------------------------------------------------------------------------
def test_checkpoint_loads_and_sees_images(tiny_vlm_checkpoint):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm_checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_checkpoint).eval()
    assert isinstance(processor, LlavaProcessor) and isinstance(model, LlavaForConditionalGeneration)
    assert 1e5 < sum(p.numel() for p in model.parameters()) < 2e6
    assert all(p.dtype == torch.float32 for p in model.parameters())

    tokenizer = processor.tokenizer
    start, end, image = (tokenizer.convert_tokens_to_ids(t) for t in VLM_SPECIAL_TOKENS)
    assert len({start, end, image, tokenizer.unk_token_id}) == 4
    assert model.config.image_token_id == image == processor.image_token_id
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    assert model.config.get_text_config().vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    # The character vocabulary is unchanged by the reload (same ids as the plain char tokenizer).
    text = "what colour? 12+3=15\n"
    assert tokenizer(text)["input_ids"] == build_char_tokenizer()(text)["input_ids"]

    def encode(image_rgb, size):
        messages = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": Image.new("RGB", size, image_rgb)},
                        {"type": "text", "text": text},
                    ],
                }
            ]
        ]
        return processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )

    red, blue = encode(IMAGE_COLOURS["red"], (28, 28)), encode(IMAGE_COLOURS["blue"], (56, 40))
    # Any image size becomes 28x28 pixels, i.e. 2x2 patches of 14 = 4 image tokens between the vision markers.
    assert red["pixel_values"].shape == blue["pixel_values"].shape == (1, 3, 28, 28)
    ids = red["input_ids"][0].tolist()
    assert ids[:6] == [start, image, image, image, image, end]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert torch.equal(red["input_ids"], blue["input_ids"])

    with torch.no_grad():
        red_logits, blue_logits = model(**red).logits, model(**blue).logits
    assert red_logits.shape == (1, len(ids), len(tokenizer))
    assert torch.isfinite(red_logits).all() and torch.isfinite(blue_logits).all()
    # Same text, different image: the image reaches the language model.
    assert not torch.allclose(red_logits[0, -1], blue_logits[0, -1])


def test_checkpoint_cache_is_reused_and_keyed_on_settings(tiny_vlm_checkpoint, tmp_path):
    from safetensors.torch import load_file

    before = _file_stats(tiny_vlm_checkpoint)
    assert build_tiny_vlm_checkpoint(tiny_vlm_checkpoint) == tiny_vlm_checkpoint
    assert _file_stats(tiny_vlm_checkpoint) == before  # nothing rewritten

    copy = shutil.copytree(tiny_vlm_checkpoint, tmp_path / "copy")
    assert build_tiny_vlm_checkpoint(copy, seed=1) == str(copy)  # other settings: rebuilt in place
    weights, reseeded = (load_file(os.path.join(p, "model.safetensors")) for p in (tiny_vlm_checkpoint, copy))
    assert sorted(weights) == sorted(reseeded)
    assert any(not torch.equal(weights[k], reseeded[k]) for k in weights)
    assert not any(name.startswith(".tiny-vlm-staging-") for name in os.listdir(copy))

    with pytest.raises(TypeError, match="hidden_sise"):
        build_tiny_vlm_checkpoint(tmp_path / "bad", hidden_sise=32)
    with pytest.raises(ValueError, match="patch_size"):
        build_tiny_vlm_checkpoint(tmp_path / "bad", image_size=30)


# ----------------------------------------------------------------------------------------------------------------
# trl.GRPOTrainer trains it
# ----------------------------------------------------------------------------------------------------------------
@xfail_on_trl_1_15(TRL_1_15_SAMPLES_IMAGE_TOKENS, raises=ValueError)
def test_trl_grpo_trains_on_images(tiny_vlm_checkpoint, toy_image_dataset, tmp_path):
    trainer = _make_vlm_trainer(
        GRPOTrainer, GRPOConfig, tiny_vlm_checkpoint, toy_image_dataset, tmp_path, per_device_train_batch_size=8
    )
    assert trainer._is_vlm
    changed = train_two_steps(trainer)
    assert any(name.startswith("model.language_model.") for name in changed)
    # The vision tower and projector are trained through the images (CLIP's post_layernorm is unused by LLaVA).
    names = [name for name, _ in trainer.model.named_parameters()]
    assert {name for name in names if name.startswith(VISION_PREFIXES) and "post_layernorm" not in name} <= changed


# ----------------------------------------------------------------------------------------------------------------
# Parity: BaseGRPOTrainer == trl.GRPOTrainer on image batches
# ----------------------------------------------------------------------------------------------------------------
def _trainers(checkpoint, dataset, tmp_path, **overrides):
    return [
        _make_vlm_trainer(trainer_cls, config_cls, checkpoint, dataset, tmp_path / sub, **overrides)
        for trainer_cls, config_cls, sub in (
            (GRPOTrainer, GRPOConfig, "trl"),
            (BaseGRPOTrainer, BaseGRPOConfig, "ext"),
        )
    ]


def _perturb_old_and_ref(inputs, seed=3):
    """Pretend an older policy sampled the batch, so that clipping and the KL term are exercised."""
    generator = torch.Generator().manual_seed(seed)
    inputs = dict(inputs)
    for key, scale in (("old_per_token_logps", 0.4), ("ref_per_token_logps", 0.3)):
        if inputs.get(key) is not None:
            inputs[key] = inputs[key] + scale * torch.randn(inputs[key].shape, generator=generator)
    return inputs


def test_generation_batch_matches_trl(tiny_vlm_checkpoint, toy_image_dataset, tmp_path):
    trl_trainer, ext_trainer = _trainers(tiny_vlm_checkpoint, toy_image_dataset, tmp_path, beta=0.04, num_iterations=2)
    expected, actual = _generate(trl_trainer, toy_image_dataset), _generate(ext_trainer, toy_image_dataset)
    assert sorted(expected) == sorted(actual)
    # The image fields travel with the batch: one 28x28 image per completion.
    assert expected["pixel_values"].shape == (NUM_PROMPTS * NUM_GENERATIONS, 3, 28, 28)
    assert expected["num_images"] == [1] * NUM_PROMPTS * NUM_GENERATIONS
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(actual[key], value, atol=0, rtol=0, msg=key)
        else:
            assert actual[key] == value, key
    assert expected["advantages"].abs().sum() > 0


@pytest.mark.parametrize(
    "overrides",
    [{}, {"loss_type": "dapo", "beta": 0.04, "num_iterations": 2}],
    ids=["grpo-onpolicy", "dapo-kl-offpolicy"],
)
def test_loss_and_gradients_match_trl_on_images(tiny_vlm_checkpoint, toy_image_dataset, tmp_path, overrides):
    trl_trainer, ext_trainer = _trainers(tiny_vlm_checkpoint, toy_image_dataset, tmp_path, **overrides)
    inputs = _perturb_old_and_ref(_generate(trl_trainer, toy_image_dataset))
    assert inputs["pixel_values"].size(0) == NUM_PROMPTS * NUM_GENERATIONS

    expected_loss, expected_grads, expected_metrics = loss_grads_metrics(trl_trainer, inputs)
    loss, grads, metrics = loss_grads_metrics(ext_trainer, inputs)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected_loss, atol=1e-6, rtol=0)
    assert sorted(grads) == sorted(expected_grads)
    for name in expected_grads:
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-6, rtol=0, msg=name)
    # Not vacuous: the images carry gradient into the vision tower and the projector.
    for prefix in VISION_PREFIXES:
        assert any(name.startswith(prefix) and grad.abs().max() > 0 for name, grad in grads.items()), prefix
    assert sorted(metrics) == sorted(expected_metrics)
    for key, values in expected_metrics.items():
        assert metrics[key] == pytest.approx(values, abs=1e-6, nan_ok=True), key


@xfail_on_trl_1_15(TRL_1_15_SAMPLES_IMAGE_TOKENS, raises=ValueError)
def test_training_run_matches_trl_on_images(tiny_vlm_checkpoint, toy_image_dataset, tmp_path):
    """Whole runs with buffered micro-batches (the image batch is split and shuffled), accumulation and KL."""
    timing = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos")
    overrides = dict(per_device_train_batch_size=8, gradient_accumulation_steps=2, num_iterations=2, beta=0.04)
    runs = []
    for trainer_cls, config_cls, sub in ((GRPOTrainer, GRPOConfig, "trl"), (BaseGRPOTrainer, BaseGRPOConfig, "ext")):
        # Built right before its run: construction seeds the global RNG that sampling then draws from.
        trainer = _make_vlm_trainer(
            trainer_cls, config_cls, tiny_vlm_checkpoint, toy_image_dataset, tmp_path / sub, **overrides
        )
        trainer.train()
        history = [{k: v for k, v in entry.items() if k not in timing} for entry in trainer.state.log_history]
        runs.append((history, {name: p.detach().clone() for name, p in trainer.model.named_parameters()}))
    (expected_history, expected_weights), (history, weights) = runs
    assert len(history) == len(expected_history) == 3  # two steps and the summary
    for expected_entry, entry in zip(expected_history, history):
        assert sorted(entry) == sorted(expected_entry)
        for key, value in expected_entry.items():
            assert entry[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=0, msg=name)


def test_image_dataset_helper_varies_sizes_and_modes():
    dataset = make_image_dataset(4)
    images = dataset["image"]
    assert [image.mode for image in images] == ["RGB", "RGB", "L", "RGBA"]
    assert len({image.size for image in images}) == 4
    assert dataset["answer"] == list(IMAGE_COLOURS)
