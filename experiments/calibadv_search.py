"""`grpo` versus `calibadv` on the built-in `deepsearch` task: how often the update penalises correct search steps of
failed trajectories, and answer F1 over training.

    python experiments/calibadv_search.py                  # the measured configuration (2 CPU cores, ~20 minutes)
    python experiments/calibadv_search.py --lr 1e-4 --out experiments/results/calibadv_search_lr1e-4.json
    python experiments/calibadv_search.py --seeds 0 --steps 10 --sft_steps 300   # a quick look (a weak warm start)

This two-arm run (results ``calibadv_search.json``, lr 3e-4, and ``calibadv_search_lr1e-4.json``) is the earlier
benchmark; ``calibadv_ablation.py`` imports this module for the four-arm ablation at lr 5e-4 (``ARM_SWITCHES``) and the
comparison of the step judgement with the task's supporting documents.

Task: ``deepsearch`` (world 0: 224 two- and three-hop questions over 148 invented-entity documents), BM25 top-2 per
search, observations cut to 180 tokens, up to 3 searches and an answer turn, ``<think>`` prepended, the bare question
as the prompt (tokens are characters, so CPU cost grows with every character of the context).

Warm start (a random tiny model never writes the tag protocol, so RL from scratch measures nothing): a tiny Qwen2
(``MODEL``) fine-tuned with a plain loop (AdamW, ``--sft_lr`` with 5 % warm-up and linear decay, batch 8,
``--sft_steps``) on scripted expert transcripts: one ``<kind></think>\n<search> <title> </search>`` turn per document
of the question's chain, then ``<kind></think>\n<answer> ... </answer>``, with the **real observations** in between
(the same ``SearchAgentRollout`` and retriever as the RL runs, so ids and masks are exactly the RL ones), loss on the
model-written tokens only. In ``--error_rate`` (25 %) of them the answer is a wrong one of the same kind, so the policy
also learns to fail *after correct searches*, the case CalibAdv targets. One cached checkpoint shared by all seeds
(greedy F1 ~0.81; ~45 % of temperature-1 samples score, so groups mix successes and failures).

Arms (same warm start, seed, data, steps, ``CalibAdvTrainer`` and rollout): ``grpo`` (both switches off: every model
token of trajectory i gets A_i; checked every step against TRL's GRPO advantage) and ``calibadv`` (spec defaults). RL:
4 questions x 4 completions per step, 60 steps, constant ``--lr`` 3e-4, ``loss_type="bnpo"``, epsilon 0.2, no KL,
T = 1. The learning rate matters most: at 1e-4 neither arm's F1 moves; from 3e-4 on the updates destabilise the warm
start, the regime of the paper's stability claim.

Measured at every generation batch (in a ``_check_advantages`` override): the **penalised share**, among failed
trajectories (A_i < 0), of the search steps correct by the spec's silver-document rule (s > 0) whose tokens got a
negative advantage in the update applied, and the **penalty kept** (mean of A_step / A_i: 1 for grpo, 1 - s for
calibadv), both again for fully correct steps; the training reward (F1 x format), F1, format validity, searches; and
every ``--eval_every`` steps greedy F1 x format on ``--eval_questions`` fixed questions. Reported per seed and over
seeds. Writes ``experiments/results/calibadv_search.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

from trl_ext.compare import harness

harness.script_env(one_thread=True)
RESULTS = Path(__file__).parent / "results"
ARMS = ("grpo", "calibadv")
#: Each arm's (``calibadv_soft_penalty``, ``calibadv_answer_rebalance``); ``calibadv_ablation.py`` runs all four.
ARM_SWITCHES = {
    "grpo": (False, False), "soft_penalty": (True, False), "rebalance": (False, True), "calibadv": (True, True),
    "random_steps": (True, True),  # calibadv's penalties on random steps (the ablation's estimator replaces them)
}  # fmt: skip
COLORS = {
    "grpo": "tab:blue", "soft_penalty": "tab:green", "rebalance": "tab:purple", "calibadv": "tab:orange",
    "random_steps": "tab:gray",
}  # fmt: skip
WORLD_SEED = 0
#: Rollout settings shared by the warm start and the RL runs.
ROLLOUT = {"max_turns": 3, "max_tokens_per_turn": 64, "max_obs_tokens": 180, "top_k": 2, "prepend_think_token": True}
MAX_COMPLETION_LENGTH = 4 * 64 + 3 * 180
#: The tiny model (``build_tiny_checkpoint`` keyword arguments).
MODEL = {
    "hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_position_embeddings": 1024, "initializer_range": 0.02,
}  # fmt: skip
#: The kind of answer of each question template (the think word of the expert's answer turn; wrong answers are drawn
#: from the other answers of the same kind).
ANSWER_KIND = {
    "film_director_birthplace": "city", "film_director_birth_year": "year", "film_studio_city": "city",
    "novel_author_birthplace": "city", "film_director_birth_country": "country",
}  # fmt: skip
SMOOTHING = 10
SFT_FORMAT_VERSION = 1


def question_prompt(question: str) -> str:
    """The compact prompt: the bare question and a newline (the rollout appends ``<think>``)."""
    return question + "\n"


# Warm start: supervised fine-tuning on scripted expert transcripts


def expert_turns(question, rng: random.Random, error_rate: float, answers_by_kind: dict[str, list[str]]) -> list[str]:
    """The expert's turns for a question (``<think>`` is in the context, so every turn starts inside it): one search
    per document of the reasoning chain, by its title, then the answer; with probability ``error_rate`` the answer is
    another one of the same kind."""
    from trl_ext.data.deepsearch import build_deepsearch_world

    titles = {doc.id: doc.title for doc in build_deepsearch_world(WORLD_SEED).documents}
    turns = [
        f"{doc_id.split('-')[0]}</think>\n<search> {titles[doc_id]} </search>"
        for doc_id in question.supporting_doc_ids
    ]
    kind = ANSWER_KIND[question.template]
    answer = question.golden_answers[0]
    if rng.random() < error_rate:
        answer = rng.choice([a for a in answers_by_kind[kind] if a != answer])
    turns.append(f"{kind}</think>\n<answer> {answer} </answer>")
    return turns


class ScriptedTurns:
    """A ``TurnGenerator`` writing ``plans[row][turn - 1]`` (log-probs 0): the rollout then runs the real retriever."""

    def __init__(self, tokenizer, plans: list[list[str]]) -> None:
        self.tokenizer = tokenizer
        self.plans = plans

    def __call__(self, contexts, max_new_tokens, rows, turn):
        out = []
        for row in rows:
            ids = self.tokenizer.encode(self.plans[row][turn - 1], add_special_tokens=False)[:max_new_tokens]
            out.append((ids, [0.0] * len(ids)))
        return out


def make_rollout(retriever):
    from trl_ext.rollout.search_agent import SearchAgentRollout

    return SearchAgentRollout(retriever, **ROLLOUT)


def sft_examples(tokenizer, retriever, options) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of ``--sft_examples`` expert transcripts; labels are -100 on prompt and observations."""
    from trl_ext.data.deepsearch import build_deepsearch_world

    questions = list(build_deepsearch_world(WORLD_SEED).questions)
    answers_by_kind: dict[str, set[str]] = {}
    for question in questions:
        answers_by_kind.setdefault(ANSWER_KIND[question.template], set()).add(question.golden_answers[0])
    answers = {kind: sorted(values) for kind, values in answers_by_kind.items()}
    rng = random.Random(options.sft_seed)
    chosen = [rng.choice(questions) for _ in range(options.sft_examples)]
    plans = [expert_turns(q, rng, options.error_rate, answers) for q in chosen]
    rollout = make_rollout(retriever)
    prompt_ids = rollout.encode_prompts([question_prompt(q.question) for q in chosen], tokenizer)
    output = rollout.run(
        prompt_ids, tokenizer, ScriptedTurns(tokenizer, plans), max_completion_length=MAX_COMPLETION_LENGTH
    )
    if any(output["calibadv_truncated"]) or any(output["calibadv_invalid_action"]):
        raise RuntimeError("an expert transcript was truncated or invalid: raise MAX_COMPLETION_LENGTH")
    examples = []
    for prompt, completion, env_mask in zip(
        output["prompt_ids"], output["completion_ids"], output["env_mask"], strict=True
    ):
        labels = [-100] * len(prompt) + [t if m else -100 for t, m in zip(completion, env_mask, strict=True)]
        examples.append((prompt + completion, labels))
    return examples


def sft_settings(options) -> dict:
    return {
        "version": SFT_FORMAT_VERSION, "model": MODEL, "rollout": ROLLOUT, "steps": options.sft_steps,
        "batch": options.sft_batch, "lr": options.sft_lr, "examples": options.sft_examples,
        "error_rate": options.error_rate, "seed": options.sft_seed,
    }  # fmt: skip


def warm_start(options) -> tuple[str, dict]:
    """The supervised warm start (cached): returns the checkpoint path and its training log."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext.data.deepsearch import DEEPSEARCH_ALPHABET, deepsearch_corpus
    from trl_ext.retrieval import BM25Retriever
    from trl_ext.tiny_models import build_tiny_checkpoint

    settings = sft_settings(options)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(options.cache_dir)
    target = cache / f"sft-{key}"
    stamp = target / "warm_start.json"
    if stamp.is_file():
        log = json.loads(stamp.read_text())
        print(f"warm start: cached {target}")
        return str(target), log

    start = time.perf_counter()
    init = build_tiny_checkpoint(cache / f"init-{key}", alphabet=DEEPSEARCH_ALPHABET, seed=options.sft_seed, **MODEL)
    tokenizer = AutoTokenizer.from_pretrained(init)
    model = AutoModelForCausalLM.from_pretrained(init)
    examples = sft_examples(tokenizer, BM25Retriever(deepsearch_corpus(WORLD_SEED)), options)
    generator = torch.Generator().manual_seed(options.sft_seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.sft_lr, betas=(0.9, 0.98), weight_decay=0.0)
    warmup = max(options.sft_steps // 20, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1.0 - s / options.sft_steps)
    )
    pad = tokenizer.pad_token_id
    losses = []
    model.train()
    order: list[int] = []
    for step in range(options.sft_steps):
        if len(order) < options.sft_batch:
            order += torch.randperm(len(examples), generator=generator).tolist()
        batch = [examples[order.pop()] for _ in range(options.sft_batch)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == options.sft_steps:
            print(
                f"warm start: step {step + 1}/{options.sft_steps} loss {statistics.mean(losses[-100:]):.4f} "
                f"({time.perf_counter() - start:.0f}s)"
            )
    model.eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    log = {"settings": settings, "loss": losses, "seconds": time.perf_counter() - start}
    stamp.write_text(json.dumps(log))  # last: marks the checkpoint complete
    return str(target), log


# Evaluation and RL runs


def evaluate(model, tokenizer, rollout, questions) -> dict:
    """Greedy rollouts on ``questions``: mean F1 x format, format validity, searches per trajectory."""
    import torch
    from transformers import GenerationConfig

    from trl_ext.rewards.qa import qa_f1_format_score

    was_training = model.training
    model.eval()
    config = GenerationConfig(
        do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    with torch.no_grad():
        output = rollout.generate(
            [question_prompt(q.question) for q in questions], model, tokenizer,
            max_completion_length=MAX_COMPLETION_LENGTH, generation_config=config,
        )  # fmt: skip
    if was_training:
        model.train()
    scores = [
        qa_f1_format_score(transcript, list(q.golden_answers), invalid)
        for transcript, q, invalid in zip(
            output["calibadv_transcript"], questions, output["calibadv_invalid_action"], strict=True
        )
    ]
    n = len(questions)
    return {
        "reward": sum(f1 * valid for f1, valid in scores) / n, "f1": sum(f1 for f1, _ in scores) / n,
        "format_valid": sum(valid for _, valid in scores) / n,
        "searches": sum(len(steps) for steps in output["calibadv_steps"]) / n,
    }  # fmt: skip


def eval_questions(count: int) -> list:
    """``count`` questions spread evenly over the world's question list (every template and entity kind)."""
    from trl_ext.data.deepsearch import build_deepsearch_world

    questions = list(build_deepsearch_world(WORLD_SEED).questions)
    stride = len(questions) / count
    return [questions[int(i * stride)] for i in range(count)]


def penalty_record(trainer, advantages, batch) -> dict:
    """What one generation batch's update did to the search steps of failed trajectories (see the module docstring).

    Uses the estimator's own per-row A_i, F1 / format scores and step-score function on the gathered batch, and the
    token advantages ``advantages`` that the update applies."""
    from trl_ext.advantages.calibadv import combined_rewards
    from trl_ext.advantages.calibadv_math import group_step_scores, mask_runs

    estimator = trainer.advantage_estimator
    group = batch.num_generations
    rows = estimator.last_row_advantages.double().cpu()
    f1, valid, answered = estimator.score_rows(batch)
    steps = [list(row or []) for row in batch.columns["calibadv_steps"]]
    scores, _ = group_step_scores(
        f1, valid, steps, group, min_f1=estimator.silver_min_f1,
        think_similarity_threshold=estimator.think_similarity_threshold, max_shared_docs=estimator.max_shared_docs,
    )  # fmt: skip
    token_advantages = advantages.detach().double().cpu()
    mask = batch.completion_mask.detach().double().cpu()
    runs = mask_runs(mask)
    counts = ("failed", "failed_with_silver", "failed_steps", "correct", "correct_penalised", "full", "full_penalised")
    record = {**dict.fromkeys(counts, 0), "mismatch": 0, "kept_sum": 0.0, "full_kept_sum": 0.0}
    for i, a_i in enumerate(rows.tolist()):
        if a_i >= 0:
            continue
        record["failed"] += 1
        if scores[i] is None:
            continue
        record["failed_with_silver"] += 1
        if len(runs[i]) != len(steps[i]) + 1:
            record["mismatch"] += 1
            continue
        for (start, end), score in zip(runs[i], scores[i], strict=False):
            record["failed_steps"] += 1
            if score <= 0:
                continue
            value = token_advantages[i, start:end].mean().item()
            kept = value / a_i
            record["correct"] += 1
            record["correct_penalised"] += value < 0
            record["kept_sum"] += kept
            if score >= 1:
                record["full"] += 1
                record["full_penalised"] += value < 0
                record["full_kept_sum"] += kept
    rewards = combined_rewards(batch.rewards_per_func, batch.reward_weights).double().cpu()
    n = len(rows)
    # Sanity checks of the baseline arm: token advantages = A_i on model tokens, 0 elsewhere; A_i = TRL's GRPO.
    grouped = rewards.view(-1, group)
    trl = ((grouped - grouped.mean(dim=1, keepdim=True)) / (grouped.std(dim=1, keepdim=True) + 1e-4)).view(-1)
    silver = sum(any(scores[j] is not None for j in range(g, g + group)) for g in range(0, n, group)) / (n // group)
    record.update(
        reward=rewards.mean().item(), f1=statistics.mean(x for x in f1 if x == x) if any(x == x for x in f1) else 0.0,
        format_valid=sum(valid) / n, answered=sum(answered) / n, searches=sum(len(s) for s in steps) / n,
        broadcast_deviation=(token_advantages - rows.unsqueeze(1) * mask).abs().max().item(),
        trl_grpo_deviation=(rows - trl).abs().max().item(), groups_with_silver=silver,
    )  # fmt: skip
    return record


def make_recording_trainer_class():
    from trl_ext import CalibAdvTrainer

    class RecordingCalibAdvTrainer(CalibAdvTrainer):
        """Records :func:`penalty_record` for every training generation batch."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.penalty_records: list[dict] = []

        def _check_advantages(self, advantages, batch):
            advantages = super()._check_advantages(advantages, batch)
            if batch.mode == "train":
                self.penalty_records.append(penalty_record(self, advantages, batch))
            return advantages

    return RecordingCalibAdvTrainer


def make_eval_callback(trainer, rollout, questions, every: int, curve: list):
    from transformers import TrainerCallback

    class PeriodicEvaluation(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                begin = time.perf_counter()
                result = evaluate(trainer.model, trainer._tokenizer, rollout, questions)
                curve.append({"step": state.global_step, **result, "seconds": time.perf_counter() - begin})

    return PeriodicEvaluation()


def train_run(arm: str, checkpoint: str, seed: int, options, initial_eval: dict, trainer_cls=None) -> dict:
    """One RL run of ``arm`` (a key of :data:`ARM_SWITCHES`) from the warm start; returns its per-step records and
    evaluation curve. ``trainer_cls``: a subclass of :func:`make_recording_trainer_class`'s class (default: it)."""
    from trl_ext.data.deepsearch import make_deepsearch_dataset
    from trl_ext.rewards.qa import make_qa_f1_format_reward

    soft_penalty, answer_rebalance = ARM_SWITCHES[arm]
    prompts_per_step = options.batch // options.group
    dataset = make_deepsearch_dataset(
        options.steps * prompts_per_step, seed, world_seed=WORLD_SEED, prompt_builder=question_prompt
    )
    config = dict(
        max_steps=options.steps, per_device_train_batch_size=options.batch, num_generations=options.group,
        max_completion_length=MAX_COMPLETION_LENGTH, temperature=options.temperature, top_p=1.0,
        learning_rate=options.lr, lr_scheduler_type="constant", beta=0.0, epsilon=0.2, epsilon_high=0.2,
        loss_type="bnpo", use_cpu=True, bf16=False, calibadv_retriever="bm25",
        calibadv_corpus_path=f"deepsearch:{WORLD_SEED}", calibadv_max_turns=ROLLOUT["max_turns"],
        calibadv_max_tokens_per_turn=ROLLOUT["max_tokens_per_turn"], calibadv_max_obs_tokens=ROLLOUT["max_obs_tokens"],
        calibadv_topk=ROLLOUT["top_k"], calibadv_prepend_think_token=ROLLOUT["prepend_think_token"],
        calibadv_soft_penalty=soft_penalty, calibadv_answer_rebalance=answer_rebalance,
    )  # fmt: skip
    curve: list[dict] = [{"step": 0, **initial_eval}]
    questions = eval_questions(options.eval_questions)

    def add_evaluation(trainer) -> None:
        rollout = make_rollout(trainer.retriever)
        trainer.add_callback(make_eval_callback(trainer, rollout, questions, options.eval_every, curve))

    run = harness.run_arm(
        "calibadv", model=checkpoint,
        reward_funcs=[make_qa_f1_format_reward(prepend_think_token=ROLLOUT["prepend_think_token"])],
        train_dataset=dataset, seed=seed, config=config, trainer_cls=trainer_cls or make_recording_trainer_class(),
        before=add_evaluation,
    )  # fmt: skip
    return {"seconds": run.seconds, "steps": run.trainer.penalty_records, "eval": curve}


# Summary and plot


def pooled_shares(records: list[dict]) -> dict:
    """Penalised share and penalty kept, pooled over the records (None when there is no such step)."""
    correct = sum(r["correct"] for r in records)
    full = sum(r["full"] for r in records)
    failed_steps = sum(r["failed_steps"] for r in records)
    return {
        "correct_steps_in_failed": correct, "scored_steps_in_failed": failed_steps,
        "frac_failed_steps_correct": correct / failed_steps if failed_steps else None,
        "penalised_share": sum(r["correct_penalised"] for r in records) / correct if correct else None,
        "penalty_kept": sum(r["kept_sum"] for r in records) / correct if correct else None,
        "full_correct_steps_in_failed": full,
        "full_penalised_share": sum(r["full_penalised"] for r in records) / full if full else None,
        "full_penalty_kept": sum(r["full_kept_sum"] for r in records) / full if full else None,
        "failed_with_silver_frac": (
            sum(r["failed_with_silver"] for r in records) / max(sum(r["failed"] for r in records), 1)
        ),
    }  # fmt: skip


def run_summary(run: dict) -> dict:
    rewards = [r["reward"] for r in run["steps"]]
    window = min(SMOOTHING, len(rewards))
    return {
        **pooled_shares(run["steps"]), "reward_first10": statistics.mean(rewards[:window]),
        "reward_last10": statistics.mean(rewards[-window:]), "reward_auc": statistics.mean(rewards),
        "f1_last10": statistics.mean(r["f1"] for r in run["steps"][-window:]),
        "format_valid_last10": statistics.mean(r["format_valid"] for r in run["steps"][-window:]),
        "searches_last10": statistics.mean(r["searches"] for r in run["steps"][-window:]),
        "eval_start": run["eval"][0]["reward"], "eval_end": run["eval"][-1]["reward"],
        "eval_mean": statistics.mean(e["reward"] for e in run["eval"][1:]) if len(run["eval"]) > 1 else None,
        "eval_f1_end": run["eval"][-1]["f1"], "eval_format_valid_end": run["eval"][-1]["format_valid"],
        "groups_with_silver": statistics.mean(r["groups_with_silver"] for r in run["steps"]),
        "segment_mismatch_rows": sum(r["mismatch"] for r in run["steps"]),
        "broadcast_deviation_max": max(r["broadcast_deviation"] for r in run["steps"]),
        "trl_grpo_deviation_max": max(r["trl_grpo_deviation"] for r in run["steps"]), "seconds": run["seconds"],
    }  # fmt: skip


def summarise(runs: dict) -> dict:
    per_seed = {arm: {seed: run_summary(run) for seed, run in runs[arm].items()} for arm in runs}
    overall = {
        arm: {
            key: harness.spread([e[key] for e in seeds.values()], mean=statistics.mean)
            for key in next(iter(seeds.values()))
        }
        for arm, seeds in per_seed.items()
    }
    return {"per_seed": per_seed, "overall": overall}


def plot(report: dict, path: Path) -> None:
    runs = report["runs"]
    with harness.figure(path, 1, 3, figsize=(19, 5.2), dpi=120) as (fig, (left, middle, right)):
        for arm in (arm for arm in ARMS if arm in runs):
            seeds, color = list(runs[arm]), COLORS[arm]
            steps = [[r["reward"] for r in runs[arm][s]["steps"]] for s in seeds]
            rewards = [harness.moving_average(values, SMOOTHING) for values in steps]
            x = range(1, len(rewards[0]) + 1)
            harness.band(left, x, rewards, color=color, label=f"{arm}: training F1 x format ({SMOOTHING}-step mean)")
            eval_steps = [e["step"] for e in runs[arm][seeds[0]]["eval"]]
            evals = [[e["reward"] for e in runs[arm][s]["eval"]] for s in seeds]
            harness.band(
                left, eval_steps, evals, color=color, label=f"{arm}: greedy evaluation F1 x format", linestyle="--"
            )
            valid = [
                harness.moving_average([r["format_valid"] for r in runs[arm][s]["steps"]], SMOOTHING) for s in seeds
            ]
            harness.band(middle, x, valid, color=color, label=f"{arm}: training ({SMOOTHING}-step mean)")
            eval_valid = [[e["format_valid"] for e in runs[arm][s]["eval"]] for s in seeds]
            harness.band(
                middle, eval_steps, eval_valid, color=color, label=f"{arm}: greedy evaluation", linestyle="--"
            )
            for num, den, style, what in (
                ("correct_penalised", "correct", "-", "share of them penalised"),
                ("kept_sum", "correct", ":", "penalty kept on them"),
                ("correct", "failed_steps", "--", "correct / all judged steps of failed trajs"),
            ):
                curves = []
                for s in seeds:  # trailing mean over the steps that had such a step (NaN where none so far)
                    smoothed, window = [], []
                    for r in runs[arm][s]["steps"]:
                        if r[den]:
                            window = (window + [r[num] / r[den]])[-SMOOTHING:]
                        smoothed.append(statistics.mean(window) if window else math.nan)
                    curves.append(smoothed)
                mean = [[c[i] for c in curves if c[i] == c[i]] for i in range(len(curves[0]))]
                mean = [statistics.mean(m) if m else math.nan for m in mean]
                right.plot(range(1, len(mean) + 1), mean, color=color, linestyle=style, label=f"{arm}: {what}")
        left.set(xlabel=f"optimizer step ({report['options']['batch']} trajectories each)")
        left.set(ylabel="answer F1 x format validity", title="F1 over training (mean over seeds, band: range)")
        middle.set(xlabel="optimizer step", ylabel="fraction of trajectories with a valid format")
        middle.set(title="Format validity", ylim=(-0.05, 1.05))
        right.set(xlabel="optimizer step", ylabel=f"fraction / ratio ({SMOOTHING}-step mean)", ylim=(-0.05, 1.05))
        right.set_title(
            "Correct search steps (s > 0) of failed trajectories (A_i < 0):\nshare with a negative advantage, "
            "A_step / A_i"
        )
        for axis in (left, middle, right):
            axis.legend(fontsize=8)


def _fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_summary(report: dict) -> None:
    """Over seeds: the penalised share and penalty kept on correct steps of failed trajectories, training and greedy
    evaluation F1 x format, format validity, searches."""
    summary = report["summary"]
    keys = "penalised_share penalty_kept full_penalised_share frac_failed_steps_correct reward_first10 reward_last10"
    keys += " reward_auc eval_start eval_end eval_mean eval_f1_end eval_format_valid_end f1_last10 format_valid_last10"
    rows = {
        key: {arm: row[key] for arm, row in summary["overall"].items()} for key in [*keys.split(), "searches_last10"]
    }
    harness.print_table(rows, list(summary["overall"]), name="")
    grpo = summary["overall"].get("grpo")
    if grpo:
        print(f"grpo arm checks: max |token adv - A_i mask| {grpo['broadcast_deviation_max']['max']:.2e}, "
              f"max |A_i - TRL GRPO (eps 1e-4)| {grpo['trl_grpo_deviation_max']['max']:.2e}")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser, *, steps: int, lr: float, eval_every: int) -> None:
    """The RL and warm-start settings (shared with ``calibadv_ablation.py``)."""
    parser.add_argument("--steps", type=int, default=steps, help="RL optimizer steps per run")
    parser.add_argument("--batch", type=int, default=16, help="trajectories per step")
    parser.add_argument("--group", type=int, default=4, help="completions per question (num_generations)")
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--eval_every", type=int, default=eval_every)
    parser.add_argument("--eval_questions", type=int, default=96)
    parser.add_argument("--sft_steps", type=int, default=1000)
    parser.add_argument("--sft_batch", type=int, default=8)
    parser.add_argument("--sft_lr", type=float, default=6e-3)
    parser.add_argument("--sft_examples", type=int, default=2048)
    parser.add_argument("--sft_seed", type=int, default=0)
    parser.add_argument("--error_rate", type=float, default=0.25, help="expert transcripts with a wrong answer")
    parser.add_argument("--cache_dir", default=str(Path(tempfile.gettempdir()) / "trl-ext-calibadv-bench"))


def prepare(options, seed: int | None = None) -> dict:
    """The warm start (cached) and its greedy evaluation (after ``torch.manual_seed(seed)`` if given)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext.data.deepsearch import deepsearch_corpus
    from trl_ext.retrieval import BM25Retriever

    begin = time.perf_counter()
    checkpoint, sft_log = warm_start(options)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    rollout = make_rollout(BM25Retriever(deepsearch_corpus(WORLD_SEED)))
    if seed is not None:
        torch.manual_seed(seed)
    initial_eval = evaluate(model, tokenizer, rollout, eval_questions(options.eval_questions))
    print(f"warm start: greedy eval {initial_eval}")
    return {
        "checkpoint": checkpoint,
        "warm_start": {"seconds": sft_log["seconds"], "loss_last100": statistics.mean(sft_log["loss"][-100:])},
        "initial_eval": initial_eval, "seconds": time.perf_counter() - begin,
    }  # fmt: skip


def run(options) -> dict:
    from trl_ext.training import set_threads

    set_threads(1)
    begin = time.perf_counter()
    prepared = prepare(options)
    arms = [arm for arm in ARMS if arm in options.arms]
    runs: dict = {arm: {} for arm in arms}
    for seed in options.seeds:
        for arm in arms if seed % 2 == 0 else arms[::-1]:
            run = train_run(arm, prepared["checkpoint"], seed, options, prepared["initial_eval"])
            runs[arm][str(seed)] = run
            entry = run_summary(run)
            print(
                f"seed {seed} {arm:>8}: {run['seconds']:5.0f}s | penalised share {_fmt(entry['penalised_share'])} "
                f"(kept {_fmt(entry['penalty_kept'])}, {entry['correct_steps_in_failed']} steps) | train F1 "
                f"{entry['reward_first10']:.3f} -> {entry['reward_last10']:.3f} | eval {entry['eval_start']:.3f} -> "
                f"{entry['eval_end']:.3f}"
            )
    return {
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items() if k != "replot"},
        "rollout": ROLLOUT, "model": MODEL, "warm_start": prepared["warm_start"],
        "initial_eval": prepared["initial_eval"], "seconds_total": time.perf_counter() - begin, "runs": runs,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_args(parser, RESULTS / "calibadv_search.json")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    add_arguments(parser, steps=60, lr=3e-4, eval_every=15)
    options = parser.parse_args(argv)
    report = harness.load_report(options.out) if options.replot else run(options)
    report["summary"] = summarise(report["runs"])
    return harness.finish(options, report, argv, plot=plot, show=print_summary)


if __name__ == "__main__":
    main()
