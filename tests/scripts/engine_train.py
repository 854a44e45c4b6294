"""Train trl-ext trainers (and ``trl.GRPOTrainer``) under the launching engine and record, per process, the proof.

Launched by ``tests/test_engines.py`` with ``accelerate launch --config_file recipes/accelerate_configs/<engine>.yaml
--num_processes 2 --mixed_precision no ...`` on CPU processes (FSDP2 needs ``tests/engine_shims`` on ``PYTHONPATH``).
The trainers named by ``--trainers`` are built and trained one after the other in this one launch (each pays the
start-up once), every one from the same tiny offline checkpoint, seed and data:

* ``trl`` (``trl.GRPOTrainer``), ``grpo``, ``bnpo``, ``minpro`` (``num_iterations=2``, so its prefix ratio acts),
  ``hapo`` (every component on, adaptive temperature included) on 16 ``a+b=`` prompts with a length reward;
* ``diva`` on the built-in ``arithmetic_variants`` task;
* ``calibadv`` on two ``deepsearch`` questions with ``--calibadv-checkpoint``: the real rollout and transformers
  ``generate`` on the sharded model, made to write a script by ``ScriptedTurns`` (``tests/calibadv_helpers.py``):
  process 0's question is answered in the first turn, process 1's after two searches, so the processes run different
  numbers of turns (what hangs ZeRO-3 and breaks FSDP2 without lockstep turns).

For each trainer every process writes ``<out>/<trainer>/rank<i>.json`` with: ``num_processes``, ``process_index``,
``global_step``, the engine proof (DeepSpeed: the wrapper's type and ZeRO stage; FSDP2: whether every parameter is a
DTensor sharded on dim 0; per-rank local and full parameter numel), the trainer's cross-step state
(``trl_ext_state_dict()``, DIVA's difficulty store), the logged losses, a SHA-256 of the gathered full weights, and
for calibadv the turn counts and turn-generator calls of this process. Process 0 also saves the gathered full
weights as ``<out>/<trainer>/weights.pt``. With ``--save-steps`` it checkpoints, with ``--resume-run`` and
``--resume-step`` it resumes each trainer from a checkpoint of an earlier run.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/ for the helpers
from calibadv_helpers import ScriptedTurns  # noqa: E402
from conftest import char_sum_reward, length_reward  # noqa: E402
from uneven_turns import uneven_turn_questions  # noqa: E402

from trl_ext import get_trainer  # noqa: E402
from trl_ext.data import get_task  # noqa: E402
from trl_ext.rollout.search_agent import SearchAgentRollout  # noqa: E402

TRAINERS = ("trl", "grpo", "bnpo", "minpro", "hapo", "diva", "calibadv")


# ---------------------------------------------------------------------------------------------------------------------
# Engine facts
# ---------------------------------------------------------------------------------------------------------------------


def engine_proof(trainer: Any) -> dict[str, Any]:
    """What wraps the model and how its parameters are split over the processes."""
    wrapped, model = trainer.model_wrapped, trainer.model
    proof: dict[str, Any] = {"wrapper": f"{type(wrapped).__module__}.{type(wrapped).__qualname__}"}
    params = list(model.parameters())
    try:
        import deepspeed
    except ImportError:
        deepspeed = None
    if deepspeed is not None and isinstance(wrapped, deepspeed.DeepSpeedEngine):
        proof["deepspeed_engine"] = True
        proof["zero_stage"] = int(wrapped.zero_optimization_stage())
        if proof["zero_stage"] == 3:  # each process holds one partition of every parameter
            proof["full_numel"] = sum(int(p.ds_numel) for p in params)
            proof["local_numel"] = sum(int(p.ds_tensor.numel()) for p in params)
        else:  # parameters replicated; ZeRO-1/2 partition the fp32 optimizer copy
            proof["full_numel"] = proof["local_numel"] = sum(p.numel() for p in params)
            partitions = getattr(wrapped.optimizer, "single_partition_of_fp32_groups", None)
            if partitions is not None:
                proof["optimizer_partition_numel"] = sum(int(t.numel()) for t in partitions)
        return proof
    proof["deepspeed_engine"] = False
    from torch.distributed.tensor import DTensor, Shard

    dtensors = [p for p in params if isinstance(p, DTensor)]
    proof["all_dtensor"] = len(dtensors) == len(params)
    proof["all_shard0"] = proof["all_dtensor"] and all(tuple(p.placements) == (Shard(0),) for p in dtensors)
    proof["full_numel"] = sum(p.numel() for p in params)
    proof["local_numel"] = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        FSDPModule = ()  # noqa: N806
    proof["fsdp_module"] = isinstance(model, FSDPModule) if FSDPModule else False
    return proof


def full_weights(trainer: Any) -> dict[str, torch.Tensor]:
    """The full (gathered) float32 weights, by name; a collective under ZeRO-3 and FSDP2 (call on every process)."""
    model = trainer.model
    names = [name for name, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    if getattr(trainer, "is_deepspeed_enabled", False) and hasattr(params[0], "ds_numel"):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {n: p.detach().float().cpu().clone() for n, p in zip(names, params, strict=True)}
    from torch.distributed.tensor import DTensor

    return {
        n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().float().cpu().clone()
        for n, p in zip(names, params, strict=True)
    }


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Trainers
# ---------------------------------------------------------------------------------------------------------------------


class CountingGenerator:
    """Forwards to the production turn generator, recording the number of contexts of every call."""

    def __init__(self, inner: Any, calls: list[int]) -> None:
        self.inner, self.calls = inner, calls
        self.collective = bool(getattr(inner, "collective", False))

    def __call__(self, contexts, max_new_tokens, rows, turn):
        self.calls.append(len(contexts))
        return self.inner(contexts, max_new_tokens, rows, turn)


class RecordingRollout(SearchAgentRollout):
    """The production rollout, recording this process's turn counts, generator calls and its ``collective`` flag."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.turns: list[list[int]] = []
        self.generator_calls: list[list[int]] = []
        self.collective: list[bool] = []

    def make_turn_generator(self, model, tokenizer, trainer=None):
        inner = super().make_turn_generator(model, tokenizer, trainer)
        self.generator_calls.append([])
        self.collective.append(bool(getattr(inner, "collective", False)))
        return CountingGenerator(inner, self.generator_calls[-1])

    def run(self, *args, **kwargs):
        output = super().run(*args, **kwargs)
        self.turns.append(list(output["calibadv_turns"]))
        return output


def build_trainer(name: str, cli: argparse.Namespace, output_dir: str) -> Any:
    """Trainer ``name`` (``"trl"`` is ``trl.GRPOTrainer``) on the tiny model, under the launching engine."""
    if name == "trl":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        Trainer, Config = get_trainer(name)
    common = dict(
        output_dir=output_dir,
        learning_rate=5e-2,
        max_steps=cli.max_steps,
        logging_steps=1,
        report_to="none",
        use_cpu=False,  # the engines are selected by the accelerate config; see tests/engine_shims for FSDP2
        ddp_backend="gloo",
        bf16=False,
        seed=0,
        disable_tqdm=True,
        shuffle_dataset=False,
        save_strategy="steps" if cli.save_steps else "no",
        save_steps=cli.save_steps or 500,
    )
    checkpoint = cli.checkpoint
    if name == "diva":
        task = get_task("arithmetic_variants")
        dataset = task.make_dataset(24, 0)
        reward_funcs = task.reward_funcs + [char_sum_reward]  # accuracy alone is 0 for a random model
        args = Config(
            per_device_train_batch_size=4,
            num_generations=2,
            max_completion_length=4,
            diva_hint_template="{hints}={question}",
            **common,
        )
    elif name == "calibadv":
        checkpoint = cli.calibadv_checkpoint
        dataset, _ = uneven_turn_questions()
        reward_funcs = get_task("deepsearch").reward_funcs
        args = Config(
            per_device_train_batch_size=4,  # one question (four completions) per process
            num_generations=4,
            max_completion_length=700,
            loss_type="dapo",
            calibadv_corpus_path="deepsearch",
            calibadv_max_turns=2,
            calibadv_max_tokens_per_turn=64,
            calibadv_max_obs_tokens=200,
            calibadv_topk=1,
            **common,
        )
    else:
        dataset = Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(4) for b in range(4)]})
        reward_funcs = [length_reward]
        extra: dict[str, Any] = {"num_iterations": 2} if name == "minpro" else {}
        args = Config(per_device_train_batch_size=4, num_generations=4, max_completion_length=8, **common, **extra)
    trainer = Trainer(
        model=checkpoint,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(checkpoint),
    )
    if name == "calibadv":
        installed = trainer.rollout_func
        _, scripts = uneven_turn_questions()
        trainer.rollout_func = RecordingRollout(
            trainer.retriever,
            max_turns=installed.max_turns,
            max_tokens_per_turn=installed.max_tokens_per_turn,
            max_obs_tokens=installed.max_obs_tokens,
            top_k=installed.top_k,
            prepend_think_token=installed.prepend_think_token,
            logits_processors=[
                *installed.logits_processors,
                ScriptedTurns(trainer.processing_class, scripts, installed.prepend_think_token),
            ],
        )
    return trainer


def record(name: str, trainer: Any, out: str) -> None:
    """Write this process's record of ``trainer`` (see the module docstring); gathers the weights on every process."""
    accelerator = trainer.accelerator
    weights = full_weights(trainer)
    data: dict[str, Any] = {
        "trainer": name,
        "num_processes": accelerator.num_processes,
        "process_index": accelerator.process_index,
        "global_step": trainer.state.global_step,
        "engine": engine_proof(trainer),
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "weights_sha256": weights_digest(weights),
    }
    if hasattr(trainer, "trl_ext_state_dict"):
        data["trl_ext_state"] = trainer.trl_ext_state_dict()
    if hasattr(trainer, "difficulty_store"):
        data["diva_store"] = trainer.difficulty_store.state_dict()
    rollout = getattr(trainer, "rollout_func", None)
    if isinstance(rollout, RecordingRollout):
        data["calibadv_turns"] = rollout.turns
        data["calibadv_generator_calls"] = rollout.generator_calls
        data["calibadv_collective"] = rollout.collective
    directory = os.path.join(out, name)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"rank{accelerator.process_index}.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)
    if accelerator.is_main_process:
        torch.save(weights, os.path.join(directory, "weights.pt"))
    accelerator.wait_for_everyone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="tiny checkpoint (build_tiny_checkpoint)")
    parser.add_argument("--calibadv-checkpoint", help="tiny checkpoint over the deepsearch alphabet (calibadv)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--trainers", default=",".join(TRAINERS))
    parser.add_argument("--max-steps", type=int, default=2)
    parser.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps (0: no checkpoints)")
    parser.add_argument("--resume-run", help="resume each trainer from <resume-run>/<trainer>/trainer/checkpoint-N")
    parser.add_argument("--resume-step", type=int, default=0, help="N of --resume-run")
    cli = parser.parse_args()

    for name in cli.trainers.split(","):
        if name not in TRAINERS:
            raise SystemExit(f"unknown trainer {name!r}; choose from {TRAINERS}")
        trainer = build_trainer(name, cli, os.path.join(cli.out, name, "trainer"))
        resume = None
        if cli.resume_run:
            resume = os.path.join(cli.resume_run, name, "trainer", f"checkpoint-{cli.resume_step}")
        trainer.train(resume_from_checkpoint=resume)
        record(name, trainer, cli.out)
        del trainer
        gc.collect()


if __name__ == "__main__":
    main()
    import torch.distributed

    if torch.distributed.is_initialized():  # join gloo's threads before exit: without it a rare abort at teardown
        torch.distributed.destroy_process_group()  # ("terminate called without an active exception") fails the run
