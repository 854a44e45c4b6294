"""CalibAdv on the built-in ``deepsearch`` task: (1) how often its silver-document step judgement agrees with the
task's ground truth, with no training; (2) which component (soft penalty, answer rebalance, both) protects a
warm-started search agent from the degradation plain GRPO shows at a high learning rate.

    python experiments/calibadv_ablation.py                      # everything in one process (~21 minutes on 1 core)
    # the measured run: the same work split over two processes (~13 minutes on 2 cores)
    python experiments/calibadv_ablation.py --stage prepare
    python experiments/calibadv_ablation.py --stage work --shard 0 --num_shards 2 &
    python experiments/calibadv_ablation.py --stage work --shard 1 --num_shards 2; wait
    python experiments/calibadv_ablation.py --stage merge --num_shards 2

The setting and the warm start are ``calibadv_search.py``'s. Part 1: CalibAdv's step judgement (s > 0, the package's
``group_step_scores``) against the ground truth (a step is *useful* iff it retrieves a supporting document no earlier
step retrieved) on temperature-1 samples of the warm start and on every training batch of part 2: agreement, kappa,
precision / recall / specificity, coverage, and the cause of every disagreement. Part 2: the arms ``grpo``,
``soft_penalty``, ``rebalance`` and ``calibadv`` from the same warm start, seed and data, with greedy evaluations.
``CONTROL`` and ``FALSIFIER`` (written before the run) below, also in the JSON; design and results: docs/results.md
("CalibAdv: step judgement and ablation on the deepsearch task"). Writes ``results/calibadv_ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import calibadv_search as search  # the setting, warm start and recording trainer (sets the environment)

from trl_ext.compare import harness

RESULTS = search.RESULTS
ARMS = ("grpo", "soft_penalty", "rebalance", "calibadv")
CALIBRATED_ARMS = ARMS[1:]
#: Spec defaults of the step rule (``CALIBADV_ADVANTAGE_DEFAULTS``).
RULE = {"min_f1": 0.7, "think_similarity_threshold": 0.5, "max_shared_docs": 1}
#: The measured run (two processes); ``python experiments/calibadv_ablation.py`` does the same in one.
RERUN = (
    "python experiments/calibadv_ablation.py --stage prepare && "
    "(python experiments/calibadv_ablation.py --stage work --shard 0 --num_shards 2 & "
    "python experiments/calibadv_ablation.py --stage work --shard 1 --num_shards 2; wait) && "
    "python experiments/calibadv_ablation.py --stage merge --num_shards 2"
)
AGREEMENT_FLOOR = 0.75
CONTROL_DROP = 0.15
PROTECT_MARGIN = 0.10
FALSIFIER = (
    f"Part 1 is falsified if the step judgement (s > 0) agrees with the ground truth (the step retrieves a supporting "
    f"document not retrieved before) on fewer than {AGREEMENT_FLOOR:.0%} of the judged steps of the warm start's "
    f"temperature-1 samples (mean over 3 seeds), far below the paper's 89%. Part 2 (stability) is falsified if no "
    f"calibrated arm (soft_penalty, rebalance, calibadv) protects better than grpo: an arm protects if its greedy "
    f"F1 x format or its greedy format validity at the end exceeds grpo's by >= {PROTECT_MARGIN} on average over "
    f"seeds and on at least 2 of 3 seeds. Part 2 is inconclusive unless the control holds."
)
CONTROL = (
    f"grpo degrades: its greedy F1 x format at the end is below the warm start's by >= {CONTROL_DROP} on average "
    f"over seeds and below it on every seed."
)


# Ground truth and the judgement (pure functions)


def _docs(step) -> list:
    return list(step.get("docs") or []) if isinstance(step, dict) else list(step[1] or [])


def _think(step) -> str:
    return str(step.get("think") or "") if isinstance(step, dict) else str(step[0] or "")


def gold_new_counts(steps, supporting) -> list[int]:
    """Per step, the number of the question's supporting documents it retrieved that no earlier step (nor earlier in
    the same step) retrieved. A step is *useful* (the ground truth) iff this is > 0."""
    supporting, seen, counts = set(supporting), set(), []
    for step in steps:
        new = 0
        for doc in _docs(step):
            if doc in supporting and doc not in seen:
                new += 1
            seen.add(doc)
        counts.append(new)
    return counts


def repeat_flags(steps, think_similarity_threshold: float = 0.5, max_shared_docs: int = 1) -> list[tuple[bool, bool]]:
    """Per step, (think repeat, document repeat) by the spec's rule against every earlier step."""
    from trl_ext.advantages.calibadv_math import word_edit_similarity

    flags = []
    for k, step in enumerate(steps):
        docs = set(_docs(step))
        think = any(word_edit_similarity(_think(step), _think(e)) > think_similarity_threshold for e in steps[:k])
        shared = any(len(docs & set(_docs(e))) > max_shared_docs for e in steps[:k])
        flags.append((think, shared))
    return flags


def new_confusion() -> dict:
    counts = ("tp", "fp", "fn", "tn", "score_exact", "fp_resupporting", "fp_off_chain", "fn_missing_from_silver")
    return {**dict.fromkeys((*counts, "fn_think_repeat", "fn_doc_repeat"), 0), "abs_score_error_sum": 0.0}


def judge_batch(f1, valid, steps, supporting, advantages, group: int, rule: dict = RULE) -> dict:
    """Compare CalibAdv's step judgement with the ground truth over one batch of trajectories in contiguous groups of
    ``group``, given per row the answer F1 and format validity, the rollout's ``calibadv_steps``, the question's
    ``supporting_doc_ids`` and A_i (failed: A_i < 0).

    Returns ``{"all": confusion, "failed": confusion, "steps_total", "steps_unjudged", "unjudged_useful"}``: a
    confusion counts tp / fp / fn / tn of "correct step" (s > 0) against "useful" and attributes every disagreement: a
    false positive is ``fp_resupporting`` (it re-retrieved a seen supporting document) or ``fp_off_chain``; a false
    negative ``fn_missing_from_silver``, ``fn_think_repeat`` and / or ``fn_doc_repeat`` (the repeat rule fired).
    """
    from trl_ext.advantages.calibadv_math import group_step_scores, silver_documents

    scores, _ = group_step_scores(
        f1, valid, steps, group, min_f1=rule["min_f1"], think_similarity_threshold=rule["think_similarity_threshold"],
        max_shared_docs=rule["max_shared_docs"],
    )  # fmt: skip
    out = {"all": new_confusion(), "failed": new_confusion(), "steps_total": 0, "steps_unjudged": 0}
    out["unjudged_useful"] = 0
    for start in range(0, len(f1), group):
        rows = range(start, start + group)
        silver = silver_documents([f1[i] for i in rows], [valid[i] for i in rows], [steps[i] for i in rows])
        for i in rows:
            gold_new = gold_new_counts(steps[i], supporting[i])
            out["steps_total"] += len(steps[i])
            if scores[i] is None:
                out["steps_unjudged"] += len(steps[i])
                out["unjudged_useful"] += sum(n > 0 for n in gold_new)
                continue
            flags = repeat_flags(steps[i], rule["think_similarity_threshold"], rule["max_shared_docs"])
            seen: set = set()
            for k, step in enumerate(steps[i]):
                docs = _docs(step)
                new_docs = [d for j, d in enumerate(docs) if d not in seen and d not in docs[:j]]
                seen.update(docs)
                judged, useful = scores[i][k] > 0, gold_new[k] > 0
                gold_score = gold_new[k] / len(docs) if docs else 0.0
                targets = [out["all"]] + ([out["failed"]] if advantages[i] < 0 else [])
                for c in targets:
                    c["abs_score_error_sum"] += abs(scores[i][k] - gold_score)
                    c["score_exact"] += abs(scores[i][k] - gold_score) < 1e-9
                    if judged and useful:
                        c["tp"] += 1
                    elif judged:
                        c["fp"] += 1
                        on_chain = any(d in set(supporting[i]) for d in docs)
                        c["fp_resupporting"] += on_chain
                        c["fp_off_chain"] += not on_chain
                    elif useful:
                        c["fn"] += 1
                        new_gold = [d for d in new_docs if d in set(supporting[i])]
                        c["fn_missing_from_silver"] += not any(d in silver for d in new_gold)
                        c["fn_think_repeat"] += flags[k][0]
                        c["fn_doc_repeat"] += flags[k][1]
                    else:
                        c["tn"] += 1
    return out


def merge_judgements(items: list[dict]) -> dict:
    out = {"all": new_confusion(), "failed": new_confusion(), "steps_total": 0, "steps_unjudged": 0}
    out["unjudged_useful"] = 0
    for item in items:
        for part in ("all", "failed"):
            for key, value in item[part].items():
                out[part][key] += value
        for key in ("steps_total", "steps_unjudged", "unjudged_useful"):
            out[key] += item[key]
    return out


def confusion_rates(c: dict) -> dict:
    """Agreement, Cohen's kappa, precision, recall, specificity of "correct step", the base rate of useful steps (the
    agreement of a judge calling every step correct), the rate of exact scores (None where undefined)."""
    n = c["tp"] + c["fp"] + c["fn"] + c["tn"]

    def ratio(a, b):
        return a / b if b else None

    agreement = ratio(c["tp"] + c["tn"], n)
    kappa = None
    if n:
        judged_yes, useful_yes = (c["tp"] + c["fp"]) / n, (c["tp"] + c["fn"]) / n
        chance = judged_yes * useful_yes + (1 - judged_yes) * (1 - useful_yes)
        kappa = (agreement - chance) / (1 - chance) if chance < 1 else None
    return {
        "judged_steps": n, "agreement": agreement, "cohen_kappa": kappa,
        "precision": ratio(c["tp"], c["tp"] + c["fp"]), "recall": ratio(c["tp"], c["tp"] + c["fn"]),
        "specificity": ratio(c["tn"], c["tn"] + c["fp"]), "useful_rate": ratio(c["tp"] + c["fn"], n),
        "judged_correct_rate": ratio(c["tp"] + c["fp"], n), "score_mean_abs_error": ratio(c["abs_score_error_sum"], n),
        "score_exact_rate": ratio(c["score_exact"], n),
    }  # fmt: skip


def judgement_summary(j: dict) -> dict:
    return {
        "all": {**confusion_rates(j["all"]), "counts": j["all"]},
        "failed": {**confusion_rates(j["failed"]), "counts": j["failed"]},
        "coverage": j["steps_total"] and (j["steps_total"] - j["steps_unjudged"]) / j["steps_total"],
        "steps_total": j["steps_total"],
        "unjudged_useful_rate": j["steps_unjudged"] and j["unjudged_useful"] / j["steps_unjudged"],
    }


# Part 1: samples of the warm start


def sample_judgement(checkpoint: str, seed: int, options) -> dict:
    """Temperature-1 samples of the warm start on ``--agreement_questions`` questions x ``--group`` samples."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from trl_ext.advantages.calibadv_math import group_advantages
    from trl_ext.data.deepsearch import build_deepsearch_world, deepsearch_corpus
    from trl_ext.retrieval import BM25Retriever
    from trl_ext.rewards.qa import qa_f1_format_score

    start = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    rollout = search.make_rollout(BM25Retriever(deepsearch_corpus(search.WORLD_SEED)))
    questions = list(build_deepsearch_world(search.WORLD_SEED).questions)
    chosen = random.Random(1000 + seed).sample(questions, options.agreement_questions)
    rows = [q for q in chosen for _ in range(options.group)]
    config = GenerationConfig(
        do_sample=True, temperature=options.temperature, top_p=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    steps, f1, valid = [], [], []
    chunk = 16 * options.group
    with torch.no_grad():
        for begin in range(0, len(rows), chunk):
            part = rows[begin : begin + chunk]
            output = rollout.generate(
                [search.question_prompt(q.question) for q in part], model, tokenizer,
                max_completion_length=search.MAX_COMPLETION_LENGTH, generation_config=config,
            )  # fmt: skip
            columns = (output["calibadv_transcript"], output["calibadv_invalid_action"], output["calibadv_steps"])
            for q, transcript, invalid, row_steps in zip(part, *columns, strict=True):
                score, is_valid = qa_f1_format_score(transcript, list(q.golden_answers), bool(invalid))
                f1.append(score)
                valid.append(is_valid)
                steps.append(list(row_steps))
    rewards = [a * b for a, b in zip(f1, valid, strict=True)]
    advantages = group_advantages(rewards, options.group, 1e-6).tolist()
    judgement = judge_batch(f1, valid, steps, [q.supporting_doc_ids for q in rows], advantages, options.group)
    return {
        "seed": seed, "trajectories": len(rows), "reward_mean": statistics.mean(rewards),
        "format_valid": statistics.mean(valid), "searches_mean": statistics.mean(len(s) for s in steps),
        "judgement": judgement, "seconds": time.perf_counter() - start,
    }  # fmt: skip


# Part 2: ablation runs (the recording trainer of calibadv_search, plus the ground-truth comparison per batch)


def make_judging_trainer_class():
    base = search.make_recording_trainer_class()

    class JudgingTrainer(base):
        """Also compares every training batch's step judgement with the ground truth (``judgement`` per record)."""

        def build_advantage_batch(self, inputs, output, rewards_per_func, mode):
            batch = super().build_advantage_batch(inputs, output, rewards_per_func, mode)
            batch.extras["supporting_doc_ids"] = [list(row["supporting_doc_ids"]) for row in inputs]  # 1 process
            return batch

        def _check_advantages(self, advantages, batch):
            advantages = super()._check_advantages(advantages, batch)
            if batch.mode == "train":
                estimator = self.advantage_estimator
                f1, valid, _ = estimator.score_rows(batch)
                steps = [list(row or []) for row in batch.columns["calibadv_steps"]]
                supporting, row_advantages = batch.extras["supporting_doc_ids"], estimator.last_row_advantages.tolist()
                judgement = judge_batch(f1, valid, steps, supporting, row_advantages, batch.num_generations)
                self.penalty_records[-1]["judgement"] = judgement
            return advantages

    return JudgingTrainer


# Work units, stages


def work_units(options) -> list[tuple[str, int, str]]:
    """(kind, seed, arm) units, costliest first: every RL run, then the part-1 sampling of every seed."""
    units = []
    for seed in options.seeds:
        for arm in options.arms if seed % 2 == 0 else options.arms[::-1]:
            units.append(("run", seed, arm))
    units += [("samples", seed, "") for seed in options.seeds]
    return units


def do_work(prepared: dict, units, options) -> dict:
    runs: dict = {}
    samples: dict = {}
    for kind, seed, arm in units:
        if kind == "samples":
            result = sample_judgement(prepared["checkpoint"], seed, options)
            samples[str(seed)] = result
            rates = confusion_rates(result["judgement"]["all"])
            print(
                f"part 1 seed {seed}: {result['seconds']:.0f}s | agreement {_fmt(rates['agreement'])} precision "
                f"{_fmt(rates['precision'])} recall {_fmt(rates['recall'])} ({rates['judged_steps']} judged steps)"
            )
            continue
        run = search.train_run(
            arm, prepared["checkpoint"], seed, options, prepared["initial_eval"], make_judging_trainer_class()
        )
        runs.setdefault(arm, {})[str(seed)] = run
        print(
            f"seed {seed} {arm:>12}: {run['seconds']:5.0f}s | eval {run['eval'][0]['reward']:.3f} -> "
            f"{run['eval'][-1]['reward']:.3f} (format {run['eval'][-1]['format_valid']:.3f})"
        )
    return {"runs": runs, "samples": samples}


# Summary


def run_summary(run: dict) -> dict:
    records = run["steps"]
    window = min(search.SMOOTHING, len(records))
    judgement = merge_judgements([r["judgement"] for r in records if "judgement" in r])
    rates = confusion_rates(judgement["all"])
    failed = confusion_rates(judgement["failed"])
    shares = search.pooled_shares(records)
    return {
        "eval_end": run["eval"][-1]["reward"], "eval_f1_end": run["eval"][-1]["f1"],
        "eval_format_valid_end": run["eval"][-1]["format_valid"],
        "eval_mean_after_start": statistics.mean(e["reward"] for e in run["eval"][1:]),
        "eval_format_valid_mean_after_start": statistics.mean(e["format_valid"] for e in run["eval"][1:]),
        "train_reward_first10": statistics.mean(r["reward"] for r in records[:window]),
        "train_reward_last10": statistics.mean(r["reward"] for r in records[-window:]),
        "train_format_valid_last10": statistics.mean(r["format_valid"] for r in records[-window:]),
        "penalised_share": shares["penalised_share"], "penalty_kept": shares["penalty_kept"],
        "train_agreement": rates["agreement"], "train_precision": rates["precision"], "train_recall": rates["recall"],
        "train_specificity": rates["specificity"], "train_cohen_kappa": rates["cohen_kappa"],
        "train_useful_rate": rates["useful_rate"], "train_agreement_failed": failed["agreement"],
        "train_judged_steps": rates["judged_steps"], "seconds": run["seconds"],
    }  # fmt: skip


def summarise(report: dict) -> dict:
    runs, samples = report["runs"], report["samples"]
    start = report["initial_eval"]["reward"]
    start_valid = report["initial_eval"]["format_valid"]
    seeds = sorted(samples, key=int)
    per_seed_samples = {s: judgement_summary(samples[s]["judgement"]) for s in seeds}
    pooled = judgement_summary(merge_judgements([samples[s]["judgement"] for s in seeds]))
    part1 = {
        "per_seed": per_seed_samples, "pooled": pooled,
        **{  # the judgement's rates over seeds
            key: harness.spread([per_seed_samples[s]["all"][key] for s in seeds])
            for key in ("agreement", "precision", "recall", "specificity", "cohen_kappa", "useful_rate")
        },
        "score_exact_rate": harness.spread([per_seed_samples[s]["all"]["score_exact_rate"] for s in seeds]),
        "agreement_failed": harness.spread([per_seed_samples[s]["failed"]["agreement"] for s in seeds]),
        "coverage": harness.spread([per_seed_samples[s]["coverage"] for s in seeds]),
        "sample_reward": harness.spread([samples[s]["reward_mean"] for s in seeds]),
    }  # fmt: skip
    agreement_mean = part1["agreement"]["mean"] if part1["agreement"] else None
    part1["falsified"] = agreement_mean is not None and agreement_mean < AGREEMENT_FLOOR

    arms = [arm for arm in ARMS if arm in runs]
    per_seed = {arm: {s: run_summary(runs[arm][s]) for s in sorted(runs[arm], key=int)} for arm in arms}
    overall = {
        arm: {
            key: harness.spread([e[key] for e in per_seed[arm].values()]) for key in next(iter(per_seed[arm].values()))
        }
        for arm in arms
    }
    verdict: dict = {}
    if "grpo" in per_seed:
        grpo_end = {s: e["eval_end"] for s, e in per_seed["grpo"].items()}
        drop = start - statistics.mean(grpo_end.values())
        verdict["control"] = {
            "warm_start_eval": start, "warm_start_format_valid": start_valid,
            "grpo_eval_end_mean": statistics.mean(grpo_end.values()), "drop": drop,
            "below_start_on_every_seed": all(v < start for v in grpo_end.values()),
            "passed": drop >= CONTROL_DROP and all(v < start for v in grpo_end.values()),
        }  # fmt: skip
        verdict["protects"] = {}
        for arm in arms:
            if arm == "grpo":
                continue
            entry = {}
            for key in ("eval_end", "eval_format_valid_end"):
                paired = [
                    per_seed[arm][s][key] - per_seed["grpo"][s][key] for s in per_seed[arm] if s in per_seed["grpo"]
                ]
                entry[key] = {
                    "mean_diff": statistics.mean(paired), "seeds_higher": sum(d > 0 for d in paired),
                    "seeds": len(paired),
                    "protects": statistics.mean(paired) >= PROTECT_MARGIN and sum(d > 0 for d in paired) >= 2,
                }  # fmt: skip
            entry["protects"] = entry["eval_end"]["protects"] or entry["eval_format_valid_end"]["protects"]
            verdict["protects"][arm] = entry
        any_protects = any(v["protects"] for v in verdict["protects"].values())
        verdict["part2"] = (
            "inconclusive (control failed)"
            if not verdict["control"]["passed"]
            else ("supported" if any_protects else "falsified")
        )
    verdict["part1"] = "falsified" if part1["falsified"] else "not falsified"
    return {"part1": part1, "per_seed": per_seed, "overall": overall, "verdict": verdict}


def _fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _agg(a) -> str:
    return "-" if a is None else f"{a['mean']:.3f} [{a['min']:.3f}, {a['max']:.3f}]"


def print_summary(report: dict) -> None:
    summary = report["summary"]
    p1 = summary["part1"]
    print("== part 1: step judgement (s > 0) vs ground truth (a new supporting document), warm-start samples")
    keys = "agreement cohen_kappa precision recall specificity useful_rate score_exact_rate agreement_failed coverage"
    for key in [*keys.split(), "sample_reward"]:
        print(f"  {key:<22} {_agg(p1[key])}")
    pooled = p1["pooled"]["all"]
    print(f"  pooled: score exact {_fmt(pooled['score_exact_rate'])}, mean |s - new supporting / docs| "
          f"{_fmt(pooled['score_mean_abs_error'])}, useful rate {_fmt(pooled['useful_rate'])}, unjudged steps useful "
          f"{_fmt(p1['pooled']['unjudged_useful_rate'])}")  # fmt: skip
    c = p1["pooled"]["all"]["counts"]
    print(
        f"  pooled confusion: tp {c['tp']} fp {c['fp']} fn {c['fn']} tn {c['tn']} | fp re-retrieving a supporting doc "
        f"{c['fp_resupporting']}, off-chain {c['fp_off_chain']} | fn missing from silver {c['fn_missing_from_silver']}, think repeat "
        f"{c['fn_think_repeat']}, doc repeat {c['fn_doc_repeat']}"
    )
    print("== part 2")
    keys = "eval_end eval_f1_end eval_format_valid_end eval_mean_after_start train_reward_last10"
    keys += " train_format_valid_last10 penalised_share train_agreement train_precision train_recall train_specificity"
    keys += " train_cohen_kappa"
    for arm, entry in summary["overall"].items():
        print(f"  -- {arm}")
        for key in [*keys.split(), "train_useful_rate"]:
            seeds = " ".join(_fmt(v[key]) for v in summary["per_seed"][arm].values())
            print(f"    {key:<34} {_agg(entry[key]):<26} seeds {seeds}")
    print(json.dumps(summary["verdict"], indent=1))


# Plot and main


def plot(report: dict, path: Path) -> None:
    runs, summary = report["runs"], report["summary"]
    with harness.figure(path, 1, 4, figsize=(24, 5.2)) as (fig, axes):
        for arm in (arm for arm in ARMS if arm in runs):
            seeds, color = list(runs[arm]), search.COLORS[arm]
            steps = [e["step"] for e in runs[arm][seeds[0]]["eval"]]
            for axis, key in ((axes[0], "reward"), (axes[1], "format_valid")):
                harness.band(
                    axis, steps, [[e[key] for e in runs[arm][s]["eval"]] for s in seeds], color=color, label=arm
                )
            for key, style, what in (("reward", "-", "F1 x format"), ("format_valid", ":", "format validity")):
                train = [[r[key] for r in runs[arm][s]["steps"]] for s in seeds]
                train = [harness.moving_average(values, search.SMOOTHING) for values in train]
                harness.band(
                    axes[2], range(1, len(train[0]) + 1), train, color=color, label=f"{arm}: {what}", linestyle=style
                )
        axes[0].set_title("Greedy evaluation F1 x format (mean over seeds, band: range)")
        axes[1].set_title("Greedy evaluation format validity")
        axes[2].set_title(f"Training batches ({search.SMOOTHING}-step mean)")
        for axis in axes[:3]:
            axis.set(xlabel="optimizer step", ylim=(-0.05, 1.05))
            axis.legend(fontsize=8)
        plot_judgement(axes[3], summary)


def plot_judgement(axis, summary: dict) -> None:
    """Part 1 and in-training judgement: agreement / precision / recall / specificity bars, base rate as a marker."""
    # Part 1 and in-training judgement: agreement / precision / recall / specificity bars, base rate as a marker.
    metrics = (
        ("agreement", "train_agreement", "agreement", "tab:gray"),
        ("precision", "train_precision", "precision of 'correct'", "tab:cyan"),
        ("recall", "train_recall", "recall of 'correct'", "tab:olive"),
        ("specificity", "train_specificity", "specificity", "tab:red"),
    )
    groups = [("warm-start samples", summary["part1"], "", "useful_rate")]
    groups += [
        (f"training: {arm}", summary["overall"][arm], "train_", "train_useful_rate")
        for arm in ARMS
        if arm in summary["overall"]
    ]
    width = 0.2
    for j, (part1_key, train_key, name, color) in enumerate(metrics):
        xs, heights, low, high = [], [], [], []
        for i, (_, source, prefix, _) in enumerate(groups):
            entry = source[train_key if prefix else part1_key]
            h = entry["mean"] if entry else 0.0
            xs.append(i + (j - 1.5) * width)
            heights.append(h)
            low.append(h - entry["min"] if entry else 0.0)
            high.append(entry["max"] - h if entry else 0.0)
        axis.bar(xs, heights, width, color=color, label=name, yerr=[low, high], capsize=3)
    for i, (_, source, _, base_key) in enumerate(groups):
        if source[base_key] is None:  # no judged step
            continue
        label = "useful base rate (agreement of 'always correct')" if i == 0 else None
        axis.plot([i - 2 * width, i + 2 * width], [source[base_key]["mean"]] * 2, color="k", linewidth=2, label=label)
    axis.axhline(0.89, color="k", linestyle="--", linewidth=1, label="paper: 89% agreement")
    axis.set_xticks(range(len(groups)))
    axis.set_xticklabels([g[0] for g in groups], rotation=20, fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_title("Step judgement s > 0 vs ground truth (new supporting doc)\nmean and range over seeds")
    axis.legend(fontsize=7, loc="lower left")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser, RESULTS / "calibadv_ablation.json")
    parser.add_argument("--stage", choices=("all", "prepare", "work", "merge"), default="all")
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--num_shards", type=int, default=1)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--agreement_questions", type=int, default=64, help="part 1: questions per seed")
    search.add_arguments(parser, steps=40, lr=5e-4, eval_every=10)
    return parser.parse_args(argv)


def _part(options, name: str) -> Path:
    """Where the stages leave their outputs for the merge (the cache directory)."""
    return Path(options.cache_dir) / f"{options.out.stem}.{name}.json"


def main(argv: list[str] | None = None) -> dict | None:
    options = parse(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    if report is None:  # a stage that leaves its part for the merge
        return None
    report["summary"] = summarise(report)
    return harness.finish(options, report, argv, plot=plot, show=print_summary)


def run(options) -> dict | None:
    from trl_ext.training import set_threads

    set_threads(1)
    begin = time.perf_counter()
    prepared_path = _part(options, "prepare")
    if options.stage in ("all", "prepare"):
        prepared = search.prepare(options, seed=0)
        prepared_path.parent.mkdir(parents=True, exist_ok=True)
        prepared_path.write_text(json.dumps(prepared))
        if options.stage == "prepare":
            return None
    prepared = json.loads(prepared_path.read_text())
    if options.stage in ("all", "work"):
        units = work_units(options)
        mine = units[options.shard :: options.num_shards] if options.stage == "work" else units
        work = do_work(prepared, mine, options)
        work["seconds"] = time.perf_counter() - begin
        shard_path = _part(options, f"shard{options.shard}of{options.num_shards}")
        shard_path.write_text(json.dumps(work))
        if options.stage == "work":
            print(f"shard {options.shard}: {work['seconds']:.0f}s; wrote {shard_path}")
            return None
        shards = [work]
    else:
        shards = [
            json.loads(_part(options, f"shard{i}of{options.num_shards}").read_text())
            for i in range(options.num_shards)
        ]
    runs: dict = {}
    samples: dict = {}
    for work in shards:
        for arm, by_seed in work["runs"].items():
            runs.setdefault(arm, {}).update(by_seed)
        samples.update(work["samples"])
    runs = {arm: dict(sorted(runs[arm].items(), key=lambda kv: int(kv[0]))) for arm in ARMS if arm in runs}
    return {
        **({"command": RERUN} if options.stage == "merge" else {}), "falsifier": FALSIFIER, "control": CONTROL,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items() if k != "replot"},
        "rollout": search.ROLLOUT, "model": search.MODEL, "warm_start": prepared["warm_start"],
        "initial_eval": prepared["initial_eval"], "seconds_prepare": prepared["seconds"],
        "seconds_shards": [work["seconds"] for work in shards], "runs": runs, "samples": samples,
    }  # fmt: skip


if __name__ == "__main__":
    main()
