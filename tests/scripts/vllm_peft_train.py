"""Train trl-ext trainers with a LoRA adapter (``--peft lora``) or 4-bit NF4 QLoRA (``--peft qlora``) and
``use_vllm=True, vllm_mode="colocate"`` on CPU, and record whether the merged weights reach the engine
(tests/test_vllm.py).

TRL merges the adapter into the base weights it pushes to the colocated engine (``VLLMGeneration._iter_named_params``:
``merge_adapter``, the base names, ``unmerge_adapter``); with a 4-bit base it builds the engine with
``quantization="bitsandbytes"``. The observable is the engine's own prompt log-probs of a fixed token sequence
(``SamplingParams(prompt_logprobs=0)``), taken before training and after it, against the trainer's model (base +
adapter) on the same sequence at the start and after every optimizer step: TRL syncs before each generation, so
after 2 steps the engine should hold the weights after step 1.

Per trainer, ``<out>/<trainer>/rank0.json`` holds ``vllm_train.record``'s fields and ``probe``
(``engine_before``, ``engine_after``, ``trainer_by_step``), ``quantization`` (what TRL passed to vLLM) and
``lora_max_change`` / ``base_max_change`` (how far the adapter's and the base's weights moved).

With ``--try-qlora`` it first tries to build grpo with QLoRA and writes what happened to
``<out>/qlora_attempt.json`` (the installed vLLM 0.32 refuses TRL's ``quantization="bitsandbytes"``).

Usage: python vllm_peft_train.py --checkpoint PATH --out DIR --peft {lora,qlora} [--trainers grpo,hapo] [--try-qlora]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from typing import Any

from vllm_common import TESTS  # noqa: F401  (puts tests/ on sys.path)

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import vllm_shims  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from vllm_train import build_trainer, count_engine_calls, record  # noqa: E402

PROBE_TEXT = "2+3=5;1+0=1"


def engine_logprobs(llm: Any, ids: list[int]) -> list[float]:
    """The colocated engine's prompt log-probs of ``ids[1:]`` (one forward, nothing sampled that matters)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
    (output,) = llm.generate([{"prompt_token_ids": ids}], sampling_params=params, use_tqdm=False)
    return [float(output.prompt_logprobs[t][ids[t]].logprob) for t in range(1, len(ids))]


class ProbeCallback(TrainerCallback):
    """The trainer model's log-probs of the probe (adapter active) at the start and after every optimizer step."""

    def __init__(self, trainer: Any, ids: list[int]) -> None:
        self.trainer, self.ids, self.by_step = trainer, ids, {}

    def _probe(self, state: Any) -> None:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([self.ids])).logits[0, :-1].float()
        logprobs = torch.log_softmax(logits, -1).gather(1, torch.tensor(self.ids[1:]).unsqueeze(1)).squeeze(1)
        self.by_step[int(state.global_step)] = logprobs.tolist()

    def on_train_begin(self, args, state, control, **kwargs):
        self._probe(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._probe(state)


def peft_kwargs(kind: str) -> dict[str, Any]:
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    kwargs: dict[str, Any] = {
        "peft_config": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    }
    if kind == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    return kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--peft", choices=("lora", "qlora"), required=True)
    parser.add_argument("--trainers", default="grpo,hapo")
    parser.add_argument("--max-steps", type=int, default=2)
    parser.add_argument("--try-qlora", action="store_true", help="first try building grpo with QLoRA (see below)")
    cli = parser.parse_args()
    if not vllm_shims.install():
        print("vLLM is not on its CPU platform: TRL's own weight sync is used", file=sys.stderr)
    if cli.try_qlora:
        # vLLM 0.32 has no "bitsandbytes" quantization method, which TRL 1.16 asks for when the model holds bnb 4-bit
        # layers: the engine is refused at configuration (before it starts). Recorded, so that the test notices the
        # day a vLLM accepts it and QLoRA + colocate can be tested for real.
        os.makedirs(cli.out, exist_ok=True)
        attempt: dict[str, Any] = {"error_type": None, "error": None}
        try:
            trainer = build_trainer("grpo", cli, os.path.join(cli.out, "qlora", "trainer"), **peft_kwargs("qlora"))
        except Exception as error:  # noqa: BLE001  (recorded for the test to judge)
            attempt = {"error_type": type(error).__name__, "error": str(error)}
        else:
            del trainer
        gc.collect()
        with open(os.path.join(cli.out, "qlora_attempt.json"), "w") as f:
            json.dump(attempt, f, indent=1)
    for name in cli.trainers.split(","):
        trainer = build_trainer(name, cli, os.path.join(cli.out, name, "trainer"), **peft_kwargs(cli.peft))
        llm = trainer.vllm_generation.llm
        probe_ids = trainer.processing_class(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        engine_before = engine_logprobs(llm, probe_ids)
        probe = ProbeCallback(trainer, probe_ids)
        trainer.add_callback(probe)
        initial = {n: p.detach().float().cpu().clone() for n, p in trainer.model.named_parameters()}
        calls = count_engine_calls(trainer)
        trainer.train()
        record(name, trainer, initial, calls, cli.out)
        path = os.path.join(cli.out, name, "rank0.json")
        with open(path) as f:
            data = json.load(f)
        data["probe"] = {
            "engine_before": engine_before,
            "engine_after": engine_logprobs(llm, probe_ids),
            "trainer_by_step": probe.by_step,
        }
        data["quantization"] = llm.llm_engine.vllm_config.model_config.quantization
        changes = {
            n: (p.detach().float().cpu() - initial[n]).abs().max().item() for n, p in trainer.model.named_parameters()
        }
        data["lora_max_change"] = max(change for n, change in changes.items() if "lora_" in n)
        data["base_max_change"] = max(change for n, change in changes.items() if "lora_" not in n)
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
        del trainer, llm
        gc.collect()


if __name__ == "__main__":
    main()
    import torch.distributed

    if torch.distributed.is_initialized():  # as vllm_train.py: join gloo's threads before exit
        torch.distributed.destroy_process_group()
