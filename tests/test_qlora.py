"""4-bit NF4 QLoRA on CPU inside BaseGRPOTrainer: the quantized base stays frozen, the LoRA adapter learns."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import length_reward

from trl_ext import get_trainer

bnb = pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")


def _snapshot(model) -> dict[str, torch.Tensor]:
    """Every parameter, plus each 4-bit weight's quantization constants (absmax), copied."""
    state = {name: param.detach().clone() for name, param in model.named_parameters()}
    for name, param in model.named_parameters():
        quant_state = getattr(param, "quant_state", None)
        if quant_state is not None:
            state[f"{name}.absmax"] = quant_state.absmax.detach().clone()
    return state


@pytest.mark.parametrize("trainer_name", ["grpo", "bnpo"])
def test_qlora_nf4_trains_adapter_only(tiny_checkpoint, toy_dataset, tmp_path, trainer_name):
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig

    trainer_cls, config_cls = get_trainer(trainer_name)
    args = config_cls(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        learning_rate=5e-2,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = trainer_cls(
        model=tiny_checkpoint,
        reward_funcs=[length_reward],
        args=args,
        train_dataset=toy_dataset,
        processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        ),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    model = trainer.model

    # The base really is 4-bit NF4 and frozen; only the adapter trains.
    assert getattr(model, "is_loaded_in_4bit", False)
    quantized = {name: p for name, p in model.named_parameters() if isinstance(p, bnb.nn.Params4bit)}
    assert quantized and all(p.dtype == torch.uint8 for p in quantized.values())
    assert {p.quant_state.quant_type for p in quantized.values()} == {"nf4"}
    assert any("q_proj.base_layer" in name for name in quantized) and any("mlp" in name for name in quantized)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)

    before = _snapshot(model)
    trainer.train()
    after = _snapshot(model)

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    grad_norms = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    assert grad_norms and all(math.isfinite(g) and g > 0 for g in grad_norms)

    frozen = [name for name in before if "lora_" not in name]
    assert any(name.endswith(".absmax") for name in frozen)
    for name in frozen:  # 4-bit codes, their absmax, and the float frozen weights (embeddings, norms, biases)
        assert torch.equal(before[name], after[name]), name

    lora_b = [name for name in before if "lora_B" in name]
    lora_a = [name for name in before if "lora_A" in name]
    assert lora_b and lora_a
    # B starts at zero and receives a gradient on the first step; A receives one once B is non-zero.
    assert all(before[name].abs().max() == 0 for name in lora_b)
    assert all(not torch.equal(before[name], after[name]) for name in lora_b)
    assert any(not torch.equal(before[name], after[name]) for name in lora_a)
    assert all(torch.isfinite(after[name].float()).all() for name in lora_a + lora_b)
