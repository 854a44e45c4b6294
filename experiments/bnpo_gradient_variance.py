"""BNPO's claim, measured: the variance of the policy-gradient estimate under BNPO's advantage versus GRPO's.

    python experiments/bnpo_gradient_variance.py --mode skewed --stages 30 --batches 160   # skewed mode, ~7 min
    python experiments/bnpo_gradient_variance.py                          # legacy mode: seeds 0-2, 3 stages (~3 min)

**Skewed mode** (``bnpo_gradient_variance_skewed.json``): 32 prompts x 16 completions on an arithmetic mixture weighted
towards hard problems, on the quickstart model after ``--stages`` GRPO steps. On-policy the loss gradient is linear in
the advantages, so per batch the script computes V_k (advantages r - p_hat on the groups with k successes) and every
per-group weighting's gradient as sum_k w(k) V_k (checked against direct GRPO and BNPO gradients): ``grpo``, ``bnpo``
(the shipped fit) and 1 / f_Beta(p_hat; alpha, beta) on ``SKEWED_GRID``. RV = E||g - Eg||^2 / ||Eg||^2, ||Eg||^2
unbiased. Control and falsifier (written before the run): ``SKEWED_CONTROL``, ``SKEWED_FALSIFIER``, also in the JSON.
**Legacy mode** (``bnpo_gradient_variance.json``, its last run): stages 0, 60 and 150, 16 prompts x 8 completions, the
gradients under ``grpo``, ``bnpo`` and ``mean_baseline``; its relative variance divides by ||mean g||^2, which includes
tr(Cov)/N and saturates towards N (new runs also store ``relative_variance_unbiased``). Results: docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

from bnpo_beta_simulation import (
    bnpo_over_heldout_minimum,
    format_effect,
    format_spread,
    heldout_folds,
    relative_variance,
)
from preregistered import bnpo_variance as prereg

from trl_ext.compare import harness

harness.script_env(one_thread=True)

RESULTS = Path(__file__).parent / "results"
ADVANTAGES = ("grpo", "bnpo", "mean_baseline")
PROMPTS_PER_BATCH, NUM_GENERATIONS = 16, 8
SKEWED_LEVEL_WEIGHTS = (0.05, 0.05, 0.3, 0.6)


def pretrain(checkpoint: str, dataset, task, seed: int, steps: int, out_dir: Path) -> str:
    """The checkpoint after `steps` steps of plain GRPO with the quickstart settings (cached in `out_dir`)."""
    if steps == 0:
        return checkpoint
    if (out_dir / "model.safetensors").exists():
        return str(out_dir)
    from trl_ext.data import QUICKSTART_SETTINGS

    config = dict(QUICKSTART_SETTINGS["config"], max_steps=steps)
    run = harness.run_arm(
        "grpo", model=checkpoint, reward_funcs=task.reward_funcs, train_dataset=dataset, seed=seed, config=config
    )
    run.trainer.save_model(str(out_dir))
    return str(out_dir)


def spied_trainer(checkpoint: str, dataset, task, seed: int, **overrides):
    """A `grpo` trainer with the quickstart settings (plus `overrides`) for single-batch measurements, and the list
    into which every `AdvantageBatch` it builds is appended (the rewards of each generated batch)."""
    from trl_ext import get_trainer
    from trl_ext.data import QUICKSTART_SETTINGS

    trainer_cls, config_cls = get_trainer("grpo")
    config = dict(QUICKSTART_SETTINGS["config"])
    config.update(seed=seed, max_steps=1, **overrides)
    with tempfile.TemporaryDirectory() as output_dir:
        args = config_cls(output_dir=output_dir, disable_tqdm=True, **config)
        trainer = trainer_cls(model=checkpoint, reward_funcs=task.reward_funcs, args=args, train_dataset=dataset)
    trainer.current_gradient_accumulation_steps = 1
    captured: list = []
    build = trainer.build_advantage_batch

    def spy(*call_args, **call_kwargs):
        batch = build(*call_args, **call_kwargs)
        captured.append(batch)
        return batch

    trainer.build_advantage_batch = spy
    return trainer, captured


def gradients_at(checkpoint: str, dataset, task, seed: int, num_batches: int) -> dict:
    """Flattened gradients of the loss on `num_batches` fresh batches, for each advantage on the same completions."""
    import torch

    from trl_ext.advantages.beta_normalization import beta_normalized_advantages
    from trl_ext.advantages.diva import combined_rewards

    trainer, captured = spied_trainer(checkpoint, dataset, task, seed)
    rng = random.Random(seed)
    model = trainer.model
    grads: dict[str, list] = {name: [] for name in ADVANTAGES}
    stats: dict[str, list] = {"reward": [], "frac_mixed_groups": []}
    for k in range(num_batches):
        rows = [
            dict(dataset[i])
            for i in rng.sample(range(len(dataset)), PROMPTS_PER_BATCH)
            for _ in range(NUM_GENERATIONS)
        ]
        torch.manual_seed(10_000 * seed + k)
        model.train()
        output = trainer._generate_and_score_completions(rows)
        batch = captured.pop()
        rewards = combined_rewards(batch.rewards_per_func.double(), batch.reward_weights)
        groups = rewards.view(-1, NUM_GENERATIONS)
        stats["reward"].append(float(rewards.mean()))
        stats["frac_mixed_groups"].append(float((groups.max(1).values > groups.min(1).values).double().mean()))
        bnpo, _, _ = beta_normalized_advantages(rewards, NUM_GENERATIONS)
        advantages = {
            "grpo": output["advantages"], "bnpo": bnpo.float(),
            "mean_baseline": (rewards - groups.mean(1).repeat_interleave(NUM_GENERATIONS)).float(),
        }  # fmt: skip
        for name, values in advantages.items():
            inputs = dict(output)
            inputs["advantages"] = values
            model.zero_grad(set_to_none=True)
            trainer.compute_loss(model, inputs).backward()
            flat = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).double()
            grads[name].append(flat)
    return {"grads": grads, "stats": stats}


def variance_report(grads: dict) -> dict:
    import torch

    reference = torch.stack(grads["grpo"]).mean(0)
    report = {}
    for name, samples in grads.items():
        stacked = torch.stack(samples)
        mean = stacked.mean(0)
        total = float(((stacked - mean) ** 2).sum(1).mean())
        n = stacked.shape[0]
        unbiased_trace = total * n / (n - 1)
        report[name] = {
            "total_variance": total,
            # Biased: ||mean g||^2 includes tr(Cov) / n, so this saturates near n when the signal is small (the
            # legacy results file reports only this one).
            "relative_variance": total / float((mean**2).sum()),
            "relative_variance_unbiased": unbiased_trace / (float((mean**2).sum()) - unbiased_trace / n),
            "mean_grad_norm": float(mean.norm()),
            "cosine_to_grpo_mean": float(torch.nn.functional.cosine_similarity(mean, reference, dim=0)),
        }
    return report


SKEWED_GRID = [2.0 ** (k / 2) for k in range(-8, 7)]  # 1/16 .. 8, 15 x 15


def skewed_dataset(num_rows: int, seed: int, level_weights: list[float]):
    """The arithmetic task with its four difficulty levels drawn with `level_weights` (copy, successor, no carry,
    carry)."""
    from trl_ext.data.tasks import make_arithmetic_dataset

    return make_arithmetic_dataset(num_rows, seed, levels=[0, 1, 2, 3], weights=level_weights)


def grouped_variance_at(
    checkpoint: str, dataset, task, seed: int, num_batches: int, prompts: int, num_generations: int
) -> dict:
    """Relative variance of the loss gradient for GRPO, BNPO (the shipped fit) and every grid normaliser.

    Every advantage here is a per-group weight times (r - p_hat), and on-policy (ratio 1, beta = 0) the loss gradient
    is linear in the advantages, so g = sum_k w(k) V_k with V_k the gradient of the loss whose advantages are
    (r - p_hat) on the groups with k successes and 0 elsewhere (at most G - 1 backward passes per batch). GRPO's and
    BNPO's gradients are also computed directly on the first batch to check this decomposition."""
    import torch

    from trl_ext.advantages.beta_normalization import beta_log_pdf, beta_normalized_advantages
    from trl_ext.advantages.diva import combined_rewards

    trainer, captured = spied_trainer(
        checkpoint, dataset, task, seed, num_generations=num_generations,
        per_device_train_batch_size=prompts * num_generations,
    )  # fmt: skip
    model = trainer.model
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient(inputs, advantages) -> torch.Tensor:
        inputs = dict(inputs)
        inputs["advantages"] = advantages.float()
        model.zero_grad(set_to_none=True)
        trainer.compute_loss(model, inputs).backward()
        return torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
        ).double()

    rates = torch.arange(num_generations + 1, dtype=torch.float64) / num_generations
    grid = torch.stack(
        [torch.exp(-beta_log_pdf(rates, a, b)) for a in SKEWED_GRID for b in SKEWED_GRID]
    )  # (n_grid, G + 1)
    arms = ["grpo", "bnpo"] + [f"grid_{a:.4g}_{b:.4g}" for a in SKEWED_GRID for b in SKEWED_GRID]
    size = sum(p.numel() for p in params)
    sum_g = torch.zeros(len(arms), size, dtype=torch.float64)
    sum_sq = torch.zeros(len(arms), dtype=torch.float64)
    half_g = torch.zeros(2, len(arms), size, dtype=torch.float64)  # halves A and B: batches of even and odd index
    half_sq = torch.zeros(2, len(arms), dtype=torch.float64)
    stats: dict[str, list] = {"reward": [], "frac_mixed_groups": [], "alpha": [], "beta": [], "p_hat": []}
    rng = random.Random(seed)
    checks = {}
    for index in range(num_batches):
        rows = [dict(dataset[i]) for i in rng.sample(range(len(dataset)), prompts) for _ in range(num_generations)]
        torch.manual_seed(10_000 * seed + index)
        model.train()
        output = trainer._generate_and_score_completions(rows)
        batch = captured.pop()
        rewards = combined_rewards(batch.rewards_per_func.double(), batch.reward_weights)
        groups = rewards.view(-1, num_generations)
        p_hat = groups.mean(1)
        counts = groups.sum(1).round().long()
        bnpo, fit, _ = beta_normalized_advantages(rewards, num_generations)
        stats["reward"].append(float(rewards.mean()))
        stats["frac_mixed_groups"].append(float(((counts > 0) & (counts < num_generations)).double().mean()))
        stats["alpha"].append(fit.alpha)
        stats["beta"].append(fit.beta)
        stats["p_hat"].extend(p_hat.tolist())
        centred = rewards - p_hat.repeat_interleave(num_generations)
        present = sorted({int(k) for k in counts if 0 < int(k) < num_generations})
        vectors = torch.zeros(num_generations + 1, size, dtype=torch.float64)
        for k in present:
            mask = (counts == k).repeat_interleave(num_generations)
            vectors[k] = gradient(output, torch.where(mask, centred, 0.0))
        # Per-count weights of GRPO (TRL's advantages) and BNPO (the package's), read off their advantages.
        grpo_w = torch.zeros(num_generations + 1, dtype=torch.float64)
        bnpo_w = torch.zeros(num_generations + 1, dtype=torch.float64)
        for k in present:
            row = int(((counts == k).repeat_interleave(num_generations) & (centred != 0)).nonzero()[0, 0])
            grpo_w[k] = float(output["advantages"][row]) / float(centred[row])
            bnpo_w[k] = float(bnpo[row]) / float(centred[row])
        weights = torch.cat([grpo_w[None], bnpo_w[None], grid], dim=0)  # (n_arms, G + 1)
        weights[:, 0] = weights[:, -1] = 0.0
        g = weights @ vectors
        if index == 0:
            for name, row, advantages in (("grpo", 0, output["advantages"]), ("bnpo", 1, bnpo)):
                direct = gradient(output, advantages.double())
                checks[name] = float((direct - g[row]).norm() / direct.norm().clamp(min=1e-30))
            assert max(checks.values()) < 1e-3, f"the loss gradient is not linear in the advantages: {checks}"
        sum_g += g
        sum_sq += (g**2).sum(1)
        half_g[index % 2] += g
        half_sq[index % 2] += (g**2).sum(1)
    half_rv = [relative_variance(half_g[h], half_sq[h], (num_batches + 1 - h) // 2)[2] for h in (0, 1)]
    mean = sum_g / num_batches
    trace = (sum_sq - num_batches * (mean**2).sum(1)) / (num_batches - 1)
    signal = (mean**2).sum(1) - trace / num_batches
    rv = trace / signal
    return {
        "arms": arms, "rv": rv.tolist(), "trace": trace.tolist(), "signal": signal.tolist(), "stats": stats,
        "linearity_check": checks, "heldout": heldout_folds(half_rv, SKEWED_GRID),
    }  # fmt: skip


def skewed_cell(measured: dict) -> dict:
    """Summary of one (seed, stage) measurement of :func:`grouped_variance_at`."""
    import torch

    rv = torch.tensor(measured["rv"])
    n = len(SKEWED_GRID)
    grid_rv = rv[2:].view(n, n)
    valid = torch.where(grid_rv > 0, grid_rv, torch.tensor(float("inf")))
    best = int(torch.argmin(valid))
    reinforce = SKEWED_GRID.index(1.0) * n + SKEWED_GRID.index(1.0)
    p_hat = torch.tensor(measured["stats"]["p_hat"])
    alpha = statistics.fmean(measured["stats"]["alpha"])
    beta = statistics.fmean(measured["stats"]["beta"])
    return {
        "rv": {"grpo": float(rv[0]), "bnpo": float(rv[1]), "reinforce": float(rv[2 + reinforce])},
        "bnpo_over_grpo": float(rv[1] / rv[0]), "bnpo_over_reinforce": float(rv[1] / rv[2 + reinforce]),
        "grid_min": {"alpha": SKEWED_GRID[best // n], "beta": SKEWED_GRID[best % n], "rv": float(valid.min())},
        "bnpo_over_grid_min": float(rv[1] / valid.min()), "grid_rv": grid_rv.tolist(),
        "any_nonpositive_signal": bool((torch.tensor(measured["signal"]) <= 0).any()),
        "fit_mean": {"alpha": alpha, "beta": beta},
        "log_distance_fit_to_grid_min": math.hypot(
            math.log(alpha / SKEWED_GRID[best // n]), math.log(beta / SKEWED_GRID[best % n])
        ),
        "reward": statistics.fmean(measured["stats"]["reward"]),
        "frac_mixed_groups": statistics.fmean(measured["stats"]["frac_mixed_groups"]),
        "p_hat_histogram": torch.histc(p_hat, bins=17, min=-1 / 32, max=1 + 1 / 32).tolist(),
        "linearity_check": measured["linearity_check"], "heldout": measured["heldout"],
    }  # fmt: skip


def summarise(runs: list[dict]) -> dict:
    """The spread over seeds of every ratio and statistic (skewed mode: one stage)."""
    keys = ("bnpo_over_grpo", "bnpo_over_reinforce", "bnpo_over_grid_min", "log_distance_fit_to_grid_min")
    summary = {key: harness.spread([run[key] for run in runs], count=False) for key in keys}
    summary["bnpo_over_heldout_minimum"] = harness.spread(
        [bnpo_over_heldout_minimum(run) for run in runs], count=False
    )
    summary["selection_cost"] = harness.spread([prereg.selection_cost(run) for run in runs], count=False)
    summary["grpo_over_reinforce"] = harness.spread(
        [run["rv"]["grpo"] / run["rv"]["reinforce"] for run in runs], count=False
    )
    for key in ("reward", "frac_mixed_groups"):
        summary[key] = harness.spread([run[key] for run in runs], count=False)
    for key in ("alpha", "beta"):
        summary[f"fit_{key}"] = harness.spread([run["fit_mean"][key] for run in runs], count=False)
    summary["grid_min"] = [(run["grid_min"]["alpha"], run["grid_min"]["beta"]) for run in runs]
    summary["heldout_selected"] = [(f["selected"]["alpha"], f["selected"]["beta"]) for r in runs for f in r["heldout"]]
    return summary


def judge(report: dict) -> dict:
    return prereg.judge_llm(report)


def docs_tables(report: dict) -> str:
    """The markdown table docs/results.md quotes, derived from the report alone (a test compares them)."""
    summary, judged = report["summary"], report["verdict"]
    c = judged["controls"]

    def spread(key: str) -> str:
        return format_spread(summary[key])

    def effect(claim: str) -> str:
        return format_effect(judged["effects"][claim], " seeds in favour")

    n = len(report["runs"])
    return "\n".join([
        f"| LLM, carry-weighted mixture, stage {prereg.LLM_STAGE}, {n} seeds | mean (min-max) or effect [95% interval] |",
        "|---|---|",
        f"| BNPO fit (alpha, beta) | ({summary['fit_alpha']['mean']:.2f}, {summary['fit_beta']['mean']:.2f}) |",
        f"| RV bnpo / grpo | {spread('bnpo_over_grpo')} |",
        f"| `below_grpo`: log RV(grpo) - log RV(bnpo) | {effect('below_grpo')}: **{judged['verdicts']['below_grpo']}** |",
        f"| RV bnpo / held-out minimum | {spread('bnpo_over_heldout_minimum')} |",
        f"| `at_minimum`: log RV(held-out minimum) - log RV(bnpo) | {effect('at_minimum')}: "
        f"**{judged['verdicts']['at_minimum']}** |",
        f"| RV bnpo / REINFORCE (alpha = beta = 1) | {spread('bnpo_over_reinforce')} |",
        f"| control: fitted beta / alpha (>= {prereg.LLM_MIN_SKEW}) | {c['fit_beta_over_alpha']:.2f} ({c['skewed']}) |",
        f"| control: mixed groups (>= {prereg.LLM_MIN_MIXED}) | {c['frac_mixed_groups']:.2f} ({c['mixed']}) |",
        f"| control: RV grpo / REINFORCE (\\|x - 1\\| >= {prereg.GRPO_VS_REINFORCE}) | {c['grpo_over_reinforce']:.3f} "
        f"({c['tells_grpo_from_reinforce']}) |",
        f"| control: held-out selection cost (<= {prereg.TIE_FACTOR['llm']}) | "
        + (f"{c['selection_cost']:.3f}" if c["selection_cost"] is not None else "not measurable")
        + f" ({c['selection_resolves_the_band']}) |",
    ])  # fmt: skip


def run_skewed(options) -> dict:
    from trl_ext.data import QUICKSTART_SETTINGS, get_task

    start = time.time()
    task = get_task(QUICKSTART_SETTINGS["task"])
    runs: list[dict] = []
    for seed in options.seeds:
        train_data = task.make_dataset(QUICKSTART_SETTINGS["dataset"]["num_rows"], seed)
        measure_data = skewed_dataset(4096, seed + 100, options.level_weights)
        initial = harness.tiny_model(f"bnpo-variance-{seed}/init", seed=seed, alphabet=task.alphabet)
        cache = Path(tempfile.gettempdir()) / f"trl-ext-bnpo-variance-{seed}"
        for stage in options.stages:
            checkpoint = pretrain(initial, train_data, task, seed, stage, cache / f"grpo-{stage}")
            measured = grouped_variance_at(
                checkpoint, measure_data, task, seed, options.batches, options.prompts, options.num_generations
            )
            cell = skewed_cell(measured)
            runs.append({"seed": seed, "stage": stage, **cell})
            print(
                f"seed {seed} stage {stage}: reward {cell['reward']:.3f} mixed {cell['frac_mixed_groups']:.2f} fit "
                f"({cell['fit_mean']['alpha']:.2f}, {cell['fit_mean']['beta']:.2f}) | RV grpo {cell['rv']['grpo']:.3g} "
                f"bnpo {cell['rv']['bnpo']:.3g} reinforce {cell['rv']['reinforce']:.3g} grid min "
                f"{cell['grid_min']['rv']:.3g} at ({cell['grid_min']['alpha']:.3g}, {cell['grid_min']['beta']:.3g}) | "
                f"bnpo/grpo {cell['bnpo_over_grpo']:.3f} bnpo/min {cell['bnpo_over_grid_min']:.3f} "
                f"[{time.time() - start:.0f} s]"
            )
    keys = ("seeds", "stages", "batches", "prompts", "num_generations", "level_weights")
    return {
        "mode": "skewed", "preregistration": prereg.__doc__, "amendments": list(prereg.AMENDMENTS),
        "options": {**{key: getattr(options, key) for key in keys}, "grid": SKEWED_GRID}, "runs": runs,
        "wall_seconds": time.time() - start,
    }  # fmt: skip


def plot_skewed(report: dict, path: Path) -> None:
    import numpy as np

    runs = report["runs"]
    logs = np.log2(SKEWED_GRID)
    size = (3.6 * (len(runs) + 1), 3.4)
    with harness.figure(path, 1, len(runs) + 1, figsize=size, squeeze=False) as (fig, axes):
        for c, cell in enumerate(runs):
            seed = cell["seed"]
            grid = np.array(cell["grid_rv"])
            grid = np.where(grid > 0, grid, np.nan)
            ratio = np.log2(np.clip(grid / np.nanmin(grid), 1.0, 4.0))
            ax = axes[0][c]
            ax.imshow(ratio.T, origin="lower", extent=[logs[0], logs[-1], logs[0], logs[-1]], cmap="viridis", vmax=2)
            ax.plot(np.log2(cell["grid_min"]["alpha"]), np.log2(cell["grid_min"]["beta"]), "w*", ms=12, label="min")
            ax.plot(np.log2(cell["fit_mean"]["alpha"]), np.log2(cell["fit_mean"]["beta"]), "ro", label="bnpo fit")
            ax.plot(np.log2(1.5), np.log2(1.5), "ks", mfc="none", label="~grpo")
            ax.set(title=f"seed {seed}: log2 RV / min RV", xlabel="log2 alpha", ylabel="log2 beta")
            if c == 0:
                ax.legend(fontsize=6)
        ax = axes[0][-1]
        for cell in runs:
            seed, hist = cell["seed"], cell["p_hat_histogram"]
            x = np.arange(len(hist)) / (len(hist) - 1)
            ax.plot(x, np.array(hist) / sum(hist), marker=".", label=f"seed {seed}")
        ax.set(
            xlabel="group success rate p_hat", ylabel="share of groups", title="success rates of the measured batches"
        )
        ax.legend(fontsize=6)


def plot(report: dict, path: Path) -> None:
    stages = report["options"]["stages"]
    with harness.figure(path, figsize=(7, 4.5), dpi=120) as (fig, ax):
        for name, color in zip(ADVANTAGES, ("tab:blue", "tab:orange", "tab:grey"), strict=True):
            curves = [
                [report["results"][seed][str(stage)]["variance"][name]["relative_variance"] for stage in stages]
                for seed in report["results"]
            ]
            harness.band(ax, stages, curves, color=color, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("GRPO training steps before the measurement (model stage)")
        ax.set_ylabel("E||g - mean g||^2 / ||mean g||^2")
        ax.set_title("Relative variance of the policy gradient (mean, range over seeds)")
        ax.legend()


def legacy_summary(results: dict, stages: list[int]) -> dict:
    """Per stage: the spread over seeds of RV(bnpo) / RV(grpo) (legacy mode)."""
    summary = {}
    for stage in stages:
        cells = [results[s][str(stage)]["variance"] for s in results]
        ratios = [cell["bnpo"]["relative_variance"] / cell["grpo"]["relative_variance"] for cell in cells]
        spread = harness.spread(ratios, mean=statistics.mean, count=False)
        summary[str(stage)] = {"bnpo_over_grpo_relative_variance": spread}
    return summary


def run_legacy(options) -> dict:
    from trl_ext.data import QUICKSTART_SETTINGS, get_task

    task = get_task(QUICKSTART_SETTINGS["task"])
    results: dict = {}
    for seed in options.seeds:
        dataset = task.make_dataset(QUICKSTART_SETTINGS["dataset"]["num_rows"], seed)
        initial = harness.tiny_model(f"bnpo-variance-{seed}/init", seed=seed, alphabet=task.alphabet)
        cache = Path(tempfile.gettempdir()) / f"trl-ext-bnpo-variance-{seed}"
        results[str(seed)] = {}
        for stage in options.stages:
            checkpoint = pretrain(initial, dataset, task, seed, stage, cache / f"grpo-{stage}")
            measured = gradients_at(checkpoint, dataset, task, seed, options.batches)
            variance = variance_report(measured["grads"])
            results[str(seed)][str(stage)] = cell = {
                "variance": variance,
                "reward": statistics.mean(measured["stats"]["reward"]),
                "frac_mixed_groups": statistics.mean(measured["stats"]["frac_mixed_groups"]),
            }
            print(
                f"seed {seed} stage {stage:>3}: reward {cell['reward']:.3f} mixed groups "
                f"{cell['frac_mixed_groups']:.2f} | relative variance "
                + " ".join(f"{n} {variance[n]['relative_variance']:.3f}" for n in ADVANTAGES)
                + f" | bnpo/grpo {variance['bnpo']['relative_variance'] / variance['grpo']['relative_variance']:.3f}"
            )
    return {
        "options": {"seeds": options.seeds, "stages": options.stages, "batches": options.batches},
        "results": results,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser, None, seeds=())
    parser.add_argument("--out", type=Path, help="the result JSON (default: this mode's in experiments/results/)")
    parser.add_argument("--stages", type=int, nargs="+", help="default: skewed 30, legacy 0 60 150")
    parser.add_argument("--batches", type=int, help="default: skewed 160, legacy 32")
    modes = "legacy: 16 x 8 on the quickstart mixture (its old results file); skewed: 32 x 16, hard-weighted, the grid"
    parser.add_argument("--mode", choices=["legacy", "skewed"], default="skewed", help=modes)
    parser.add_argument("--prompts", type=int, default=32, help="skewed mode: prompts per batch")
    parser.add_argument("--num-generations", type=int, default=16, help="skewed mode: completions per prompt")
    parser.add_argument(
        "--level-weights", type=float, nargs=4, default=list(SKEWED_LEVEL_WEIGHTS),
        help="skewed mode: sampling weights of the copy, successor, no-carry and carry levels",
    )  # fmt: skip
    options = parser.parse_args(argv)
    skewed = options.mode == "skewed"
    options.seeds = options.seeds or list(prereg.LLM_SEEDS if skewed else (0, 1, 2))
    options.stages = options.stages or ([prereg.LLM_STAGE] if skewed else [0, 60, 150])
    options.batches = options.batches or (prereg.LLM_BATCHES if skewed else 32)
    suffix = "_skewed" if options.mode == "skewed" else ""
    options.out = options.out or RESULTS / f"bnpo_gradient_variance{suffix}.json"
    if options.replot:
        report = harness.load_report(options.out)
    else:
        from trl_ext.training import set_threads

        set_threads(1)
        report = run_skewed(options) if options.mode == "skewed" else run_legacy(options)
    if report.get("mode") == "skewed":
        report["summary"] = summarise(report["runs"])
        report["verdict"] = judge(report)
        show = lambda r: print(docs_tables(r))  # noqa: E731
    else:
        report["summary"] = legacy_summary(report["results"], report["options"]["stages"])
        show = lambda r: [print(f"stage {stage}: " + json.dumps(row)) for stage, row in r["summary"].items()]  # noqa: E731
    return harness.finish(options, report, argv, plot=plot_skewed if skewed else plot, show=show)


if __name__ == "__main__":
    main()
