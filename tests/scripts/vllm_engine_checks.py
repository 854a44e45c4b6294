"""One vLLM engine, two checks against the transformers path (run by tests/test_vllm.py, writes JSON).

1. HAPO adaptive temperature: the same sharpened tiny model in vLLM (float32, HAPO's logits processor registered by
   name, as the trainer does) and in transformers. Requests with statistics and requests without share one batch. For
   every sampled token, the transformers log-prob under ``AdaptiveTemperatureLogitsProcessor`` (resp. plain T0) is
   compared with the log-prob vLLM returned, and the temperatures ``rollout_temperatures`` gives on the transformers
   logits with the summary the vLLM processor recorded.
2. CalibAdv's search-agent rollout with the vLLM backend against the transformers backend, both greedy on the
   same model, with the same scripted bias (``vllm_shims.scripted``) and a scripted retriever.

Usage: python vllm_engine_checks.py WORKDIR OUT.json
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from vllm_common import build_vllm_checkpoint, colocated_llm


def hapo_check(llm, path: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    from trl_ext.rollout.temperature import (
        AdaptiveTemperatureLogitsProcessor,
        TemperatureStatistics,
        logits_entropy,
        rollout_temperatures,
    )
    from trl_ext.rollout.vllm_temperature import pop_temperature_summary, temperature_extra_args

    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    prompts = [[5 + i, 17, 23 + i, 9] for i in range(6)]
    with torch.no_grad():  # statistics from the model's own entropies, so that h spans [-1, 1]
        entropies = torch.cat([logits_entropy(model(torch.tensor([p])).logits[0]) for p in prompts])
    stats = TemperatureStatistics.from_entropies(entropies, 0.5, "signed")
    tau, base, tag = 0.5, 0.8, "engine-check"
    adaptive = SamplingParams(
        temperature=base, max_tokens=24, logprobs=0, seed=3, extra_args=temperature_extra_args(stats, tau, tag)
    )
    plain = SamplingParams(temperature=base, max_tokens=24, logprobs=0, seed=4)
    requests = [{"prompt_token_ids": p} for p in prompts]
    outputs = llm.generate(requests + requests, [adaptive] * len(prompts) + [plain] * len(prompts), use_tqdm=False)

    gaps = {"adaptive": [], "plain": [], "adaptive_vs_plain": []}
    temperatures = []
    tokens = {"adaptive": 0, "plain": 0}
    for index, output in enumerate(outputs):
        kind = "adaptive" if index < len(prompts) else "plain"
        completion = output.outputs[0]
        ids = list(completion.token_ids)
        returned = torch.tensor([step[token].logprob for step, token in zip(completion.logprobs, ids, strict=True)])
        context = torch.tensor([list(output.prompt_token_ids) + ids])
        with torch.no_grad():
            logits = model(context).logits[0, len(output.prompt_token_ids) - 1 : -1].float()
        sampled = torch.tensor(ids).unsqueeze(1)
        processor = AdaptiveTemperatureLogitsProcessor(stats if kind == "adaptive" else None, tau, base)
        expected = torch.log_softmax(processor(context, logits), -1).gather(1, sampled).squeeze(1)
        at_base = torch.log_softmax(logits / base, -1).gather(1, sampled).squeeze(1)
        gaps[kind].append((expected - returned).abs().max().item())
        if kind == "adaptive":
            gaps["adaptive_vs_plain"].append((at_base - returned).abs().max().item())
            temperatures.append(rollout_temperatures(logits, stats, tau, base))
        tokens[kind] += len(ids)
    temperatures = torch.cat(temperatures)
    summary = pop_temperature_summary(tag)
    return {
        "tokens": tokens,
        "max_logprob_gap_adaptive": max(gaps["adaptive"]),
        "max_logprob_gap_plain": max(gaps["plain"]),
        "max_gap_adaptive_vs_plain_T0": max(gaps["adaptive_vs_plain"]),
        "transformers_temperatures": [
            temperatures.min().item(),
            temperatures.max().item(),
            temperatures.mean().item(),
            temperatures.numel(),
        ],
        "vllm_temperature_summary": None if summary is None else summary.tolist(),
        "summary_after_pop": pop_temperature_summary(tag),
    }


def turns_check(llm, path: str) -> dict:
    import torch
    from calibadv_helpers import FakeRetriever
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from vllm_shims.scripted import EXTRA_ARG, ScriptedBiasTurns

    from trl_ext.generation.transformers_generate import TransformersBackend
    from trl_ext.generation.vllm_engine import VLLMBackend
    from trl_ext.rollout.search_agent import STOP_STRINGS, SearchAgentRollout

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    scripts = {
        "who made alpha? ": [
            ["<think>look</think>\n<search> alpha </search>"],
            ["<think>ok</think>\n<answer> bob </answer>"],
        ],
        "what is beta? ": [["<think>know</think>\n<answer> a letter </answer>"]],
        "tell me gamma ": [["<think>hmm</think> no action here"]],
        "where is delta? ": [
            ["<think>a</think>\n<search> delta </search>"],
            ["<think>b</think>\n<search> delta river </search>"],
            ["<think>c</think>\n<search> more </search>"],
        ],
    }
    prompts = list(scripts)

    def rollout():
        return SearchAgentRollout(FakeRetriever(), max_turns=2, max_tokens_per_turn=64, max_obs_tokens=80, top_k=2)

    reference_rollout = rollout()
    transformers_generator = TransformersBackend(
        model,
        tokenizer,
        GenerationConfig(do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
        logits_processors=[ScriptedBiasTurns(tokenizer, scripts)],
        stop_strings=STOP_STRINGS,
    )
    prompt_ids = reference_rollout.encode_prompts(prompts, tokenizer)
    reference = reference_rollout.run(prompt_ids, tokenizer, transformers_generator, max_completion_length=600)

    generation = SimpleNamespace(
        mode="colocate",
        tensor_parallel_size=1,
        llm=llm,
        temperature=0.0,  # greedy, as the transformers side
        top_p=1.0,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        generation_kwargs={"extra_args": {EXTRA_ARG: json.dumps(scripts)}},
    )
    vllm_generator = VLLMBackend(generation, accelerator=None, stop_strings=STOP_STRINGS)
    vllm_rollout = rollout()
    started = time.perf_counter()
    result = vllm_rollout.run(prompt_ids, tokenizer, vllm_generator, max_completion_length=600)
    seconds = time.perf_counter() - started

    rows = []
    for i in range(len(prompts)):
        env = result["env_mask"][i]
        logprobs = result["logprobs"][i]
        rows.append(
            {
                "same_completion_ids": result["completion_ids"][i] == reference["completion_ids"][i],
                "same_env_mask": env == reference["env_mask"][i],
                "same_transcript": result["calibadv_transcript"][i] == reference["calibadv_transcript"][i],
                "same_steps": result["calibadv_steps"][i] == reference["calibadv_steps"][i],
                "turns": [result["calibadv_turns"][i], reference["calibadv_turns"][i]],
                "invalid": [result["calibadv_invalid_action"][i], reference["calibadv_invalid_action"][i]],
                "observation_tokens": env.count(0),
                "generated_tokens": env.count(1),
                "observation_logprobs_zero": all(lp == 0.0 for lp, m in zip(logprobs, env, strict=True) if m == 0),
                "generated_logprobs_negative_finite": all(
                    math.isfinite(lp) and lp < 0 for lp, m in zip(logprobs, env, strict=True) if m == 1
                ),
                "max_logprob_gap": max(
                    (abs(a - b) for a, b in zip(logprobs, reference["logprobs"][i], strict=False)), default=0.0
                ),
                "transcript": result["calibadv_transcript"][i],
            }
        )
    return {
        "rows": rows,
        "engine_calls": vllm_generator.calls,
        "retriever_calls": len(vllm_rollout.retriever.calls),
        "reference_retriever_calls": len(reference_rollout.retriever.calls),
        "rollout_seconds": seconds,
    }


def main() -> None:
    workdir, out = sys.argv[1], sys.argv[2]
    from trl_ext.data.deepsearch import DEEPSEARCH_ALPHABET
    from trl_ext.rollout.vllm_temperature import LOGITS_PROCESSOR_FQCN

    path = build_vllm_checkpoint(workdir, alphabet=DEEPSEARCH_ALPHABET, sharpened=True)
    started = time.perf_counter()
    llm = colocated_llm(path, [LOGITS_PROCESSOR_FQCN, "vllm_shims.scripted:ScriptedVLLMTurns"])
    startup = time.perf_counter() - started
    report = {"engine_startup_seconds": startup, "hapo": hapo_check(llm, path), "turns": turns_check(llm, path)}
    Path(out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
