"""Learning efficiency of every named trainer against `grpo` on the built-in task, over seeds.

    python experiments/learning.py                                    # 4 trainers x 3 seeds x 300 steps (~5 minutes)
    python experiments/learning.py --trainers grpo bnpo --seeds 0 --steps 100

Built on ``trl-ext compare`` (:func:`trl_ext.compare.compare`), with a tiny model per seed, in the quickstart's setting
(``QUICKSTART_SETTINGS``); every trainer with its spec defaults from the same weights, data order and seed. Reported
per trainer over seeds: the 10-step moving average of the reward, the steps to 0.5 and 0.8, the reward over the last
30 steps and the all-equal groups. One update per batch and 2-token completions leave MinPRO's weight and HAPO's
clipping inert: this checks that every trainer learns the task as well as ``grpo``; the experiments in each paper's
regime are the other scripts here. Writes ``experiments/results/learning.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from trl_ext.compare import harness

harness.script_env(one_thread=True)
RESULTS = Path(__file__).parent / "results"
COLORS = {"grpo": "tab:blue", "bnpo": "tab:orange", "minpro": "tab:purple", "hapo": "tab:red"}
THRESHOLDS = (0.5, 0.8)
WINDOW = 10


def first_step(curve: list[float], threshold: float) -> int | None:
    return next((i + 1 for i, value in enumerate(curve) if value >= threshold), None)


def summarise(runs: dict) -> dict:
    summary = {}
    for name, per_seed in runs.items():
        rows = {}
        for seed, run in per_seed.items():
            curve = harness.moving_average(run["reward"], WINDOW)
            rows[seed] = {
                **{f"steps_to_{t}": first_step(curve, t) for t in THRESHOLDS},
                "final_reward": statistics.mean(run["reward"][-30:]),
                "frac_zero_std": statistics.mean(run["frac_reward_zero_std"]),
            }
        aggregate = {key: harness.spread([row[key] for row in rows.values()]) for key in next(iter(rows.values()))}
        summary[name] = {"per_seed": rows, "overall": aggregate}
    return summary


def plot(report: dict, path: Path) -> None:
    with harness.figure(path, figsize=(8, 4.5), dpi=120) as (fig, ax):
        for name, per_seed in report["runs"].items():
            curves = [harness.moving_average(run["reward"], WINDOW) for run in per_seed.values()]
            harness.band(ax, range(1, len(curves[0]) + 1), curves, color=COLORS.get(name), label=name, alpha=0.12)
        ax.set_xlabel("optimizer step (128 completions each)")
        ax.set_ylabel(f"training reward ({WINDOW}-step mean)")
        ax.set_title(f"Built-in arithmetic task, {len(next(iter(report['runs'].values())))} seeds (mean, range)")
        ax.legend()


def run(options) -> dict:
    from trl_ext.compare import compare
    from trl_ext.data import QUICKSTART_SETTINGS, get_task
    from trl_ext.training import set_threads

    set_threads(1)
    task = get_task(QUICKSTART_SETTINGS["task"])
    names = list(dict.fromkeys(["grpo", *options.trainers]))
    recipe = {
        **QUICKSTART_SETTINGS["config"], "task": task.name,
        "task_num_rows": QUICKSTART_SETTINGS["dataset"]["num_rows"],
    }  # fmt: skip

    def model_for(seed: int) -> str:  # the quickstart's tiny model, initialised with the run's seed
        return harness.tiny_model(f"learning-{seed}", seed=seed, alphabet=task.alphabet)

    # `trl-ext compare` runs the arms interleaved (arm order reversed on every other seed) and resumes from
    # --work_dir; its own table and plot land there too.
    report = compare(
        names, config=recipe, seeds=options.seeds, max_steps=options.steps, output_dir=options.work_dir,
        model_factory=model_for,
    )  # fmt: skip
    runs: dict = {name: {} for name in names}
    for result in report["results"]:
        runs[result["arm"]][str(result["seed"])] = {
            key: result[key] for key in ("reward", "frac_reward_zero_std", "step_time")
        }
    return {"options": {"trainers": names, "seeds": options.seeds, "steps": options.steps}, "runs": runs}


def print_summary(report: dict) -> None:
    keys = ("steps_to_0.5", "steps_to_0.8", "final_reward", "frac_zero_std")
    harness.print_table({name: row["overall"] for name, row in report["summary"].items()}, keys, name="trainer")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser, RESULTS / "learning.json")
    parser.add_argument("--trainers", nargs="+", default=["grpo", "bnpo", "minpro", "hapo"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--work_dir", type=Path, default=Path(tempfile.gettempdir()) / "trl-ext-learning-compare",
        help="trl-ext compare's output (per-run results, its table and plot); rerun to resume",
    )  # fmt: skip
    options = parser.parse_args(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    report["summary"] = summarise(report["runs"])
    return harness.finish(options, report, argv, plot=plot, show=print_summary)


if __name__ == "__main__":
    main()
