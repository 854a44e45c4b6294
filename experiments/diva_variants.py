"""`grpo` versus `diva` on the built-in task with a difficulty spread: steps to GRPO's final accuracy, zero-variance groups.

    python experiments/diva_variants.py                          # the measured configuration (CPU, ~10 minutes)
    python experiments/diva_variants.py --seeds 0 --steps 100    # a quick look

Kept as the record of that setting: DIVA per *optimizer step* on mostly easy problems whose hint is the whole answer,
against GRPO with 8 completions per problem only; DIVA's claim on sparse rewards is tested by ``diva_hard.py``. Task:
``arithmetic_variants`` (100 ``a+b=`` problems with rewordings and a full-sum hint), the quickstart's tiny Qwen2 per
seed, 128 completions per step; ``grpo`` (16 problems x 8) against ``diva`` (8 problems + their 8 variants). Every
``--eval_every`` steps TRL's evaluation samples 8 completions (T = 1) for each original problem. Reported: GRPO's final
accuracy (``target``), the steps of each arm to reach it and 0.5 / 0.8 / 0.9 (3-evaluation mean), the speed-up, and
the zero-variance fractions. Writes ``experiments/results/diva_variants.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from trl_ext.compare import harness

harness.script_env(one_thread=True)
RESULTS = Path(__file__).parent / "results"
COLORS = {"grpo": "tab:blue", "diva": "tab:green"}
HINT_TEMPLATE = "{hints}={question}"
SMOOTHING = 3
THRESHOLDS = (0.5, 0.8, 0.9)


def train_run(arm: str, checkpoint: str, dataset, reward_funcs, seed: int, options) -> dict:
    """One training run; returns per-step training logs and the evaluation curve."""
    from trl_ext.data import QUICKSTART_SETTINGS

    config = dict(QUICKSTART_SETTINGS["config"], max_steps=options.steps, logging_steps=1, report_to="none")
    config.update(eval_strategy="steps", eval_steps=options.eval_every, per_device_eval_batch_size=200)
    if arm == "diva":
        config["diva_hint_template"] = HINT_TEMPLATE
    initial: list[float] = []
    run = harness.run_arm(
        arm, model=checkpoint, reward_funcs=reward_funcs, train_dataset=dataset, eval_dataset=dataset, seed=seed,
        config=config, before=lambda trainer: initial.append(trainer.evaluate()["eval_reward"]),
    )  # fmt: skip
    train_steps = run.logs("loss")
    evals = [(0, initial[0])] + [(entry["step"], entry["eval_reward"]) for entry in run.logs("eval_reward")]
    keys = ["reward", "frac_reward_zero_std", "diva/frac_zero_std_global", "diva/frac_zero_std_local"]
    return {
        "seconds": run.seconds, "eval_steps": [step for step, _ in evals],
        "eval_accuracy": [value for _, value in evals],
        **{key: [entry.get(key) for entry in train_steps] for key in keys if key in train_steps[0]},
    }  # fmt: skip


def steps_to(target: float, steps: list[int], accuracy: list[float]) -> int | None:
    """First evaluation step whose smoothed accuracy reaches `target`."""
    for step, value in zip(steps, harness.moving_average(accuracy, SMOOTHING), strict=True):
        if value >= target - 1e-12:
            return step
    return None


def summarise(runs: dict) -> dict:
    """Per seed: GRPO's final accuracy, steps of each arm to reach it, zero-variance fractions by training thirds."""
    per_seed = {}
    for seed, arms in runs["grpo"].items():
        target = statistics.mean(arms["eval_accuracy"][-SMOOTHING:])
        entry = {"target": target}
        for arm in ("grpo", "diva"):
            run = runs[arm][seed]
            entry[f"{arm}_final_accuracy"] = statistics.mean(run["eval_accuracy"][-SMOOTHING:])
            entry[f"{arm}_steps_to_target"] = steps_to(target, run["eval_steps"], run["eval_accuracy"])
            for threshold in THRESHOLDS:
                entry[f"{arm}_steps_to_{threshold}"] = steps_to(threshold, run["eval_steps"], run["eval_accuracy"])
            zero = run["frac_reward_zero_std"] if arm == "grpo" else run["diva/frac_zero_std_global"]
            third = max(len(zero) // 3, 1)
            entry[f"{arm}_zero_variance_thirds"] = [
                statistics.mean(zero[i * third : (i + 1) * third]) for i in range(3)
            ]
            entry[f"{arm}_zero_variance_mean"] = statistics.mean(zero)
            entry[f"{arm}_seconds"] = run["seconds"]
        diva_local = runs["diva"][seed]["diva/frac_zero_std_local"]
        entry["diva_local_zero_variance_mean"] = statistics.mean(diva_local)
        g, d = entry["grpo_steps_to_target"], entry["diva_steps_to_target"]
        entry["speedup"] = (g / d) if (g and d) else None
        per_seed[seed] = entry
    keys = [k for k in next(iter(per_seed.values())) if not k.endswith("thirds")]
    overall = {key: harness.spread([entry[key] for entry in per_seed.values()]) for key in keys}
    return {"per_seed": per_seed, "overall": overall}


def plot(report: dict, path: Path) -> None:
    runs = report["runs"]
    with harness.figure(path, 1, 2, figsize=(12, 4.5), dpi=120) as (fig, (left, right)):
        for arm, color in COLORS.items():
            seeds = list(runs[arm].values())
            curves = [run["eval_accuracy"] for run in seeds]
            label = f"{arm} (mean of {len(seeds)} seeds)"
            harness.band(left, seeds[0]["eval_steps"], curves, color=color, label=label, alpha=0.2)
            zero_keys = [("frac_reward_zero_std", "-", "grpo: prompt groups, all rewards equal")]
            if arm == "diva":
                zero_keys = [("diva/frac_zero_std_global", "-", "diva: problems (original + variant) all equal")]
                zero_keys += [("diva/frac_zero_std_local", "--", "diva: its prompt-row groups, all equal")]
            for key, style, label in zero_keys:
                zero = [harness.moving_average(run[key], 10) for run in seeds]
                x = range(1, len(zero[0]) + 1)
                harness.band(right, x, zero, color=color, label=label, linestyle=style, fill=False)
        for entry in report["summary"]["per_seed"].values():
            left.axhline(entry["target"], color="grey", linewidth=0.5, linestyle=":")
        left.set(
            xlabel="optimizer step (128 completions each)", ylabel="accuracy on the 100 original problems (T = 1)"
        )
        left.set_title("Accuracy (dotted: GRPO's final accuracy per seed)")
        left.legend()
        right.set(xlabel="optimizer step", ylabel="fraction with zero advantage signal (10-step mean)")
        right.set_title("Zero-variance groups")
        right.legend(fontsize=8)


def run(options) -> dict:
    from trl_ext.data import get_task
    from trl_ext.training import set_threads

    set_threads(1)
    task = get_task("arithmetic_variants")
    dataset = task.make_dataset(100, 0)
    runs: dict = {"grpo": {}, "diva": {}}
    for seed in options.seeds:
        checkpoint = harness.tiny_model(f"diva-bench-{seed}", seed=seed, alphabet=task.alphabet)
        for arm in ["grpo", "diva"] if seed % 2 == 0 else ["diva", "grpo"]:
            run = train_run(arm, checkpoint, dataset, task.reward_funcs, seed, options)
            runs[arm][str(seed)] = run
            print(
                f"seed {seed} {arm:>4}: {run['seconds']:5.1f}s | accuracy {run['eval_accuracy'][0]:.3f} -> "
                f"{statistics.mean(run['eval_accuracy'][-SMOOTHING:]):.3f}"
            )
    return {
        "options": {"seeds": options.seeds, "steps": options.steps, "eval_every": options.eval_every},
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser, RESULTS / "diva_variants.json")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval_every", type=int, default=20)
    options = parser.parse_args(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    report["summary"] = summarise(report["runs"])
    return harness.finish(options, report, argv, plot=plot, show=print_summary)


def print_summary(report: dict) -> None:
    keys = ["target", "grpo_steps_to_target", "diva_steps_to_target", "speedup", "diva_final_accuracy"]
    keys += [f"{arm}_steps_to_{t}" for t in THRESHOLDS for arm in ("grpo", "diva")]
    keys += ["grpo_zero_variance_mean", "diva_zero_variance_mean", "diva_local_zero_variance_mean"]
    harness.print_table(report["summary"]["per_seed"], keys, name="seed")


if __name__ == "__main__":
    main()
