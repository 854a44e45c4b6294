"""Server mode checks against a running ``trl-ext vllm-serve`` (run by tests/test_vllm.py, writes JSON).

1. HAPO: requests through TRL's ``VLLMClient`` (the OpenAI completions endpoint) carrying the statistics as
   ``vllm_xargs`` sample the transformers processor's distribution; requests without them are plain T0.
2. The vLLM backend in server mode (one process: its gathers are local): one request per turn for every context,
   token ids with their log-probs, ``[]`` for an empty call, ``collective`` set.

Usage: python vllm_server_checks.py BASE_URL MODEL_PATH OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import vllm_common  # noqa: F401  (offline environment)


def main() -> None:
    base_url, path, out = sys.argv[1:4]
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM
    from trl.generation.vllm_client import VLLMClient

    from trl_ext.generation.vllm_engine import VLLMBackend
    from trl_ext.rollout.search_agent import STOP_STRINGS
    from trl_ext.rollout.temperature import AdaptiveTemperatureLogitsProcessor, TemperatureStatistics, logits_entropy
    from trl_ext.rollout.vllm_temperature import temperature_extra_args

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [[5 + i, 17, 23 + i, 9] for i in range(6)]
    with torch.no_grad():
        entropies = torch.cat([logits_entropy(model(torch.tensor([p])).logits[0]) for p in prompts])
    stats = TemperatureStatistics.from_entropies(entropies, 0.5, "signed")
    tau, base = 0.5, 0.8
    client = VLLMClient(base_url=base_url, connection_timeout=60)
    report: dict = {}
    for kind, extra in (("adaptive", {"vllm_xargs": temperature_extra_args(stats, tau)}), ("plain", {})):
        output = client.generate(
            prompts=prompts, n=1, temperature=base, max_tokens=24, logprobs=0, generation_kwargs={"seed": 1, **extra}
        )
        gaps, gaps_t0, tokens = [], [], 0
        for prompt, ids, steps in zip(output["prompt_ids"], output["completion_ids"], output["logprobs"], strict=True):
            context = torch.tensor([list(prompt) + list(ids)])
            with torch.no_grad():
                logits = model(context).logits[0, len(prompt) - 1 : -1].float()
            sampled = torch.tensor(ids).unsqueeze(1)
            processor = AdaptiveTemperatureLogitsProcessor(stats if kind == "adaptive" else None, tau, base)
            expected = torch.log_softmax(processor(context, logits), -1).gather(1, sampled).squeeze(1)
            at_base = torch.log_softmax(logits / base, -1).gather(1, sampled).squeeze(1)
            returned = torch.tensor([step[0] for step in steps])
            gaps.append((expected - returned).abs().max().item())
            gaps_t0.append((at_base - returned).abs().max().item())
            tokens += len(ids)
        report[kind] = {"max_logprob_gap": max(gaps), "max_gap_vs_plain_T0": max(gaps_t0), "tokens": tokens}

    generation = SimpleNamespace(
        mode="server",
        tensor_parallel_size=1,
        vllm_client=client,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        generation_kwargs={},
    )
    generator = VLLMBackend(generation, PartialState(), stop_strings=STOP_STRINGS)
    turns = generator([[5, 6, 7], [8, 9, 10, 11]], 16)
    report["turns"] = {
        "collective": generator.collective,
        "calls": generator.calls,
        "lengths": [[len(ids), len(logprobs)] for ids, logprobs in turns],
        "logprobs_finite_nonpositive": all(-1e9 < lp <= 0 for _, logprobs in turns for lp in logprobs),
        "empty_call": generator([], 16),
        "calls_after_empty": generator.calls,
    }
    Path(out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
