"""MinPRO against GRPO in far off-policy training on the 12-token ``count_chain``, in a regime where GRPO is unstable.

    python experiments/minpro_chain.py                         # the pre-registered run: 2 arms x 10 seeds, 640 steps
    python experiments/minpro_chain.py --seeds 100 --steps 96  # a quick look (not the registered seeds)

The design, arms, primary metric, seeds, minimum effect and controls are pre-registered in
``experiments/preregistered/minpro_chain.py`` (committed before the final run), which also computes the verdict stored
in the JSON. In short: the tiny random Qwen2 learns ``count_chain`` (the next 12 digits counting up; reward = right
prefix / 12) while each generation batch is split into several optimizer steps and replayed ``num_iterations``
times, at a learning rate high enough that ``grpo`` itself is unstable (the control); ``minpro`` is compared with it
on the mean reward of the second half of training, paired by seed. Extra arms for a look (not registered):
``minpro_capped`` and ``prefix_product`` (each token weighted by the detached cumulative prefix ratio).
Writes ``experiments/results/minpro_chain.json`` and ``.png``; results: docs/results.md ("MinPRO: ...").
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from preregistered import minpro_chain as prereg

from trl_ext.compare import harness

harness.script_env()
RESULTS = Path(__file__).parent / "results"
SPIKE_FACTOR = 10.0
FLAT_GRAD_NORM = 1e-3  # a step this flat has (almost) no signal left: its groups' rewards (nearly) all agree
#: arm -> (registered trainer, extra config fields)
ARMS: dict[str, tuple[str, dict]] = {
    "grpo": ("grpo", {}), "minpro": ("minpro", {}), "minpro_capped": ("minpro", {"minpro_cap_at_one": True}),
    "prefix_product": ("grpo", {"policy_objective": "prefix_product"}),
}  # fmt: skip
assert set(prereg.ARMS) <= set(ARMS)
COLORS = {"grpo": "tab:blue", "minpro": "tab:orange", "minpro_capped": "tab:green", "prefix_product": "tab:red"}


# Task and an extra objective
def register_prefix_product() -> None:
    """Register ``prefix_product``: weight w_t = prod_{j<t} rho_j over the valid prefix (the exact correction)."""
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


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Per arm: each metric's mean, min, max and per-seed values (the pre-registered metrics, plus gradient-norm
    spikes above 10x the median active gradient norm of all runs, and the share of second-half steps whose gradient
    norm is below 1e-3)."""
    active = [
        g for arm_runs in runs.values() for run in arm_runs for g in run["grad_norm"] if g > prereg.ACTIVE_GRAD_NORM
    ]
    threshold = SPIKE_FACTOR * statistics.median(active)
    per_arm = {}
    for arm, arm_runs in runs.items():
        stats = []
        for run in arm_runs:
            stat = prereg.run_metrics(run)
            stat["grad_norm_spikes"] = sum(norm > threshold for norm in run["grad_norm"])
            stat["max_grad_norm"] = max(run["grad_norm"])
            late = run["grad_norm"][len(run["grad_norm"]) // 2 :]  # descriptive, added after the run (not registered)
            stat["flat_late_steps"] = sum(norm < FLAT_GRAD_NORM for norm in late) / len(late)
            stats.append(stat)
        per_arm[arm] = {
            key: {**harness.spread([s[key] for s in stats]), "per_seed": [s[key] for s in stats]} for key in stats[0]
        }
    return {"spike_threshold": threshold, "arms": per_arm}


# Plot
def plot(report: dict, path: Path) -> None:
    summary, settings = report["summary"], report["settings"]
    with harness.figure(path, 1, 3, figsize=(18, 4.8), dpi=100) as (fig, axes):
        for arm, runs in report["runs"].items():
            color, stats = COLORS[arm], summary["arms"][arm]
            smoothed = [prereg.moving_average(run["reward"]) for run in runs]
            x = [batch * settings["generation_batch"] for batch in range(1, min(map(len, smoothed)) + 1)]
            label = f"{arm}: second half {stats['second_half_reward']['mean']:.2f}"
            harness.band(axes[0], x, smoothed, color=color, label=label)
            for index, run in enumerate(runs):  # every run, labelled once per arm
                axes[1].plot(x, smoothed[index][: len(x)], color=color, alpha=0.5, linewidth=0.7,
                             label=arm if index == 0 else None)  # fmt: skip
                norms = [g if g > prereg.ACTIVE_GRAD_NORM else float("nan") for g in run["grad_norm"]]
                label = f"{arm}: {sum(stats['grad_norm_spikes']['per_seed'])} spikes" if index == 0 else None
                axes[2].plot(range(1, len(norms) + 1), norms, color=color, alpha=0.4, linewidth=0.5, label=label)
        axes[2].axhline(summary["spike_threshold"], color="black", linestyle="--", linewidth=0.8, label="spike level")
        axes[2].set_yscale("log")
        n = len(next(iter(report["runs"].values())))
        axes[0].set(
            xlabel="completions sampled", ylabel="reward (3-batch avg)", title=f"mean and min-max of {n} seeds"
        )
        axes[1].set(xlabel="completions sampled", ylabel="reward (3-batch avg)", title="every run")
        axes[2].set(xlabel="optimizer step", ylabel="gradient norm before clipping", title="gradient norm, every run")
        for axis in axes:
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        fig.suptitle(
            f"count_chain (12 tokens), steps_per_generation {settings['steps_per_generation']}, "
            f"num_iterations {settings['num_iterations']}, lr {settings['learning_rate']:g} (tiny model, CPU)"
        )


def docs_tables(report: dict) -> str:
    """The markdown tables docs/results.md quotes, derived from the report alone (a test compares them)."""
    judged, arms = report["verdict"], report["summary"]["arms"]
    effect = judged["primary"]
    lines = [
        "| primary: mean reward, second half of training | mean difference [95% interval] | seeds in favour "
        "| minimum effect | verdict |",
        "|---|---|---|---|---|",
        f"| `minpro` - `grpo` | {effect['mean']:+.3f} [{effect['low']:+.3f}, {effect['high']:+.3f}] "
        f"| {effect['in_favour']}/{effect['n']} | {judged['min_effect']:g} | {judged['primary_verdict']} |",
        "",
        "| control | value | threshold | held |",
        "|---|---|---|---|",
    ]
    checks = judged["controls"]
    lines += [
        f"| `grpo` unstable: seeds whose 3-batch reward average loses >= {prereg.UNSTABLE_FALL:.0%} of its peak "
        f"| {checks['grpo_unstable_seeds']}/{checks['grpo_seeds']} | >= {prereg.MIN_UNSTABLE_SHARE[0]}/{prereg.MIN_UNSTABLE_SHARE[1]} "
        f"| {checks['grpo_unstable']} |",
        f"| far off-policy: `grpo`'s clipped-token fraction | {checks['grpo_clip_fraction']:.3f} "
        f"| >= {prereg.MIN_CLIP_FRACTION:g} | {checks['off_policy']} |",
        "",
        "| secondary (no verdict) | mean difference [95% interval] | seeds in favour |",
        "|---|---|---|",
    ]
    for name, sec in judged["secondary"].items():
        lines.append(
            f"| {name} | {sec['mean']:+.3f} [{sec['low']:+.3f}, {sec['high']:+.3f}] | {sec['in_favour']}/{sec['n']} |"
        )
    names = list(arms)
    lines += [
        "",
        f"| {len(report['runs'][names[0]])} seeds, mean (min-max) | " + " | ".join(f"`{a}`" for a in names) + " |",
    ]
    lines.append("|---|" + "---|" * len(names))
    rows = (
        ("second-half mean reward (primary)", "second_half_reward", ".3f"), ("final reward (last 5 batches)", "final_reward", ".3f"),
        ("largest fall of the 3-batch average", "largest_reward_drop", ".3f"),
        ("largest fall relative to the peak", "largest_relative_fall", ".2f"),
        ("gradient-norm spikes (> 10x the median)", "grad_norm_spikes", ".0f"), ("largest gradient norm", "max_grad_norm", ".3g"),
        ("clipped token fraction", "clip_fraction", ".3f"),
        ("second-half steps with gradient norm < 1e-3", "flat_late_steps", ".2f"),
    )  # fmt: skip
    for label, key, fmt in rows:
        cells = " | ".join(
            f"{arms[a][key]['mean']:{fmt}} ({arms[a][key]['min']:{fmt}}-{arms[a][key]['max']:{fmt}})" for a in names
        )
        lines.append(f"| {label} | {cells} |")
    unstable = " | ".join(f"{judged['unstable_seeds'][a]}/{len(report['runs'][a])}" for a in names)
    lines.append(f"| seeds losing >= {prereg.UNSTABLE_FALL:.0%} of the peak | {unstable} |")
    return "\n".join(lines)


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
    partial = Path(f"{options.out}.partial")
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
            partial.write_text(json.dumps(runs))  # a run that is stopped keeps what it has
            metrics = prereg.run_metrics(run)
            print(
                f"seed {seed} {arm:>15}: second-half reward {metrics['second_half_reward']:.3f}, final "
                f"{metrics['final_reward']:.3f}, largest fall {metrics['largest_reward_drop']:.3f} "
                f"({metrics['largest_relative_fall']:.0%} of peak), clip "
                f"{metrics['clip_fraction']:.3f} ({run['seconds']:.0f}s)"
            )
    for arm_runs in runs.values():
        arm_runs.sort(key=lambda run: run["seed"])
    settings = {**config, "seeds": options.seeds, "task": task.name}
    settings["generation_batch"] = options.batch_size * options.steps_per_generation
    settings["model"] = {k: v for k, v in QUICKSTART_SETTINGS["model"].items() if k not in ("alphabet", "seed")}
    settings["arms"] = {arm: {"trainer": ARMS[arm][0], **ARMS[arm][1]} for arm in options.arms}
    partial.unlink(missing_ok=True)
    return {"settings": settings, "preregistration": prereg.__doc__, "runs": runs,
            "wall_s": time.perf_counter() - start}  # fmt: skip


def print_summary(report: dict) -> None:
    keys = ("second_half_reward", "final_reward", "largest_reward_drop", "grad_norm_spikes", "clip_fraction")
    harness.print_table(report["summary"]["arms"], keys)
    print(json.dumps({k: v for k, v in report["verdict"].items() if k not in ("primary", "secondary")}))
    effect = report["verdict"]["primary"]
    print(f"minpro - grpo, second-half reward: {effect['mean']:+.4f} [{effect['low']:+.4f}, {effect['high']:+.4f}] "
          f"({effect['in_favour']}/{effect['n']} in favour)")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(parser, RESULTS / "minpro_chain.json", seeds=prereg.SEEDS)
    parser.add_argument("--arms", nargs="+", default=list(prereg.ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, default=prereg.STEPS, help="optimizer steps per run")
    parser.add_argument("--learning_rate", type=float, default=prereg.LEARNING_RATE)
    parser.add_argument("--num_iterations", type=int, default=prereg.NUM_ITERATIONS)
    parser.add_argument("--steps_per_generation", type=int, default=prereg.STEPS_PER_GENERATION)
    parser.add_argument("--batch_size", type=int, default=prereg.BATCH_SIZE, help="completions per optimizer step")
    parser.add_argument("--num_generations", type=int, default=prereg.NUM_GENERATIONS)
    options = parser.parse_args(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    report["summary"] = summarise(report["runs"])
    report["verdict"] = prereg.judge(report)
    return harness.finish(options, report, argv, plot=plot, show=print_summary)


if __name__ == "__main__":
    main()
