"""Building trainers on the tiny checkpoint and comparing their loss, gradients and metrics (shared by tests)."""

from __future__ import annotations

import math
from typing import Any

import torch
from conftest import length_reward

NUM_PROMPTS, NUM_GENERATIONS = 4, 4


def config_kwargs(output_dir, **overrides: Any) -> dict[str, Any]:
    """Config fields for a small float32 CPU run: 4 prompts x 4 completions of up to 6 tokens, 2 steps."""
    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=NUM_PROMPTS * NUM_GENERATIONS,
        num_generations=NUM_GENERATIONS,
        max_completion_length=6,
        learning_rate=5e-2,
        report_to="none",
        use_cpu=True,
        bf16=False,
        logging_steps=1,
        seed=0,
        save_strategy="no",
        temperature=1.0,
        max_steps=2,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return kwargs


def make_trainer(
    trainer_cls, config_cls, checkpoint, dataset, output_dir, *, reward_funcs=None, peft_config=None, **overrides
):
    """A trainer with :func:`config_kwargs`; the global seed is reset first, so two calls build identical runs."""
    from transformers import AutoTokenizer

    # Trainer seeds the global RNG in __init__; training right after construction makes runs comparable.
    torch.manual_seed(0)
    args = config_cls(**config_kwargs(output_dir, **overrides))
    trainer = trainer_cls(
        model=checkpoint,
        reward_funcs=reward_funcs or [length_reward],
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(checkpoint),
        peft_config=peft_config,
    )
    if not hasattr(trainer, "current_gradient_accumulation_steps"):  # set by train(); compute_loss needs it
        trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    return trainer


def generation_rows(dataset) -> list[dict[str, Any]]:
    """The first NUM_PROMPTS rows, each repeated NUM_GENERATIONS times, as TRL's sampler groups them."""
    return [dict(dataset[i]) for i in range(NUM_PROMPTS) for _ in range(NUM_GENERATIONS)]


def generate(trainer, dataset, seed: int = 1) -> dict[str, Any]:
    """One training generation batch (sampling seeded, so two identical trainers generate the same batch)."""
    torch.manual_seed(seed)
    trainer.model.train()
    return trainer._generate_and_score_completions(generation_rows(dataset))


def loss_grads_metrics(trainer, inputs):
    """``(loss, {param: grad}, {metric: values})`` of one ``compute_loss`` + backward on ``inputs``."""
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {
        name: param.grad.detach().clone()
        for name, param in trainer.model.named_parameters()
        if param.requires_grad and param.grad is not None
    }
    metrics = {key: list(values) for key, values in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics


def train_two_steps(trainer) -> set[str]:
    """Train (2 optimizer steps), check every logged step had a finite loss and a non-zero gradient, and return the
    names of the parameters that changed."""
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == 2 and trainer.state.global_step == 2
    assert all(math.isfinite(entry["loss"]) and entry["grad_norm"] > 0 for entry in steps)
    return {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
