"""Memory hygiene of the loss pipeline (issue 16): a micro-batch's tensors are freed when ``compute_loss`` and its
backward are done, by reference counting, not whenever the cyclic garbage collector happens to run.

``benchmarks/memory.py`` measured the effect on SmolLM2-135M: a ``LossContext`` kept alive by a ctx -> closure -> ctx
cycle raised the training peak RSS of every trl-ext trainer above ``trl.GRPOTrainer``'s (docs/results.md)."""

from __future__ import annotations

import gc

import pytest
from harness import generate, make_trainer

from trl_ext import get_trainer
from trl_ext.objectives.base import LossContext


@pytest.mark.parametrize("name", ["grpo", "hapo", "minpro", "bnpo"])
def test_loss_context_is_freed_without_the_cycle_collector(tiny_checkpoint, toy_dataset, tmp_path, name):
    trainer_cls, config_cls = get_trainer(name)
    trainer = make_trainer(trainer_cls, config_cls, tiny_checkpoint, toy_dataset, tmp_path)
    inputs = generate(trainer, toy_dataset)
    gc.collect()
    gc.disable()
    try:
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        del loss
        alive = [obj for obj in gc.get_objects() if isinstance(obj, LossContext)]
    finally:
        gc.enable()
    assert alive == [], f"{len(alive)} LossContext object(s) outlived compute_loss (a reference cycle)"
