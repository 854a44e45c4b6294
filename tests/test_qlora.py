"""4-bit NF4 QLoRA on CPU for every trainer: the quantized base stays frozen, the LoRA adapter learns.

Each of the six trainers (grpo, bnpo, calibadv, diva, hapo with adaptive temperature on, minpro with
``num_iterations=2``) trains 2 optimizer steps from a tiny checkpoint loaded in 4-bit NF4 (bitsandbytes' CPU kernels)
with a LoRA adapter on ``q_proj``/``v_proj``. CalibAdv rolls out its multi-turn search agent on the deepsearch task
(BM25 over its corpus; the turns written by the scripted processor of ``tests/calibadv_helpers.py``).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from calibadv_helpers import ScriptedTurns, deepsearch_checkpoint_fixture, deepsearch_scripts  # noqa: F401  (fixture)
from conftest import char_sum_reward, length_reward

from trl_ext import get_trainer

bnb = pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")

TRAINERS = ("grpo", "bnpo", "calibadv", "diva", "hapo", "minpro")


@pytest.fixture
def one_thread():
    """One torch thread for the run: the tiny model gains nothing from more, and on a busy 2-core machine two threads
    made one 4-bit CalibAdv step ten times slower (51 s against 5 s; the threads contend for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _snapshot(model) -> dict[str, torch.Tensor]:
    """Every parameter, plus each 4-bit weight's quantization constants (absmax), copied."""
    state = {name: param.detach().clone() for name, param in model.named_parameters()}
    for name, param in model.named_parameters():
        quant_state = getattr(param, "quant_state", None)
        if quant_state is not None:
            state[f"{name}.absmax"] = quant_state.absmax.detach().clone()
    return state


def _setup(name: str, checkpoint: str, deepsearch_checkpoint: str, toy_dataset) -> dict[str, Any]:
    """Per trainer: the checkpoint, dataset, rewards and config fields (tiny: a few seconds a run)."""
    from trl_ext.data import get_task

    fields: dict[str, Any] = dict(per_device_train_batch_size=8, num_generations=4, max_completion_length=6)
    setup: dict[str, Any] = dict(checkpoint=checkpoint, dataset=toy_dataset, reward_funcs=[length_reward])
    if name == "hapo":
        fields.update(hapo_adaptive_temperature=True, hapo_temperature_tau=0.5)
    elif name == "minpro":
        fields.update(num_iterations=2)  # step 2 re-uses step 1's generation: pi_old != pi_theta there
    elif name == "diva":
        task = get_task("arithmetic_variants")
        setup.update(dataset=task.make_dataset(24, 0), reward_funcs=task.reward_funcs + [char_sum_reward])
        fields.update(per_device_train_batch_size=4, num_generations=2, diva_hint_template="{hints}={question}")
    elif name == "calibadv":
        task = get_task("deepsearch")
        dataset = task.make_dataset(8, 0)
        # one question per step, three scripted turns (two searches that hit or miss, a right or wrong answer)
        setup.update(checkpoint=deepsearch_checkpoint, dataset=dataset, reward_funcs=task.reward_funcs)
        setup["scripts"] = deepsearch_scripts(dataset)
        fields.update(
            per_device_train_batch_size=4,
            max_completion_length=600,
            calibadv_corpus_path="deepsearch",
            calibadv_max_turns=2,
            calibadv_max_tokens_per_turn=96,
            calibadv_max_obs_tokens=120,
            calibadv_topk=1,
        )
    setup["fields"] = fields
    return setup


@pytest.mark.parametrize("trainer_name", TRAINERS)
@pytest.mark.usefixtures("one_thread")
def test_qlora_nf4_trains_adapter_only(tiny_checkpoint, deepsearch_checkpoint, toy_dataset, tmp_path, trainer_name):
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig

    setup = _setup(trainer_name, tiny_checkpoint, deepsearch_checkpoint, toy_dataset)
    trainer_cls, config_cls = get_trainer(trainer_name)
    args = config_cls(
        output_dir=str(tmp_path),
        learning_rate=5e-2,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **setup["fields"],
    )
    tokenizer = AutoTokenizer.from_pretrained(setup["checkpoint"])
    trainer = trainer_cls(
        model=setup["checkpoint"],
        reward_funcs=setup["reward_funcs"],
        args=args,
        train_dataset=setup["dataset"],
        processing_class=tokenizer,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        ),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    if "scripts" in setup:  # the real 4-bit model writes CalibAdv's scripted turns through the production rollout
        trainer.rollout_func.logits_processors.append(ScriptedTurns(tokenizer, setup["scripts"]))
    model = trainer.model

    # The base really is 4-bit NF4 and frozen; only the adapter trains.
    assert getattr(model, "is_loaded_in_4bit", False)
    quantized = {name: p for name, p in model.named_parameters() if isinstance(p, bnb.nn.Params4bit)}
    assert quantized and all(p.dtype == torch.uint8 for p in quantized.values())
    assert {p.quant_state.quant_type for p in quantized.values()} == {"nf4"}
    assert any("q_proj.base_layer" in name for name in quantized) and any("mlp" in name for name in quantized)
    assert all(isinstance(m.base_layer, bnb.nn.Linear4bit) for n, m in model.named_modules() if n.endswith("q_proj"))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)

    before = _snapshot(model)
    trainer.train()
    after = _snapshot(model)

    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert trainer.state.global_step == 2 and len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    grad_norms = [entry["grad_norm"] for entry in history if "grad_norm" in entry]
    assert len(grad_norms) == 2 and all(math.isfinite(g) and g > 0 for g in grad_norms)

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

    if (
        trainer_name == "hapo"
    ):  # the second generation sampled at adaptive temperatures from the 4-bit model's entropies
        first, second = (entry for entry in history if "hapo/temperature_mean" in entry)
        assert first["hapo/temperature_min"] == first["hapo/temperature_max"] == 1.0
        assert "hapo/rollout_entropy_pivot" in second
        assert 0.5 - 1e-6 <= second["hapo/temperature_min"] <= second["hapo/temperature_max"] <= 1.5 + 1e-6
        assert second["hapo/temperature_max"] > second["hapo/temperature_min"]
    if trainer_name == "minpro":  # one generation, two passes: on-policy weights 1, then the adapter moved pi_theta
        first, second = (entry for entry in history if "minpro/weight_mean" in entry)
        assert first["minpro/weight_min"] == first["minpro/weight_max"] == 1.0 and "num_tokens" not in second
        assert second["minpro/weight_min"] < 1.0 < second["minpro/weight_max"]
    if trainer_name == "calibadv":  # every trajectory followed its script: two searches, then an answer
        for entry in (entry for entry in history if "loss" in entry):
            assert entry["calibadv/turns_mean"] == 3.0 and entry["calibadv/searches_mean"] == 2.0
            assert entry["calibadv/format_valid_frac"] == 1.0 and entry["calibadv/segment_mismatch"] == 0.0
