"""``trl-ext train`` as one machine of a multi-machine job runs it, then a record of what this process ended with.

Launched twice by ``tests/test_multinode.py`` (``accelerate launch --num_machines 2 --machine_rank R ...``); takes
``trl-ext train``'s arguments plus ``--record DIR`` and writes ``DIR/rank<global rank>.safetensors`` (the trained
weights this process holds) and ``DIR/rank<global rank>.json`` (world size, machine rank, global step, log history
and trl-ext's own trainer state). Model files are saved by the global main process only (transformers 5 writes them
from global rank 0 whatever ``save_on_each_node`` says), so each process's weights are recorded here instead.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from safetensors.torch import save_file  # noqa: E402

from trl_ext.training import build_trainer, make_train_parser, peek_trainer_name, train_and_save  # noqa: E402


def length_reward(completions, **kwargs):
    """Completion length mod 3, scaled to [0, 1]: spread on a random model's completions, so a step has advantages
    (the arithmetic task's accuracy is 0 on every completion of an untrained tiny model)."""
    return [(len(str(c)) % 3) / 2 for c in completions]


def main() -> None:
    argv = sys.argv[1:]
    at = argv.index("--record")
    record_dir = argv[at + 1]
    del argv[at : at + 2]
    parser = make_train_parser(peek_trainer_name(argv))
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(argv)
    trainer = build_trainer(script_args, training_args, model_args, dataset_args)
    train_and_save(trainer, training_args)

    accelerator = trainer.accelerator
    weights = accelerator.unwrap_model(trainer.model).state_dict()
    seen: set[int] = set()
    tensors = {}
    for name, tensor in weights.items():  # tied weights once (the embedding, as transformers saves them)
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            tensors[name] = tensor.detach().cpu().contiguous().clone()
    rank = accelerator.process_index
    os.makedirs(record_dir, exist_ok=True)
    save_file(tensors, os.path.join(record_dir, f"rank{rank}.safetensors"))
    record = {
        "num_processes": accelerator.num_processes,
        "process_index": rank,
        "machine_rank": int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", "-1"))),
        "global_step": trainer.state.global_step,
        "log_history": trainer.state.log_history,
        "trl_ext_state": trainer.trl_ext_state_dict(),
    }
    with open(os.path.join(record_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f, indent=1, default=str)


if __name__ == "__main__":
    main()
