"""CalibAdv on the built-in ``deepsearch`` task: (1) how well its silver-document step judgement finds the useful and
the useless search steps, with no training; (2) whether CalibAdv keeps a warm-started search agent stable where plain
GRPO degrades, against GRPO and against a control that spares the same share of steps chosen at random.

    python experiments/calibadv_ablation.py                      # everything in one process
    # the measured run: the same work split over two processes
    python experiments/calibadv_ablation.py --stage prepare
    python experiments/calibadv_ablation.py --stage work --shard 0 --num_shards 2 &
    python experiments/calibadv_ablation.py --stage work --shard 1 --num_shards 2; wait
    python experiments/calibadv_ablation.py --stage merge --num_shards 2

The design, arms, primary metric, seeds, minimum effect, thresholds and controls are pre-registered in
``experiments/preregistered/calibadv_ablation.py`` (committed before the final run), which also computes the verdict
stored in the JSON. The setting and the warm start are ``calibadv_search.py``'s. Part 1: CalibAdv's step judgement
(s > 0, the package's ``group_step_scores``) against the ground truth (a step is *useful* iff it retrieves a
supporting document no earlier step retrieved) on temperature-1 samples of the warm start and on every training batch
of part 2: agreement, kappa, precision / recall / specificity, coverage, and the cause of every disagreement. Part 2:
the arms ``grpo``, ``random_steps`` and ``calibadv`` (``soft_penalty`` and ``rebalance`` can be added with ``--arms``;
they are not registered) from the same warm start, seed and data, with greedy evaluations. Results:
docs/results.md ("CalibAdv: step judgement and ablation on the deepsearch task"). Writes
``results/calibadv_ablation.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import calibadv_search as search  # the setting, warm start and recording trainer (sets the environment)
from preregistered import calibadv_ablation as prereg

from trl_ext.compare import harness

RESULTS = search.RESULTS
ARMS = prereg.ARMS
#: Every arm the script can run: the registered ones and the two single components of the earlier ablation.
ALL_ARMS = ("grpo", "soft_penalty", "rebalance", "random_steps", "calibadv")
#: Spec defaults of the step rule (``CALIBADV_ADVANTAGE_DEFAULTS``).
RULE = {"min_f1": 0.7, "think_similarity_threshold": 0.5, "max_shared_docs": 1}
#: The measured run (two processes); ``python experiments/calibadv_ablation.py`` does the same in one.
RERUN = (
    "python experiments/calibadv_ablation.py --stage prepare && "
    "(python experiments/calibadv_ablation.py --stage work --shard 0 --num_shards 2 & "
    "python experiments/calibadv_ablation.py --stage work --shard 1 --num_shards 2; wait) && "
    "python experiments/calibadv_ablation.py --stage merge --num_shards 2"
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


# The control: the same soft penalties on random steps


def place_at_random(scores, advantages, num_runs, rng: random.Random) -> tuple[list, dict]:
    """The ``random_steps`` control's step scores: the scores CalibAdv's rule gives the search steps of the batch's
    negative trajectories (A_i < 0, scores not None, ``num_runs`` = steps + 1 so the soft penalty can act) shuffled
    uniformly at random over those same steps (matched per batch: the same number of spared steps and the same spared
    fractions, placed at random); every other row keeps its scores (they do not enter the soft penalty).

    Returns ``(scores, counts)``: ``slots`` (candidate steps), ``spared`` (slots with s > 0 after the shuffle),
    ``moved_to_wrong`` (spared slots whose own score was 0: a step the judgement calls wrong now spared)."""
    slots = [
        (i, k)
        for i, row in enumerate(scores)
        if row is not None and advantages[i] < 0 and int(num_runs[i]) == len(row) + 1
        for k in range(len(row))
    ]
    values = [scores[i][k] for i, k in slots]
    rng.shuffle(values)
    out = [None if row is None else list(row) for row in scores]
    for (i, k), value in zip(slots, values, strict=True):
        out[i][k] = value
    spared = sum(v > 0 for v in values)
    moved = sum(v > 0 and scores[i][k] <= 0 for (i, k), v in zip(slots, values, strict=True))
    return out, {"slots": len(slots), "spared": spared, "moved_to_wrong": moved}


def make_random_steps_estimator(args, seed: int):
    """CalibAdv's estimator with :func:`place_at_random` between the step scores and the calibration (train mode)."""
    from trl_ext.advantages.base import AdvantageOutput, combined_rewards
    from trl_ext.advantages.calibadv import CalibAdvAdvantage
    from trl_ext.advantages.calibadv_math import (
        calibrate_advantages,
        group_advantages,
        group_step_scores,
        run_statistics,
    )

    class RandomStepsAdvantage(CalibAdvAdvantage):
        def __init__(self, args) -> None:
            super().__init__(args)
            self.rng = random.Random(f"random_steps-{seed}")
            self.last_placement: dict = {}

        def __call__(self, batch):
            out = super().__call__(batch)  # the metrics, last_row_advantages; its token advantages are replaced
            if batch.mode != "train":
                return out
            rewards = combined_rewards(batch.rewards_per_func, batch.reward_weights).double().cpu()
            advantages = group_advantages(rewards, batch.num_generations, self.group_eps)
            f1, valid, _ = self.score_rows(batch)
            steps = [list(row or []) for row in batch.columns["calibadv_steps"]]
            scores, _ = group_step_scores(
                f1, valid, steps, batch.num_generations, min_f1=self.silver_min_f1,
                think_similarity_threshold=self.think_similarity_threshold, max_shared_docs=self.max_shared_docs,
            )  # fmt: skip
            mask = batch.completion_mask
            num_runs, _ = run_statistics(mask.cpu())
            placed, self.last_placement = place_at_random(scores, advantages.tolist(), num_runs.tolist(), self.rng)
            tokens, _ = calibrate_advantages(
                advantages, placed, [len(row) for row in steps], mask.cpu(), batch.num_generations,
                soft_penalty=self.soft_penalty, answer_rebalance=self.answer_rebalance,
                rebalance_lambda=self.rebalance_lambda,
            )  # fmt: skip
            return AdvantageOutput(tokens.to(mask.device), out.metrics)

    return RandomStepsAdvantage(args)


def make_trainer_class(arm: str):
    """The judging trainer; for ``random_steps`` with the random-placement estimator, whose per-batch counts go to the
    record (``placement``)."""
    judging = make_judging_trainer_class()
    if arm != "random_steps":
        return judging

    class RandomStepsTrainer(judging):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.advantage_estimator = make_random_steps_estimator(self.args, self.args.seed)

        def _check_advantages(self, advantages, batch):
            advantages = super()._check_advantages(advantages, batch)
            if batch.mode == "train":
                self.penalty_records[-1]["placement"] = dict(self.advantage_estimator.last_placement)
            return advantages

    return RandomStepsTrainer


# Work units, stages


def work_units(options) -> list[tuple[str, int, str]]:
    """(kind, seed, arm) units: the part-1 sampling of every seed (cheap), then the RL runs seed by seed (a stopped
    run keeps whole seeds)."""
    units = [("samples", seed, "") for seed in options.seeds]
    for seed in options.seeds:
        for arm in options.arms if seed % 2 == 0 else options.arms[::-1]:
            units.append(("run", seed, arm))
    return units


def do_work(prepared: dict, units, options, save=None, done_samples=None) -> dict:
    """Run ``units``; ``save(work)`` after each (a stopped shard keeps what it finished). ``done_samples``: part-1
    results of a stopped shard (they depend on the warm start and the seed only), reused instead of sampling again."""
    runs: dict = {}
    samples: dict = {}
    for kind, seed, arm in units:
        if save is not None:
            save({"runs": runs, "samples": samples})
        if kind == "samples" and str(seed) in (done_samples or {}):
            samples[str(seed)] = done_samples[str(seed)]
            print(f"part 1 seed {seed}: reused from the stopped shard", flush=True)
            continue
        if kind == "samples":
            result = sample_judgement(prepared["checkpoint"], seed, options)
            samples[str(seed)] = result
            rates = confusion_rates(result["judgement"]["all"])
            print(
                f"part 1 seed {seed}: {result['seconds']:.0f}s | agreement {_fmt(rates['agreement'])} kappa "
                f"{_fmt(rates['cohen_kappa'])} specificity {_fmt(rates['specificity'])} ({rates['judged_steps']} "
                f"judged steps)", flush=True,
            )  # fmt: skip
            continue
        run = search.train_run(
            arm, prepared["checkpoint"], seed, options, prepared["initial_eval"], make_trainer_class(arm)
        )
        runs.setdefault(arm, {})[str(seed)] = run
        curve = " ".join(f"{e['reward']:.3f}" for e in run["eval"])
        placed = [r["placement"] for r in run["steps"] if "placement" in r]
        moved = f" | spared {sum(p['spared'] for p in placed)}, on s = 0 {sum(p['moved_to_wrong'] for p in placed)}"
        print(f"seed {seed} {arm:>12}: {run['seconds']:5.0f}s | eval {curve}{moved if placed else ''}", flush=True)
    return {"runs": runs, "samples": samples}


# Summary


def run_summary(run: dict) -> dict:
    records = run["steps"]
    window = min(search.SMOOTHING, len(records))
    judgement = merge_judgements([r["judgement"] for r in records if "judgement" in r])
    rates = confusion_rates(judgement["all"])
    shares = search.pooled_shares(records)
    placement = [r["placement"] for r in records if "placement" in r]
    spared = sum(p["spared"] for p in placement)
    return {
        "eval_curve_mean": prereg.curve_mean(run["eval"]),
        "eval_format_valid_curve_mean": prereg.curve_mean(run["eval"], "format_valid"),
        "eval_end": run["eval"][-1]["reward"], "eval_format_valid_end": run["eval"][-1]["format_valid"],
        "train_reward_last10": statistics.fmean(r["reward"] for r in records[-window:]),
        "penalised_share": shares["penalised_share"],
        "spared_moved_to_wrong": sum(p["moved_to_wrong"] for p in placement) / spared if spared else None,
        "train_agreement": rates["agreement"], "train_specificity": rates["specificity"],
        "train_cohen_kappa": rates["cohen_kappa"], "train_useful_rate": rates["useful_rate"],
        "train_judged_steps": rates["judged_steps"], "seconds": run["seconds"],
    }  # fmt: skip


def summarise(runs: dict) -> dict:
    """Per arm and seed, and over seeds, from ``report["runs"]`` (``initial_eval``, ``samples``, ``arms``)."""
    samples = runs["samples"]
    seeds = sorted(samples, key=int)
    per_seed_samples = {s: judgement_summary(samples[s]["judgement"]) for s in seeds}
    pooled = judgement_summary(merge_judgements([samples[s]["judgement"] for s in seeds]))
    part1 = {
        "pooled": pooled,
        **{  # the judgement's rates over seeds
            key: harness.spread([per_seed_samples[s]["all"][key] for s in seeds])
            for key in ("agreement", "precision", "recall", "specificity", "cohen_kappa", "useful_rate")
        },
        "coverage": harness.spread([per_seed_samples[s]["coverage"] for s in seeds]),
        "sample_reward": harness.spread([samples[s]["reward_mean"] for s in seeds]),
    }  # fmt: skip
    arms = [arm for arm in ALL_ARMS if arm in runs["arms"]]
    per_seed = {
        arm: {s: run_summary(runs["arms"][arm][s]) for s in sorted(runs["arms"][arm], key=int)} for arm in arms
    }
    overall = {
        arm: {
            key: harness.spread([e[key] for e in per_seed[arm].values()]) for key in next(iter(per_seed[arm].values()))
        }
        for arm in arms
    }
    curves = {
        arm: [
            statistics.fmean(run["eval"][i]["reward"] for run in runs["arms"][arm].values())
            for i in range(len(next(iter(runs["arms"][arm].values()))["eval"]))
        ]
        for arm in arms
    }
    training = {arm: merge_judgements([r["judgement"] for run in runs["arms"][arm].values()
                                       for r in run["steps"] if "judgement" in r]) for arm in arms}  # fmt: skip
    training = {arm: confusion_rates(j["all"]) for arm, j in training.items()}
    return {"part1": part1, "per_seed": per_seed, "overall": overall, "mean_curves": curves, "training": training}


def _fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _agg(a) -> str:
    return "-" if a is None else f"{a['mean']:.3f} ({a['min']:.3f}-{a['max']:.3f})"


def _interval(effect: dict) -> str:
    return f"{effect['mean']:+.3f} [{effect['low']:+.3f}, {effect['high']:+.3f}]"


def docs_tables(report: dict) -> str:
    """The markdown tables docs/results.md quotes, derived from the report alone (a test compares them)."""
    judged, summary = report["verdict"], report["summary"]
    part1, part2 = judged["judgement"], judged["stability"]
    pooled = part1["pooled"]
    counts = summary["part1"]["pooled"]["all"]["counts"]
    lines = [
        "| step judgement, warm-start samples, pooled over seeds | value [95% seed-bootstrap interval] | threshold |",
        "|---|---|---|",
        f"| Cohen's kappa | {pooled['kappa']:.3f} [{part1['intervals']['kappa']['low']:.3f}, "
        f"{part1['intervals']['kappa']['high']:.3f}] | >= {prereg.KAPPA_MIN} |",
        f"| specificity (not-useful steps judged not correct) | {pooled['specificity']:.3f} "
        f"[{part1['intervals']['specificity']['low']:.3f}, {part1['intervals']['specificity']['high']:.3f}] "
        f"| >= {prereg.SPECIFICITY_MIN} |",
        f"| judged not-useful steps (control) | {part1['control']['not_useful_judged_steps']} "
        f"| >= {prereg.NEGATIVES_MIN} |",
        f"| agreement / base rate of useful steps | {pooled['agreement']:.3f} / {pooled['useful_rate']:.3f} | - |",
        f"| confusion: tp / fp / fn / tn | {counts['tp']} / {counts['fp']} / {counts['fn']} / {counts['tn']} | - |",
        f"| coverage (judged / all search steps), mean over seeds | {summary['part1']['coverage']['mean']:.3f} | - |",
        f"| **verdict** | **{part1['verdict']}** | |",
        "",
        "| primary: mean greedy F1 x format over the evaluations after step 0 | mean difference [95% interval] "
        "| seeds in favour | verdict |",
        "|---|---|---|---|",
    ]
    for pair, effect in part2["effects"].items():
        lines.append(
            f"| `{pair}` | {_interval(effect)} | {effect['in_favour']}/{effect['n']} | {part2['verdicts'][pair]} |"
        )
    drop = part2["control"]["grpo_drop"]
    lines += [
        f"| control: warm start ({part2['control']['warm_start']:.3f}) minus `grpo` (>= {prereg.GRPO_DROP_MIN} "
        f"over the interval) | {_interval(drop)} | {drop['in_favour']}/{drop['n']} | held: "
        f"{part2['control']['held']} |",
        f"| **stability verdict** (weaker of the two) | | | **{part2['verdict']}** |",
        "",
        "| mean (min-max) over seeds | " + " | ".join(f"`{arm}`" for arm in summary["overall"]) + " |",
        "|---|" + "---|" * len(summary["overall"]),
    ]
    rows = (
        ("eval_curve_mean", "greedy F1 x format, mean after step 0 (primary)"),
        ("eval_format_valid_curve_mean", "greedy format validity, mean after step 0"),
        ("eval_end", "greedy F1 x format at the last evaluation"),
        ("train_reward_last10", "training F1 x format, last 10 steps"),
        ("penalised_share", "correct steps (s > 0) of failed trajectories penalised"),
        ("spared_moved_to_wrong", "spared steps the judgement calls wrong (s = 0)"),
        ("train_cohen_kappa", "judgement kappa on the training batches"),
        ("train_specificity", "judgement specificity on the training batches"),
    )
    for key, name in rows:
        cells = " | ".join(_agg(summary["overall"][arm][key]) for arm in summary["overall"])
        lines.append(f"| {name} | {cells} |")
    steps = [e["step"] for e in next(iter(next(iter(report["runs"]["arms"].values())).values()))["eval"]]
    lines += ["", "| mean greedy F1 x format at step | " + " | ".join(str(s) for s in steps) + " |"]
    lines.append("|---|" + "---|" * len(steps))
    for arm, curve in summary["mean_curves"].items():
        lines.append(f"| `{arm}` | " + " | ".join(f"{v:.3f}" for v in curve) + " |")
    return "\n".join(lines)


def print_summary(report: dict) -> None:
    print(docs_tables(report))
    print(json.dumps(report["verdict"]["summary"]))


# Plot and main


def plot(report: dict, path: Path) -> None:
    runs, summary = report["runs"]["arms"], report["summary"]
    with harness.figure(path, 1, 4, figsize=(25, 5.2)) as (fig, axes):
        for arm in (arm for arm in ALL_ARMS if arm in runs):
            seeds, color = list(runs[arm]), search.COLORS[arm]
            steps = [e["step"] for e in runs[arm][seeds[0]]["eval"]]
            for axis, key in ((axes[0], "reward"), (axes[1], "format_valid")):
                harness.band(
                    axis, steps, [[e[key] for e in runs[arm][s]["eval"]] for s in seeds], color=color, label=arm
                )
        axes[0].set_title("Greedy evaluation F1 x format (mean over seeds, band: range)")
        axes[1].set_title("Greedy evaluation format validity")
        for axis in axes[:2]:
            axis.set(xlabel="optimizer step", ylim=(-0.05, 1.05))
            axis.legend(fontsize=8)
        plot_judgement(axes[2], summary)
        plot_effects(axes[3], report["verdict"]["stability"])


def plot_effects(axis, stability: dict) -> None:
    """Per seed, the paired difference of the primary metric; the mean and its 95% interval; the minimum effect."""
    for i, effect in enumerate(stability["effects"].values()):
        values = list(effect["differences"].values())
        axis.scatter([i] * len(values), values, color="tab:gray", s=14, zorder=2)
        axis.errorbar(
            [i + 0.15], [effect["mean"]], yerr=[[effect["mean"] - effect["low"]], [effect["high"] - effect["mean"]]],
            fmt="o", color="k", capsize=5, zorder=3,
        )  # fmt: skip
    axis.axhline(prereg.MIN_EFFECT, color="tab:red", linestyle="--", label=f"minimum effect {prereg.MIN_EFFECT}")
    axis.axhline(0.0, color="k", linewidth=0.8)
    axis.set_xticks(range(len(stability["effects"])))
    axis.set_xticklabels(list(stability["effects"]), fontsize=9)
    axis.set_xlim(-0.5, len(stability["effects"]) - 0.5)
    axis.set_title("Primary metric: paired difference per seed, mean, 95% interval")
    axis.legend(fontsize=8)


def plot_judgement(axis, summary: dict) -> None:
    """Warm-start samples and in-training judgement: agreement / kappa / specificity bars, base rate as a line."""
    metrics = (("agreement", "tab:gray"), ("cohen_kappa", "tab:cyan"), ("specificity", "tab:red"))
    groups = [("warm-start samples (pooled)", summary["part1"]["pooled"]["all"])]
    groups += [(f"training: {arm}", rates) for arm, rates in summary["training"].items()]
    width = 0.25
    for j, (key, color) in enumerate(metrics):
        xs = [i + (j - 1) * width for i in range(len(groups))]
        axis.bar(xs, [g[1][key] or 0.0 for g in groups], width, color=color, label=key)
    for i, (_, rates) in enumerate(groups):
        if rates["useful_rate"] is not None:
            label = "useful base rate (agreement of 'always correct')" if i == 0 else None
            axis.plot([i - 1.5 * width, i + 1.5 * width], [rates["useful_rate"]] * 2, color="k", label=label)
    axis.set_xticks(range(len(groups)))
    axis.set_xticklabels([g[0] for g in groups], rotation=20, fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_title("Step judgement s > 0 vs ground truth (new supporting doc), pooled")
    axis.legend(fontsize=7, loc="lower left")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser, RESULTS / "calibadv_ablation.json", seeds=prereg.SEEDS)
    parser.add_argument("--stage", choices=("all", "prepare", "work", "merge"), default="all")
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--num_shards", type=int, default=1)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ALL_ARMS)
    parser.add_argument("--agreement_questions", type=int, default=64, help="part 1: questions per seed")
    search.add_arguments(parser, steps=prereg.STEPS, lr=prereg.LR, eval_every=prereg.EVAL_EVERY)
    return parser.parse_args(argv)


def _part(options, name: str) -> Path:
    """Where the stages leave their outputs for the merge (the cache directory)."""
    return Path(options.cache_dir) / f"{options.out.stem}.{name}.json"


def main(argv: list[str] | None = None) -> dict | None:
    options = parse(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    if report is None:  # a stage that leaves its part for the merge
        return None
    report["summary"] = summarise(report["runs"])
    report["verdict"] = prereg.judge(report)
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
        shard_path = _part(options, f"shard{options.shard}of{options.num_shards}")
        partial = shard_path.with_suffix(".partial.json")
        done = json.loads(partial.read_text())["samples"] if partial.is_file() else {}
        work = do_work(prepared, mine, options, save=lambda d: partial.write_text(json.dumps(d)), done_samples=done)
        work["seconds"] = time.perf_counter() - begin
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
    arms: dict = {}
    samples: dict = {}
    for work in shards:
        for arm, by_seed in work["runs"].items():
            arms.setdefault(arm, {}).update(by_seed)
        samples.update(work["samples"])
    arms = {arm: dict(sorted(arms[arm].items(), key=lambda kv: int(kv[0]))) for arm in ALL_ARMS if arm in arms}
    samples = dict(sorted(samples.items(), key=lambda kv: int(kv[0])))
    return {
        **({"command": RERUN} if options.stage == "merge" else {}), "preregistration": prereg.__doc__,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items() if k != "replot"},
        "rollout": search.ROLLOUT, "model": search.MODEL, "warm_start": prepared["warm_start"],
        "seconds_prepare": prepared["seconds"], "seconds_shards": [work["seconds"] for work in shards],
        "runs": {"initial_eval": prepared["initial_eval"], "samples": samples, "arms": arms},
    }  # fmt: skip


if __name__ == "__main__":
    main()
