"""Registries: names, errors, decorator-registered components inside the trainer, and entry-point plugins."""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap

import pytest
import torch
from conftest import length_reward

import trl_ext
from trl_ext import (
    BaseGRPOConfig,
    BaseGRPOTrainer,
    get_advantage_estimator,
    get_policy_objective,
    get_trainer,
    list_advantage_estimators,
    list_policy_objectives,
    list_trainers,
    register_advantage_estimator,
    register_policy_objective,
)
from trl_ext import registry as registry_module
from trl_ext.advantages.base import AdvantageBatch, AdvantageEstimator, AdvantageOutput
from trl_ext.objectives.base import LossContext, PolicyObjective
from trl_ext.objectives.grpo import GRPOObjective

NUM_PROMPTS, NUM_GENERATIONS = 2, 4
CONSTANT = 0.375


# --- test components, registered with the public decorators for this module only (see `registered_components`) -----
class ZeroWeightsObjective(PolicyObjective):
    """Multiplies every token's surrogate by zero."""

    def token_weights(self, ctx: LossContext) -> torch.Tensor:
        return torch.zeros_like(ctx.logps).detach()


class ConstantEstimator(AdvantageEstimator):
    """The same advantage for every completion."""

    def __call__(self, batch: AdvantageBatch) -> AdvantageOutput:
        return AdvantageOutput(torch.full((batch.num_completions,), CONSTANT))


class NaNEstimator(AdvantageEstimator):
    """Returns a NaN advantage (a bug the trainer must catch)."""

    def __call__(self, batch: AdvantageBatch) -> AdvantageOutput:
        advantages = torch.zeros(batch.num_completions)
        advantages[1] = float("nan")
        return AdvantageOutput(advantages)


class NeedsDifficultyEstimator(AdvantageEstimator):
    """Needs a dataset column the toy dataset lacks."""

    columns = ("difficulty",)

    def __call__(self, batch: AdvantageBatch) -> AdvantageOutput:  # pragma: no cover - never reached
        return AdvantageOutput(torch.zeros(batch.num_completions))


class NeedsLogitsEstimator(AdvantageEstimator):
    """Requires a gathered fact the trainer does not provide."""

    requires = frozenset({"logits"})

    def __call__(self, batch: AdvantageBatch) -> AdvantageOutput:  # pragma: no cover - never reached
        return AdvantageOutput(torch.zeros(batch.num_completions))


@pytest.fixture(scope="module", autouse=True)
def registered_components():
    """Register the test components with the public decorators; unregister them after this module.

    Registering at run time (not import time) keeps them out of any other module's collection-time view of the
    registries (e.g. a test parametrized over every registered estimator).
    """
    get_advantage_estimator("grpo")  # built-ins first, so the snapshot holds them
    registries = (registry_module.ADVANTAGE_ESTIMATORS, registry_module.POLICY_OBJECTIVES)
    saved = [dict(registry._items) for registry in registries]
    register_policy_objective("test_zero_weights")(ZeroWeightsObjective)
    register_advantage_estimator("test_constant")(ConstantEstimator)
    register_advantage_estimator("test_nan")(NaNEstimator)
    register_advantage_estimator("test_needs_difficulty")(NeedsDifficultyEstimator)
    register_advantage_estimator("test_needs_logits")(NeedsLogitsEstimator)
    yield
    for registry, items in zip(registries, saved, strict=True):
        registry._items.clear()
        registry._items.update(items)


# --- helpers ---------------------------------------------------------------------------------------------------------
def _config(tmp_path, **overrides) -> BaseGRPOConfig:
    kwargs = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=NUM_PROMPTS * NUM_GENERATIONS,
        num_generations=NUM_GENERATIONS,
        max_completion_length=6,
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        save_strategy="no",
        max_steps=1,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return BaseGRPOConfig(**kwargs)


def _trainer(tiny_checkpoint, dataset, tmp_path, **overrides) -> BaseGRPOTrainer:
    from transformers import AutoTokenizer

    trainer = BaseGRPOTrainer(
        model=tiny_checkpoint,
        reward_funcs=[length_reward],
        args=_config(tmp_path, **overrides),
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
    )
    # Set by Trainer.train(); the loss reads it (as trl.GRPOTrainer's does) when called outside train().
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    return trainer


def _generate(trainer, dataset):
    rows = [dict(dataset[i]) for i in range(NUM_PROMPTS) for _ in range(NUM_GENERATIONS)]
    torch.manual_seed(1)
    trainer.model.train()
    return trainer._generate_and_score_completions(rows)


def _grads(trainer, inputs) -> dict[str, torch.Tensor]:
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, inputs)
    assert torch.isfinite(loss)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


# --- names and errors ------------------------------------------------------------------------------------------------
def test_builtin_trainer_is_registered():
    assert "grpo" in list_trainers()
    assert get_trainer("grpo") == (BaseGRPOTrainer, BaseGRPOConfig)
    assert trl_ext.get_trainer_entry("grpo").paper
    assert "grpo" in list_advantage_estimators() and "grpo" in list_policy_objectives()
    assert get_policy_objective("grpo") is GRPOObjective


@pytest.mark.parametrize(
    ("lookup", "kind"),
    [
        (get_trainer, "trainer"),
        (get_advantage_estimator, "advantage estimator"),
        (get_policy_objective, "policy objective"),
    ],
)
def test_unknown_name_raises_key_error_listing_registered(lookup, kind):
    with pytest.raises(KeyError) as excinfo:
        lookup("no_such_component")
    message = excinfo.value.args[0]
    assert "no_such_component" in message and kind in message and "grpo" in message


@pytest.mark.parametrize("field_name", ["advantage_estimator", "policy_objective"])
def test_config_rejects_unknown_component_naming_the_field(tmp_path, field_name):
    with pytest.raises(ValueError, match=field_name) as excinfo:
        _config(tmp_path, **{field_name: "nope"})
    assert "'nope'" in str(excinfo.value) and "grpo" in str(excinfo.value)


class _Duplicate(AdvantageEstimator):
    """Never registered: used to try a clashing name."""


def test_duplicate_registration_needs_overwrite():
    with pytest.raises(ValueError, match="already registered"):
        register_advantage_estimator("grpo")(_Duplicate)
    assert get_advantage_estimator("grpo").__name__ == "GRPOAdvantage"


def test_failed_registration_leaves_class_unchanged():
    class Clashing(AdvantageEstimator):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_advantage_estimator("grpo")(Clashing)
    assert Clashing.name == ""


# --- registered components inside the trainer -------------------------------------------------------------------------
def test_registered_objective_is_used_by_trainer(tiny_checkpoint, toy_dataset, tmp_path):
    trainer = _trainer(tiny_checkpoint, toy_dataset, tmp_path, policy_objective="test_zero_weights", loss_type="dapo")
    assert isinstance(trainer.policy_objective, ZeroWeightsObjective)
    inputs = _generate(trainer, toy_dataset)
    assert inputs["advantages"].abs().max() > 0
    grads = _grads(trainer, inputs)
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads.values())
    # The same batch with the baseline objective has non-zero gradients, so the assertion above could fail.
    trainer.policy_objective = GRPOObjective(trainer.args)
    assert any(torch.count_nonzero(g) > 0 for g in _grads(trainer, inputs).values())


def test_registered_estimator_is_used_by_trainer(tiny_checkpoint, toy_dataset, tmp_path):
    trainer = _trainer(tiny_checkpoint, toy_dataset, tmp_path, advantage_estimator="test_constant")
    assert isinstance(trainer.advantage_estimator, ConstantEstimator)
    assert ConstantEstimator.name == "test_constant"  # the decorator names the class
    output = _generate(trainer, toy_dataset)
    assert output["advantages"].shape == (NUM_PROMPTS * NUM_GENERATIONS,)
    assert torch.equal(output["advantages"], torch.full_like(output["advantages"], CONSTANT))
    # The completions table logs the advantages trained on.
    assert list(trainer._logs["advantages"])[-NUM_PROMPTS * NUM_GENERATIONS :] == [CONSTANT] * 8


def test_nan_advantages_raise(tiny_checkpoint, toy_dataset, tmp_path):
    trainer = _trainer(tiny_checkpoint, toy_dataset, tmp_path, advantage_estimator="test_nan")
    with pytest.raises(FloatingPointError, match="test_nan"):
        _generate(trainer, toy_dataset)


def test_missing_dataset_column_raises_naming_it(tiny_checkpoint, toy_dataset, tmp_path):
    trainer = _trainer(tiny_checkpoint, toy_dataset, tmp_path, advantage_estimator="test_needs_difficulty")
    with pytest.raises(ValueError, match="'difficulty'") as excinfo:
        _generate(trainer, toy_dataset)
    assert "test_needs_difficulty" in str(excinfo.value)


def test_unknown_required_fact_raises_at_construction(tiny_checkpoint, toy_dataset, tmp_path):
    with pytest.raises(ValueError, match="logits"):
        _trainer(tiny_checkpoint, toy_dataset, tmp_path, advantage_estimator="test_needs_logits")


# --- entry points ----------------------------------------------------------------------------------------------------
PLUGIN_SOURCE = '''
import torch

from trl_ext.advantages.base import AdvantageEstimator, AdvantageOutput


class MyEstimator(AdvantageEstimator):
    """A third-party estimator."""

    def __call__(self, batch):
        return AdvantageOutput(torch.zeros(batch.num_completions))
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A fake installed distribution `my-plugin` declaring one good and one broken advantage-estimator entry point.

    The estimator registry is given a copy of its items and a cleared "entry points loaded" flag; both are restored
    afterwards, so other tests never see the plugin.
    """
    site = tmp_path / "site"
    dist_info = site / "my_plugin-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [trl_ext.advantage_estimators]
            my_estimator = my_plugin:MyEstimator
            broken_estimator = my_plugin_missing_module:Nope
            """
        )
    )
    (site / "my_plugin.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()

    get_advantage_estimator("grpo")  # import the built-ins before swapping the registry's items
    estimators = registry_module.ADVANTAGE_ESTIMATORS
    monkeypatch.setattr(estimators, "_items", dict(estimators._items))
    monkeypatch.setattr(estimators, "_loaded_entry_points", False)
    yield estimators
    sys.modules.pop("my_plugin", None)


def test_entry_point_estimator_is_discovered(plugin, tmp_path):
    assert "my_estimator" not in plugin._items
    cls = get_advantage_estimator("my_estimator")
    assert cls.__module__ == "my_plugin" and cls.__name__ == "MyEstimator"
    assert issubclass(cls, AdvantageEstimator)
    assert "my_estimator" in list_advantage_estimators()
    # A config can select it by name like a built-in.
    assert _config(tmp_path, advantage_estimator="my_estimator").advantage_estimator == "my_estimator"


def test_broken_entry_point_warns_and_listing_still_works(plugin, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_ext.registry"):
        names = list_advantage_estimators()
    assert "grpo" in names and "my_estimator" in names and "broken_estimator" not in names
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("broken_estimator" in message for message in warnings)
    with pytest.raises(KeyError, match="broken_estimator"):
        get_advantage_estimator("broken_estimator")
    assert get_advantage_estimator("grpo").__name__ == "GRPOAdvantage"


def test_entry_point_estimator_gets_its_registered_name(plugin):
    assert get_advantage_estimator("my_estimator").name == "my_estimator"
