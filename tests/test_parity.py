"""The gate for every TRL upgrade: with no step overridden, BaseGRPOTrainer == trl.GRPOTrainer.

Three levels, each on the same tiny model, batch and seed:

1. loss, gradients of every parameter (atol 1e-6, float32) and logged metrics on one micro-batch, for every
   TRL 1.16 ``loss_type`` crossed with KL on/off, token/sequence importance sampling, and off-policy
   (old log-probs present) micro-batches, plus LoRA, delta, entropy bonus and the entropy mask;
2. the generation batch (advantages included) for every ``scale_rewards`` x ``multi_objective_aggregation``;
3. whole ``train()`` runs with gradient accumulation and ``num_iterations > 1``: identical log history and weights.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import digit_reward, length_reward
from harness import generate, loss_grads_metrics, make_trainer
from trl import GRPOConfig, GRPOTrainer

from trl_ext import BaseGRPOConfig, BaseGRPOTrainer

LOSS_TYPES = ["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo"]
TIMING_KEYS = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos")


def _make_trainers(tiny_checkpoint, dataset, tmp_path, *, reward_funcs=None, peft_config=None, **overrides):
    """A trl.GRPOTrainer and a BaseGRPOTrainer with identical weights, data and config."""
    reward_funcs = reward_funcs or [length_reward]
    return [
        make_trainer(
            trainer_cls,
            config_cls,
            tiny_checkpoint,
            dataset,
            tmp_path / sub,
            reward_funcs=reward_funcs,
            peft_config=peft_config,
            **overrides,
        )
        for trainer_cls, config_cls, sub in (
            (GRPOTrainer, GRPOConfig, "trl"),
            (BaseGRPOTrainer, BaseGRPOConfig, "ext"),
        )
    ]


def _assert_metrics_equal(expected, actual):
    assert sorted(expected) == sorted(actual)
    for key in expected:
        for a, b in zip(expected[key], actual[key], strict=True):
            if isinstance(a, float) and math.isnan(a):
                assert math.isnan(b), key
            else:
                assert a == pytest.approx(b, abs=1e-6), key


def _assert_same_loss_and_grads(trl_trainer, ext_trainer, inputs):
    expected_loss, expected_grads, expected_metrics = loss_grads_metrics(trl_trainer, inputs)
    loss, grads, metrics = loss_grads_metrics(ext_trainer, inputs)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected_loss, atol=1e-6, rtol=0)
    assert sorted(grads) == sorted(expected_grads) and grads
    for name in expected_grads:
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-6, rtol=0, msg=name)
    # The comparison must be able to fail: some gradient is non-zero.
    assert any(g.abs().max() > 0 for g in grads.values())
    _assert_metrics_equal(expected_metrics, metrics)


def _make_off_policy(inputs, seed=3):
    """Pretend the batch was sampled by an older policy (num_iterations > 1): perturb old and reference log-probs."""
    generator = torch.Generator().manual_seed(seed)
    inputs = dict(inputs)
    base = inputs.get("old_per_token_logps")
    if base is not None:
        inputs["old_per_token_logps"] = base + 0.4 * torch.randn(base.shape, generator=generator)
    if "ref_per_token_logps" in inputs:
        ref = inputs["ref_per_token_logps"]
        inputs["ref_per_token_logps"] = ref + 0.3 * torch.randn(ref.shape, generator=generator)
    return inputs


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize(
    ("beta", "importance_sampling_level", "num_iterations"),
    [(0.0, "token", 1), (0.04, "token", 2), (0.0, "sequence", 2), (0.04, "sequence", 1)],
    ids=["onpolicy-token", "kl-offpolicy-token", "offpolicy-sequence", "kl-sequence"],
)
def test_loss_and_gradients_match_trl(
    tiny_checkpoint, toy_dataset, tmp_path, loss_type, beta, importance_sampling_level, num_iterations
):
    trl_trainer, ext_trainer = _make_trainers(
        tiny_checkpoint,
        toy_dataset,
        tmp_path,
        loss_type=loss_type,
        beta=beta,
        importance_sampling_level=importance_sampling_level,
        num_iterations=num_iterations,
    )
    inputs = _make_off_policy(generate(trl_trainer, toy_dataset))
    if num_iterations > 1:
        assert "old_per_token_logps" in inputs
    if beta:
        assert "ref_per_token_logps" in inputs
    _assert_same_loss_and_grads(trl_trainer, ext_trainer, inputs)


@pytest.mark.parametrize(
    "overrides",
    [
        {"delta": 1.5, "num_iterations": 2, "epsilon_high": 0.28},
        {"top_entropy_quantile": 0.5, "entropy_coef": 0.01},
        {"use_adaptive_entropy": True, "entropy_target": 5.0, "entropy_coef": 0.01},
        {"off_policy_mask_threshold": 0.05, "num_iterations": 2},
        {"gradient_accumulation_steps": 2, "loss_type": "dapo"},
        {"beta": 0.04, "use_bias_correction_kl": True, "num_iterations": 2},
    ],
    ids=["delta", "entropy-mask-bonus", "adaptive-entropy", "off-policy-mask", "grad-accum-dapo", "bias-corrected-kl"],
)
def test_loss_options_match_trl(tiny_checkpoint, toy_dataset, tmp_path, overrides):
    trl_trainer, ext_trainer = _make_trainers(tiny_checkpoint, toy_dataset, tmp_path, **overrides)
    inputs = _make_off_policy(generate(trl_trainer, toy_dataset))
    _assert_same_loss_and_grads(trl_trainer, ext_trainer, inputs)


def test_lora_loss_and_gradients_match_trl(tiny_checkpoint, toy_dataset, tmp_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trl_trainer, ext_trainer = _make_trainers(
        tiny_checkpoint, toy_dataset, tmp_path, peft_config=peft_config, beta=0.04, num_iterations=2
    )
    # A fresh LoRA adapter has B = 0; give both the same non-zero adapter so gradients reach every LoRA matrix.
    torch.manual_seed(5)
    for (name, p_trl), (_, p_ext) in zip(
        trl_trainer.model.named_parameters(), ext_trainer.model.named_parameters(), strict=True
    ):
        if "lora_B" in name:
            with torch.no_grad():
                p_trl.normal_(0, 0.05)
                p_ext.copy_(p_trl)
    inputs = _make_off_policy(generate(trl_trainer, toy_dataset))
    _assert_same_loss_and_grads(trl_trainer, ext_trainer, inputs)
    assert all("lora" in name for name, p in ext_trainer.model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("aggregation", ["sum_then_normalize", "normalize_then_sum"])
def test_generation_batch_and_advantages_match_trl(tiny_checkpoint, toy_dataset, tmp_path, scale_rewards, aggregation):
    trl_trainer, ext_trainer = _make_trainers(
        tiny_checkpoint,
        toy_dataset,
        tmp_path,
        reward_funcs=[length_reward, digit_reward],
        reward_weights=[1.0, 0.5],
        scale_rewards=scale_rewards,
        multi_objective_aggregation=aggregation,
    )
    expected = generate(trl_trainer, toy_dataset)
    actual = generate(ext_trainer, toy_dataset)
    assert sorted(expected) == sorted(actual)
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(actual[key], value, atol=0, rtol=0, msg=key)
        else:
            assert actual[key] == value, key
    assert expected["advantages"].abs().sum() > 0
    _assert_metrics_equal(
        {k: list(v) for k, v in trl_trainer._metrics["train"].items()},
        {k: list(v) for k, v in ext_trainer._metrics["train"].items()},
    )
    assert list(ext_trainer._logs["advantages"]) == list(trl_trainer._logs["advantages"])


def _train(trainer):
    trainer.train()
    history = [{k: v for k, v in entry.items() if k not in TIMING_KEYS} for entry in trainer.state.log_history]
    weights = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    return history, weights


@pytest.mark.parametrize(
    "overrides",
    [
        {"gradient_accumulation_steps": 2, "per_device_train_batch_size": 8, "num_iterations": 2, "beta": 0.04},
        {"loss_type": "dapo", "steps_per_generation": 2, "per_device_train_batch_size": 8},
    ],
    ids=["grad-accum-iterations-kl", "dapo-buffered"],
)
def test_training_run_matches_trl(tiny_checkpoint, toy_dataset, tmp_path, overrides):
    runs = []
    for trainer_cls, config_cls, sub in ((GRPOTrainer, GRPOConfig, "trl"), (BaseGRPOTrainer, BaseGRPOConfig, "ext")):
        trainer = make_trainer(
            trainer_cls,
            config_cls,
            tiny_checkpoint,
            toy_dataset,
            tmp_path / sub,
            reward_funcs=[length_reward],
            peft_config=None,
            max_steps=3,
            **overrides,
        )
        runs.append(_train(trainer))
    (expected_history, expected_weights), (history, weights) = runs
    assert len(history) == len(expected_history)
    for expected_entry, entry in zip(expected_history, history, strict=True):
        _assert_metrics_equal({k: [v] for k, v in expected_entry.items()}, {k: [v] for k, v in entry.items()})
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=0, msg=name)
    # Training moved the weights, so the comparison above could fail.
    from transformers import AutoModelForCausalLM

    initial = dict(AutoModelForCausalLM.from_pretrained(tiny_checkpoint).named_parameters())
    assert any(not torch.equal(initial[name], weights[name]) for name in initial if name in weights)


def test_eval_generation_batch_matches_trl(tiny_checkpoint, toy_dataset, tmp_path):
    """Evaluation groups use num_generations_eval; a group of one completion gives zero advantage in both."""
    trl_trainer, ext_trainer = _make_trainers(
        tiny_checkpoint, toy_dataset, tmp_path, num_generations_eval=1, per_device_eval_batch_size=4
    )
    rows = [dict(toy_dataset[i]) for i in range(4)]
    outputs = []
    for trainer in (trl_trainer, ext_trainer):
        torch.manual_seed(2)
        trainer.model.eval()
        outputs.append(trainer._generate_and_score_completions(rows))
    expected, actual = outputs
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(actual[key], value, atol=0, rtol=0, msg=key)
    assert torch.equal(actual["advantages"], torch.zeros(4))
    _assert_metrics_equal(
        {k: list(v) for k, v in trl_trainer._metrics["eval"].items()},
        {k: list(v) for k, v in ext_trainer._metrics["eval"].items()},
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks TRL's CPU default (use_cpu=True, bf16 unset)")
def test_bf16_left_unset_with_use_cpu_trains_as_trl_does(tiny_checkpoint, toy_dataset, tmp_path):
    # TRL starts on CPU with use_cpu=True and, bf16 left unset, trains in bf16 autocast; a trl-ext trainer given the same
    # arguments must do the same (it used to turn bf16 off and train in float32: weights 0.18 apart after 3 steps).
    runs = []
    for trainer_cls, config_cls, sub in ((GRPOTrainer, GRPOConfig, "trl"), (BaseGRPOTrainer, BaseGRPOConfig, "ext")):
        trainer = make_trainer(
            trainer_cls, config_cls, tiny_checkpoint, toy_dataset, tmp_path / sub, reward_funcs=[length_reward],
            max_steps=3, bf16=None,
        )  # fmt: skip
        assert trainer.args.bf16 is True and trainer.accelerator.mixed_precision == "bf16", sub
        runs.append(_train(trainer))
    (expected_history, expected_weights), (history, weights) = runs
    for expected_entry, entry in zip(expected_history, history, strict=True):
        _assert_metrics_equal({k: [v] for k, v in expected_entry.items()}, {k: [v] for k, v in entry.items()})
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, atol=0, rtol=0, msg=name)
    # the control: the same run in float32 (what trl-ext used to do) ends elsewhere, so the equality above could fail
    float32 = make_trainer(
        BaseGRPOTrainer, BaseGRPOConfig, tiny_checkpoint, toy_dataset, tmp_path / "f32", reward_funcs=[length_reward],
        max_steps=3, bf16=False,
    )  # fmt: skip
    _, float32_weights = _train(float32)
    assert any(not torch.equal(float32_weights[name], weights[name]) for name in weights)
