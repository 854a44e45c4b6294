"""Two off-policy optimizer steps of the base trainer with a RegimeCallback; every process records what it logged
and its own statistics before they were pooled.

Launched by ``tests/test_diagnose.py`` with 2 CPU processes (``tests/twoproc.py``)::

    tests/scripts/diagnose_two_process.py --checkpoint TINY_CHECKPOINT --out DIR

``num_iterations=2``: the second step reuses the first step's generation batch after one update, so its log-ratios
are not 0. Writes ``DIR/rank<process index>.json`` with ``num_processes``, ``process_index``, ``summary`` (the
callback's), ``logged`` (the ``regime/*`` entries of ``log_history``) and, per step, ``local`` (this process's token
count and MinPRO weight extremes before the pooling) and ``pooled`` (the same after it).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from trl_ext import BaseGRPOConfig, BaseGRPOTrainer, RegimeCallback  # noqa: E402
from trl_ext.diagnose.measures import TokenAccumulator  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: conftest, twoproc
from conftest import length_reward  # noqa: E402
from twoproc import SCRIPT_PROMPTS, script_cli, script_config  # noqa: E402


class RecordingAccumulator(TokenAccumulator):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.local: list[list[float]] = []
        self.pooled: list[list[float]] = []

    def all_reduce(self, accelerator):
        self.local.append([self.tokens, self.weight_min, self.weight_max])
        super().all_reduce(accelerator)
        self.pooled.append([self.tokens, self.weight_min, self.weight_max])


def main() -> None:
    cli = script_cli(__doc__)
    args = BaseGRPOConfig(**script_config(cli.out, num_iterations=2))
    regime = RegimeCallback(write_file=False)
    regime.tokens = RecordingAccumulator()
    torch.manual_seed(0)
    trainer = BaseGRPOTrainer(
        model=cli.checkpoint,
        reward_funcs=[length_reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": SCRIPT_PROMPTS}),
        callbacks=[regime],
    )
    trainer.train()
    accelerator = trainer.accelerator
    record = {
        "num_processes": accelerator.num_processes,
        "process_index": accelerator.process_index,
        "summary": regime.summary(),
        "logged": [
            {key: value for key, value in entry.items() if key.startswith("regime/")}
            for entry in trainer.state.log_history
            if "loss" in entry
        ],
        "local": regime.tokens.local,
        "pooled": regime.tokens.pooled,
    }
    os.makedirs(cli.out, exist_ok=True)
    with open(os.path.join(cli.out, f"rank{accelerator.process_index}.json"), "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    main()
