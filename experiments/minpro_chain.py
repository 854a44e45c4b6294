"""MinPRO far off-policy on a 12-token "count-up chain", with the cumulative prefix ratio as a positive control.

    python experiments/minpro_chain.py                        # 4 arms x 3 seeds, about 12 minutes on one core
    python experiments/minpro_chain.py --seeds 0 --steps 96   # a quick look

Task: the built-in ``count_chain`` (next 12 digits counting up; reward = right prefix / 12), where the prefix decides
whether a token is reachable. Regime: far off-policy (each generation batch split into 4 optimizer steps and replayed
``num_iterations`` 4 times: the last steps train on a policy 15 updates old), lr 3e-3, no KL, ``loss_type="dapo"``.
Arms: ``grpo``, ``minpro``, ``minpro_capped`` and the **positive control** ``prefix_product`` (registered here: the
exact cumulative prefix-ratio correction). Per run: the reward per generation batch, the final reward, the largest fall
of its 3-batch moving average, gradient-norm spikes, TRL's clip fractions. Control (``prefix_product`` must be
unstable) and falsifier (written before the run): ``FALSIFIER`` below, also in the JSON; results: docs/results.md
("MinPRO: far off-policy, on long completions"). Writes ``experiments/results/minpro_chain.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from trl_ext.compare import harness

harness.script_env()
RESULTS = Path(__file__).parent / "results"
SPIKE_FACTOR = 10.0
ACTIVE_GRAD_NORM = 1e-6
SMOOTHING = 3
FINAL_WINDOW = 5
#: arm -> (registered trainer, extra config fields)
ARMS: dict[str, tuple[str, dict]] = {
    "grpo": ("grpo", {}), "minpro": ("minpro", {}), "minpro_capped": ("minpro", {"minpro_cap_at_one": True}),
    "prefix_product": ("grpo", {"policy_objective": "prefix_product"}),
}  # fmt: skip
COLORS = {"grpo": "tab:blue", "minpro": "tab:orange", "minpro_capped": "tab:green", "prefix_product": "tab:red"}
FALSIFIER = (
    "The control (prefix_product) is unstable, and MinPRO's mean largest reward drop over 3 seeds is not smaller than "
    "grpo's and its mean final reward is not higher than grpo's: then MinPRO does not stabilise far off-policy training."
)


# Task and control objective
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


# Runs
def train_run(arm: str, checkpoint: str, dataset, seed: int, config: dict) -> list[dict]:
    from trl_ext.data import get_task

    register_prefix_product()
    name, extra = ARMS[arm]
    config = dict(config, use_cpu=True, bf16=False, **extra)
    reward_funcs = get_task("count_chain").reward_funcs
    run = harness.run_arm(
        name, model=checkpoint, reward_funcs=reward_funcs, train_dataset=dataset, seed=seed, config=config
    )
    return [dict(entry) for entry in run.history]


def curves(history: list[dict]) -> dict:
    steps = [entry for entry in history if "grad_norm" in entry]

    def series(key: str) -> list[float]:
        return [entry[key] for entry in steps if key in entry]

    return {
        "reward_step": [entry["step"] for entry in steps if "reward" in entry], "reward": series("reward"),
        "grad_norm": series("grad_norm"), "clip_region": series("clip_ratio/region_mean"),
        "completion_length": series("completions/mean_length"), "weight_mean": series("minpro/weight_mean"),
        "weight_min": series("minpro/weight_min"), "weight_max": series("minpro/weight_max"),
    }  # fmt: skip


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
        "peak_reward": max(harness.moving_average(reward, SMOOTHING)),
        "largest_reward_drop": largest_drop(harness.moving_average(reward, SMOOTHING)),
        "grad_norm_spikes": sum(norm > spike_threshold for norm in norms), "max_grad_norm": max(norms),
        "clip_fraction": statistics.fmean(active) if active else 0.0,
    }  # fmt: skip


def summarise(runs: dict[str, list[dict]]) -> dict:
    active = [g for arm_runs in runs.values() for run in arm_runs for g in run["grad_norm"] if g > ACTIVE_GRAD_NORM]
    threshold = SPIKE_FACTOR * statistics.median(active)
    per_arm = {}
    for arm, arm_runs in runs.items():
        stats = [run_stats(run, threshold) for run in arm_runs]
        per_arm[arm] = {
            key: {**harness.spread([s[key] for s in stats]), "per_seed": [s[key] for s in stats]} for key in stats[0]
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
        "control_unstable": control_unstable, "minpro_smaller_drop_than_grpo": smaller_drop,
        "minpro_higher_final_than_grpo": higher_final,
        "falsified": control_unstable and not smaller_drop and not higher_final, "regime_proven": control_unstable,
    }  # fmt: skip


# Plot
def plot(report: dict, path: Path) -> None:
    summary, settings = report["summary"], report["settings"]
    with harness.figure(path, 1, 3, figsize=(18, 4.8), dpi=100) as (fig, axes):
        for arm, runs in report["runs"].items():
            color, stats = COLORS[arm], summary["arms"][arm]
            smoothed = [harness.moving_average(run["reward"], SMOOTHING) for run in runs]
            x = [batch * settings["generation_batch"] for batch in range(1, min(map(len, smoothed)) + 1)]
            label = f"{arm}: final {stats['final_reward']['mean']:.2f}, largest drop {stats['largest_reward_drop']['mean']:.2f}"
            harness.band(axes[0], x, smoothed, color=color, label=label)
            for index, run in enumerate(runs):  # every run, labelled once per arm
                norms = [g if g > ACTIVE_GRAD_NORM else float("nan") for g in run["grad_norm"]]
                label = f"{arm}: {sum(stats['grad_norm_spikes']['per_seed'])} spikes" if index == 0 else None
                axes[1].plot(range(1, len(norms) + 1), norms, color=color, alpha=0.5, linewidth=0.6, label=label)
                clip = harness.moving_average(run["clip_region"], 16)
                label = f"{arm}: mean {stats['clip_fraction']['mean']:.3f}" if index == 0 else None
                axes[2].plot(range(1, len(clip) + 1), clip, color=color, alpha=0.7, label=label)
        axes[1].axhline(
            summary["spike_threshold"], color="black", linestyle="--", linewidth=0.8, label="spike threshold"
        )
        axes[1].set_yscale("log")
        axes[0].set(xlabel="completions sampled", ylabel="reward (3-batch avg)")
        axes[0].set_title("reward: mean and min-max of 3 seeds")
        axes[1].set(xlabel="optimizer step", ylabel="gradient norm before clipping", title="gradient norm, every run")
        axes[2].set(xlabel="optimizer step", ylabel="clipped token fraction (16-step avg)", title="TRL clip fraction")
        for axis in axes:
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        fig.suptitle(
            f"count_chain (12 tokens), steps_per_generation {settings['steps_per_generation']}, "
            f"num_iterations {settings['num_iterations']}, lr {settings['learning_rate']:g} (tiny model, CPU)"
        )


# Main
def run(options) -> dict:
    from trl_ext.data import QUICKSTART_SETTINGS, get_task
    from trl_ext.training import set_threads

    task = get_task("count_chain")
    set_threads(1)
    start = time.perf_counter()
    config = dict(
        per_device_train_batch_size=options.batch_size, gradient_accumulation_steps=1,
        steps_per_generation=options.steps_per_generation, num_iterations=options.num_iterations,
        num_generations=options.num_generations, max_completion_length=task.max_completion_length, temperature=1.0,
        beta=0.0, loss_type="dapo", learning_rate=options.learning_rate, lr_scheduler_type="constant",
        max_grad_norm=1.0, max_steps=options.steps,
    )  # fmt: skip
    runs: dict[str, list[dict]] = {arm: [] for arm in options.arms}
    for index, seed in enumerate(options.seeds):
        checkpoint = harness.tiny_model(f"minpro-chain-seed{seed}", seed=seed, alphabet=task.alphabet)
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
                f"({run['seconds']:.0f}s)"
            )
    settings = {**config, "seeds": options.seeds, "task": task.name}
    settings["generation_batch"] = options.batch_size * options.steps_per_generation
    settings["model"] = {k: v for k, v in QUICKSTART_SETTINGS["model"].items() if k not in ("alphabet", "seed")}
    settings["arms"] = {arm: {"trainer": name, **extra} for arm, (name, extra) in ARMS.items()}
    return {"falsifier": FALSIFIER, "settings": settings, "runs": runs, "wall_s": time.perf_counter() - start}


def print_summary(report: dict) -> None:
    keys = ("final_reward", "largest_reward_drop", "grad_norm_spikes", "max_grad_norm", "clip_fraction")
    harness.print_table(report["summary"]["arms"], keys)
    print(json.dumps(report["summary"]["verdict"]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(parser, RESULTS / "minpro_chain.json")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, default=960, help="optimizer steps per run")
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--num_iterations", type=int, default=4)
    parser.add_argument("--steps_per_generation", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=64, help="completions per optimizer step")
    parser.add_argument("--num_generations", type=int, default=8)
    options = parser.parse_args(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    report["summary"] = summarise(report["runs"])
    return harness.finish(options, report, argv, plot=plot, show=print_summary)


if __name__ == "__main__":
    main()
