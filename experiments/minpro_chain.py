"""MinPRO far off-policy on a 12-token "count-up chain", with the cumulative prefix ratio as a positive control.

    python experiments/minpro_chain.py                        # 4 arms x 3 seeds, about 12 minutes on one core
    python experiments/minpro_chain.py --seeds 0 --steps 96   # a quick look

Task: the built-in ``count_chain``. The prompt is a start digit ``d=``; the right completion is the next 12 digits
counting up mod 10 (``3=`` -> ``456789012345``). Reward = length of the completion's prefix that is right / 12,
so every token of a long completion matters and the prefix of a token decides whether the token is reachable:
the regime MinPRO's prefix weight is about. A tiny random Qwen2 (the quickstart's model) learns it by RL alone.

Regime: far off-policy. Each generation batch (``steps_per_generation`` 4 x 64 completions) is split into 4
micro-batches with one optimizer step each, and replayed ``num_iterations`` 4 times, so every batch feeds 16 optimizer
steps and the last ones train on rollouts of a policy 15 updates old; constant learning rate 3e-3, 960 optimizer
steps (60 generation batches, 15,360 completions), no KL, ``max_grad_norm`` 1, ``loss_type="dapo"``, eps 0.2.

Arms (same model, data, sampling seed):

* ``grpo``: token-level PPO ratio, no prefix correction (TRL's loss);
* ``minpro``: MinPRO with the spec's defaults (exclusive prefix minimum, uncapped);
* ``minpro_capped``: ``minpro_cap_at_one=True``;
* ``prefix_product`` (the **positive control**, registered here, not in the package): the same trainer with each
  token's surrogate weighted by the detached cumulative prefix ratio prod_{j<t} rho_j (clamped like MinPRO's to
  e^{+-20}): the exact state-distribution correction whose variance grows exponentially with the length.

Measures per run: reward of every generation batch, final reward (last 5 batches), the largest fall of the 3-batch
moving average, the gradient norm of every step (spikes: > 10x the median active norm of all runs), TRL's clip
fractions (proof that the ratio leaves the trust region: the regime is off-policy) and MinPRO's weight range.

Control: ``prefix_product`` must be unstable here (a larger largest-drop or more gradient spikes than ``grpo``, or a
lower final reward); if it is not, the regime is not off-policy enough to test MinPRO and the run says nothing.

Falsifier (written before the run): the claim "MinPRO stabilises far off-policy training" is falsified if the control
is unstable and MinPRO is no more stable than ``grpo``: its mean largest reward drop is not smaller than ``grpo``'s
*and* its final reward is not higher, over 3 seeds.

Writes ``experiments/results/minpro_chain.json`` and ``.png``. Replaces ``minpro_offpolicy.py``, whose 2-token task
made MinPRO's exclusive prefix minimum equal to the cumulative product (a test of exact prefix IS, not of MinPRO).

The learning rate was chosen after one seed-0 pilot at 1e-2, where every arm (the control included) ended in a
deterministic policy within 960 steps (ratio = 1, zero gradient) at rewards of 0.02-0.22, so stability could not be
told apart from collapse; the falsifier above was written before both runs and was not changed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).parent))
from trl_ext.compare.harness import moving_average, spread  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SPIKE_FACTOR = 10.0
ACTIVE_GRAD_NORM = 1e-6
SMOOTHING = 3
FINAL_WINDOW = 5
#: arm -> (registered trainer, extra config fields)
ARMS: dict[str, tuple[str, dict]] = {
    "grpo": ("grpo", {}),
    "minpro": ("minpro", {}),
    "minpro_capped": ("minpro", {"minpro_cap_at_one": True}),
    "prefix_product": ("grpo", {"policy_objective": "prefix_product"}),
}
COLORS = {"grpo": "tab:blue", "minpro": "tab:orange", "minpro_capped": "tab:green", "prefix_product": "tab:red"}
FALSIFIER = (
    "The control (prefix_product) is unstable, and MinPRO's mean largest reward drop over 3 seeds is not smaller than "
    "grpo's and its mean final reward is not higher than grpo's: then MinPRO does not stabilise far off-policy training."
)


# ----------------------------------------------------------------------------------------------------------------------
# Task and control objective
# ----------------------------------------------------------------------------------------------------------------------
def register_prefix_product() -> None:
    """Register the positive control ``prefix_product``: weight w_t = prod_{j<t} rho_j over the valid prefix."""
    import torch

    from trl_ext.objectives.base import PolicyObjective
    from trl_ext.objectives.minpro import DEFAULT_LOG_WEIGHT_CLAMP, guard_weighted_ratio_overflow
    from trl_ext.registry import POLICY_OBJECTIVES, register_policy_objective

    if "prefix_product" in POLICY_OBJECTIVES.names():
        return

    @register_policy_objective("prefix_product")
    class PrefixProductObjective(PolicyObjective):
        def token_weights(self, ctx):
            valid = ctx.mask.bool()
            log_ratio = torch.where(valid, ctx.log_ratio.detach().float(), torch.zeros_like(ctx.log_ratio.float()))
            exclusive = log_ratio.cumsum(dim=1) - log_ratio
            log_w = exclusive.clamp(-DEFAULT_LOG_WEIGHT_CLAMP, DEFAULT_LOG_WEIGHT_CLAMP)
            weights = guard_weighted_ratio_overflow(log_w, ctx.log_ratio).exp()
            ctx.extras["prefix_weights"] = weights
            return weights

        def metrics(self, ctx):
            weights = ctx.extras["prefix_weights"]
            return {"minpro/weight_mean": ctx.global_masked_mean(weights)}


# ----------------------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------------------
def train_run(arm: str, checkpoint: str, dataset, seed: int, config: dict) -> list[dict]:
    from transformers import PrinterCallback

    from trl_ext import get_trainer
    from trl_ext.data import get_task

    task = get_task("count_chain")
    register_prefix_product()
    name, extra = ARMS[arm]
    trainer_cls, config_cls = get_trainer(name)
    with tempfile.TemporaryDirectory() as output_dir:
        args = config_cls(
            output_dir=output_dir,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            bf16=False,
            disable_tqdm=True,
            seed=seed,
            **config,
            **extra,
        )
        trainer = trainer_cls(model=checkpoint, reward_funcs=task.reward_funcs, args=args, train_dataset=dataset)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        return [dict(entry) for entry in trainer.state.log_history]


def curves(history: list[dict]) -> dict:
    steps = [entry for entry in history if "grad_norm" in entry]

    def series(key: str) -> list[float]:
        return [entry[key] for entry in steps if key in entry]

    return {
        "reward_step": [entry["step"] for entry in steps if "reward" in entry],
        "reward": series("reward"),
        "grad_norm": series("grad_norm"),
        "clip_region": series("clip_ratio/region_mean"),
        "completion_length": series("completions/mean_length"),
        "weight_mean": series("minpro/weight_mean"),
        "weight_min": series("minpro/weight_min"),
        "weight_max": series("minpro/weight_max"),
    }


def largest_drop(values: list[float]) -> float:
    """max_{s<t} (v_s - v_t), 0 if the sequence never falls."""
    peak, drop = -math.inf, 0.0
    for value in values:
        peak = max(peak, value)
        drop = max(drop, peak - value)
    return drop


def run_stats(run: dict, spike_threshold: float) -> dict:
    reward, norms = run["reward"], run["grad_norm"]
    active = [clip for clip, norm in zip(run["clip_region"], norms) if norm > ACTIVE_GRAD_NORM]
    return {
        "final_reward": statistics.fmean(reward[-FINAL_WINDOW:]),
        "peak_reward": max(moving_average(reward, SMOOTHING)),
        "largest_reward_drop": largest_drop(moving_average(reward, SMOOTHING)),
        "grad_norm_spikes": sum(norm > spike_threshold for norm in norms),
        "max_grad_norm": max(norms),
        "clip_fraction": statistics.fmean(active) if active else 0.0,
    }


def summarise(runs: dict[str, list[dict]]) -> dict:
    active = [g for arm_runs in runs.values() for run in arm_runs for g in run["grad_norm"] if g > ACTIVE_GRAD_NORM]
    threshold = SPIKE_FACTOR * statistics.median(active)
    per_arm = {}
    for arm, arm_runs in runs.items():
        stats = [run_stats(run, threshold) for run in arm_runs]
        per_arm[arm] = {
            key: {**spread([s[key] for s in stats]), "per_seed": [s[key] for s in stats]} for key in stats[0]
        }
    return {"spike_threshold": threshold, "arms": per_arm, "verdict": verdict(per_arm)}


def verdict(arms: dict) -> dict:
    grpo, minpro, control = arms["grpo"], arms["minpro"], arms["prefix_product"]
    control_unstable = (
        control["largest_reward_drop"]["mean"] > grpo["largest_reward_drop"]["mean"]
        or control["grad_norm_spikes"]["mean"] > grpo["grad_norm_spikes"]["mean"]
        or control["final_reward"]["mean"] < grpo["final_reward"]["mean"]
    )
    smaller_drop = minpro["largest_reward_drop"]["mean"] < grpo["largest_reward_drop"]["mean"]
    higher_final = minpro["final_reward"]["mean"] > grpo["final_reward"]["mean"]
    return {
        "control_unstable": control_unstable,
        "minpro_smaller_drop_than_grpo": smaller_drop,
        "minpro_higher_final_than_grpo": higher_final,
        "falsified": control_unstable and not smaller_drop and not higher_final,
        "regime_proven": control_unstable,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------------------------------
def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.8))
    summary = report["summary"]
    for arm, runs in report["runs"].items():
        color, stats = COLORS[arm], summary["arms"][arm]
        width = min(len(run["reward"]) for run in runs)
        x = [completions * report["settings"]["generation_batch"] for completions in range(1, width + 1)]
        smoothed = [moving_average(run["reward"][:width], SMOOTHING) for run in runs]
        label = f"{arm}: final {stats['final_reward']['mean']:.2f}, largest drop {stats['largest_reward_drop']['mean']:.2f}"
        axes[0].plot(x, [statistics.fmean(col) for col in zip(*smoothed)], color=color, label=label)
        axes[0].fill_between(
            x, [min(c) for c in zip(*smoothed)], [max(c) for c in zip(*smoothed)], color=color, alpha=0.15
        )
        for index, run in enumerate(runs):
            axes[1].plot(
                range(1, len(run["grad_norm"]) + 1),
                [g if g > ACTIVE_GRAD_NORM else float("nan") for g in run["grad_norm"]],
                color=color,
                alpha=0.5,
                linewidth=0.6,
                label=f"{arm}: {sum(stats['grad_norm_spikes']['per_seed'])} spikes" if index == 0 else None,
            )
            axes[2].plot(
                range(1, len(run["clip_region"]) + 1),
                moving_average(run["clip_region"], 16),
                color=color,
                alpha=0.7,
                label=f"{arm}: mean {stats['clip_fraction']['mean']:.3f}" if index == 0 else None,
            )
    axes[1].axhline(summary["spike_threshold"], color="black", linestyle="--", linewidth=0.8, label="spike threshold")
    axes[1].set_yscale("log")
    axes[0].set(
        xlabel="completions sampled", ylabel="reward (3-batch avg)", title="reward: mean and min-max of 3 seeds"
    )
    axes[1].set(xlabel="optimizer step", ylabel="gradient norm before clipping", title="gradient norm, every run")
    axes[2].set(xlabel="optimizer step", ylabel="clipped token fraction (16-step avg)", title="TRL clip fraction")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    settings = report["settings"]
    fig.suptitle(
        f"count_chain (12 tokens), steps_per_generation {settings['steps_per_generation']}, "
        f"num_iterations {settings['num_iterations']}, lr {settings['learning_rate']:g} (tiny model, CPU)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, default=960, help="optimizer steps per run")
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--num_iterations", type=int, default=4)
    parser.add_argument("--steps_per_generation", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=64, help="completions per optimizer step")
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS / "minpro_chain.json")
    parser.add_argument("--replot", action="store_true", help="re-summarise and redraw an existing --out")
    options = parser.parse_args(argv)
    if options.replot:
        report = json.loads(options.out.read_text())
        report["summary"] = summarise(report["runs"])
        options.out.write_text(json.dumps(report, indent=1))
        plot(report, options.out.with_suffix(".png"))
        print(json.dumps(report["summary"]["verdict"]))
        return report

    import torch

    from trl_ext.data import QUICKSTART_SETTINGS, get_task
    from trl_ext.testing import build_tiny_checkpoint

    task = get_task("count_chain")
    torch.set_num_threads(1)
    start = time.perf_counter()
    model_kwargs = {k: v for k, v in QUICKSTART_SETTINGS["model"].items() if k not in ("alphabet", "seed")}
    config = dict(
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=1,
        steps_per_generation=options.steps_per_generation,
        num_iterations=options.num_iterations,
        num_generations=options.num_generations,
        max_completion_length=task.max_completion_length,
        temperature=1.0,
        beta=0.0,
        loss_type="dapo",
        learning_rate=options.learning_rate,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        max_steps=options.steps,
    )
    runs: dict[str, list[dict]] = {arm: [] for arm in options.arms}
    for index, seed in enumerate(options.seeds):
        cache = Path(tempfile.gettempdir()) / f"trl-ext-minpro-chain-seed{seed}"
        checkpoint = build_tiny_checkpoint(str(cache), alphabet=task.alphabet, seed=seed, **model_kwargs)
        dataset = task.make_dataset(8192, seed)
        order = options.arms[index % len(options.arms) :] + options.arms[: index % len(options.arms)]
        for arm in order:
            run_start = time.perf_counter()
            run = curves(train_run(arm, checkpoint, dataset, seed, config))
            run["seed"] = seed
            run["seconds"] = time.perf_counter() - run_start
            runs[arm].append(run)
            print(
                f"seed {seed} {arm:>15}: final reward {statistics.fmean(run['reward'][-FINAL_WINDOW:]):.3f}, "
                f"max grad norm {max(run['grad_norm']):.2f}, clip {statistics.fmean(run['clip_region']):.3f} "
                f"({run['seconds']:.0f}s)",
                flush=True,
            )
    report = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "falsifier": FALSIFIER,
        "settings": {
            **{k: v for k, v in config.items()},
            "seeds": options.seeds,
            "task": task.name,
            "generation_batch": options.batch_size * options.steps_per_generation,
            "model": model_kwargs,
            "arms": {arm: {"trainer": name, **extra} for arm, (name, extra) in ARMS.items()},
        },
        "runs": runs,
    }
    report["summary"] = summarise(runs)
    report["wall_s"] = time.perf_counter() - start
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=1))
    plot(report, options.out.with_suffix(".png"))
    keys = ("final_reward", "largest_reward_drop", "grad_norm_spikes", "max_grad_norm", "clip_fraction")
    print(f"{'arm':>15} " + " ".join(f"{key:>24}" for key in keys))
    for arm, stats in report["summary"]["arms"].items():
        cells = [f"{stats[k]['mean']:.3f} ({stats[k]['min']:.3f}-{stats[k]['max']:.3f})" for k in keys]
        print(f"{arm:>15} " + " ".join(f"{cell:>24}" for cell in cells))
    print(json.dumps(report["summary"]["verdict"]), f"wall {report['wall_s']:.0f}s")
    return report


if __name__ == "__main__":
    main()
