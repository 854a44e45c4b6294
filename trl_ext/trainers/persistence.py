"""What a run leaves on disk and takes back: trl-ext's state in every checkpoint, resuming from the newest complete
checkpoint, and the model card.

Checkpoint hook
    ``trl_ext_state_dict()`` (estimator, objective and trainer state, JSON) is written to every checkpoint as
    ``trl_ext_state.json`` and restored on resume on every process, its structure checked first. A trainer with its
    own cross-step state overrides :meth:`PersistenceMixin.extra_state_dict` and
    :meth:`PersistenceMixin.load_extra_state_dict` (and :meth:`PersistenceMixin.check_extra_state_dict`).

Resume
    Before loading, the checkpoint's weights files and model config are checked (truncated files and another model's
    checkpoint are named); after loading, missing keys tied to loaded weights (a tied ``lm_head``) are not reported.

:class:`PersistenceMixin` is a base of :class:`~trl_ext.trainers.base.BaseGRPOTrainer`, before ``trl.GRPOTrainer``.
"""

from __future__ import annotations

import logging
import os
import warnings
from types import SimpleNamespace
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from trl_ext import compat
from trl_ext._quiet import progress_bars_disabled
from trl_ext.errors import UserInputError
from trl_ext.jsonio import read_json_object, write_json_atomic
from trl_ext.trainers.checks import check_checkpoint_model, check_checkpoint_weights, tied_parameter_names

__all__ = ["STATE_FILE", "PersistenceMixin", "latest_complete_checkpoint"]

logger = logging.getLogger(__name__)

STATE_FILE = "trl_ext_state.json"

#: The structure of ``trl_ext_state.json`` (:meth:`PersistenceMixin.trl_ext_state_dict`): key -> (JSON type, its
#: name in messages, what it holds). Every key may be missing (a fresh state then); unknown keys are ignored.
STATE_STRUCTURE: dict[str, tuple[type, str, str]] = {
    "trainer_class": (str, "a string", "the trainer's class name"),
    "advantage_estimator_name": (str, "a string", "the advantage estimator's registered name"),
    "policy_objective_name": (str, "a string", "the policy objective's registered name"),
    "advantage_estimator": (dict, "a JSON object", "the advantage estimator's state"),
    "policy_objective": (dict, "a JSON object", "the policy objective's state"),
    "trainer": (dict, "a JSON object", "the trainer's own state"),
}


def latest_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` folder of ``output_dir`` that was written to the end, or ``None``.

    Complete means it holds ``trainer_state.json`` (transformers writes it after the weights and optimizer) and, if the
    run wrote one, a readable ``trl_ext_state.json``. Newer incomplete folders (a kill during saving leaves the weights
    without the trainer state) are skipped with a warning naming them, instead of being picked and crashing.
    """
    if not os.path.isdir(output_dir):
        return None
    numbered = []
    for name in os.listdir(output_dir):
        prefix, _, number = name.partition("-")
        if prefix == PREFIX_CHECKPOINT_DIR and number.isdigit() and os.path.isdir(os.path.join(output_dir, name)):
            numbered.append((int(number), os.path.join(output_dir, name)))
    skipped = []
    for _, path in sorted(numbered, reverse=True):
        complete = os.path.isfile(os.path.join(path, "trainer_state.json"))
        state = os.path.join(path, STATE_FILE)
        if complete and os.path.exists(state):
            try:
                read_json_object(state, "the trl-ext trainer state")
            except ValueError:
                complete = False
        if complete:
            if skipped:
                warnings.warn(
                    f"skipping incomplete checkpoint(s) {', '.join(skipped)} (no trainer_state.json or a corrupt "
                    f"{STATE_FILE}: probably cut off while saving); resuming from {path}",
                    UserWarning,
                    stacklevel=3,
                )
            return path
        skipped.append(path)
    if skipped:
        warnings.warn(
            f"every checkpoint in {output_dir} is incomplete: {', '.join(skipped)}", UserWarning, stacklevel=3
        )
    return None


class PersistenceMixin:
    """Checkpoints with trl-ext's state, resume from the newest complete checkpoint, the model card (see the module
    docstring). Expects ``self.advantage_estimator`` and ``self.policy_objective`` (set by the base trainer)."""

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """``Trainer.train``; ``resume_from_checkpoint`` of ``True``, ``"true"`` or ``"latest"`` resumes from the newest
        *complete* checkpoint in ``output_dir`` (:func:`latest_complete_checkpoint`), skipping half-written ones.

        The checkpoint to resume is checked before anything loads: its safetensors files must be whole
        (:func:`~trl_ext.trainers.checks.check_checkpoint_weights`) and its ``config.json`` must describe this run's
        model (:func:`~trl_ext.trainers.checks.check_checkpoint_model`); either error names the file or both models.
        """
        if resume_from_checkpoint is True or (
            isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.strip().lower() in ("true", "latest")
        ):
            resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise UserInputError(
                    f"resume_from_checkpoint: no complete checkpoint (a checkpoint-N folder with trainer_state.json) "
                    f"in output_dir {self.args.output_dir!r}"
                )
            logger.info("Resuming from the newest complete checkpoint: %s", resume_from_checkpoint)
        if isinstance(resume_from_checkpoint, str) and os.path.isdir(resume_from_checkpoint):
            # Before anything loads: a truncated weights file or another model's checkpoint, named.
            check_checkpoint_weights(resume_from_checkpoint)
            check_checkpoint_model(resume_from_checkpoint, getattr(self, "model", None))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """transformers' warnings after loading a checkpoint's weights, without the missing keys that are tied to
        loaded weights (a tied ``lm_head.weight`` is not saved, so every resume of such a model reported it missing
        although the resume is exact). Other missing or unexpected keys are still reported."""
        missing = list(getattr(load_result, "missing_keys", None) or [])
        model = getattr(self, "model", None)
        if missing and model is not None and hasattr(model, "named_parameters"):
            tied = tied_parameter_names(model, missing)
            if tied:
                load_result = SimpleNamespace(
                    missing_keys=[key for key in missing if key not in tied],
                    unexpected_keys=list(getattr(load_result, "unexpected_keys", None) or []),
                )
        return super()._issue_warnings_after_load(load_result)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card, naming a local base model instead of "fine-tuned version of [None]" and the run's output
        folder instead of "Model Card for None"; the method and its citation come from the trainer's ``_paper``."""
        if model_name is None and self.args.output_dir:
            model_name = os.path.basename(os.path.normpath(self.args.output_dir))
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        path = os.path.join(self.args.output_dir, "README.md")
        if not self.is_world_process_zero() or not os.path.isfile(path):
            return
        source = compat.get_config_model_id(self.model.config)
        missing = "fine-tuned version of [None](https://huggingface.co/None)"
        with open(path) as f:
            text = f.read()
        if missing in text:
            named = f"fine-tuned version of the local model `{source}`" if source else "fine-tuned model"
            with open(path, "w") as f:
                f.write(text.replace(missing, named))

    def trl_ext_state_dict(self) -> dict[str, Any]:
        """State that outlives a step: estimator, objective and trainer parts (JSON-serialisable)."""
        return {
            "trainer_class": type(self).__name__,
            "advantage_estimator_name": getattr(self.args, "advantage_estimator", "grpo"),
            "policy_objective_name": getattr(self.args, "policy_objective", "grpo"),
            "advantage_estimator": self.advantage_estimator.state_dict(),
            "policy_objective": self.policy_objective.state_dict(),
            "trainer": self.extra_state_dict(),
        }

    def check_trl_ext_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse a state of the wrong structure (:data:`STATE_STRUCTURE`, then the trainer's own part through
        :meth:`check_extra_state_dict`), with a ``ValueError`` naming the key and the expected type."""
        for key, (kind, kind_name, what) in STATE_STRUCTURE.items():
            if key in state and not isinstance(state[key], kind):
                value = state[key]
                raise UserInputError(
                    f"key {key!r} must be {kind_name} ({what}), got {type(value).__name__} {value!r:.60}"
                )
        self.check_extra_state_dict(state.get("trainer", {}))

    def load_trl_ext_state_dict(self, state: dict[str, Any], source: str = STATE_FILE) -> None:
        """Restore what :meth:`trl_ext_state_dict` returned (warns when another trainer or component wrote it).

        The whole structure is checked first (:meth:`check_trl_ext_state_dict`); a wrong one, or a part a component
        cannot load, is a ``ValueError`` naming ``source`` (the file), the key and what was expected.
        """
        try:
            self.check_trl_ext_state_dict(state)
        except ValueError as error:
            raise UserInputError(f"resume_from_checkpoint: {source}: {error}") from None
        for key, current in (
            ("trainer_class", type(self).__name__),
            ("advantage_estimator_name", getattr(self.args, "advantage_estimator", "grpo")),
            ("policy_objective_name", getattr(self.args, "policy_objective", "grpo")),
        ):
            saved = state.get(key)
            if saved is not None and saved != current:
                warnings.warn(
                    f"resuming a checkpoint written with {key.replace('_name', '').replace('_', ' ')} {saved!r} "
                    f"into {current!r}: the weights and optimizer carry over, the method's own state may not fit. "
                    "Resume with the same trainer, or start from the weights only (model_name_or_path)",
                    UserWarning,
                    stacklevel=2,
                )
        for key, load in (
            ("advantage_estimator", self.advantage_estimator.load_state_dict),
            ("policy_objective", self.policy_objective.load_state_dict),
            ("trainer", self.load_extra_state_dict),
        ):
            try:
                load(state.get(key, {}))
            except (AttributeError, KeyError, TypeError, ValueError) as error:  # a part that does not fit its reader
                raise UserInputError(
                    f"resume_from_checkpoint: {source}: key {key!r} does not fit this run's {key.replace('_', ' ')} "
                    f"({type(error).__name__}: {error}); resume with the trainer and components that wrote it"
                ) from error

    def extra_state_dict(self) -> dict[str, Any]:
        """Override in a trainer subclass that keeps its own cross-step state."""
        return {}

    def check_extra_state_dict(self, state: dict[str, Any]) -> None:
        """Override together with :meth:`load_extra_state_dict`: raise ``ValueError("key 'trainer.<entry>' must be
        ...")`` for a saved entry of the wrong type, before anything is restored."""

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        """Override together with :meth:`extra_state_dict`."""

    def _save(self, output_dir: str | None = None, state_dict=None):
        with progress_bars_disabled(bool(self.args.disable_tqdm)):  # no "Writing model shards" bars
            return super()._save(output_dir, state_dict)

    def _save_checkpoint(self, model, trial):
        # Written before the parent saves, so that a Hub push of the checkpoint folder (queued by the parent) has it.
        if self.args.should_save:
            checkpoint_dir = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(checkpoint_dir, exist_ok=True)
            write_json_atomic(os.path.join(checkpoint_dir, STATE_FILE), self.trl_ext_state_dict())
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STATE_FILE)
        if os.path.exists(path):
            try:
                state = read_json_object(path, "the trl-ext trainer state")
            except ValueError as error:
                raise UserInputError(f"resume_from_checkpoint: {error}") from None
            self.load_trl_ext_state_dict(state, source=path)
        elif any(self.trl_ext_state_dict()[key] for key in ("advantage_estimator", "policy_objective", "trainer")):
            logger.warning("Resuming from %s without %s: trl-ext state starts fresh", checkpoint, STATE_FILE)
