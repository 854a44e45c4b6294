"""The prepared GPU check: ``trl.GRPOTrainer`` and every trainer on a real architecture at realistic lengths.

Run through ``benchmarks/gpu_check.sh`` (which installs the carried wheels first); ``--dry-run`` runs the same code on
CPU with a scaled-down model in seconds, so the test suite keeps it working.

Model: a random Qwen2 with Qwen2.5-1.5B's configuration (vocabulary 151,936), bf16, built here (nothing can be
downloaded on the lent machine), with trl-ext's character tokenizer. Each arm trains ``--steps`` steps (the first
untimed) of 8 prompts x 8 completions of up to 512 tokens, micro-batches of 16, one arm after the other in one process.
Per arm: median step time, completion tokens per second and ``torch.cuda.max_memory_allocated``, each as a ratio to the
``trl`` arm. ``calibadv`` uses an in-memory retriever; arms that would not finish inside ``--budget_s`` are skipped and
say so in the JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

from trl_ext.compare import harness
from trl_ext.compare.running import PeakMemory

harness.script_env()

ARMS = ("trl", "hapo", "grpo", "bnpo", "minpro", "diva", "calibadv")

#: Qwen2.5-1.5B's architecture (its config.json), random weights.
QWEN25_15B = dict(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, hidden_act="silu",
)  # fmt: skip
#: The same architecture scaled down for --dry-run.
DRY_RUN_MODEL = dict(
    QWEN25_15B, vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512,
)  # fmt: skip
REAL = dict(prompts=8, completions=8, max_new_tokens=512, micro_batch=16, prompt_chars=128)
DRY = dict(prompts=2, completions=2, max_new_tokens=8, micro_batch=4, prompt_chars=16)


def build_model(path: Path, config_kwargs: dict, dtype) -> str:
    """A random-weight Qwen2 of ``config_kwargs`` with trl-ext's character tokenizer (``trl_ext.tiny_models``; the
    ``AutoTokenizer`` round trip keeps its ids). The model's vocabulary is the architecture's: sampled ids beyond the
    tokenizer's ~60 characters decode to nothing, which costs the generation and the loss exactly the same."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trl_ext._quiet import progress_bars_disabled
    from trl_ext.tiny_models import build_char_tokenizer

    tokenizer = build_char_tokenizer(str(path))
    config = Qwen2Config(
        **config_kwargs, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with progress_bars_disabled():
        model.save_pretrained(path)
    return str(path)


def make_dataset(num_prompts: int, length: int):
    """Distinct prompts of ``length`` random characters, with DIVA's columns (``id``, one rewording, one hint) and
    CalibAdv's (``question``, ``golden_answers``)."""
    import random

    from datasets import Dataset

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789 "
    rows: dict[str, list] = {
        "prompt": [], "id": [], "variants": [], "hints": [], "question": [], "answer": [], "golden_answers": []
    }  # fmt: skip
    for index in range(num_prompts * 8):
        text = "".join(rng.choice(letters) for _ in range(length))
        rows["prompt"].append(text)
        rows["id"].append(str(index))
        rows["variants"].append([text[::-1]])
        rows["hints"].append([text[:8]])
        rows["question"].append(text)
        rows["answer"].append(text[:3])
        rows["golden_answers"].append([text[:3]])
    return Dataset.from_dict(rows)


def spread_reward(completions, **kwargs) -> list[float]:
    """A reward that differs between completions of a random model: the share of digits among the characters."""
    rewards = []
    for completion in completions:
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        rewards.append(sum(c.isdigit() for c in text) / max(len(text), 1))
    return rewards


class StaticRetriever:
    """CalibAdv's retriever for the check: the same two short documents for every query (no index, no network)."""

    def search(self, queries, top_k):
        return [[("0", "first title", "some text"), ("1", "second title", "more text")][:top_k] for _ in queries]


def run_arm(arm: str, model_path: str, dataset, shape: dict, options, device: str) -> dict:
    import torch

    config = dict(
        per_device_train_batch_size=shape["micro_batch"],
        gradient_accumulation_steps=shape["prompts"] * shape["completions"] // shape["micro_batch"],
        num_generations=shape["completions"], max_completion_length=shape["max_new_tokens"], learning_rate=1e-6,
        max_steps=options.steps, temperature=1.0, beta=0.0, use_cpu=device == "cpu", bf16=device == "cuda",
        model_init_kwargs={"dtype": "bfloat16" if device == "cuda" else "float32"},
    )  # fmt: skip
    kwargs = {}
    if arm == "diva":
        config.update(diva_hint_template="{question} {hints}")
    if arm == "calibadv":
        half = max(shape["max_new_tokens"] // 2, 4)
        config.update(
            calibadv_max_turns=1, calibadv_max_tokens_per_turn=half, calibadv_max_obs_tokens=half,
            calibadv_retriever="bm25",
            calibadv_corpus_path="deepsearch",  # validated only: the `retriever` argument replaces it
        )  # fmt: skip
        kwargs["retriever"] = StaticRetriever()
        dataset = dataset.remove_columns(["prompt"])  # the rollout builds its search prompt from `question`
    run = harness.run_arm(
        arm, model=model_path, reward_funcs=[spread_reward], train_dataset=dataset, seed=0, config=config,
        memory=PeakMemory() if device == "cuda" else None, **kwargs,
    )  # fmt: skip
    logs = run.logs("step_time")
    timed = logs[1:] or logs
    step_times = [entry["step_time"] for entry in timed]
    tokens = [
        entry["completions/mean_length"] * shape["prompts"] * shape["completions"] / entry["step_time"]
        for entry in timed
    ]
    result = {
        "wall_s": run.seconds, "step_times": [entry["step_time"] for entry in logs],
        "median_step_s": statistics.median(step_times), "completion_tokens_per_s": statistics.median(tokens),
        "mean_completion_length": statistics.fmean(entry["completions/mean_length"] for entry in logs),
        "reward": [entry.get("reward") for entry in logs],
    }  # fmt: skip
    if device == "cuda":
        result["max_memory_allocated_bytes"] = run.memory.cuda_peak
    del run
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        result["memory_allocated_after_bytes"] = torch.cuda.memory_allocated()
    return result


def ratios(report: dict) -> None:
    """Each arm's step time, tokens per second and peak memory as ratios to the ``trl`` arm."""
    base = report["arms"]["trl"]
    for row in report["arms"].values():
        if "error" in row:
            continue
        row["step_time_ratio_vs_trl"] = row["median_step_s"] / base["median_step_s"]
        row["tokens_per_s_ratio_vs_trl"] = row["completion_tokens_per_s"] / base["completion_tokens_per_s"]
        if "max_memory_allocated_bytes" in row:
            row["max_memory_ratio_vs_trl"] = row["max_memory_allocated_bytes"] / base["max_memory_allocated_bytes"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON to write (under $OUT on the GPU machine)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per arm; the first is not timed")
    parser.add_argument("--budget_s", type=float, default=400.0, help="skip arms that would end after this")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true", help="CPU, scaled-down model, seconds")
    harness.add_common_args(parser, None, seeds=None)
    options = parser.parse_args(argv)
    if options.replot:
        report = harness.load_report(options.out)
        ratios(report)
        return harness.write_report(options.out, report, rederived=True)

    import torch

    device = "cuda" if torch.cuda.is_available() and not options.dry_run else "cpu"
    if not options.dry_run and device != "cuda":
        raise SystemExit("gpu_check: no CUDA device (use --dry-run on a machine without a GPU)")
    shape = DRY if options.dry_run else REAL
    config = DRY_RUN_MODEL if options.dry_run else QWEN25_15B
    started = time.perf_counter()
    report: dict = {
        "command": "bash benchmarks/gpu_check.sh " + ("--dry-run" if options.dry_run else ""),
        "dry_run": options.dry_run, "device": device,
        "model": "Qwen2.5-1.5B architecture, random weights, bf16" if not options.dry_run else "scaled-down Qwen2",
        "shape": shape, "steps": options.steps, "arms": {}, "skipped": {},
    }  # fmt: skip
    arms = ["trl", *[arm for arm in options.arms if arm != "trl"]]
    with tempfile.TemporaryDirectory() as workdir:
        model_path = build_model(
            Path(workdir) / "model", config, torch.bfloat16 if device == "cuda" else torch.float32
        )
        dataset = make_dataset(shape["prompts"], shape["prompt_chars"])
        report["build_s"] = time.perf_counter() - started
        durations: list[float] = []
        for arm in arms:
            elapsed = time.perf_counter() - started
            estimate = max(durations) if durations else 0.0
            if arm != "trl" and elapsed + estimate > options.budget_s:
                report["skipped"][arm] = f"time budget: {elapsed:.0f} s spent, an arm takes about {estimate:.0f} s"
                continue
            arm_start = time.perf_counter()
            try:
                report["arms"][arm] = run_arm(arm, model_path, dataset, shape, options, device)
            except Exception as error:  # one broken arm must not lose the others' numbers
                if arm == "trl":
                    raise
                report["arms"][arm] = {
                    "error": f"{type(error).__name__}: {error}"[:2000],
                    "traceback": traceback.format_exc()[-3000:],
                }
            durations.append(time.perf_counter() - arm_start)
            row = report["arms"][arm]
            print(
                f"gpu_check: {arm}: {json.dumps({k: v for k, v in row.items() if k != 'reward'})[:4000]}", flush=True
            )
            harness.write_report(options.out, report, log=None, argv=argv)  # partial results survive a timeout
    ratios(report)
    report["total_s"] = time.perf_counter() - started
    harness.write_report(options.out, report, log=None, argv=argv)
    print(f"gpu_check: wrote {options.out} in {report['total_s']:.0f} s")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
