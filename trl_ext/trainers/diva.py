"""DIVA-GRPO trainer: difficulty-adaptive problem variants with local + global group advantages (arXiv 2603.01106).

What changes against ``trl.GRPOTrainer``:

* **Batch composition.** Every problem (dataset row, unique ``id``) is generated together with
  ``diva_num_variants`` variants in the same generation batch (:class:`~trl_ext.curriculum.difficulty.
  ProblemRepeatSampler`). Variants are built when generation starts, from the problem's current difficulty level:
  easy problems get harder variants (image noise, rotation, question rendered into the image, rewordings), hard
  problems get easier ones (partial-solution hints) (:mod:`trl_ext.curriculum.variants`).
* **Advantage.** Local (prompt-row) plus global (problem) group z-scores, each batch-normalised; the global part is
  weighted by the row's difficulty relative to its problem; all-low-reward groups are damped
  (:mod:`trl_ext.advantages.diva`).
* **State.** A per-problem difficulty store, updated after every training generation batch from the gathered rewards
  (identical on every process), saved as ``diva_difficulty.json`` in every checkpoint and restored on resume.

The loss is the base (TRL) loss; the reference's settings are ``loss_type="dapo"``, ``epsilon=0.2``,
``epsilon_high=0.3``, ``delta=3.0`` (its dual clip), ``beta=0.0`` (see ``recipes/diva/``).
"""

from __future__ import annotations

import logging
import os
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import gather_object
from datasets import IterableDataset
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from trl_ext.advantages.base import AdvantageBatch
from trl_ext.advantages.diva import (
    BATCH_NORMS,
    DEFAULT_DIFFICULTY_CHANGES,
    DEFAULT_SCORE_RANGES,
    combined_rewards,
    difficulty_updates,
    validate_diva_fields,
)
from trl_ext.curriculum.difficulty import (
    SLOT_KEY,
    STORE_FILE,
    DifficultyStore,
    ProblemRepeatSampler,
    VariantSlotDataset,
)
from trl_ext.curriculum.variants import (
    DEFAULT_HINT_TEMPLATE,
    check_generated_variants,
    resolve_variant_generator,
    variant_rng,
)
from trl_ext.jsonio import read_json_object, write_json_atomic
from trl_ext.trainers.base import BaseGRPOConfig, BaseGRPOTrainer

logger = logging.getLogger(__name__)


@dataclass
class DIVAConfig(BaseGRPOConfig):
    r"""
    Configuration for [`DIVATrainer`]: every `GRPOConfig` field plus DIVA-GRPO's fields (prefix `diva_`).

    The dataset needs a unique `id` per row (int or str). Optional columns: `variants` (list[str] rewordings that keep
    the answer), `hints` (list[str] solution steps), `image`/`images`, `difficulty` (initial level), `text_in_image`.

    Parameters:
        diva_num_variants (`int`, *optional*, defaults to `1`):
            V, variants generated per problem; every generation batch holds whole problems of V + 1 prompt rows, so
            `generation_batch_size / num_generations` must be a multiple of V + 1.
        diva_difficulty_k (`float`, *optional*, defaults to `0.1`):
            k, strength of the difficulty weighting exp(k * Δd * sign(A)) of the global advantage; 0 disables it.
        diva_rrb_threshold (`float`, *optional*, defaults to `0.15`):
            τ: a group whose scorable rewards are all below it is a low-reward group.
        diva_rrb_scale (`float`, *optional*, defaults to `0.1`):
            c in [0, 1], multiplier of a low-reward group's advantage part.
        diva_local_weight (`float`, *optional*, defaults to `1.0`):
            α, weight of the local (prompt-row) part.
        diva_global_weight (`float`, *optional*, defaults to `1.0`):
            β, weight of the global (problem) part. Not `beta`, which is GRPOConfig's KL coefficient.
        diva_group_eps (`float`, *optional*, defaults to `1e-6`):
            ε added to the group std (TRL itself uses 1e-4).
        diva_batch_norm (`str`, *optional*, defaults to `"responses"`):
            Batch z-score over the scorable responses, or `"reference"`: the reference code's statistic over the padded
            (N, max_completion_length) token tensor.
        diva_score_ranges (`list[float]`, *optional*, defaults to `[0, 0.05, 0.05, 0.3, 0.3, 0.5, 0.5, 0.7, 0.7, 1]`):
            Inclusive ranges of a problem's mean reward, as [low, high] pairs (nested in YAML, or flat on the command
            line); the first range holding the mean decides the change.
        diva_difficulty_changes (`list[int]`, *optional*, defaults to `[2, 1, 0, -1, -2]`):
            Level change for each score range; a mean outside every range changes nothing.
        diva_min_difficulty (`int`, *optional*, defaults to `1`):
            Lowest difficulty level.
        diva_max_difficulty (`int`, *optional*, defaults to `9`):
            Highest difficulty level.
        diva_initial_difficulty (`int`, *optional*, defaults to `5`):
            Level of a problem first seen (unless its row has a `difficulty`).
        diva_warmup_steps (`int`, *optional*, defaults to `0`):
            For this many optimizer steps: plain local group z-scores and no store updates.
        diva_variant_generator (`str` or callable, *optional*):
            `None` for the built-in generator, a callable `(row, difficulty, num_variants, rng) -> [(row, level)]`,
            or `"package.module:function"`.
        diva_hint_template (`str`, *optional*):
            Format string of a hinted prompt with `{question}` and `{hints}` (the built-in generator's).
        diva_hint_separator (`str`, *optional*, defaults to `"\n"`):
            Joins a hinted variant's hint steps into `{hints}` (the built-in generator's). Set it to a character of
            the tokenizer's vocabulary when a newline is not one (e.g. a character tokenizer).
    """

    advantage_estimator: str = field(
        default="diva", metadata={"help": "Registered advantage estimator; 'diva' is DIVA-GRPO's."}
    )
    diva_num_variants: int = field(default=1, metadata={"help": "V, variants per problem (reference: 1; ablated 3)."})
    diva_difficulty_k: float = field(
        default=0.1, metadata={"help": "Strength k of the difficulty weighting; 0 = off."}
    )
    diva_rrb_threshold: float = field(
        default=0.15, metadata={"help": "A group whose rewards are all below this is damped (RRB)."}
    )
    diva_rrb_scale: float = field(default=0.1, metadata={"help": "RRB multiplier c in [0, 1]."})
    diva_local_weight: float = field(default=1.0, metadata={"help": "Weight α of the local advantage."})
    diva_global_weight: float = field(default=1.0, metadata={"help": "Weight of the global advantage (not `beta`)."})
    diva_group_eps: float = field(default=1e-6, metadata={"help": "ε of the group z-scores."})
    diva_batch_norm: str = field(
        default="responses",
        metadata={
            "help": "Batch z-score: over responses, or the reference's padded-token statistic.",
            "choices": list(BATCH_NORMS),
        },
    )
    diva_score_ranges: list[float] = field(
        default_factory=lambda: [list(r) for r in DEFAULT_SCORE_RANGES],
        metadata={"help": "Inclusive mean-reward ranges as low high pairs (flat on the command line)."},
    )
    diva_difficulty_changes: list[int] = field(
        default_factory=lambda: list(DEFAULT_DIFFICULTY_CHANGES),
        metadata={"help": "Level change for each score range."},
    )
    diva_min_difficulty: int = field(default=1, metadata={"help": "Lowest difficulty level."})
    diva_max_difficulty: int = field(default=9, metadata={"help": "Highest difficulty level."})
    diva_initial_difficulty: int = field(
        default=5, metadata={"help": "Level of a problem first seen, when its row has no `difficulty`."}
    )
    diva_warmup_steps: int = field(
        default=0, metadata={"help": "Optimizer steps of plain local advantages without store updates."}
    )
    diva_variant_generator: str | None = field(
        default=None,
        metadata={"help": "None (built-in), a callable, or 'package.module:function' building the variants."},
    )
    diva_hint_template: str = field(
        default=DEFAULT_HINT_TEMPLATE,
        metadata={"help": "Format string of a hinted prompt, with {question} and {hints} (built-in generator)."},
    )
    diva_hint_separator: str = field(
        default="\n",
        metadata={
            "help": "Joins the hint steps of a hinted prompt into {hints} (built-in generator). Default: newline."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        ranges = list(self.diva_score_ranges)
        if ranges and all(isinstance(value, int | float) for value in ranges):  # flat form from the command line
            if len(ranges) % 2:
                raise ValueError(
                    f"diva_score_ranges must be [low, high] pairs (an even count of numbers), got {ranges!r}"
                )
            ranges = [ranges[i : i + 2] for i in range(0, len(ranges), 2)]
        self.diva_score_ranges = [[float(lo), float(hi)] for lo, hi in (tuple(r) for r in ranges)]
        self.diva_difficulty_changes = [int(c) if float(c) == int(c) else c for c in self.diva_difficulty_changes]
        if not isinstance(self.diva_hint_separator, str):
            raise ValueError(
                "diva_hint_separator must be a string (it joins a hinted variant's hint steps), "
                f"got {self.diva_hint_separator!r}"
            )
        validate_diva_fields(self)


class DIVATrainer(BaseGRPOTrainer):
    """DIVA-GRPO: each problem trained with difficulty-targeted variants; local + global group advantages.

    Takes every `trl.GRPOTrainer` argument; `args` is a [`DIVAConfig`]. The training dataset must be map-style with a
    unique `id` column. Works with text-only and vision-language models (conversational prompts with an `image` or
    `images` column, as TRL supports them).
    """

    _tag_names = ["trl", "grpo", "trl-ext", "diva-grpo"]
    _name = "DIVA-GRPO"
    _paper = {
        "title": "DIVA-GRPO: Enhancing Multimodal Reasoning through Difficulty-Adaptive Variant Advantage",
        "id": "2603.01106",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{gao2026divagrpo,
                title        = {{DIVA-GRPO: Enhancing Multimodal Reasoning through Difficulty-Adaptive Variant Advantage}},
                author       = {Gao and Zhang and Pang and others},
                year         = 2026,
                booktitle    = {International Conference on Learning Representations},
                eprint       = {arXiv:2603.01106},
            }"""),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.args
        if not hasattr(config, "diva_num_variants"):
            raise ValueError(f"DIVATrainer needs a DIVAConfig, got {type(config).__name__}")
        self.num_slots = config.diva_num_variants + 1
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 for DIVA's group z-scores, got {self.num_generations}")
        rows_per_batch = config.generation_batch_size // self.num_generations
        if rows_per_batch % self.num_slots:
            raise ValueError(
                f"generation_batch_size / num_generations = {rows_per_batch} prompt rows must be a multiple of "
                f"diva_num_variants + 1 = {self.num_slots}, so that each problem and its variants share a generation "
                "batch; change generation_batch_size (or per_device_train_batch_size / steps_per_generation), "
                "num_generations or diva_num_variants"
            )
        self.difficulty_store = DifficultyStore(
            config.diva_initial_difficulty, config.diva_min_difficulty, config.diva_max_difficulty
        )
        self.variant_generator = resolve_variant_generator(
            config.diva_variant_generator,
            hint_template=config.diva_hint_template,
            hint_separator=config.diva_hint_separator,
            min_difficulty=config.diva_min_difficulty,
            max_difficulty=config.diva_max_difficulty,
        )
        if self.train_dataset is not None:
            self._validate_train_dataset(self.train_dataset)
        self._diva_local_facts: list[tuple[str, int, int, bool]] | None = None
        self._diva_batch: AdvantageBatch | None = None
        self._warned_reward_range = False

    # ------------------------------------------------------------------------------------------------------------
    # Dataset and batch composition
    # ------------------------------------------------------------------------------------------------------------
    def _prompts_per_generation_batch(self) -> int:
        """Problems one generation batch draws: each fills ``diva_num_variants + 1`` slots of ``num_generations``."""
        slots = int(getattr(self.args, "diva_num_variants", 0)) + 1
        return max(1, int(self.args.generation_batch_size) // (int(self.num_generations) * slots))

    def _validate_train_dataset(self, dataset: Any) -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
            raise ValueError(
                "DIVATrainer needs a map-style training dataset (its sampler draws whole problems by index); got "
                f"{type(dataset).__name__}"
            )
        columns = getattr(dataset, "column_names", None)
        if columns is None:
            columns = list(dataset[0]) if len(dataset) else []
        for column in ("id", "prompt"):
            if column not in columns:
                raise ValueError(
                    f"DIVATrainer needs a {column!r} column in the training dataset (a unique problem id per row for "
                    f"'id'); the dataset has columns {sorted(columns)}"
                )
        ids = [str(x) for x in (dataset["id"] if hasattr(dataset, "column_names") else (r["id"] for r in dataset))]
        duplicates = [pid for pid, count in Counter(ids).items() if count > 1]
        if duplicates:
            raise ValueError(
                f"the training dataset's 'id' column must be unique per problem; {len(duplicates)} ids repeat, e.g. "
                f"{duplicates[:3]}"
            )
        if "difficulty" in columns:
            lo, hi = self.difficulty_store.min_level, self.difficulty_store.max_level
            values = dataset["difficulty"] if hasattr(dataset, "column_names") else [r["difficulty"] for r in dataset]
            bad = [v for v in values if v is not None and (not float(v).is_integer() or not lo <= v <= hi)]
            if bad:
                raise ValueError(
                    f"the training dataset's 'difficulty' column must hold integer levels in [{lo}, {hi}] (or None "
                    f"for the initial level {self.difficulty_store.initial}); got e.g. {bad[:3]}"
                )

    def get_train_dataloader(self):
        if isinstance(self.train_dataset, IterableDataset):
            raise ValueError("DIVATrainer needs a map-style training dataset, got an IterableDataset")
        return self._get_dataloader(
            dataset=VariantSlotDataset(self.train_dataset, self.num_slots),
            description="Training",
            batch_size=self._train_batch_size * self.args.steps_per_generation,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def _get_train_sampler(self, dataset=None):
        return ProblemRepeatSampler(
            data_source=self.train_dataset,
            num_slots=self.num_slots,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )

    def _materialize_variants(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Replace slot rows by the original (slot 0) or the problem's built variants; record (id, level) facts."""
        store = self.difficulty_store
        num_variants = self.num_slots - 1
        built: dict[str, list[tuple[dict[str, Any], int]]] = {}
        rows, facts = [], []
        for row in inputs:
            slot = int(row[SLOT_KEY])
            original = {key: value for key, value in row.items() if key != SLOT_KEY}
            problem_id = str(original["id"])
            level = store.level(problem_id, original.get("difficulty"))
            if slot == 0:
                rows.append(original)
                facts.append((problem_id, level, level, True))
                continue
            if problem_id not in built:
                # Seeded by (seed, round, id): every process that holds a copy of this row builds the same variant.
                rng = variant_rng(self.args.seed, store.round_index, problem_id)
                variants = self.variant_generator(dict(original), level, num_variants, rng)
                built[problem_id] = check_generated_variants(self.variant_generator, original, variants, num_variants)
            variant, variant_level = built[problem_id][slot - 1]
            rows.append(variant)
            facts.append((problem_id, store.clip(variant_level), level, False))
        self._diva_local_facts = facts
        self._pending_extra_logs["diva_difficulty"].extend(fact[1] for fact in facts)
        self._pending_extra_logs["diva_variant"].extend(int(row[SLOT_KEY]) for row in inputs)
        return rows

    # ------------------------------------------------------------------------------------------------------------
    # Advantage seam and store update
    # ------------------------------------------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        if mode == "train" and inputs and SLOT_KEY in inputs[0]:
            inputs = self._materialize_variants(inputs)
        else:
            self._diva_local_facts = None
            self._pending_extra_logs["diva_difficulty"].extend([None] * len(inputs))
            self._pending_extra_logs["diva_variant"].extend([None] * len(inputs))
            inputs = [{key: value for key, value in row.items() if key != SLOT_KEY} for row in inputs]
        self._diva_batch = None
        output = super()._generate_and_score_completions(inputs)
        batch, self._diva_batch = self._diva_batch, None
        if mode == "train" and batch is not None and "diva_ids" in batch.extras:
            self._update_store(batch)
        return output

    def build_advantage_batch(self, inputs, output, rewards_per_func, mode) -> AdvantageBatch:
        batch = super().build_advantage_batch(inputs, output, rewards_per_func, mode)
        if mode == "train" and self._diva_local_facts is not None:
            facts = gather_object(self._diva_local_facts)
            batch.extras["diva_ids"] = [fact[0] for fact in facts]
            batch.extras["diva_difficulties"] = [fact[1] for fact in facts]
            batch.extras["diva_levels"] = [fact[2] for fact in facts]
            batch.extras["diva_is_original"] = [fact[3] for fact in facts]
            batch.extras["diva_warmup"] = self.state.global_step < self.args.diva_warmup_steps
        self._diva_batch = batch
        return batch

    def _update_store(self, batch: AdvantageBatch) -> None:
        rewards = combined_rewards(batch.rewards_per_func.double(), batch.reward_weights)
        finite = rewards[~torch.isnan(rewards)]
        if not self._warned_reward_range and finite.numel() and (finite.min() < 0 or finite.max() > 1):
            logger.warning(
                "DIVA: combined rewards leave [0, 1] (min %.3g, max %.3g); diva_rrb_threshold and diva_score_ranges "
                "assume rewards in [0, 1]",
                float(finite.min()),
                float(finite.max()),
            )
            self._warned_reward_range = True
        store = self.difficulty_store
        if not batch.extras["diva_warmup"]:
            current: dict[str, int] = {}
            for problem_id, level in zip(batch.extras["diva_ids"], batch.extras["diva_levels"], strict=True):
                current.setdefault(problem_id, level)
            store.update(
                difficulty_updates(
                    rewards,
                    batch.extras["diva_ids"],
                    current,
                    score_ranges=self.args.diva_score_ranges,
                    changes=self.args.diva_difficulty_changes,
                    min_difficulty=store.min_level,
                    max_difficulty=store.max_level,
                )
            )
        store.round_index += 1
        metrics = self._metrics["train"]
        for level, fraction in store.histogram().items():
            metrics[f"diva/difficulty_hist/{level}"].append(fraction)
        if store.levels:
            metrics["diva/store_mean_difficulty"].append(sum(store.levels.values()) / len(store.levels))

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoint: diva_difficulty.json
    # ------------------------------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        digests = gather_object([self.difficulty_store.digest()])
        if len(set(digests)) != 1:  # pragma: no cover - would mean non-deterministic updates
            raise RuntimeError(f"DIVA difficulty stores differ across processes: {digests}")
        if self.args.should_save:
            checkpoint_dir = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(checkpoint_dir, exist_ok=True)
            write_json_atomic(os.path.join(checkpoint_dir, STORE_FILE), self.difficulty_store.state_dict())
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, STORE_FILE)
        if os.path.exists(path):
            state = read_json_object(path, "DIVA's difficulty store")
            levels = state.get("levels", {})
            if not isinstance(levels, dict) or not all(isinstance(v, int | float) for v in levels.values()):
                raise ValueError(f"{path}: 'levels' must map problem ids to integer levels")
            self.difficulty_store.load_state_dict(state)
        else:
            self.difficulty_store.load_state_dict({})
            logger.warning(
                "Resuming from %s without %s: every problem restarts at its initial level", checkpoint, STORE_FILE
            )
