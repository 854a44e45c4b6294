"""What one decoding step of HAPO's adaptive temperature costs, op by op, on CPU (one thread), and what another
entropy formula would trade.

    python benchmarks/hapo_processor_ops.py            # about 1 minute; the vLLM processor row needs the vLLM venv

Rows, each the median over repeats of the mean time per call:

- ``processor`` (vLLM venv only): ``HAPOTemperatureLogitsProcessor.apply`` on a (B, V) batch whose B requests share
  one set of statistics (the benchmark's case), a V1 ``update_state(None)`` per call as vLLM makes;
- ``temperatures``: ``rollout_temperatures`` and the division of the logits, the processor's tensor work;
- ``entropy``: ``logits_entropy`` (one ``exp`` pass, reused buffers);
- ``softmax_entr``: the entropy as ``entr(softmax(l)).sum()`` into a reused buffer (3 ops);

and each formula's largest error against a float64 entropy on a row with masked (-inf) logits and a flat row.
Results: docs/results.md ("The vLLM path's cost"). Writes ``results/hapo_processor_ops.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from trl_ext.compare import harness
from trl_ext.rollout.temperature import TemperatureStatistics, logits_entropy, rollout_temperatures

RESULTS = Path(__file__).parent / "results"
STATS = TemperatureStatistics(pivot=0.5, scale=0.4, scale_pos=0.5, scale_neg=0.6)
TAU = 0.3


def softmax_entr(logits: torch.Tensor, workspace: list[torch.Tensor]) -> torch.Tensor:
    x = logits.float()
    if len(workspace) != 1 or workspace[0].shape != x.shape:
        workspace[:] = [torch.empty(x.shape, dtype=torch.float32)]
    p = torch.softmax(x, -1, out=workspace[0])
    return torch.special.entr(p, out=p).sum(-1)


def temperatures(logits: torch.Tensor, workspace: list[torch.Tensor]) -> torch.Tensor:
    work = logits.clone()
    return work.div_(rollout_temperatures(work, STATS, TAU, 1.0, workspace).unsqueeze(-1))


def processor_call(rows: int):
    try:
        from vllm import SamplingParams
        from vllm.v1.sample.logits_processor import BatchUpdate

        from trl_ext.rollout.vllm_temperature import HAPOTemperatureLogitsProcessor, temperature_extra_args
    except ImportError:
        return None
    processor = HAPOTemperatureLogitsProcessor(object(), None, False)
    params = SamplingParams(temperature=1.0, extra_args=temperature_extra_args(STATS, TAU, "ops"))
    added = [(row, params, [1], []) for row in range(rows)]
    processor.update_state(BatchUpdate(batch_size=rows, removed=[], added=added, moved=[]))

    def call(logits: torch.Tensor, _workspace: list[torch.Tensor]) -> torch.Tensor:
        processor.update_state(None)
        return processor.apply(logits.clone())

    return call


def time_us(function, logits: torch.Tensor, calls: int, repeats: int) -> float:
    workspace: list[torch.Tensor] = []
    for _ in range(min(calls, 50)):
        function(logits, workspace)
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            function(logits, workspace)
        means.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(means)


def max_error(function, vocab: int) -> float:
    logits = torch.randn(4, vocab, generator=torch.Generator().manual_seed(1)) * 3
    logits[0, 100:] = float("-inf")
    logits[1] = 0.0
    exact = -(torch.softmax(logits.double(), -1) * torch.log_softmax(logits.double(), -1)).nan_to_num().sum(-1)
    return float((function(logits, []).double() - exact).abs().max())


def run(options) -> dict:
    torch.set_num_threads(1)
    rows = {}
    for vocab in options.vocab:
        logits = torch.randn(options.batch, vocab, generator=torch.Generator().manual_seed(0)) * 3
        calls = max(20, int(options.budget / vocab))
        arms = {"temperatures": temperatures, "entropy": logits_entropy, "softmax_entr": softmax_entr}
        processor = processor_call(options.batch)
        if processor is not None:
            arms = {"processor": processor, **arms}
        for arm, function in arms.items():
            row = {"us_per_call": time_us(function, logits, calls, options.repeats)}
            if arm in ("entropy", "softmax_entr"):
                row["max_abs_error"] = max_error(function, vocab)
            rows[f"{arm} V={vocab}"] = row
        ratio = rows[f"softmax_entr V={vocab}"]["us_per_call"] / rows[f"entropy V={vocab}"]["us_per_call"]
        rows[f"softmax_entr V={vocab}"]["vs_entropy"] = ratio
    return {"batch": options.batch, "repeats": options.repeats, "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(parser, RESULTS / "hapo_processor_ops.json", seeds=None)
    parser.add_argument("--batch", type=int, default=16, help="rows per decoding step")
    parser.add_argument("--vocab", type=int, nargs="+", default=[62, 32000, 151936], help="vocabulary sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per row (the median is reported)")
    parser.add_argument("--budget", type=float, default=2e5, help="calls per repeat x vocabulary size")
    options = parser.parse_args(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    return harness.finish(
        options,
        report,
        argv,
        show=lambda r: harness.print_table(r["rows"], ["us_per_call", "vs_entropy", "max_abs_error"]),
    )


if __name__ == "__main__":
    main()
