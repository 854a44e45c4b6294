"""The checkpoint hook: trl-ext state is written to every checkpoint and restored before the next generation batch."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter

import pytest
import torch
from conftest import length_reward

from trl_ext import BaseGRPOConfig, BaseGRPOTrainer, get_advantage_estimator, register_advantage_estimator
from trl_ext import registry as registry_module
from trl_ext.advantages.base import AdvantageBatch, AdvantageEstimator, AdvantageOutput
from trl_ext.advantages.grpo import grpo_advantages
from trl_ext.trainers.persistence import STATE_FILE

NUM_GENERATIONS = 4
MAX_STEPS = 3


class CountingEstimator(AdvantageEstimator):
    """GRPO advantages, counting generation batches and rows per problem ``id`` (checkpointed state)."""

    columns = ("id",)

    def __init__(self, args) -> None:
        super().__init__(args)
        self.batches_seen = 0
        self.rows_per_id: dict[str, int] = {}
        # Not state: what the counter read at each call, and the ids of each batch, for the assertions.
        self.counter_at_call: list[int] = []
        self.ids_per_call: list[list[str]] = []

    def __call__(self, batch: AdvantageBatch) -> AdvantageOutput:
        self.counter_at_call.append(self.batches_seen)
        self.ids_per_call.append(list(batch.columns["id"]))
        self.batches_seen += 1
        for row_id in batch.columns["id"]:
            self.rows_per_id[row_id] = self.rows_per_id.get(row_id, 0) + 1
        advantages, _ = grpo_advantages(batch.rewards_per_func, batch.reward_weights, batch.num_generations)
        return AdvantageOutput(advantages)

    def state_dict(self) -> dict:
        return {"batches_seen": self.batches_seen, "rows_per_id": dict(self.rows_per_id)}

    def load_state_dict(self, state: dict) -> None:
        self.batches_seen = state.get("batches_seen", 0)
        self.rows_per_id = dict(state.get("rows_per_id", {}))


@pytest.fixture(scope="module", autouse=True)
def registered_estimator():
    """Register the counting estimator for this module only (kept out of other modules' view of the registry)."""
    get_advantage_estimator("grpo")  # built-ins first
    register_advantage_estimator("test_counting", overwrite=True)(CountingEstimator)
    yield
    registry_module.ADVANTAGE_ESTIMATORS._items.pop("test_counting", None)


def _make_trainer(tiny_checkpoint, dataset, output_dir, *, estimator: str = "grpo", max_steps: int = MAX_STEPS):
    from transformers import AutoTokenizer

    args = BaseGRPOConfig(
        output_dir=str(output_dir),
        advantage_estimator=estimator,
        per_device_train_batch_size=8,
        num_generations=NUM_GENERATIONS,
        max_completion_length=4,
        learning_rate=1e-2,
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=1,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    return BaseGRPOTrainer(
        model=tiny_checkpoint,
        reward_funcs=[length_reward],
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(tiny_checkpoint),
    )


def _read_state(checkpoint_dir) -> dict:
    with open(checkpoint_dir / STATE_FILE) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def stateful_run(tiny_checkpoint, toy_dataset, tmp_path_factory):
    """An uninterrupted 3-step run with the counting estimator, a checkpoint every step."""
    output_dir = tmp_path_factory.mktemp("stateful")
    trainer = _make_trainer(tiny_checkpoint, toy_dataset, output_dir, estimator="test_counting")
    trainer.train()
    return trainer, output_dir


def test_state_file_written_to_every_checkpoint(stateful_run):
    trainer, output_dir = stateful_run
    estimator = trainer.advantage_estimator
    assert isinstance(estimator, CountingEstimator)
    assert estimator.counter_at_call == list(range(MAX_STEPS))
    checkpoints = sorted(p.name for p in output_dir.glob("checkpoint-*"))
    assert checkpoints == [f"checkpoint-{step}" for step in range(1, MAX_STEPS + 1)]
    for step in range(1, MAX_STEPS + 1):
        state = _read_state(output_dir / f"checkpoint-{step}")
        expected_counts = Counter(row for ids in estimator.ids_per_call[:step] for row in ids)
        assert state == {
            "trainer_class": "BaseGRPOTrainer",
            "advantage_estimator_name": "test_counting",
            "policy_objective_name": "grpo",
            "advantage_estimator": {"batches_seen": step, "rows_per_id": dict(expected_counts)},
            "policy_objective": {},
            "trainer": {},
        }
        # Whole groups of one problem each: every counted id was seen a multiple of G times.
        assert all(count % NUM_GENERATIONS == 0 for count in expected_counts.values())


def test_resume_restores_estimator_state_before_next_generation(stateful_run, tiny_checkpoint, toy_dataset, tmp_path):
    original, original_dir = stateful_run
    resumed = _make_trainer(tiny_checkpoint, toy_dataset, tmp_path, estimator="test_counting")
    assert resumed.advantage_estimator.batches_seen == 0
    resumed.train(resume_from_checkpoint=str(original_dir / "checkpoint-1"))

    estimator = resumed.advantage_estimator
    # The first generation batch after resuming already sees the saved counter (1), not a fresh 0.
    assert estimator.counter_at_call == [1, 2]
    assert resumed.state.global_step == MAX_STEPS
    # The resumed run continues on the same data, so its later checkpoints hold the same state as the original's.
    assert estimator.ids_per_call == original.advantage_estimator.ids_per_call[1:]
    for step in (2, 3):
        assert _read_state(tmp_path / f"checkpoint-{step}") == _read_state(original_dir / f"checkpoint-{step}")
    assert estimator.state_dict() == original.advantage_estimator.state_dict()


def test_resume_without_state_file_warns_and_starts_fresh(
    stateful_run, tiny_checkpoint, toy_dataset, tmp_path, caplog
):
    _, original_dir = stateful_run
    checkpoint = tmp_path / "checkpoint-1"
    shutil.copytree(original_dir / "checkpoint-1", checkpoint)
    (checkpoint / STATE_FILE).unlink()
    resumed = _make_trainer(tiny_checkpoint, toy_dataset, tmp_path / "out", estimator="test_counting", max_steps=2)
    with caplog.at_level(logging.WARNING, logger="trl_ext"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.advantage_estimator.counter_at_call == [0]
    assert any(STATE_FILE in record.getMessage() and "fresh" in record.getMessage() for record in caplog.records)


def test_stateless_run_writes_empty_state_and_resumes(tiny_checkpoint, toy_dataset, tmp_path, caplog):
    first = _make_trainer(tiny_checkpoint, toy_dataset, tmp_path / "run", max_steps=2)
    first.train()
    for step in (1, 2):
        assert _read_state(tmp_path / "run" / f"checkpoint-{step}") == {
            "trainer_class": "BaseGRPOTrainer",
            "advantage_estimator_name": "grpo",
            "policy_objective_name": "grpo",
            "advantage_estimator": {},
            "policy_objective": {},
            "trainer": {},
        }
    final_weights = {name: p.detach().clone() for name, p in first.model.named_parameters()}

    resumed = _make_trainer(tiny_checkpoint, toy_dataset, tmp_path / "resumed", max_steps=2)
    with caplog.at_level(logging.WARNING, logger="trl_ext"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert resumed.state.global_step == 2
    assert not [r for r in caplog.records if r.name.startswith("trl_ext")]
    assert (tmp_path / "resumed" / "checkpoint-2" / STATE_FILE).exists()
    losses = [entry["loss"] for entry in resumed.state.log_history if "loss" in entry]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    # Weights, optimizer and RNG come back with the checkpoint: the resumed step 2 is the uninterrupted step 2.
    resumed_weights = dict(resumed.model.named_parameters())
    assert sorted(resumed_weights) == sorted(final_weights)
    for name, value in final_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, atol=1e-6, rtol=0, msg=name)
    # ... and that step moved the weights away from checkpoint-1, so the comparison could fail.
    from transformers import AutoModelForCausalLM

    checkpoint_weights = dict(
        AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoint-1").named_parameters()
    )
    assert any(not torch.equal(checkpoint_weights[n], resumed_weights[n]) for n in checkpoint_weights)


def test_resume_from_another_trainer_warns_naming_both(stateful_run, tiny_checkpoint, toy_dataset, tmp_path):
    _, original_dir = stateful_run  # written by BaseGRPOTrainer with the test_counting estimator
    resumed = _make_trainer(tiny_checkpoint, toy_dataset, tmp_path, max_steps=2)  # the grpo estimator
    with pytest.warns(UserWarning, match="advantage estimator 'test_counting' into 'grpo'"):
        resumed.train(resume_from_checkpoint=str(original_dir / "checkpoint-1"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{ half written", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"trainer": 3}', "'trainer' must be"),
    ],
)
def test_a_corrupt_state_file_is_an_error_naming_it(
    stateful_run, tiny_checkpoint, toy_dataset, tmp_path, content, message
):
    _, original_dir = stateful_run
    checkpoint = tmp_path / "checkpoint-1"
    shutil.copytree(original_dir / "checkpoint-1", checkpoint)
    (checkpoint / STATE_FILE).write_text(content)
    resumed = _make_trainer(tiny_checkpoint, toy_dataset, tmp_path / "out", estimator="test_counting", max_steps=2)
    with pytest.raises(ValueError, match=message) as error:
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert STATE_FILE in str(error.value)


def test_state_files_are_written_atomically(stateful_run):
    _, output_dir = stateful_run
    assert not list(output_dir.rglob("*.tmp-*"))  # the temporary file was renamed into place


@pytest.mark.parametrize("latest", [True, "true", "latest"])
def test_resume_latest_skips_a_half_written_checkpoint(stateful_run, tiny_checkpoint, toy_dataset, tmp_path, latest):
    _, original_dir = stateful_run
    run_dir = tmp_path / "run"
    shutil.copytree(original_dir, run_dir)
    newest = run_dir / f"checkpoint-{MAX_STEPS}"
    (newest / "trainer_state.json").unlink()  # as after a kill while saving: weights written, trainer state not
    resumed = _make_trainer(tiny_checkpoint, toy_dataset, run_dir, estimator="test_counting")
    with pytest.warns(UserWarning, match=rf"skipping incomplete checkpoint\(s\) .*checkpoint-{MAX_STEPS}"):
        resumed.train(resume_from_checkpoint=latest)
    # resumed from checkpoint MAX_STEPS - 1: the estimator's first call already sees that many batches
    assert resumed.advantage_estimator.counter_at_call[0] == MAX_STEPS - 1
    assert resumed.state.global_step == MAX_STEPS


def test_resume_latest_without_a_complete_checkpoint_is_an_error(tiny_checkpoint, toy_dataset, tmp_path):
    (tmp_path / "checkpoint-1").mkdir()
    trainer = _make_trainer(tiny_checkpoint, toy_dataset, tmp_path, max_steps=1)
    with (
        pytest.warns(UserWarning, match="every checkpoint"),
        pytest.raises(ValueError, match="no complete checkpoint"),
    ):
        trainer.train(resume_from_checkpoint="latest")
