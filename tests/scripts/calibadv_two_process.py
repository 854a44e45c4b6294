"""CalibAdvTrainer for two steps on the built-in ``deepsearch`` task; every process records what the advantage seam saw.

Run with ``accelerate launch --multi_gpu --num_processes 2`` (see ``tests/twoproc.py``) or plain ``python``, on the
same arguments: the global batch is identical whatever the number of processes. Three questions x G = 4 completions
= 12 rows per generation batch; with 6 rows per process the second group spans both processes.

Generation is the production rollout (BM25 retrieval over the deepsearch corpus built from the config, observation
tokens, masks, step facts) with its turn generator replaced by a fixed table keyed by (prompt, global row % G, turn)
(``tests/calibadv_helpers.py``), so nothing is sampled and both runs see the same completions. Writes
``<out>/rank<i>.pt`` with, per generation batch: the full (N, T) advantages the estimator returned, the local ones
the loss used, the gathered rewards and transcripts, the estimator's metrics; plus the process slice, the number of
processes and the losses.
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
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/ for the helpers
from calibadv_helpers import TableRollout, deepsearch_table  # noqa: E402

from trl_ext import CalibAdvConfig, CalibAdvTrainer  # noqa: E402
from trl_ext.data import get_task  # noqa: E402

NUM_GENERATIONS = 4
NUM_PROMPTS = 3
MAX_STEPS = 2


class RecordingCalibAdvTrainer(CalibAdvTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = {"full_advantages": [], "local_advantages": [], "rewards": [], "transcripts": [], "metrics": []}
        self.record["losses"] = []

    def _check_advantages(self, advantages, batch):
        advantages = super()._check_advantages(advantages, batch)
        if batch.mode == "train":
            self.record["full_advantages"].append(advantages.detach().cpu().clone())
            self.record["rewards"].append(batch.rewards_per_func.detach().cpu().clone())
            self.record["transcripts"].append(list(batch.columns["calibadv_transcript"]))
            self.record["process_slice"] = (batch.process_slice.start, batch.process_slice.stop)
        return advantages

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.record["local_advantages"].append(output["advantages"].detach().cpu().clone())
            self.record["local_tool_mask"] = output["tool_mask"].detach().cpu().clone()
            self.record["metrics"].append(
                {k: v[-1] for k, v in self._metrics["train"].items() if k.startswith("calibadv/")}
            )
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.record["losses"].append(loss.detach().item())
        return loss


def make_dataset() -> Dataset:
    """The first NUM_PROMPTS distinct questions of a deepsearch dataset."""
    rows, seen = [], set()
    for row in get_task("deepsearch").make_dataset(64, 0):
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
        if len(rows) == NUM_PROMPTS:
            break
    return Dataset.from_list(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-device-batch", type=int, required=True)
    cli = parser.parse_args()

    dataset = make_dataset()
    args = CalibAdvConfig(
        output_dir=os.path.join(cli.out, "trainer"),
        per_device_train_batch_size=cli.per_device_batch,
        num_generations=NUM_GENERATIONS,
        max_completion_length=900,
        shuffle_dataset=False,
        learning_rate=1e-3,
        max_steps=MAX_STEPS,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_tqdm=True,
        loss_type="dapo",
        calibadv_corpus_path="deepsearch",
        calibadv_max_turns=2,
        calibadv_max_tokens_per_turn=96,
        calibadv_max_obs_tokens=300,
        calibadv_topk=2,
    )
    trainer = RecordingCalibAdvTrainer(
        model=cli.checkpoint,
        reward_funcs=get_task("deepsearch").reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(cli.checkpoint),
    )
    # The installed rollout's settings and the retriever built from the config, with a fixed-table turn generator.
    installed = trainer.rollout_func
    trainer.rollout_func = TableRollout(
        trainer.retriever,
        deepsearch_table(dataset, NUM_GENERATIONS),
        NUM_GENERATIONS,
        max_turns=installed.max_turns,
        max_tokens_per_turn=installed.max_tokens_per_turn,
        max_obs_tokens=installed.max_obs_tokens,
        top_k=installed.top_k,
    )
    trainer.train()
    record = trainer.record
    record["num_processes"] = trainer.accelerator.num_processes
    record["log_history"] = trainer.state.log_history
    os.makedirs(cli.out, exist_ok=True)
    torch.save(record, os.path.join(cli.out, f"rank{trainer.accelerator.process_index}.pt"))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
    import torch.distributed

    if torch.distributed.is_initialized():  # join gloo's threads before exit: without it a rare abort at teardown
        torch.distributed.destroy_process_group()  # ("terminate called without an active exception") fails the run
