"""BNPO's claim, measured: the variance of the policy-gradient estimate under BNPO's advantage versus GRPO's.

    python benchmarks/bnpo_gradient_variance.py                          # seeds 0-2, 3 stages, 32 batches (~3 min)
    python benchmarks/bnpo_gradient_variance.py --seeds 0 --batches 8    # a quick look

BNPO (arXiv 2506.02864) chooses the Beta normalisation to reduce the variance of the policy gradient. We measure it
directly on the quickstart's tiny model and task. For each seed, the model is taken at several *stages* (random init,
and after 60 and 150 steps of ordinary GRPO training, so that the batches hold a mix of all-wrong, mixed and
all-correct groups). At each stage we draw ``--batches`` independent generation batches (16 prompts x 8 completions,
sampled at T = 1 from the same weights). On every batch, with the *same* completions and rewards, we compute the
gradient of the GRPO loss (TRL's default ``loss_type``) three times, with three advantages:

* ``grpo``: (r - mean) / (std + 1e-4), TRL's;
* ``bnpo``: (r - p) / f_Beta(p; alpha, beta) with the Beta refitted on each batch, the ``bnpo`` trainer's;
* ``mean_baseline``: r - mean (BNPO with alpha = beta = 1; Dr. GRPO's advantage), for reference.

Per stage and advantage we report the total variance across batches, ``E||g_k - mean g||^2``, and the variance
relative to the squared norm of the mean gradient, ``E||g_k - mean g||^2 / ||mean g||^2`` (the inverse of a
signal-to-noise ratio; it does not depend on the advantage's overall scale, which differs between the three), and
the cosine between each advantage's mean gradient and GRPO's. Writes ``benchmarks/results/bnpo_gradient_variance.json``
and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_NUM_THREADS", "1")

RESULTS = Path(__file__).parent / "results"
ADVANTAGES = ("grpo", "bnpo", "mean_baseline")
PROMPTS_PER_BATCH, NUM_GENERATIONS = 16, 8


def pretrain(checkpoint: str, dataset, task, seed: int, steps: int, out_dir: Path) -> str:
    """The checkpoint after `steps` steps of plain GRPO with the quickstart settings (cached in `out_dir`)."""
    if steps == 0:
        return checkpoint
    if (out_dir / "model.safetensors").exists():
        return str(out_dir)
    from transformers import PrinterCallback

    from trl_ext import get_trainer
    from trl_ext.data import QUICKSTART_SETTINGS

    trainer_cls, config_cls = get_trainer("grpo")
    config = dict(QUICKSTART_SETTINGS["config"])
    config.update(seed=seed, max_steps=steps)
    with tempfile.TemporaryDirectory() as output_dir:
        args = config_cls(output_dir=output_dir, disable_tqdm=True, **config)
        trainer = trainer_cls(model=checkpoint, reward_funcs=task.reward_funcs, args=args, train_dataset=dataset)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    trainer.save_model(str(out_dir))
    return str(out_dir)


def gradients_at(checkpoint: str, dataset, task, seed: int, num_batches: int) -> dict:
    """Flattened gradients of the loss on `num_batches` fresh batches, for each advantage on the same completions."""
    import torch

    from trl_ext import get_trainer
    from trl_ext.advantages.beta_normalization import beta_normalized_advantages
    from trl_ext.advantages.diva import combined_rewards
    from trl_ext.data import QUICKSTART_SETTINGS

    trainer_cls, config_cls = get_trainer("grpo")
    config = dict(QUICKSTART_SETTINGS["config"])
    config.update(seed=seed, max_steps=1)
    with tempfile.TemporaryDirectory() as output_dir:
        args = config_cls(output_dir=output_dir, disable_tqdm=True, **config)
        trainer = trainer_cls(model=checkpoint, reward_funcs=task.reward_funcs, args=args, train_dataset=dataset)
    trainer.current_gradient_accumulation_steps = 1
    captured = []
    build = trainer.build_advantage_batch

    def spy(*call_args, **call_kwargs):
        batch = build(*call_args, **call_kwargs)
        captured.append(batch)
        return batch

    trainer.build_advantage_batch = spy
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
            "grpo": output["advantages"],
            "bnpo": bnpo.float(),
            "mean_baseline": (rewards - groups.mean(1).repeat_interleave(NUM_GENERATIONS)).float(),
        }
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
        report[name] = {
            "total_variance": total,
            "relative_variance": total / float((mean**2).sum()),
            "mean_grad_norm": float(mean.norm()),
            "cosine_to_grpo_mean": float(torch.nn.functional.cosine_similarity(mean, reference, dim=0)),
        }
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = report["options"]["stages"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, color in zip(ADVANTAGES, ("tab:blue", "tab:orange", "tab:grey"), strict=True):
        values = [
            [report["results"][seed][str(stage)]["variance"][name]["relative_variance"] for seed in report["results"]]
            for stage in stages
        ]
        ax.plot(stages, [statistics.mean(v) for v in values], marker="o", color=color, label=name)
        ax.fill_between(stages, [min(v) for v in values], [max(v) for v in values], color=color, alpha=0.15)
    ax.set_yscale("log")
    ax.set_xlabel("GRPO training steps before the measurement (model stage)")
    ax.set_ylabel("E||g - mean g||^2 / ||mean g||^2")
    ax.set_title("Relative variance of the policy gradient (mean, range over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 60, 150])
    parser.add_argument("--batches", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS / "bnpo_gradient_variance.json")
    options = parser.parse_args(argv)

    import torch

    from trl_ext.data import QUICKSTART_SETTINGS, get_task
    from trl_ext.testing import build_tiny_checkpoint

    torch.set_num_threads(1)
    task = get_task(QUICKSTART_SETTINGS["task"])
    results: dict = {}
    for seed in options.seeds:
        dataset = task.make_dataset(QUICKSTART_SETTINGS["dataset"]["num_rows"], seed)
        model_kwargs = {k: v for k, v in QUICKSTART_SETTINGS["model"].items() if k != "alphabet"}
        model_kwargs["seed"] = seed
        cache = Path(tempfile.gettempdir()) / f"trl-ext-bnpo-variance-{seed}"
        initial = build_tiny_checkpoint(str(cache / "init"), alphabet=task.alphabet, **model_kwargs)
        results[str(seed)] = {}
        for stage in options.stages:
            checkpoint = pretrain(initial, dataset, task, seed, stage, cache / f"grpo-{stage}")
            measured = gradients_at(checkpoint, dataset, task, seed, options.batches)
            variance = variance_report(measured["grads"])
            results[str(seed)][str(stage)] = {
                "variance": variance,
                "reward": statistics.mean(measured["stats"]["reward"]),
                "frac_mixed_groups": statistics.mean(measured["stats"]["frac_mixed_groups"]),
            }
            print(
                f"seed {seed} stage {stage:>3}: reward {results[str(seed)][str(stage)]['reward']:.3f} mixed groups "
                f"{results[str(seed)][str(stage)]['frac_mixed_groups']:.2f} | relative variance "
                + " ".join(f"{n} {variance[n]['relative_variance']:.3f}" for n in ADVANTAGES)
                + f" | bnpo/grpo {variance['bnpo']['relative_variance'] / variance['grpo']['relative_variance']:.3f}",
                flush=True,
            )
    summary = {}
    for stage in options.stages:
        ratios = [
            results[s][str(stage)]["variance"]["bnpo"]["relative_variance"]
            / results[s][str(stage)]["variance"]["grpo"]["relative_variance"]
            for s in results
        ]
        summary[str(stage)] = {
            "bnpo_over_grpo_relative_variance": {
                "mean": statistics.mean(ratios),
                "min": min(ratios),
                "max": max(ratios),
            }
        }
    report = {
        "command": "python benchmarks/bnpo_gradient_variance.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "options": {"seeds": options.seeds, "stages": options.stages, "batches": options.batches},
        "summary": summary,
        "results": results,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=1))
    plot(report, options.out.with_suffix(".png"))
    for stage, row in summary.items():
        ratio = row["bnpo_over_grpo_relative_variance"]
        print(
            f"stage {stage}: bnpo / grpo relative variance {ratio['mean']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})"
        )
    print(f"wrote {options.out}")
    return report


if __name__ == "__main__":
    main()
