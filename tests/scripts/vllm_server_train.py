"""Train trl-ext trainers with ``use_vllm=True, vllm_mode="server"`` against a running ``trl-ext vllm-serve`` on CPU
and record the proof (tests/test_vllm.py).

The trainers (``--trainers``, default ``hapo,calibadv``) are built by ``vllm_train.build_trainer`` with server
settings (``vllm_server_base_url``, a free ``vllm_group_port``) and trained (2 optimizer steps; CalibAdv 3, see
``STEPS``) one after the other in this process, all from ``--checkpoint``, the model the server serves (TRL pushes
the trainer's weights before its first generation, so the second trainer starts the server from the checkpoint
again). The weight sync goes through TRL's ``VLLMClient`` with the test-only gloo data plane
(``vllm_shims.gloo_transfer``: TRL's sync needs CUDA for NCCL).

Besides ``vllm_train.record``'s fields (engine type: TRL's ``VLLMClient``; ``engine_generate_calls``: its
``generate`` calls), ``<out>/<trainer>/rank0.json`` gets:

* ``probe``: the log-probs of a fixed token sequence under the trainer's model at the start, after each optimizer
  step, and as the *server* computes them after training (TRL's ``get_sequence_logprobs``: the server's prompt
  log-probs). TRL syncs before each generation, so the server should hold the weights of the last generation (after
  the last step but one), not the initial ones nor the final ones.
  After the last trainer the checkpoint's weights are pushed back (``server_after_restore``: the probe again).
* ``adaptive_calls`` (HAPO): for every server request carrying HAPO's statistics, the log-probs the server returned
  for the sampled tokens against the trainer's own model at that moment with the temperatures T_t that
  ``rollout_temperatures`` gives for those statistics (and, as contrasts, against plain T0 and against the initial
  model), and the range of those T_t.

Usage: python vllm_server_train.py --server URL --checkpoint PATH --out DIR [--trainers hapo,calibadv]
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
from transformers import AutoModelForCausalLM, TrainerCallback  # noqa: E402
from twoproc import free_port  # noqa: E402
from vllm_shims import gloo_transfer  # noqa: E402
from vllm_train import build_trainer, count_engine_calls, record  # noqa: E402

from trl_ext.rollout.temperature import rollout_temperatures  # noqa: E402

PROBE_TEXT = "2+3=5;1+0=1"
# CalibAdv's first step has zero advantages (its scripted question is answered alike by every completion), so its
# weights after step 1 are the initial ones; a third step makes the last synced weights (after step 2) differ.
STEPS = {"calibadv": 3}


def model_logprobs(model: Any, ids: list[int], start: int) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= start under ``model`` (float32 logits)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, start - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[start:]).unsqueeze(1)).squeeze(1)


class ProbeCallback(TrainerCallback):
    """The probe's log-probs under the training model at the start and after every optimizer step."""

    def __init__(self, trainer: Any, ids: list[int]) -> None:
        self.trainer, self.ids, self.by_step = trainer, ids, {}

    def _probe(self, state: Any) -> None:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        self.by_step[int(state.global_step)] = model_logprobs(model, self.ids, 1).tolist()

    def on_train_begin(self, args, state, control, **kwargs):
        self._probe(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._probe(state)


def at(logits: torch.Tensor, temperatures: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
    """Log-probs of the ``sampled`` tokens (one per row) after dividing each row of ``logits`` by its temperature."""
    return torch.log_softmax(logits / temperatures.unsqueeze(1), -1).gather(1, sampled).squeeze(1)


def check_adaptive_calls(trainer: Any, initial_model: Any) -> list[dict[str, Any]]:
    """Wrap the client's ``generate``: for requests with HAPO's statistics, compare the returned log-probs with the
    trainer's model at the temperatures the statistics give (see the module docstring)."""
    client = trainer.vllm_generation.vllm_client
    original = client.generate
    checks: list[dict[str, Any]] = []

    def generate(*args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        change = trainer.rollout_sampling_change()
        xargs = (kwargs.get("generation_kwargs") or {}).get("vllm_xargs") or {}
        if change is None or change.stats is None or not any(key.startswith("hapo") for key in xargs):
            return output
        base = float(trainer.temperature)
        model = trainer.accelerator.unwrap_model(trainer.model)
        gaps, gaps_t0, gaps_initial, temperatures = [], [], [], []
        for prompt, ids, steps in zip(output["prompt_ids"], output["completion_ids"], output["logprobs"], strict=True):
            if not ids:
                continue
            context = torch.tensor([list(prompt) + list(ids)])
            sampled = torch.tensor(ids).unsqueeze(1)
            returned = torch.tensor([step[0] for step in steps])

            with torch.no_grad():
                logits = model(context).logits[0, len(prompt) - 1 : -1].float()
                initial = initial_model(context).logits[0, len(prompt) - 1 : -1].float()
            temps = rollout_temperatures(logits, change.stats, change.tau, base)
            gaps.append((at(logits, temps, sampled) - returned).abs().max().item())
            gaps_t0.append((at(logits, torch.full_like(temps, base), sampled) - returned).abs().max().item())
            initial_temps = rollout_temperatures(initial, change.stats, change.tau, base)
            gaps_initial.append((at(initial, initial_temps, sampled) - returned).abs().max().item())
            temperatures.append(temps)
        temps = torch.cat(temperatures)
        checks.append(
            {
                "step": int(trainer.state.global_step),
                "tokens": int(temps.numel()),
                "tau": change.tau,
                "base_temperature": base,
                "max_logprob_gap": max(gaps),
                "max_gap_vs_plain_T0": max(gaps_t0),
                "max_gap_vs_initial_model": max(gaps_initial),
                "temperature_min": temps.min().item(),
                "temperature_max": temps.max().item(),
                "temperature_mean": temps.mean().item(),
            }
        )
        return output

    client.generate = generate
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--trainers", default="hapo,calibadv")
    cli = parser.parse_args()
    cli.calibadv_checkpoint = cli.checkpoint
    gloo_transfer.install_client()
    names = cli.trainers.split(",")
    for name in names:
        cli.group_port = free_port()
        cli.max_steps = STEPS.get(name, 2)
        trainer = build_trainer(name, cli, os.path.join(cli.out, name, "trainer"))
        client = trainer.vllm_generation.vllm_client
        tokenizer = trainer.processing_class
        probe_ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        probe = ProbeCallback(trainer, probe_ids)
        trainer.add_callback(probe)
        initial = {n: p.detach().float().cpu().clone() for n, p in trainer.model.named_parameters()}
        # from disk: a deepcopy of the trainer's model would keep its forward wrapper, bound to the training model
        initial_model = AutoModelForCausalLM.from_pretrained(cli.checkpoint, dtype=torch.float32).eval()
        calls = count_engine_calls(trainer)
        adaptive = check_adaptive_calls(trainer, initial_model) if name == "hapo" else None
        trainer.train()
        record(name, trainer, initial, calls, cli.out)
        served = client.get_sequence_logprobs([probe_ids], [1], top_logprobs=1)["actual_logprobs"][0]
        path = os.path.join(cli.out, name, "rank0.json")
        with open(path) as f:
            data = json.load(f)
        data["probe"] = {
            "trainer_by_step": probe.by_step,
            "server_after_training": [entry[0] for entry in served],
            "sent_tensors": len(trainer.vllm_generation._weight_metadata or []),
        }
        if adaptive is not None:
            data["adaptive_calls"] = adaptive
        if name == names[-1]:
            # Leave the server as it started (the checkpoint's weights) for later tests, through the same channel
            # (TRL's update_model_params); the probe checks that the whole model arrived.
            client.update_model_params(initial_model)
            client.reset_prefix_cache()
            served = client.get_sequence_logprobs([probe_ids], [1], top_logprobs=1)["actual_logprobs"][0]
            data["probe"]["server_after_restore"] = [entry[0] for entry in served]
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
        client.close_communicator()
        del trainer, initial_model
        gc.collect()
    print("done", file=sys.stderr)


if __name__ == "__main__":
    main()
