"""Three HAPO optimizer steps with every component on; every process records what the rollout and the seams saw.

Launched by ``tests/test_hapo.py`` with 2 CPU processes::

    CUDA_VISIBLE_DEVICES="" python -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no --main_process_port PORT \
        tests/scripts/hapo_two_process.py --checkpoint TINY_CHECKPOINT --out DIR

Writes ``DIR/rank<process index>.pt`` with:

* ``num_processes``, ``process_index``;
* ``stats_used``: per training generation, the rollout statistics it sampled with (``None`` at the first);
* ``local_entropies``: per statistics update, this process's first-pass valid-token entropies (before the gather);
* ``stats_computed``: per statistics update, the statistics computed from the gathered entropies;
* ``rewards_per_func``, ``completion_lengths``, ``full_advantages``, ``local_advantages``, ``process_slice``: the
  advantage seam of every generation;
* ``logged``: the ``hapo/*`` metrics and the loss of every ``log_history`` entry;
* ``processor_calls``: how many decoding steps ran through the adaptive processor, per generation.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from trl_ext.trainers.hapo import HAPOConfig, HAPOTrainer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: conftest, twoproc
from conftest import length_reward  # noqa: E402
from twoproc import SCRIPT_PROMPTS, script_cli, script_config  # noqa: E402

MAX_STEPS = 3


class RecordingHAPOTrainer(HAPOTrainer):
    """HAPOTrainer that records the rollout statistics, the gathered entropies and the advantage seam."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record: dict = {
            "stats_used": [],
            "local_entropies": [],
            "stats_computed": [],
            "rewards_per_func": [],
            "completion_lengths": [],
            "full_advantages": [],
            "local_advantages": [],
            "processor_calls": [],
        }

    def hapo_build_processor(self, stats, settings):
        processor = super().hapo_build_processor(stats, settings)
        processor.history = []  # count the decoding steps that went through it
        self._recorded_processor = processor
        return processor

    def _generate_and_score_completions(self, inputs):
        if self.model.training:
            pending = self.hapo_temperature.pending or self.hapo_temperature.current
            self.record["stats_used"].append(None if pending is None else pending.state_dict())
        self._recorded_processor = None
        output = super()._generate_and_score_completions(inputs)
        processor = self._recorded_processor
        self.record["processor_calls"].append(0 if processor is None else len(processor.history))
        self.record["local_advantages"].append(output["advantages"].detach().clone())
        return output

    def _check_advantages(self, advantages, batch):
        advantages = super()._check_advantages(advantages, batch)
        self.record["rewards_per_func"].append(batch.rewards_per_func.detach().clone())
        self.record["completion_lengths"].append(batch.completion_lengths.detach().clone())
        self.record["full_advantages"].append(advantages.detach().clone())
        self.record["process_slice"] = (batch.process_slice.start, batch.process_slice.stop)
        return advantages

    def _update_temperature_statistics(self):
        self.record["local_entropies"].append(torch.cat(self._hapo_entropy_buffer).detach().clone())
        super()._update_temperature_statistics()
        self.record["stats_computed"].append(self.hapo_temperature.pending.state_dict())


def main() -> None:
    cli = script_cli(__doc__)
    # hapo_temperature_tau: a wide range, so that the realised temperatures visibly spread
    args = HAPOConfig(**script_config(cli.out, hapo_temperature_tau=0.5, max_steps=MAX_STEPS, disable_tqdm=True))
    trainer = RecordingHAPOTrainer(
        model=cli.checkpoint,
        reward_funcs=[length_reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": SCRIPT_PROMPTS}),
        processing_class=AutoTokenizer.from_pretrained(cli.checkpoint),
    )
    trainer.train()

    record = trainer.record
    record["num_processes"] = trainer.accelerator.num_processes
    record["process_index"] = trainer.accelerator.process_index
    record["logged"] = [
        {k: v for k, v in entry.items() if k.startswith("hapo/") or k == "loss"}
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    os.makedirs(cli.out, exist_ok=True)
    torch.save(record, os.path.join(cli.out, f"rank{record['process_index']}.pt"))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
    import torch.distributed

    if torch.distributed.is_initialized():  # join gloo's threads before exit: without it a rare abort at teardown
        torch.distributed.destroy_process_group()  # ("terminate called without an active exception") fails the run
