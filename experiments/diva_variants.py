"""`grpo` versus `diva` on the built-in task with a difficulty spread: steps to GRPO's final accuracy, zero-variance groups.

What this measures, and what it does not: DIVA per *optimizer step* on a mixed-difficulty task (most problems easy)
whose hint is the whole answer, against GRPO with 8 completions per problem only (no arm spends DIVA's 16 completions
per problem). It is kept as the record of that setting; the test of DIVA's claim on sparse rewards (hard problems only,
partial-step hints, a compute-matched GRPO arm, completions on the x-axis) is ``experiments/diva_hard.py``.

    python experiments/diva_variants.py                          # the measured configuration (CPU, ~10 minutes)
    python experiments/diva_variants.py --seeds 0 --steps 100    # a quick look

Task: ``arithmetic_variants``, the 100 distinct ``a+b=`` problems (last digit of the sum) once each, from copying a
digit to a sum with carry (44 of the 100 need a carry). Each row has rewordings (``b+a=``, ``0+a+b=``) and one hint
step (the full sum, ``a+b=s``); the hinted prompt is ``"{hints}={question}"`` so that it stays inside the task's
12-character alphabet. Model: the quickstart's tiny randomly initialised Qwen2 (``QUICKSTART_SETTINGS``), one per
seed; lr 1e-3 linear, temperature 1, 128 completions per step with 8 per prompt row, no KL.

Arms (same model init, same step budget, same completions per step):

* ``grpo``: the baseline (``trl.GRPOTrainer``'s advantage and loss; parity-tested), 16 problems per step;
* ``diva``: the ``diva`` trainer with the spec's defaults (V = 1, k = 0.1, RRB 0.15 / 0.1), 8 problems + their
  8 variants per step.

Accuracy is measured the same way for both arms: every ``--eval_every`` steps, TRL's evaluation loop samples 8
completions (temperature 1) for each of the 100 *original* problems and reports the mean accuracy (``eval_reward``).
Training rewards are not comparable (DIVA's batches contain hinted and reworded variants).

Reported per seed and over seeds:

* ``target``: GRPO's final accuracy, the mean of its last 3 evaluations;
* ``steps_to_target``: the first evaluation step at which an arm's accuracy, averaged over 3 consecutive evaluations,
  reaches the target (None if never); the speed-up is ``grpo steps / diva steps`` (the paper claims 2.55x);
* ``steps_to_0.5`` / ``0.8`` / ``0.9``: the same for fixed accuracy thresholds (the task saturates near 0.95, so the
  last few points of GRPO's final accuracy are a noisy target);
* zero-variance groups: for ``grpo`` TRL's ``frac_reward_zero_std`` (prompt groups whose rewards are all equal, so
  every advantage is 0); for ``diva`` ``diva/frac_zero_std_global`` (problems whose original *and* variant rewards are
  all equal: the only rows DIVA gives no signal) next to ``diva/frac_zero_std_local`` (its prompt-row groups).

Writes ``experiments/results/diva_variants.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from trl_ext.compare.harness import load_report, moving_average, spread, write_report  # noqa: E402

RESULTS = Path(__file__).parent / "results"
COLORS = {"grpo": "tab:blue", "diva": "tab:green"}
HINT_TEMPLATE = "{hints}={question}"
SMOOTHING = 3
THRESHOLDS = (0.5, 0.8, 0.9)


def train_run(arm: str, checkpoint: str, dataset, reward_funcs, seed: int, options) -> dict:
    """One training run; returns per-step training logs and the evaluation curve."""
    from transformers import PrinterCallback

    from trl_ext import get_trainer
    from trl_ext.data import QUICKSTART_SETTINGS

    trainer_cls, config_cls = get_trainer(arm)
    config = dict(QUICKSTART_SETTINGS["config"])
    config.update(
        seed=seed,
        max_steps=options.steps,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=options.eval_every,
        per_device_eval_batch_size=200,
        report_to="none",
    )
    if arm == "diva":
        config["diva_hint_template"] = HINT_TEMPLATE
    with tempfile.TemporaryDirectory() as output_dir:
        args = config_cls(output_dir=output_dir, disable_tqdm=True, **config)
        trainer = trainer_cls(
            model=checkpoint, reward_funcs=reward_funcs, args=args, train_dataset=dataset, eval_dataset=dataset
        )
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        initial = trainer.evaluate()["eval_reward"]
        trainer.train()
        seconds = time.perf_counter() - start
    history = trainer.state.log_history
    train_steps = [entry for entry in history if "loss" in entry]
    evals = [(0, initial)] + [(entry["step"], entry["eval_reward"]) for entry in history if "eval_reward" in entry]
    keys = ["reward", "frac_reward_zero_std", "diva/frac_zero_std_global", "diva/frac_zero_std_local"]
    return {
        "seconds": seconds,
        "eval_steps": [step for step, _ in evals],
        "eval_accuracy": [value for _, value in evals],
        **{key: [entry.get(key) for entry in train_steps] for key in keys if key in train_steps[0]},
    }


def steps_to(target: float, steps: list[int], accuracy: list[float]) -> int | None:
    """First evaluation step whose smoothed accuracy reaches `target`."""
    for step, value in zip(steps, moving_average(accuracy, SMOOTHING), strict=True):
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
    overall = {key: spread([entry[key] for entry in per_seed.values()]) for key in keys}
    return {"per_seed": per_seed, "overall": overall}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for arm, color in COLORS.items():
        seeds = list(runs[arm])
        steps = runs[arm][seeds[0]]["eval_steps"]
        curves = [runs[arm][s]["eval_accuracy"] for s in seeds]
        mean = [statistics.mean(c[i] for c in curves) for i in range(len(steps))]
        left.plot(steps, mean, color=color, label=f"{arm} (mean of {len(seeds)} seeds)")
        left.fill_between(
            steps,
            [min(c[i] for c in curves) for i in range(len(steps))],
            [max(c[i] for c in curves) for i in range(len(steps))],
            color=color,
            alpha=0.2,
        )
        key = "frac_reward_zero_std" if arm == "grpo" else "diva/frac_zero_std_global"
        label = (
            "grpo: prompt groups, all rewards equal"
            if arm == "grpo"
            else "diva: problems (original + variant) all equal"
        )
        zero = [moving_average(runs[arm][s][key], 10) for s in seeds]
        x = range(1, len(zero[0]) + 1)
        right.plot(x, [statistics.mean(z[i] for z in zero) for i in range(len(x))], color=color, label=label)
        if arm == "diva":
            local = [moving_average(runs[arm][s]["diva/frac_zero_std_local"], 10) for s in seeds]
            right.plot(
                x,
                [statistics.mean(z[i] for z in local) for i in range(len(x))],
                color=color,
                linestyle="--",
                label="diva: its prompt-row groups, all equal",
            )
    for entry in report["summary"]["per_seed"].values():
        left.axhline(entry["target"], color="grey", linewidth=0.5, linestyle=":")
    left.set_xlabel("optimizer step (128 completions each)")
    left.set_ylabel("accuracy on the 100 original problems (T = 1)")
    left.set_title("Accuracy (dotted: GRPO's final accuracy per seed)")
    left.legend()
    right.set_xlabel("optimizer step")
    right.set_ylabel("fraction with zero advantage signal (10-step mean)")
    right.set_title("Zero-variance groups")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval_every", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "diva_variants.json")
    parser.add_argument("--replot", action="store_true", help="re-summarise and re-plot --out without training")
    options = parser.parse_args(argv)
    if options.replot:
        report = load_report(options.out)
        report["summary"] = summarise(report["runs"])
        return write_report(options.out, report, rederived=True, plot=plot, show=lambda r: print_summary(r["summary"]))

    import torch

    from trl_ext.data import QUICKSTART_SETTINGS, get_task
    from trl_ext.testing import build_tiny_checkpoint

    torch.set_num_threads(1)
    task = get_task("arithmetic_variants")
    dataset = task.make_dataset(100, 0)
    runs: dict = {"grpo": {}, "diva": {}}
    for seed in options.seeds:
        model_kwargs = {k: v for k, v in QUICKSTART_SETTINGS["model"].items() if k != "alphabet"}
        model_kwargs["seed"] = seed
        checkpoint = build_tiny_checkpoint(
            str(Path(tempfile.gettempdir()) / f"trl-ext-diva-bench-{seed}"), alphabet=task.alphabet, **model_kwargs
        )
        for arm in ["grpo", "diva"] if seed % 2 == 0 else ["diva", "grpo"]:
            run = train_run(arm, checkpoint, dataset, task.reward_funcs, seed, options)
            runs[arm][str(seed)] = run
            print(
                f"seed {seed} {arm:>4}: {run['seconds']:5.1f}s | accuracy {run['eval_accuracy'][0]:.3f} -> "
                f"{statistics.mean(run['eval_accuracy'][-SMOOTHING:]):.3f}",
                flush=True,
            )
    summary = summarise(runs)
    report = {
        "command": "python experiments/diva_variants.py " + " ".join(argv or sys.argv[1:]),
        "options": {"seeds": options.seeds, "steps": options.steps, "eval_every": options.eval_every},
        "summary": summary,
        "runs": runs,
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=1))
    plot(report, options.out.with_suffix(".png"))
    print_summary(summary)
    print(f"wrote {options.out} and {options.out.with_suffix('.png')}")
    return report


def print_summary(summary: dict) -> None:
    for seed, entry in summary["per_seed"].items():
        thresholds = " ".join(f"{t}: {entry[f'grpo_steps_to_{t}']}/{entry[f'diva_steps_to_{t}']}" for t in THRESHOLDS)
        print(f"seed {seed}: steps grpo/diva to accuracy {thresholds}")
        print(
            f"seed {seed}: target {entry['target']:.3f} | steps to target grpo {entry['grpo_steps_to_target']} diva "
            f"{entry['diva_steps_to_target']} (speed-up {entry['speedup']}) | final diva {entry['diva_final_accuracy']:.3f}"
            f" | zero-variance grpo {entry['grpo_zero_variance_mean']:.3f} diva global {entry['diva_zero_variance_mean']:.3f}"
            f" local {entry['diva_local_zero_variance_mean']:.3f}"
        )


if __name__ == "__main__":
    main()
