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

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from trl_ext.trainers.hapo import HAPOConfig, HAPOTrainer  # noqa: E402

MAX_STEPS = 3


def length_reward(completions, **kwargs):
    """Completion length mod 4, scaled to [0, 1]: spread on random completions."""
    return [(len(c) % 4) / 3 for c in completions]


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="tiny checkpoint directory (build_tiny_checkpoint)")
    parser.add_argument("--out", required=True, help="directory for the per-process records")
    cli = parser.parse_args()

    prompts = [f"{a}+{b}=" for a in range(4) for b in range(4)]
    args = HAPOConfig(
        output_dir=os.path.join(cli.out, "trainer"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        learning_rate=5e-2,
        hapo_temperature_tau=0.5,  # a wide range, so that the realised temperatures visibly spread
        max_steps=MAX_STEPS,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_tqdm=True,
    )
    trainer = RecordingHAPOTrainer(
        model=cli.checkpoint,
        reward_funcs=[length_reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
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
