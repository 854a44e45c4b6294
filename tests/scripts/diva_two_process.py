"""DIVATrainer for a few steps; every process records its difficulty store after each generation batch.

Run with ``accelerate launch --multi_gpu --num_processes 2`` (see ``tests/twoproc.py``) or plain ``python``. With
``--model text`` it trains on the built-in ``arithmetic_variants`` task with the tiny Qwen2; with ``--model vlm`` on
small coloured images (ids, rewordings, level 1 so that every variant's image is transformed) with the tiny LLaVA.
num_generations = 2 and 3 prompt rows per process, so a problem's original and its variant (two rows) sit on
different processes in some batches. Writes ``<out>/rank<i>.pt`` with, per generation batch: the store's state, the
gathered ids and difficulties, the full advantages the estimator returned, and the local advantages the loss used.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoProcessor, AutoTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/ for conftest helpers
from conftest import char_sum_reward, make_image_dataset  # noqa: E402

from trl_ext import DIVAConfig, DIVATrainer  # noqa: E402
from trl_ext.data import get_task  # noqa: E402

MAX_STEPS = 4


class RecordingDIVATrainer(DIVATrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = {"stores": [], "ids": [], "difficulties": [], "full_advantages": [], "local_advantages": []}

    def _check_advantages(self, advantages, batch):
        advantages = super()._check_advantages(advantages, batch)
        if batch.mode == "train":
            self.record["ids"].append(list(batch.extras["diva_ids"]))
            self.record["difficulties"].append(list(batch.extras["diva_difficulties"]))
            self.record["full_advantages"].append(advantages.detach().clone())
            self.record["process_slice"] = (batch.process_slice.start, batch.process_slice.stop)
        return advantages

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.record["local_advantages"].append(output["advantages"].detach().clone())
            self.record["stores"].append(self.difficulty_store.state_dict())
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--model", choices=("text", "vlm"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-device-rows", type=int, default=3)
    cli = parser.parse_args()

    if cli.model == "text":
        task = get_task("arithmetic_variants")
        dataset = task.make_dataset(24, 0)
        reward_funcs = task.reward_funcs + [char_sum_reward]  # accuracy alone is 0 for a random model
        processing_class = AutoTokenizer.from_pretrained(cli.checkpoint)
        extra = dict(diva_hint_template="{hints}={question}", max_completion_length=2)
    else:
        dataset = make_image_dataset(12)
        dataset = dataset.add_column("id", [f"img{i}" for i in range(len(dataset))])
        dataset = dataset.add_column("difficulty", [1] * len(dataset))
        dataset = dataset.add_column("variants", [["which colour is it?"]] * len(dataset))
        reward_funcs = [char_sum_reward]
        processing_class = AutoProcessor.from_pretrained(cli.checkpoint)
        extra = dict(max_completion_length=4)
    args = DIVAConfig(
        output_dir=os.path.join(cli.out, "trainer"),
        per_device_train_batch_size=2 * cli.per_device_rows,
        num_generations=2,
        learning_rate=5e-2,
        max_steps=MAX_STEPS,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,  # exercises the cross-process store check at save time
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_tqdm=True,
        **extra,
    )
    trainer = RecordingDIVATrainer(
        model=cli.checkpoint,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=processing_class,
    )
    trainer.train()
    record = trainer.record
    record["num_processes"] = trainer.accelerator.num_processes
    record["process_index"] = trainer.accelerator.process_index
    os.makedirs(cli.out, exist_ok=True)
    torch.save(record, os.path.join(cli.out, f"rank{record['process_index']}.pt"))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
    import torch.distributed

    if torch.distributed.is_initialized():  # join gloo's threads before exit: without it a rare abort at teardown
        torch.distributed.destroy_process_group()  # ("terminate called without an active exception") fails the run
