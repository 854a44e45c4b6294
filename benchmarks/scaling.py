"""Cost of each advantage estimator and per-token objective step as the generation batch grows.

    python benchmarks/scaling.py                 # CPU, one thread
    python benchmarks/scaling.py --device cuda

Times the pure functions behind each seam on random inputs: the sequence-level estimators over N completions
(N = 64 ... 16384), and the token-level steps over (N, T) tensors (T up to 4096, capped so N*T <= ``--max_elements``).
A cost that is linear in the input shows as a constant time per element; a Python loop over completions would
show as a time per element that does not fall to that constant. Writes ``benchmarks/results/scaling.json`` and
``benchmarks/results/scaling.png``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from trl_ext.compare import harness

harness.script_env()


def _time(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def sequence_cases(n: int, device: str) -> dict:
    from trl_ext.advantages.beta_normalization import beta_normalized_advantages
    from trl_ext.advantages.grpo import grpo_advantages
    from trl_ext.advantages.hapo import tlga_advantages

    g = 16
    generator = torch.Generator().manual_seed(n)
    rewards = (torch.rand(n, 1, generator=generator) < 0.4).float().to(device)
    lengths = torch.randint(1, 512, (n,), generator=generator).float().to(device)
    weights = torch.ones(1, device=device)
    return {
        "grpo_advantages": lambda: grpo_advantages(rewards, weights, g),
        "beta_normalized_advantages": lambda: beta_normalized_advantages(rewards[:, 0], g),
        "tlga_advantages": lambda: tlga_advantages(rewards[:, 0], lengths, g),
    }


def token_cases(n: int, t: int, device: str) -> dict:
    from trl_ext.objectives import functional as F
    from trl_ext.objectives.hapo import adaptive_clip_bounds, entropy_statistics, normalized_entropy
    from trl_ext.objectives.minpro import prefix_min_log_ratio

    generator = torch.Generator().manual_seed(n * 7 + t)
    log_ratio = (0.1 * torch.randn(n, t, generator=generator)).to(device)
    lengths = torch.randint(1, t + 1, (n, 1), generator=generator)
    mask = (torch.arange(t).unsqueeze(0) < lengths).float().to(device)
    entropies = torch.rand(n, t, generator=generator).to(device) * 3
    advantages = torch.randn(n, 1, generator=generator).to(device)
    ratio = log_ratio.exp()

    def hapo_clip():
        stats = entropy_statistics(entropies[mask.bool()], 0.8, "signed")
        return adaptive_clip_bounds(normalized_entropy(entropies, mask, stats), 0.2, 0.28, 0.5)

    return {
        "clipped_surrogate+aggregate": lambda: F.aggregate_loss(
            F.clipped_surrogate(ratio, advantages, 0.2, 0.28)[0],
            mask,
            "dapo",
            max_completion_length=t,
            num_items=mask.sum(),
        ),
        "minpro_prefix_min": lambda: prefix_min_log_ratio(log_ratio, mask), "hapo_entropy_clip_bounds": hapo_clip,
    }  # fmt: skip


def plot(report: dict, path: Path) -> None:
    with harness.figure(path, 1, 2, figsize=(12, 4.5)) as (fig, axes):
        for name, rows in report["sequence"].items():
            axes[0].loglog([r["N"] for r in rows], [r["seconds"] for r in rows], marker="o", label=name)
        axes[0].set(xlabel="completions N", ylabel="seconds", title="advantage estimators (sequence level)")
        for name, rows in report["token"].items():
            elements = [r["N"] * r["T"] for r in rows]
            axes[1].loglog(elements, [r["seconds"] for r in rows], marker="o", linestyle="", label=name)
        axes[1].set(xlabel="tokens N x T", ylabel="seconds", title="per-token objective steps")
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"trl-ext pure-function cost vs batch size ({report['device']}, {report['threads']} thread(s))")


def run(options) -> dict:
    from trl_ext.training import set_threads

    set_threads(options.threads)
    sizes = [64, 256, 1024, 4096, 16384]
    report: dict = {"device": options.device, "threads": options.threads, "sequence": {}, "token": {}}
    print(f"{'step':>30} {'N':>6} {'T':>5} {'median (ms)':>12} {'ns / element':>13}")
    for n in sizes:
        for name, fn in sequence_cases(n, options.device).items():
            seconds = _time(fn, options.device, options.repeats)
            report["sequence"].setdefault(name, []).append(
                {"N": n, "seconds": seconds, "ns_per_element": seconds / n * 1e9}
            )
            print(f"{name:>30} {n:6d} {'':>5} {seconds * 1e3:12.3f} {seconds / n * 1e9:13.1f}")
    for t in (256, 1024, 4096):
        for n in sizes:
            if n * t > options.max_elements:
                continue
            for name, fn in token_cases(n, t, options.device).items():
                seconds = _time(fn, options.device, options.repeats)
                report["token"].setdefault(name, []).append(
                    {"N": n, "T": t, "seconds": seconds, "ns_per_element": seconds / (n * t) * 1e9}
                )
                print(f"{name:>30} {n:6d} {t:5d} {seconds * 1e3:12.3f} {seconds / (n * t) * 1e9:13.2f}")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(parser, Path(__file__).parent / "results" / "scaling.json", seeds=None)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max_elements", type=int, default=2**24, help="cap on N*T for the token-level steps")
    options = parser.parse_args(argv)
    # The JSON holds the measurements themselves: --replot redraws the plot only.
    report = harness.load_report(options.out) if options.replot else run(options)
    return harness.finish(options, report, argv, plot=plot)


if __name__ == "__main__":
    main()
