"""The quickstart's settings: what ``trl-ext quickstart`` trains, on which tiny model, with which config.

The default task (``arithmetic``, :mod:`trl_ext.data.tasks`) is built so that a tiny *randomly initialised* model
learns it by GRPO alone on CPU; `QUICKSTART_SETTINGS` are the measured settings that make it do so in about a minute,
and `QUICKSTART_TRAINER_OVERRIDES` the changes for trainers that need another task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trl_ext.data.tasks import ARITHMETIC_ALPHABET, DEFAULT_TASK, get_task

if TYPE_CHECKING:  # `datasets` is imported lazily so that `import trl_ext.data` stays cheap
    from datasets import Dataset

__all__ = ["QUICKSTART_SETTINGS", "QUICKSTART_TRAINER_OVERRIDES", "make_quickstart_dataset"]

#: Settings under which a tiny *randomly initialised* model learns the default task by GRPO alone on CPU.
#:
#: - ``model``: keyword arguments of `trl_ext.tiny_models.build_tiny_checkpoint`. The task's 12-character alphabet
#:   gives a 15-token vocabulary; ``initializer_range=0.1`` (rather than the usual 0.02) makes the random policy depend
#:   on its input from the start, which removes a long plateau: at 0.02, some seeds stay near 0.1 reward for hundreds
#:   of steps.
#: - ``config``: keyword arguments of `trl.GRPOConfig` (add ``output_dir``). A learning rate of 3e-3 or more
#:   collapses the policy onto one digit; 1e-3 with TRL's linear decay learns on every seed we tried. 128 completions
#:   per step = 16 prompts x 8 generations.
#: - ``dataset``: arguments of the task's ``make_dataset`` (8192 rows: 300 steps use 4800 prompts, under one epoch).
#: - ``torch_num_threads``: call ``torch.set_num_threads`` with it before training. The model is so small that one
#:   thread is as fast as two on an idle machine, and with other processes on the cores two OpenMP threads were 16x
#:   slower (296 s against 18.5 s for the same 300 steps); results are identical either way.
#:
#: Measured on 2 CPU cores, seeds 0-3 (the seed of model, data and config together): mean reward 0.01-0.02 at the first
#: step; its 10-step moving average passes 0.4 at step 43-55 and ends at 0.84-0.92; about 17 s of training, 24 s wall
#: clock including start-up. Of the groups of 8, about 40% are all-wrong and 18% all-correct in the first third of
#: training, 6-14% all-wrong and 71-76% all-correct in the last third.
QUICKSTART_SETTINGS: dict[str, Any] = {
    "task": DEFAULT_TASK,
    "dataset": {"num_rows": 8192, "seed": 0},
    "model": {
        "alphabet": ARITHMETIC_ALPHABET,
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "initializer_range": 0.1,
        "seed": 0,
    },
    "config": {
        "learning_rate": 1e-3,
        "lr_scheduler_type": "linear",
        "per_device_train_batch_size": 128,
        "num_generations": 8,
        "max_completion_length": 2,
        "max_steps": 300,
        "temperature": 1.0,
        "beta": 0.0,
        "logging_steps": 10,
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "seed": 0,
        "save_strategy": "no",
    },
    "torch_num_threads": 1,
}

#: ``trl-ext quickstart --trainer NAME`` for trainers that cannot train on the default task: the task, its row count and
#: the config fields that replace the defaults above (the settings of ``recipes/<trainer>/*_tiny.yaml``). DIVA needs
#: unique problem ids with rewordings and hints; CalibAdv needs its search task and retriever.
QUICKSTART_TRAINER_OVERRIDES: dict[str, dict[str, Any]] = {
    "diva": {
        "task": "arithmetic_variants",
        "num_rows": 100,
        "config": {
            "diva_num_variants": 1,
            "diva_difficulty_k": 0.1,
            "diva_rrb_threshold": 0.15,
            "diva_rrb_scale": 0.1,
            "diva_initial_difficulty": 5,
            "diva_hint_template": "{hints}={question}",
            "max_steps": 400,
        },
    },
    "calibadv": {
        "task": "deepsearch",
        "num_rows": 512,
        "config": {
            "calibadv_retriever": "bm25",
            "calibadv_corpus_path": "deepsearch",
            "calibadv_topk": 2,
            "calibadv_max_turns": 2,
            "calibadv_max_tokens_per_turn": 48,
            "calibadv_max_obs_tokens": 160,
            "calibadv_prepend_think_token": True,
            "num_generations": 4,
            "per_device_train_batch_size": 8,
            "max_completion_length": 480,
            "top_p": 1.0,
            "epsilon": 0.2,
            "epsilon_high": 0.2,
            "loss_type": "bnpo",
            "max_steps": 50,
            "logging_steps": 5,
        },
    },
}


def make_quickstart_dataset(num_rows: int | None = None, seed: int | None = None) -> Dataset:
    """The default task's dataset with the quickstart's size and seed (see `QUICKSTART_SETTINGS`)."""
    dataset_settings = QUICKSTART_SETTINGS["dataset"]
    return get_task(QUICKSTART_SETTINGS["task"]).make_dataset(
        dataset_settings["num_rows"] if num_rows is None else num_rows,
        dataset_settings["seed"] if seed is None else seed,
    )
