"""DIVA on sparse rewards: hard problems, partial-step hints, against compute-matched GRPO (completions on the x-axis).

    python experiments/diva_hard.py                                  # the measured configuration (~18 min)
    python experiments/diva_hard.py --seeds 0 --steps 100            # a quick look
    python experiments/diva_hard.py --arms grpo8 grpo16 --out /tmp/a.json &                       # as measured: two
    python experiments/diva_hard.py --arms diva_responses diva_reference --out /tmp/b.json         # parallel parts,
    python experiments/diva_hard.py --merge /tmp/a.json /tmp/b.json                               # then merged

**Task** (built here): the last digit of ``a+b+c`` for digits 0..7 (``--max_digit``), 512 problems with unique ids,
where the quickstart's tiny random Qwen2 starts right about 1 time in 55-80: most GRPO groups are all-wrong for
hundreds of steps, the regime DIVA is built for. **Hint**: one partial step, never the answer (``"a+b=s"``, hinted
prompt ``"a+b=s=a+b+c="``); **rewordings**: two operand permutations and ``"a+b+c+0="``; initial level 7.
**Arms** (128 completions per step each): ``grpo8``, ``grpo16`` (16 completions per problem: the compute-matched
control), ``diva_responses`` and ``diva_reference`` (both ``diva_batch_norm`` modes). **Measures**: the *exact*
expected accuracy at T = 1 on the 512 originals every ``--eval_every`` steps, against completions consumed; the
completions to reach 0.2 / 0.4 / 0.6; the zero-signal and all-wrong fractions; the accuracy of hint rows against their
originals. Control and falsifier (written before the final run): ``FALSIFIER`` below, also in the JSON; design and
results: docs/results.md ("DIVA on hard problems"). Writes ``experiments/results/diva_hard.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

from trl_ext.compare import harness

harness.script_env(one_thread=True)

RESULTS = Path(__file__).parent / "results"
ALPHABET = "0123456789+="
HINT_TEMPLATE = "{hints}={question}"
COMPLETIONS_PER_STEP = 128
KINDS = ("original", "hint", "rewording")
SIGNAL_KEYS = ("groups_constant", "groups_all_wrong", "problems_constant", "problems_all_wrong")
SMOOTHING = 3
HINT_WINDOW = 25
THRESHOLDS = (0.2, 0.4, 0.6)
CONTROL_MIN_ZERO_SIGNAL = 0.5
COMMAND = (
    "python experiments/diva_hard.py --arms grpo8 grpo16 --out A.json & "
    "python experiments/diva_hard.py --arms diva_responses diva_reference --out B.json; "
    "python experiments/diva_hard.py --merge A.json B.json  (same runs as: python experiments/diva_hard.py)"
)
FALSIFIER = (
    "For each DIVA mode, speed-up = grpo16's completions to reach an accuracy threshold on the original problems / "
    "the DIVA arm's. Falsified if the DIVA arm's zero-signal fraction is below grpo8's but its mean speed-up over the "
    "reached thresholds is <= 1.0 (or it reaches fewer thresholds than grpo16), in the mean over seeds; supported if "
    "the mean speed-up is >= 1.25, DIVA is faster than grpo16 on at least 2 of 3 seeds and reaches as many thresholds; "
    "inconclusive otherwise. Thresholds: accuracy 0.2, 0.4, 0.6 on the 512 originals (exact T = 1 expectation). "
    "The whole experiment is inconclusive if grpo8's zero-signal fraction over the first half of training is < 0.5 "
    "(the control)."
)

#: arm -> (registered trainer, config fields)
ARMS: dict[str, tuple[str, dict]] = {
    "grpo8": ("grpo", {"num_generations": 8}), "grpo16": ("grpo", {"num_generations": 16}),
    "diva_responses": ("diva", {"num_generations": 8, "diva_batch_norm": "responses"}),
    "diva_reference": ("diva", {"num_generations": 8, "diva_batch_norm": "reference"}),
}  # fmt: skip
DIVA_FIELDS = {
    "diva_num_variants": 1, "diva_difficulty_k": 0.1, "diva_rrb_threshold": 0.15, "diva_rrb_scale": 0.1,
    "diva_initial_difficulty": 7, "diva_hint_template": HINT_TEMPLATE,
}  # fmt: skip
COLORS = {"grpo8": "tab:blue", "grpo16": "tab:purple", "diva_responses": "tab:green", "diva_reference": "tab:orange"}


# Task
def problem_rows(max_digit: int = 7) -> dict[str, list]:
    """The ``a+b+c=`` problems (digits 0..max_digit) with answer, unique id, one-step hint and rewordings."""
    rows: dict[str, list] = {"prompt": [], "answer": [], "id": [], "hints": [], "variants": []}
    digits = range(max_digit + 1)
    for a in digits:
        for b in digits:
            for c in digits:
                rows["prompt"].append(f"{a}+{b}+{c}=")
                rows["answer"].append(str((a + b + c) % 10))
                rows["id"].append(f"sum3/{a}+{b}+{c}")
                rows["hints"].append([f"{a}+{b}={a + b}"])
                rows["variants"].append([f"{b}+{a}+{c}=", f"{c}+{b}+{a}=", f"{a}+{b}+{c}+0="])
    return rows


def hinted_prompt(prompt: str, hints: list[str]) -> str:
    """The prompt DIVA's built-in generator builds for a hint variant (one step shown)."""
    return HINT_TEMPLATE.format(hints="\n".join(hints), question=prompt)


def prompt_kind(prompt: str, original: str) -> str:
    """``original``, ``hint`` (the hinted variant) or ``rewording`` (any other variant of the same problem)."""
    if prompt == original:
        return "original"
    return "hint" if prompt.count("=") > 1 else "rewording"


def make_reward(log: list[dict], originals: dict[str, str], num_generations: int):
    """Binary exact-match reward that also records, per call (one generation batch): accuracy by prompt kind, and the
    fractions of prompt groups (consecutive blocks of `num_generations`) and of problems (all rows of an id) whose
    rewards are all equal (``*_constant``: no signal) or all 0 (``*_all_wrong``)."""

    def accuracy(prompts, completions, answer, id, **kwargs) -> list[float]:  # noqa: A002 - TRL's column name
        rewards = [float(c.strip() == str(a)) for c, a in zip(completions, answer, strict=True)]
        counts: dict[str, list[float]] = {}
        problems: dict[str, list[float]] = {}
        by_kind: dict[tuple[str, str], list[float]] = {}
        for prompt, problem_id, reward in zip(prompts, id, rewards, strict=True):
            kind = prompt_kind(prompt, originals[problem_id])
            counts.setdefault(kind, []).append(reward)
            problems.setdefault(problem_id, []).append(reward)
            by_kind.setdefault((problem_id, kind), []).append(reward)
        groups = [rewards[i : i + num_generations] for i in range(0, len(rewards), num_generations)]
        entry: dict = {kind: [len(values), sum(values)] for kind, values in counts.items()}
        # Problems trained with a hint in this batch: their original's and their hint's accuracy, side by side.
        paired = [
            (statistics.fmean(by_kind[(pid, "original")]), statistics.fmean(values))
            for (pid, kind), values in by_kind.items()
            if kind == "hint" and (pid, "original") in by_kind
        ]
        entry["hinted_problems"] = [len(paired), sum(o for o, _ in paired), sum(h for _, h in paired)]
        for name, blocks in (("groups", groups), ("problems", list(problems.values()))):
            entry[f"{name}_constant"] = statistics.fmean(float(min(b) == max(b)) for b in blocks)
            entry[f"{name}_all_wrong"] = statistics.fmean(float(max(b) == 0.0) for b in blocks)
        log.append(entry)
        return rewards

    return accuracy


# Exact expected accuracy under T = 1 sampling
def correct_table(tokenizer, max_tokens: int = 2):
    """Bool tensor (10, V, V): digit d is the decoded completion (t1, t2), TRL's way (cut at the first eos)."""
    import torch

    if max_tokens != 2:
        raise ValueError("the exact evaluation enumerates two-token completions")
    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    table = torch.zeros(10, vocab, vocab, dtype=torch.bool)
    for t1 in range(vocab):
        for t2 in range(vocab):
            ids = [t1] if t1 == eos else [t1, t2]
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            if len(text) == 1 and text.isdigit():
                table[int(text), t1, t2] = True
    return table


def expected_accuracy(model, prompt_ids, answers, table, temperature: float = 1.0) -> float:
    """Mean over prompts of P(completion == answer) when sampling two tokens at `temperature`.

    `prompt_ids` is (N, L), all prompts of the same length (no padding); `answers` (N,) digits.
    """
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        n, length = prompt_ids.shape
        vocab = table.shape[1]
        logits = model(input_ids=prompt_ids).logits[:, -1].double() / temperature
        p1 = torch.softmax(logits, dim=-1)  # (N, V)
        first = torch.arange(vocab).repeat(n).view(n * vocab, 1)
        extended = torch.cat([prompt_ids.repeat_interleave(vocab, dim=0), first], dim=1)
        logits2 = model(input_ids=extended).logits[:, -1].double() / temperature
        p2 = torch.softmax(logits2, dim=-1).view(n, vocab, vocab)
        joint = p1.unsqueeze(-1) * p2
        hit = table[answers].double()  # (N, V, V)
        value = float((joint * hit).sum(dim=(1, 2)).mean())
    if was_training:
        model.train()
    return value


# One run
def train_run(arm: str, checkpoint: str, dataset, seed: int, options) -> dict:
    import torch
    from transformers import AutoTokenizer, TrainerCallback

    from trl_ext.data import QUICKSTART_SETTINGS

    name, fields = ARMS[arm]
    config = {**QUICKSTART_SETTINGS["config"], **fields, **(DIVA_FIELDS if name == "diva" else {})}
    config.update(
        learning_rate=options.lr, max_steps=options.steps, logging_steps=1,
        per_device_train_batch_size=COMPLETIONS_PER_STEP,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    table = correct_table(tokenizer)
    eval_ids = torch.tensor([tokenizer(p)["input_ids"] for p in dataset["prompt"]])
    eval_answers = torch.tensor([int(a) for a in dataset["answer"]])
    evals: list[tuple[int, float]] = []

    class Evaluate(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            evals.append((0, expected_accuracy(model, eval_ids, eval_answers, table)))

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % options.eval_every == 0 or state.global_step == options.steps:
                evals.append((state.global_step, expected_accuracy(model, eval_ids, eval_answers, table)))

    reward_log: list[dict] = []
    originals = dict(zip(dataset["id"], dataset["prompt"], strict=True))
    run = harness.run_arm(
        name, model=checkpoint, reward_funcs=[make_reward(reward_log, originals, config["num_generations"])],
        train_dataset=dataset, seed=seed, config=config, callbacks=[Evaluate()],
    )  # fmt: skip
    steps = run.logs("loss")
    zero_key = "diva/frac_zero_std_global" if name == "diva" else "frac_reward_zero_std"
    result = {
        "seconds": run.seconds, "eval_steps": [step for step, _ in evals],
        "eval_completions": [step * COMPLETIONS_PER_STEP for step, _ in evals],
        "eval_accuracy": [value for _, value in evals], "zero_signal_logged": [entry[zero_key] for entry in steps],
        "train_accuracy": {
            kind: [(entry.get(kind, [0, 0])[1] / entry[kind][0]) if kind in entry else None for entry in reward_log]
            for kind in KINDS
        },
        "completions": sum(entry[kind][0] for entry in reward_log for kind in KINDS if kind in entry),
        **{key: [entry[key] for entry in reward_log] for key in SIGNAL_KEYS},
        "zero_signal": [entry["problems_constant"] for entry in reward_log],
        "hinted_problems": [entry["hinted_problems"] for entry in reward_log],
    }  # fmt: skip
    if name == "diva":
        result["zero_signal_local"] = [entry["diva/frac_zero_std_local"] for entry in steps]
        result["mean_difficulty"] = [entry.get("diva/mean_difficulty") for entry in steps]
    return result


# Summary (pure functions of the stored runs)
def completions_to(target: float, completions: list[int], accuracy: list[float]) -> int | None:
    """Completions at the first evaluation whose trailing `SMOOTHING`-evaluation mean reaches `target`."""
    for count, value in zip(completions, harness.moving_average(accuracy, SMOOTHING), strict=True):
        if value >= target - 1e-12:
            return count
    return None


def mean_speedup(control: dict, arm: dict) -> float | None:
    """Mean over thresholds reached by both of control / arm completions (None if none is reached by both)."""
    ratios = [control[t] / arm[t] for t in control if control[t] and arm.get(t)]
    return statistics.fmean(ratios) if ratios else None


def _mean(values: list) -> float | None:
    numbers = [v for v in values if v is not None]
    return statistics.fmean(numbers) if numbers else None


def paired_hint_accuracy(hinted: list[list[float]]) -> dict:
    """Over every problem trained with a hint: mean accuracy of its original rows and of its hint rows (same batch)."""
    count = sum(entry[0] for entry in hinted)
    return {
        "hinted_problem_batches": count,
        "hinted_original_accuracy": sum(entry[1] for entry in hinted) / count if count else None,
        "hinted_hint_accuracy": sum(entry[2] for entry in hinted) / count if count else None,
    }


def summarise_run(run: dict) -> dict:
    zero = run["zero_signal"]
    half = max(len(zero) // 2, 1)
    return {
        "final_accuracy": statistics.fmean(run["eval_accuracy"][-SMOOTHING:]),
        "completions_to": {
            str(t): completions_to(t, run["eval_completions"], run["eval_accuracy"]) for t in THRESHOLDS
        },
        "zero_signal_mean": statistics.fmean(zero), "zero_signal_first_half": statistics.fmean(zero[:half]),
        "all_wrong_mean": statistics.fmean(run["problems_all_wrong"]),
        "all_wrong_first_half": statistics.fmean(run["problems_all_wrong"][:half]),
        "prompt_groups_constant_mean": statistics.fmean(run["groups_constant"]),
        "train_accuracy": {kind: _mean(values) for kind, values in run["train_accuracy"].items()},
        **paired_hint_accuracy(run["hinted_problems"]), "seconds": run["seconds"],
    }  # fmt: skip


OVERALL_KEYS = (
    "final_accuracy", "zero_signal_mean", "zero_signal_first_half", "all_wrong_mean", "all_wrong_first_half",
)  # fmt: skip
OVERALL_KEYS += ("prompt_groups_constant_mean", "hinted_original_accuracy", "hinted_hint_accuracy")
OVERALL_KEYS += ("speedup_vs_grpo16", "thresholds_reached", "seconds")


def summarise(runs: dict) -> dict:
    per_seed: dict = {}
    for arm, by_seed in runs.items():
        for seed, run in by_seed.items():
            per_seed.setdefault(seed, {})[arm] = summarise_run(run)
    for entry in per_seed.values():
        control = entry["grpo16"]["completions_to"] if "grpo16" in entry else None
        for stats in entry.values():
            stats["speedup_vs_grpo16"] = mean_speedup(control, stats["completions_to"]) if control else None
            stats["thresholds_reached"] = sum(v is not None for v in stats["completions_to"].values())
    overall: dict = {}
    for arm in runs:
        rows = [entry[arm] for entry in per_seed.values() if arm in entry]
        overall[arm] = {key: harness.spread([row[key] for row in rows]) for key in OVERALL_KEYS}
        overall[arm]["completions_to"] = {
            str(t): harness.spread([row["completions_to"][str(t)] for row in rows]) for t in THRESHOLDS
        }
        overall[arm]["completions_to_reached"] = {
            str(t): sum(row["completions_to"][str(t)] is not None for row in rows) for t in THRESHOLDS
        }
        overall[arm]["train_accuracy"] = {
            kind: harness.spread([row["train_accuracy"][kind] for row in rows])
            for kind in ("original", "hint", "rewording")
        }
        overall[arm]["faster_than_grpo16_seeds"] = sum((row["speedup_vs_grpo16"] or 0) > 1.0 for row in rows)
    return {"per_seed": per_seed, "overall": overall, "verdict": verdict(per_seed, overall)}


def verdict(per_seed: dict, overall: dict) -> dict:
    """Apply the control and the falsifier (see FALSIFIER) to each DIVA arm."""
    if "grpo8" not in overall or "grpo16" not in overall:
        return {"control_passed": None}
    control_value = overall["grpo8"]["zero_signal_first_half"]["mean"]
    out: dict = {"control_grpo8_zero_signal_first_half": control_value}
    out["control_passed"] = control_value >= CONTROL_MIN_ZERO_SIGNAL
    for arm in overall:
        if not arm.startswith("diva"):
            continue
        rows = [entry for entry in per_seed.values() if arm in entry and "grpo16" in entry]
        speedups = [entry[arm]["speedup_vs_grpo16"] for entry in rows]
        reached = statistics.fmean(entry[arm]["thresholds_reached"] for entry in rows)
        reached_control = statistics.fmean(entry["grpo16"]["thresholds_reached"] for entry in rows)
        mean = _mean(speedups)
        faster = sum((s or 0) > 1.0 for s in speedups)
        fewer_zero = overall[arm]["zero_signal_mean"]["mean"] < overall["grpo8"]["zero_signal_mean"]["mean"]
        if not out["control_passed"]:
            label = "inconclusive (control failed: grpo8 is not in the sparse regime)"
        elif reached == reached_control == 0:
            label = "inconclusive (no threshold reached by either arm)"
        elif fewer_zero and (mean is None or mean <= 1.0 or reached < reached_control):
            label = "falsified"
        elif mean is not None and mean >= 1.25 and faster >= 2 and reached >= reached_control:
            label = "supported"
        else:
            label = "inconclusive"
        out[arm] = {
            "mean_speedup_vs_grpo16": mean, "seeds_faster": faster, "mean_thresholds_reached": reached,
            "grpo16_mean_thresholds_reached": reached_control, "zero_signal_below_grpo8": fewer_zero, "verdict": label,
        }  # fmt: skip
    return out


# Plot
def plot(report: dict, path: Path) -> None:
    runs = report["runs"]
    with harness.figure(path, 1, 3, figsize=(18, 4.8)) as (fig, (left, middle, right)):
        for arm, by_seed in runs.items():
            color, seeds = COLORS.get(arm, "black"), list(by_seed.values())
            final = report["summary"]["overall"][arm]["final_accuracy"]["mean"]
            curves = [run["eval_accuracy"] for run in seeds]
            harness.band(left, seeds[0]["eval_completions"], curves, color=color, label=f"{arm} (final {final:.2f})")
            for key, style, what in (("zero_signal", "-", "all equal"), ("problems_all_wrong", ":", "all 0")):
                curves = [harness.moving_average(run[key], 10) for run in seeds]
                steps = [(i + 1) * COMPLETIONS_PER_STEP for i in range(len(curves[0]))]
                harness.band(middle, steps, curves, color=color, label=f"{arm}: {what}", linestyle=style, fill=False)
            if arm.startswith("diva"):
                # Problems trained with a hint: their original's and their hint's accuracy in the same batch, pooled
                # over a trailing window of steps and over seeds.
                hinted = [run["hinted_problems"] for run in seeds]
                width = min(len(h) for h in hinted)
                for index, style, label in ((1, "-", "original rows"), (2, "--", "hint rows")):
                    values = []
                    for t in range(width):
                        window = [h[i] for h in hinted for i in range(max(0, t - HINT_WINDOW + 1), t + 1)]
                        count = sum(entry[0] for entry in window)
                        values.append(sum(entry[index] for entry in window) / count if count else float("nan"))
                    x = [(t + 1) * COMPLETIONS_PER_STEP for t in range(width)]
                    right.plot(x, values, color=color, linestyle=style, label=f"{arm}: {label}")
        for threshold in THRESHOLDS:
            left.axhline(threshold, color="grey", linewidth=0.5, linestyle=":")
        left.set(ylabel="expected accuracy on the originals (T = 1)")
        left.set(title="Accuracy on the hard originals (mean, min-max band)")
        middle.set(ylabel="zero-signal fraction (10-step mean)")
        middle.set(title="Problems whose completions (diva: original + variant) all got the same reward")
        right.set(ylabel=f"training accuracy ({HINT_WINDOW}-step window, seeds pooled)")
        right.set(title="DIVA: problems trained with a hint, original vs hint rows")
        for axis in (left, middle, right):
            axis.set(xlabel="completions consumed")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)


# Main
def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def dump_json(report: dict) -> str:
    """JSON with floats to 5 significant digits and every innermost list of numbers on one line."""
    text = json.dumps(_rounded(report), indent=1)
    return re.sub(r"\[\s*([-0-9.eE+, \nnul]+?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def new_report(runs: dict, options: dict, wall: float | None) -> dict:
    return {
        "falsifier": FALSIFIER,
        "control": f"grpo8 zero-signal fraction over the first half of training >= {CONTROL_MIN_ZERO_SIGNAL}",
        "thresholds": list(THRESHOLDS), "completions_per_step": COMPLETIONS_PER_STEP,
        "arms": {
            arm: {"trainer": name, **fields, **(DIVA_FIELDS if name == "diva" else {})}
            for arm, (name, fields) in ARMS.items()
            if arm in runs
        },
        "options": options, "wall_s": wall, "runs": runs,
    }  # fmt: skip


def print_summary(report: dict) -> None:
    overall = report["summary"]["overall"]
    keys = ("final_accuracy", "zero_signal_mean", "zero_signal_first_half", "speedup_vs_grpo16")
    rows = {
        arm: {**stats, **{f"to_{t}": stats["completions_to"][t] for t in stats["completions_to"]}}
        for arm, stats in overall.items()
    }
    harness.print_table(rows, [*keys, *(f"to_{t}" for t in THRESHOLDS)])
    print(json.dumps(report["summary"]["verdict"], indent=1))


def merge(sources: list[Path], defaults: dict) -> dict:
    """The runs of partial results (``--arms`` split over processes) in one report."""
    reports = [harness.load_report(path) for path in sources]
    runs: dict = {}
    for report in reports:
        for arm, by_seed in report["runs"].items():
            runs.setdefault(arm, {}).update(by_seed)
        report["options"] = {**defaults, **report["options"]}  # parts written before these were recorded
    walls = [r.get("wall_s") for r in reports if r.get("wall_s") is not None]
    options = dict(
        reports[0]["options"], seeds=sorted({s for r in reports for s in r["options"]["seeds"]}),
        arms=[arm for arm in ARMS if arm in runs],
        parts=[{"source": str(path), **r["options"], "wall_s": r.get("wall_s")} for path, r in zip(sources, reports)],
    )  # fmt: skip
    return {"command": COMMAND, **new_report(runs, options, max(walls) if walls else None)}


def run(options) -> dict:
    from datasets import Dataset

    from trl_ext.training import set_threads

    set_threads(1)
    start = time.perf_counter()
    dataset = Dataset.from_dict(problem_rows(options.max_digit))
    runs = {arm: {} for arm in options.arms}
    for index, seed in enumerate(options.seeds):
        checkpoint = harness.tiny_model(f"diva-hard-{seed}", seed=seed, alphabet=ALPHABET)
        order = options.arms[index % len(options.arms) :] + options.arms[: index % len(options.arms)]
        for arm in order:
            run = train_run(arm, checkpoint, dataset, seed, options)
            runs[arm][str(seed)] = run
            print(
                f"seed {seed} {arm:>15}: {run['seconds']:5.0f}s | accuracy {run['eval_accuracy'][0]:.3f} -> "
                f"{statistics.fmean(run['eval_accuracy'][-SMOOTHING:]):.3f} | zero-signal "
                f"{statistics.fmean(run['zero_signal']):.3f}"
            )
    keys = ("seeds", "arms", "steps", "eval_every", "max_digit", "lr")
    return new_report(runs, {key: getattr(options, key) for key in keys}, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser, RESULTS / "diva_hard.json")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--eval_every", type=int, default=20)
    parser.add_argument("--max_digit", type=int, default=7)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--merge", type=Path, nargs="+", help="merge the runs of these partial results into --out")
    options = parser.parse_args(argv)
    if options.merge:
        report = merge(options.merge, {"max_digit": parser.get_default("max_digit"), "lr": parser.get_default("lr")})
    else:
        report = harness.load_report(options.out) if options.replot else run(options)
    report["summary"] = summarise(report["runs"])
    return harness.finish(options, report, argv, plot=plot, show=print_summary, dump=dump_json)


if __name__ == "__main__":
    main()
