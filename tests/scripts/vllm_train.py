"""Train trl-ext trainers with ``use_vllm=True, vllm_mode="colocate"`` on CPU and record the proof (tests/test_vllm.py).

Run directly (one process) or under ``accelerate launch --multi_gpu --num_processes 2`` (two CPU processes). Each
trainer named by ``--trainers`` is built and trained for ``--max-steps`` optimizer steps, one after the other in this
process (each builds its own colocated engine), from the same tiny checkpoint (head size 32: vLLM's CPU attention
rejects the default 16). TRL's colocated weight sync goes through ``tests/vllm_shims`` (only on vLLM's CPU platform).

Per trainer and process, ``<out>/<trainer>/rank<i>.json`` records: the process count and index, ``global_step``, the
logged losses, the engine's type and how often its ``generate`` ran, the vLLM-only metrics TRL logs
(``sampling/sampling_logp_difference/*``, ``sampling/importance_sampling_ratio/*``: they exist only when the sampling
log-probs came from vLLM; the logp difference is small only if the weight sync worked), the trainer's cross-step
state, whether all weights are finite and how far they moved, and a SHA-256 of the weights. HAPO adds its temperature
metrics; CalibAdv its turn counts and turn-generator calls (its model writes scripted search turns through the
test-only vLLM processor ``vllm_shims.scripted``).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import sys
from typing import Any

from vllm_common import TESTS  # noqa: F401  (puts tests/ on sys.path)

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402
import vllm_shims  # noqa: E402
from calibadv_helpers import CalibAdvHAPOConfig, calibadv_hapo_trainer_class  # noqa: E402
from conftest import char_sum_reward  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from uneven_turns import uneven_turn_questions  # noqa: E402

from trl_ext import get_trainer  # noqa: E402
from trl_ext.data import get_task  # noqa: E402
from trl_ext.rollout.search_agent import SearchAgentRollout  # noqa: E402

TRAINERS = ("grpo", "bnpo", "minpro", "hapo", "diva", "calibadv", "calibadv_hapo")
SCRIPTED_FQCN = "vllm_shims.scripted:ScriptedVLLMTurns"


def register_scripted_processor() -> None:
    """Add the test-only scripted-turns processor to every engine TRL builds (a no-op for requests without it)."""
    from trl.generation import vllm_generation

    original = vllm_generation.LLM

    def build_llm(*args: Any, **kwargs: Any) -> Any:
        processors = list(kwargs.pop("logits_processors", None) or [])
        return original(*args, logits_processors=[*processors, SCRIPTED_FQCN], **kwargs)

    vllm_generation.LLM = build_llm


class CountingRollout(SearchAgentRollout):
    """The production rollout, recording the turn generator's type, collective flag, calls and the turn counts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generators: list[Any] = []
        self.turns: list[list[int]] = []
        self.transcripts: list[list[str]] = []

    def make_turn_generator(self, model, tokenizer, trainer=None):
        generator = super().make_turn_generator(model, tokenizer, trainer)
        self.generators.append(generator)
        return generator

    def run(self, *args, **kwargs):
        output = super().run(*args, **kwargs)
        self.turns.append(list(output["calibadv_turns"]))
        self.transcripts.append(list(output["calibadv_transcript"]))
        return output


def build_trainer(name: str, cli: argparse.Namespace, output_dir: str, **trainer_kwargs: Any) -> Any:
    """``name`` built as the lane trains it; ``trainer_kwargs`` go to the trainer (e.g. ``peft_config``)."""
    if name == "calibadv_hapo":  # CalibAdv's turns sampled with HAPO's adaptive temperature
        Trainer, Config = calibadv_hapo_trainer_class(), CalibAdvHAPOConfig
    else:
        Trainer, Config = get_trainer(name)
    common = dict(
        output_dir=output_dir,
        learning_rate=5e-2,
        max_steps=cli.max_steps,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_tqdm=True,
        shuffle_dataset=False,
        save_strategy="no",
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.3,
        vllm_max_model_length=1024,
    )
    server = getattr(cli, "server", None)  # vllm_server_train.py: a `trl-ext vllm-serve` URL and a free group port
    if server is not None:
        common.update(
            vllm_mode="server", vllm_server_base_url=server, vllm_group_port=cli.group_port, vllm_server_timeout=60
        )
    # per-request arguments for the engine's logits processors: SamplingParams.extra_args, or the request's vllm_xargs
    request_args = "vllm_xargs" if server is not None else "extra_args"
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
    elif name.startswith("calibadv"):
        checkpoint = cli.calibadv_checkpoint
        extra = {"hapo_temperature_tau": 0.5} if name == "calibadv_hapo" else {}
        dataset, scripts = uneven_turn_questions()
        reward_funcs = get_task("deepsearch").reward_funcs
        args = Config(
            per_device_train_batch_size=4,
            num_generations=4,
            max_completion_length=700,
            loss_type="dapo",
            # The scripted bias moves the sampling distribution far from the policy, so TRL's truncated importance
            # correction would zero every token; the transformers path applies none either.
            vllm_importance_sampling_correction=False,
            calibadv_corpus_path="deepsearch",
            calibadv_max_turns=2,
            calibadv_max_tokens_per_turn=64,
            calibadv_max_obs_tokens=200,
            calibadv_topk=1,
            # the scripted turns (tests/vllm_shims/scripted.py), followed at T = 1 with a large bonus
            generation_kwargs={request_args: {"scripted_turns": json.dumps(scripts), "scripted_bonus": 16.0}},
            **common,
            **extra,
        )
    else:
        dataset = Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(4) for b in range(4)]})
        reward_funcs = [char_sum_reward]
        extra: dict[str, Any] = {}
        if name == "minpro":
            # the prefix ratio needs a second pass over each batch (vLLM's log-probs as pi_old); twice the steps so
            # that a second generation follows a weight sync
            extra = {"num_iterations": 2, "minpro_ratio_source": "sampling", "max_steps": 2 * cli.max_steps}
        if name == "hapo":
            extra = {"hapo_adaptive_temperature": True, "hapo_temperature_tau": 0.5}
        args = Config(per_device_train_batch_size=4, num_generations=4, max_completion_length=8, **{**common, **extra})
    trainer = Trainer(
        model=checkpoint,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(checkpoint),
        **trainer_kwargs,
    )
    if name.startswith("calibadv"):
        installed = trainer.rollout_func
        trainer.rollout_func = CountingRollout(
            trainer.retriever,
            max_turns=installed.max_turns,
            max_tokens_per_turn=installed.max_tokens_per_turn,
            max_obs_tokens=installed.max_obs_tokens,
            top_k=installed.top_k,
            prepend_think_token=installed.prepend_think_token,
        )
    return trainer


def engine_of(trainer: Any) -> Any:
    """The trainer's vLLM engine: the colocated ``vllm.LLM``, or TRL's ``VLLMClient`` in server mode."""
    generation = trainer.vllm_generation
    return generation.vllm_client if generation.mode == "server" else generation.llm


def count_engine_calls(trainer: Any) -> list[int]:
    """Count the engine's ``generate`` calls (instance attribute, so TRL and the rollout both go through)."""
    engine = engine_of(trainer)
    calls = [0]
    original = engine.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    engine.generate = generate
    return calls


def record(name: str, trainer: Any, initial: dict[str, torch.Tensor], calls: list[int], out: str) -> None:
    accelerator = trainer.accelerator
    weights = {n: p.detach().float().cpu() for n, p in trainer.model.named_parameters()}
    digest = hashlib.sha256()
    for key in sorted(weights):
        digest.update(key.encode())
        digest.update(weights[key].contiguous().numpy().tobytes())
    logs = trainer.state.log_history
    data: dict[str, Any] = {
        "trainer": name,
        "num_processes": accelerator.num_processes,
        "process_index": accelerator.process_index,
        "global_step": trainer.state.global_step,
        "losses": [entry["loss"] for entry in logs if "loss" in entry],
        "engine_type": f"{type(engine_of(trainer)).__module__}.{type(engine_of(trainer)).__name__}",
        "vllm_mode": trainer.vllm_generation.mode,
        "engine_generate_calls": calls[0],
        "sampling_metrics": [
            {k: v for k, v in entry.items() if k.startswith("sampling/")} for entry in logs if "loss" in entry
        ],
        "weights_finite": all(bool(torch.isfinite(w).all()) for w in weights.values()),
        "weights_max_change": max((weights[n] - initial[n]).abs().max().item() for n in weights),
        "weights_sha256": digest.hexdigest(),
        "shim_active": vllm_shims.is_cpu_platform(),
    }
    if hasattr(trainer, "trl_ext_state_dict"):
        data["trl_ext_state"] = trainer.trl_ext_state_dict()
    if name in ("hapo", "calibadv_hapo"):
        data["hapo_metrics"] = [{k: v for k, v in entry.items() if k.startswith("hapo/")} for entry in logs]
    if name.startswith("calibadv"):
        rollout = trainer.rollout_func
        data["calibadv_turns"] = rollout.turns
        data["calibadv_transcripts"] = rollout.transcripts
        data["turn_generators"] = [type(g).__name__ for g in rollout.generators]
        data["turn_generator_collective"] = [bool(getattr(g, "collective", False)) for g in rollout.generators]
        data["turn_generator_calls"] = [int(getattr(g, "calls", -1)) for g in rollout.generators]
    directory = os.path.join(out, name)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"rank{accelerator.process_index}.json"), "w") as f:
        json.dump(data, f, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--calibadv-checkpoint")
    parser.add_argument("--out", required=True)
    parser.add_argument("--trainers", default=",".join(TRAINERS))
    parser.add_argument("--max-steps", type=int, default=2)
    cli = parser.parse_args()
    if not vllm_shims.install():
        print("vLLM is not on its CPU platform: TRL's own weight sync is used", file=sys.stderr)
    register_scripted_processor()
    for name in cli.trainers.split(","):
        if name not in TRAINERS:
            raise SystemExit(f"unknown trainer {name!r}; choose from {TRAINERS}")
        trainer = build_trainer(name, cli, os.path.join(cli.out, name, "trainer"))
        initial = {n: p.detach().float().cpu().clone() for n, p in trainer.model.named_parameters()}
        calls = count_engine_calls(trainer)
        trainer.train()
        record(name, trainer, initial, calls, cli.out)
        del trainer
        gc.collect()


if __name__ == "__main__":
    main()
    import torch.distributed

    if torch.distributed.is_initialized():  # join gloo's threads before exit: without it a rare abort at teardown
        torch.distributed.destroy_process_group()  # ("terminate called without an active exception") fails the run
