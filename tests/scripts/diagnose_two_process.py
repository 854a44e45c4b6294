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

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from trl_ext import BaseGRPOConfig, BaseGRPOTrainer, RegimeCallback  # noqa: E402
from trl_ext.diagnose.measures import TokenAccumulator  # noqa: E402


def length_reward(completions, **kwargs):
    """Completion length mod 4, scaled to [0, 1]: spread on random completions."""
    return [(len(c) % 4) / 3 for c in completions]


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    cli = parser.parse_args()

    prompts = [f"{a}+{b}=" for a in range(4) for b in range(4)]
    args = BaseGRPOConfig(
        output_dir=os.path.join(cli.out, "trainer"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        num_iterations=2,
        learning_rate=5e-2,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    regime = RegimeCallback(write_file=False)
    regime.tokens = RecordingAccumulator()
    torch.manual_seed(0)
    trainer = BaseGRPOTrainer(
        model=cli.checkpoint,
        reward_funcs=[length_reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
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
