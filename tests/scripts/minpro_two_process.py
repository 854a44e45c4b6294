"""Two off-policy optimizer steps of MinPROTrainer; every process records the logged and its local MinPRO metrics.

Launched by ``tests/test_minpro.py`` with 2 CPU processes::

    CUDA_VISIBLE_DEVICES="" python -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no --main_process_port PORT \
        tests/scripts/minpro_two_process.py --checkpoint TINY_CHECKPOINT --out DIR

``num_iterations=2`` makes the second step reuse the first step's generation batch after one update, so M departs
from 1 there. Writes ``DIR/rank<process index>.json`` with ``num_processes``, ``process_index``, ``logged`` (the
MinPRO metrics of every ``log_history`` entry) and ``local_weight_min`` / ``local_weight_max`` (the
minimum / maximum of M over this process's own loss tokens, per micro-batch, before the gather).
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
from transformers import AutoTokenizer  # noqa: E402

from trl_ext.trainers.minpro import MinPROConfig, MinPROTrainer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: conftest, twoproc
from conftest import length_reward  # noqa: E402
from twoproc import SCRIPT_PROMPTS, script_cli, script_config  # noqa: E402

METRIC_KEYS = ("minpro/weight_mean", "minpro/weight_min", "minpro/weight_max", "minpro/frac_weight_below_half")


def main() -> None:
    cli = script_cli(__doc__)
    args = MinPROConfig(**script_config(cli.out, num_iterations=2, disable_tqdm=True))
    trainer = MinPROTrainer(
        model=cli.checkpoint,
        reward_funcs=[length_reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": SCRIPT_PROMPTS}),
        processing_class=AutoTokenizer.from_pretrained(cli.checkpoint),
    )
    local_mins: list[float] = []
    local_maxs: list[float] = []
    token_weights = trainer.policy_objective.token_weights

    def recording_token_weights(ctx):
        weights = token_weights(ctx)
        mask = ctx.mask.bool()
        local_mins.append(weights[mask].min().item() if mask.any() else float("inf"))
        local_maxs.append(weights[mask].max().item() if mask.any() else float("-inf"))
        return weights

    trainer.policy_objective.token_weights = recording_token_weights
    torch.manual_seed(0)
    trainer.train()

    record = {
        "num_processes": trainer.accelerator.num_processes,
        "process_index": trainer.accelerator.process_index,
        "logged": [
            {key: entry[key] for key in METRIC_KEYS} for entry in trainer.state.log_history if METRIC_KEYS[0] in entry
        ],
        "local_weight_min": local_mins,
        "local_weight_max": local_maxs,
    }
    os.makedirs(cli.out, exist_ok=True)
    with open(os.path.join(cli.out, f"rank{record['process_index']}.json"), "w") as f:
        json.dump(record, f)
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
    import torch.distributed

    if torch.distributed.is_initialized():  # join gloo's threads before exit: without it a rare abort at teardown
        torch.distributed.destroy_process_group()  # ("terminate called without an active exception") fails the run
