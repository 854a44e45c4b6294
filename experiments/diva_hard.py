"""DIVA on hard problems: easier hint variants against the best GRPO at equal completions, with a copy-variant arm.

    python experiments/diva_hard.py                                   # the registered run, in one process
    python experiments/diva_hard.py --seeds 100 --steps 60            # a quick look (not the registered seeds)
    # as measured: the same runs in two parallel processes, then merged into experiments/results/diva_hard.json
    python experiments/diva_hard.py --arms diva grpo8 --out A.json &
    python experiments/diva_hard.py --arms diva_copy grpo4 grpo16 --out B.json; wait
    python experiments/diva_hard.py --merge A.json B.json

The design, arms, primary metric, seeds, minimum effect, controls and the verdict code are pre-registered in
``experiments/preregistered/diva_hard.py`` (committed before the final run). In short: the last digit of ``a+b+c``
(digits 0..7, 512 problems). The **starting model** is the quickstart's tiny random Qwen2, first fine-tuned (a few
seconds of supervised steps, seeded) on two-operand sums ``x+y=``, so that it can finish a sum once the first step is
done but not the three-operand originals. The **hint** is that first step: the hinted prompt is ``a+b+c=s+c=`` with
``s = a+b`` (a partial step, never the answer). Five arms, 128 completions per step each: ``grpo4`` / ``grpo8`` /
``grpo16`` (4, 8, 16 completions per problem: 32, 16, 8 problems per step), ``diva`` (hint variants) and
``diva_copy`` (the same trainer whose variants are copies of the original). Measures: the exact expected accuracy at
T = 1 on the 512 originals every ``--eval_every`` steps, against completions consumed; before training, the same
accuracy on the hinted prompts (the control that the hints are easier); the zero-signal fractions; the accuracy of
hint rows against their originals during training. Writes ``experiments/results/diva_hard.json`` and ``.png``;
results: docs/results.md ("DIVA on hard problems").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from preregistered import diva_hard as prereg

from trl_ext.compare import harness

harness.script_env(one_thread=True)

RESULTS = Path(__file__).parent / "results"
ALPHABET = "0123456789+="
HINT_TEMPLATE = "{question}{hints}="
COMPLETIONS_PER_STEP = prereg.COMPLETIONS_PER_STEP
KINDS = ("original", "hint", "rewording")
SIGNAL_KEYS = ("groups_constant", "groups_all_wrong", "problems_constant", "problems_all_wrong")
HINT_WINDOW = 25
COMMAND = (
    "python experiments/diva_hard.py --arms diva grpo8 --out A.json & "
    "python experiments/diva_hard.py --arms diva_copy grpo4 grpo16 --out B.json; wait; "
    "python experiments/diva_hard.py --merge A.json B.json  (same runs as: python experiments/diva_hard.py)"
)

#: arm -> (registered trainer, config fields)
ARMS: dict[str, tuple[str, dict]] = {
    "grpo4": ("grpo", {"num_generations": 4}), "grpo8": ("grpo", {"num_generations": 8}),
    "grpo16": ("grpo", {"num_generations": 16}),
    "diva": ("diva", {"num_generations": 8}), "diva_copy": ("diva", {"num_generations": 8}),
}  # fmt: skip
assert tuple(ARMS) == prereg.ARMS
DIVA_FIELDS = {
    "diva_num_variants": 1, "diva_difficulty_k": 0.1, "diva_rrb_threshold": 0.15, "diva_rrb_scale": 0.1,
    "diva_batch_norm": "responses", "diva_initial_difficulty": 7, "diva_hint_template": HINT_TEMPLATE,
}  # fmt: skip
COLORS = {"grpo4": "tab:cyan", "grpo8": "tab:blue", "grpo16": "tab:purple", "diva": "tab:green"}
COLORS["diva_copy"] = "tab:olive"
#: The supervised warm start: two-operand sums, half of them after an unrelated three-digit prefix (the hinted
#: prompt's shape), label smoothing on the answer digit so that the originals keep some probability on every digit.
WARM_START = {
    "steps": 150, "batch": 64, "lr": 3e-3, "label_smoothing": 0.3, "prefix_fraction": 0.5, "max_first": 14,
    "max_second": 7,
}  # fmt: skip


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
                rows["hints"].append([f"{a + b}+{c}"])
                rows["variants"].append([f"{b}+{a}+{c}=", f"{c}+{b}+{a}=", f"{a}+{b}+{c}+0="])
    return rows


def hinted_prompt(prompt: str, hints: list[str]) -> str:
    """The prompt DIVA's built-in generator builds for a hint variant (the first step done: ``a+b+c=s+c=``)."""
    return HINT_TEMPLATE.format(hints="".join(hints), question=prompt)


def copy_variants(row: dict, difficulty: int, num_variants: int, rng: random.Random) -> list[tuple[dict, int]]:
    """The copy-variant arm's generator: every variant is the original problem, at the problem's own level."""
    return [(dict(row), difficulty) for _ in range(num_variants)]


def prompt_kind(prompt: str, original: str) -> str:
    """``original`` (also a copy), ``hint`` (the hinted variant) or ``rewording`` (any other variant)."""
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


# The starting model
def warm_start(checkpoint: str, seed: int, settings: dict = WARM_START) -> str:
    """`checkpoint` after the supervised warm start on two-operand sums (seeded; cached by settings beside it).

    Each step: `batch` sums ``x+y=`` (x in 0..max_first, y in 0..max_second), a `prefix_fraction` of them after an
    unrelated ``u+v+w=``; cross-entropy on the answer digit (smoothed) and on the end-of-sequence token after it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stamp_value = json.dumps({"checkpoint": checkpoint, "seed": seed, **settings}, sort_keys=True)
    tag = hashlib.sha256(stamp_value.encode()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"trl-ext-diva-hard-start-{seed}-{tag}"
    stamp = out / "warm_start.json"
    if stamp.exists() and stamp.read_text() == stamp_value:
        return str(out)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    pairs = [(x, y) for x in range(settings["max_first"] + 1) for y in range(settings["max_second"] + 1)]
    batch, eos = settings["batch"], tokenizer.eos_token_id
    model.train()
    for _ in range(settings["steps"]):
        sequences = []
        for _ in range(batch):
            x, y = rng.choice(pairs)
            prompt = f"{x}+{y}="
            if rng.random() < settings["prefix_fraction"]:
                prompt = "+".join(str(rng.randrange(8)) for _ in range(3)) + "=" + prompt
            sequences.append(tokenizer(prompt + str((x + y) % 10))["input_ids"] + [eos])
        length = max(map(len, sequences))
        ids = torch.full((batch, length), tokenizer.pad_token_id)
        mask = torch.zeros(batch, length, dtype=torch.long)
        for i, sequence in enumerate(sequences):  # left padding, as in generation
            ids[i, length - len(sequence) :] = torch.tensor(sequence)
            mask[i, length - len(sequence) :] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        smooth = settings["label_smoothing"]
        loss = torch.nn.functional.cross_entropy(logits[:, -3], ids[:, -2], label_smoothing=smooth)
        loss = loss + torch.nn.functional.cross_entropy(logits[:, -2], ids[:, -1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Written beside, then renamed: processes that build the same start at once (parts of one run) never read half a
    # checkpoint; the builds are identical, so whichever lands first is kept.
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / stamp.name).write_text(stamp_value)
    try:
        partial.rename(out)
    except OSError:
        shutil.rmtree(partial)
    return str(out)


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


def prompt_set_accuracy(model, tokenizer, prompts: list[str], answers: list[str], table) -> float:
    """:func:`expected_accuracy` over prompts of different lengths (grouped by length, weighted by count)."""
    import torch

    by_length: dict[int, list[tuple[list[int], int]]] = {}
    for prompt, answer in zip(prompts, answers, strict=True):
        ids = tokenizer(prompt)["input_ids"]
        by_length.setdefault(len(ids), []).append((ids, int(answer)))
    total = 0.0
    for group in by_length.values():
        ids = torch.tensor([ids for ids, _ in group])
        total += expected_accuracy(model, ids, torch.tensor([a for _, a in group]), table) * len(group)
    return total / len(prompts)


def starting_accuracy(checkpoint: str, dataset) -> dict:
    """The starting model's exact expected accuracy on the 512 originals and on their hinted prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    table = correct_table(tokenizer)
    hinted = [hinted_prompt(p, h) for p, h in zip(dataset["prompt"], dataset["hints"], strict=True)]
    return {
        "original": prompt_set_accuracy(model, tokenizer, dataset["prompt"], dataset["answer"], table),
        "hint": prompt_set_accuracy(model, tokenizer, hinted, dataset["answer"], table),
    }


# One run
def train_run(arm: str, checkpoint: str, dataset, seed: int, options) -> dict:
    import torch
    from transformers import AutoTokenizer, TrainerCallback

    from trl_ext.data import QUICKSTART_SETTINGS

    name, fields = ARMS[arm]
    config = {**QUICKSTART_SETTINGS["config"], **fields, **(DIVA_FIELDS if name == "diva" else {})}
    if arm == "diva_copy":
        config["diva_variant_generator"] = copy_variants
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
    result = {
        "seconds": run.seconds, "eval_steps": [step for step, _ in evals],
        "eval_completions": [step * COMPLETIONS_PER_STEP for step, _ in evals],
        "eval_accuracy": [value for _, value in evals],
        "train_accuracy": {
            kind: [(entry.get(kind, [0, 0])[1] / entry[kind][0]) if kind in entry else None for entry in reward_log]
            for kind in KINDS
        },
        "completions": sum(entry[kind][0] for entry in reward_log for kind in KINDS if kind in entry),
        **{key: [entry[key] for entry in reward_log] for key in SIGNAL_KEYS},
        "hinted_problems": [entry["hinted_problems"] for entry in reward_log],
    }  # fmt: skip
    if name == "diva":
        result["mean_difficulty"] = [entry.get("diva/mean_difficulty") for entry in run.logs("loss")]
    return result


# Summary (pure functions of the stored runs)
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
    half = max(len(run["problems_constant"]) // 2, 1)
    return {
        "accuracy_area": prereg.accuracy_area(run["eval_completions"], run["eval_accuracy"]),
        "final_accuracy": statistics.fmean(run["eval_accuracy"][-prereg.FINAL_EVALUATIONS :]),
        "start_accuracy": run["eval_accuracy"][0],
        "zero_signal_mean": statistics.fmean(run["problems_constant"]),
        "zero_signal_first_half": statistics.fmean(run["problems_constant"][:half]),
        "all_wrong_first_half": statistics.fmean(run["problems_all_wrong"][:half]),
        "prompt_groups_constant_first_half": statistics.fmean(run["groups_constant"][:half]),
        **paired_hint_accuracy(run["hinted_problems"][:half]), "seconds": run["seconds"],
    }  # fmt: skip


def summarise(runs: dict) -> dict:
    """Per arm: each per-run statistic as mean (min-max) over seeds."""
    per_seed = {arm: {seed: summarise_run(run) for seed, run in by_seed.items()} for arm, by_seed in runs.items()}
    keys = list(next(iter(next(iter(per_seed.values())).values())))
    overall = {
        arm: {key: harness.spread([row[key] for row in rows.values()]) for key in keys}
        for arm, rows in per_seed.items()
    }
    return {"per_seed": per_seed, "overall": overall}


# Docs
def docs_tables(report: dict) -> str:
    """The markdown tables docs/results.md quotes, derived from the report alone (a test compares them)."""
    judged, overall = report["verdict"], report["summary"]["overall"]
    lines = ["| comparison | mean difference [95% interval] | seeds in favour | verdict |", "|---|---|---|---|"]
    for name, effect in judged["effects"].items():
        lines.append(
            f"| `{name}` | {effect['mean']:+.3f} [{effect['low']:+.3f}, {effect['high']:+.3f}] "
            f"| {effect['in_favour']}/{effect['n']} | {judged['verdicts'][name]} |"
        )
    for name, effect in judged["secondary"].items():
        lines.append(
            f"| `{name}` (secondary) | {effect['mean']:+.3f} [{effect['low']:+.3f}, {effect['high']:+.3f}] "
            f"| {effect['in_favour']}/{effect['n']} | no verdict |"
        )
    for claim, value in judged["summary"].items():
        lines.append(f"| **{claim}** | | | **{value}** |")
    checks = judged["controls"]
    lines += ["", "| control | value (mean over seeds; min-max) | threshold | held |", "|---|---|---|---|"]
    gap = checks["hint_minus_original_at_start"]
    lines.append(
        f"| hint rows minus originals, starting model | {gap['mean']:.3f} ({gap['min']:.3f}-{gap['max']:.3f}) "
        f"| >= {prereg.MIN_HINT_GAP_AT_START} on every seed | {checks['hints_easier_at_start']} |"
    )
    zero = checks["grpo8_zero_signal_first_half"]
    lines.append(
        f"| `grpo8` zero-signal fraction, first half | {zero['mean']:.3f} ({zero['min']:.3f}-{zero['max']:.3f}) "
        f"| >= {prereg.MIN_ZERO_SIGNAL} in the mean | {checks['sparse_regime']} |"
    )
    gap = checks["diva_hint_minus_original_in_training"]
    lines.append(
        f"| `diva` hint rows minus original rows, first half of training | {gap['mean']:.3f} "
        f"({gap['min']:.3f}-{gap['max']:.3f}) | >= {prereg.MIN_HINT_GAP_IN_TRAINING} in the mean "
        f"| {checks['hints_easier_in_training']} |"
    )
    header = "| mean (min-max) over seeds | " + " | ".join(f"`{arm}`" for arm in overall) + " |"
    lines += ["", header, "|---|" + "---|" * len(overall)]
    for key, label, digits in (
        ("accuracy_area", "primary: mean accuracy over completions consumed", 3),
        ("start_accuracy", "accuracy at the start", 3), ("final_accuracy", "final accuracy", 3),
        ("zero_signal_first_half", "zero-signal fraction, first half", 3),
        ("all_wrong_first_half", "all-wrong fraction, first half", 3),
        ("hinted_original_accuracy", "hinted problems: original rows' accuracy, first half", 3),
        ("hinted_hint_accuracy", "hinted problems: hint rows' accuracy, first half", 3),
        ("seconds", "seconds per run", 0),
    ):  # fmt: skip
        cells = []
        for arm in overall:
            stats = overall[arm][key]
            cells.append(
                ""
                if stats is None
                else f"{stats['mean']:.{digits}f} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Plot
def plot(report: dict, path: Path) -> None:
    runs = report["runs"]
    with harness.figure(path, 1, 3, figsize=(18, 4.8)) as (fig, (left, middle, right)):
        for arm, by_seed in runs.items():
            color, seeds = COLORS.get(arm, "black"), list(by_seed.values())
            area = report["summary"]["overall"][arm]["accuracy_area"]["mean"]
            curves = [run["eval_accuracy"] for run in seeds]
            harness.band(left, seeds[0]["eval_completions"], curves, color=color, label=f"{arm} (area {area:.3f})")
            curves = [harness.moving_average(run["problems_constant"], 10) for run in seeds]
            steps = [(i + 1) * COMPLETIONS_PER_STEP for i in range(len(curves[0]))]
            harness.band(middle, steps, curves, color=color, label=arm, fill=False)
            if arm == "diva":
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
        left.set(
            ylabel="expected accuracy on the originals (T = 1)", title="Accuracy on the originals (mean, min-max)"
        )
        middle.set(ylabel="zero-signal fraction (10-step mean)", title="Problems whose completions all got one reward")
        right.set(ylabel=f"training accuracy ({HINT_WINDOW}-step window, seeds pooled)")
        right.set(title="diva: problems trained with a hint, original vs hint rows")
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
    """JSON with the runs' floats to 5 significant digits and every innermost list of numbers on one line."""
    text = json.dumps(report, indent=1)
    return re.sub(r"\[\s*([-0-9.eE+, \nnul]+?)\s*\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def new_report(runs: dict, start: dict, options: dict, wall: float | None) -> dict:
    return {
        "preregistration": prereg.__doc__, "command": COMMAND, "completions_per_step": COMPLETIONS_PER_STEP,
        "warm_start": WARM_START, "hint_template": HINT_TEMPLATE,
        "arms": {
            arm: {"trainer": name, **fields, **(DIVA_FIELDS if name == "diva" else {})}
            | ({"diva_variant_generator": "copy_variants"} if arm == "diva_copy" else {})
            for arm, (name, fields) in ARMS.items()
            if arm in runs
        },
        "options": options, "wall_s": wall, "start": _rounded(start), "runs": _rounded(runs),
    }  # fmt: skip


def print_summary(report: dict) -> None:
    overall = report["summary"]["overall"]
    keys = ("accuracy_area", "final_accuracy", "zero_signal_first_half", "hinted_original_accuracy")
    harness.print_table(overall, [*keys, "hinted_hint_accuracy", "seconds"])
    print(json.dumps(report["start"]))
    judged = report["verdict"]
    print(json.dumps(judged["controls"], indent=1))
    for name, effect in judged["effects"].items():
        if effect is not None:
            print(f"{name}: {effect['mean']:+.4f} [{effect['low']:+.4f}, {effect['high']:+.4f}] "
                  f"({effect['in_favour']}/{effect['n']} in favour)")  # fmt: skip
    print("verdict:", judged["summary"])


def merge(sources: list[Path]) -> dict:
    """The runs of partial results (``--arms`` or ``--seeds`` split over processes) in one report."""
    reports = [harness.load_report(path) for path in sources]
    runs: dict = {}
    start: dict = {}
    for report in reports:
        for arm, by_seed in report["runs"].items():
            runs.setdefault(arm, {}).update(by_seed)
        start.update(report["start"])
    runs = {arm: dict(sorted(runs[arm].items(), key=lambda item: int(item[0]))) for arm in ARMS if arm in runs}
    start = dict(sorted(start.items(), key=lambda item: int(item[0])))
    walls = [r.get("wall_s") for r in reports if r.get("wall_s") is not None]
    options = dict(
        reports[0]["options"], seeds=sorted({s for r in reports for s in r["options"]["seeds"]}),
        arms=list(runs), parts=[{"source": str(path), **r["options"], "wall_s": r.get("wall_s")} for path, r in
                                zip(sources, reports)],
    )  # fmt: skip
    return new_report(runs, start, options, max(walls) if walls else None)


def run(options) -> dict:
    from datasets import Dataset

    from trl_ext.training import set_threads

    set_threads(1)
    begin = time.perf_counter()
    dataset = Dataset.from_dict(problem_rows(options.max_digit))
    runs: dict = {arm: {} for arm in options.arms}
    start: dict = {}
    for index, seed in enumerate(options.seeds):
        checkpoint = warm_start(harness.tiny_model(f"diva-hard-{seed}", seed=seed, alphabet=ALPHABET), seed)
        start[str(seed)] = starting_accuracy(checkpoint, dataset)
        print(f"seed {seed} start: {start[str(seed)]}")
        order = options.arms[index % len(options.arms) :] + options.arms[: index % len(options.arms)]
        for arm in order:
            result = train_run(arm, checkpoint, dataset, seed, options)
            runs[arm][str(seed)] = result
            print(
                f"seed {seed} {arm:>10}: {result['seconds']:5.0f}s | accuracy {result['eval_accuracy'][0]:.3f} -> "
                f"{result['eval_accuracy'][-1]:.3f} | area "
                f"{prereg.accuracy_area(result['eval_completions'], result['eval_accuracy']):.3f} | zero-signal "
                f"{statistics.fmean(result['problems_constant']):.3f}"
            )
    keys = ("seeds", "arms", "steps", "eval_every", "max_digit", "lr")
    return new_report(runs, start, {key: getattr(options, key) for key in keys}, time.perf_counter() - begin)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser, RESULTS / "diva_hard.json", seeds=prereg.SEEDS)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, default=prereg.STEPS)
    parser.add_argument("--eval_every", type=int, default=prereg.EVAL_EVERY)
    parser.add_argument("--max_digit", type=int, default=7)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--merge", type=Path, nargs="+", help="merge the runs of these partial results into --out")
    options = parser.parse_args(argv)
    if options.merge:
        report = merge(options.merge)
    else:
        report = harness.load_report(options.out) if options.replot else run(options)
    report["summary"] = summarise(report["runs"])
    report["verdict"] = prereg.judge(report)
    return harness.finish(options, report, argv, plot=plot, show=print_summary, dump=dump_json)


if __name__ == "__main__":
    main()
