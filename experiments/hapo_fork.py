"""HAPO on a fork where keeping both branches open pays, off-policy enough that clipping acts.

    python experiments/hapo_fork.py          # the pre-registered run: 4 arms x 10 seeds x 160 steps, one process

The design, arms, primary metric, seeds, minimum effect and controls are pre-registered in
``experiments/preregistered/hapo_fork.py`` (committed before the final run), which also computes the verdict stored
in the JSON. **Task.** The prompt is ``d=``; the first completion token is a *fork*: d+1 starts the easy branch (count
up for ``--chain`` digits, then EOS), d-1 the better one (count down). The reward is the correct prefix under the
chosen branch / (L+1), times the branch's value (``--easy_reward`` for the easy branch, 1 for the better one). A tiny
Qwen2 warm-started by ``--sft_steps`` supervised steps learns the fork balanced, the easy chain in full and only the
first ``--better_known`` tokens of the better one, so a policy that collapses its fork early settles on the easy
branch and one that keeps it open can learn the better chain. **Regime.** 7 of 8 micro-batches stale
(``steps_per_generation=8``), lr 2e-3, no KL, ``loss_type="dapo"``, eps 0.2 / 0.28 in every arm. **Arms:** ``dapo``
(the ``grpo`` trainer), ``hapo_reference`` / ``hapo_signed`` (all components, each ``hapo_entropy_sign_mode``),
``dapo_entropy`` (``grpo`` with TRL's entropy bonus: the positive control), and, outside the registered run, each HAPO
component alone. **Measured:** every ``FORK_EVERY`` steps the fork statistics and the exact expected reward at T = 1
(teacher-forced on both correct completions); the chain entropy; and clip fractions of off-policy loss tokens by
position and by entropy bucket (above the micro-batch's 0.8-quantile, HAPO's pivot) from an instrumented subclass of
the arm's trainer (the package is unchanged). Results: docs/results.md ("HAPO: ..."). One torch thread.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from preregistered import hapo_fork as prereg

from trl_ext.compare import harness

harness.script_env(one_thread=True)

RESULTS = Path(__file__).parent / "results"
ALPHABET = "0123456789="
DIGITS = "0123456789"
EASY, BETTER = 1, -1  # the branches: count up (easy, lower value) or down (better, partly taught)
BASE_CLIP = {"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28, "beta": 0.0}
_ALL_OFF = {
    "hapo_adaptive_temperature": False, "hapo_token_level_advantage": False, "hapo_adaptive_advantage": False,
    "hapo_adaptive_clip": False, "hapo_dual_clip_c": None,
}  # fmt: skip
#: arm -> (registered trainer, config fields on top of BASE_CLIP)
ARMS: dict[str, tuple[str, dict]] = {
    "dapo": ("grpo", {}), "hapo_reference": ("hapo", {"hapo_entropy_sign_mode": "reference"}),
    "hapo_signed": ("hapo", {"hapo_entropy_sign_mode": "signed"}),
    "temperature_only": ("hapo", {**_ALL_OFF, "hapo_adaptive_temperature": True}),
    "tlga_only": ("hapo", {**_ALL_OFF, "hapo_token_level_advantage": True}),
    "adr_only": ("hapo", {**_ALL_OFF, "hapo_adaptive_advantage": True}),
    "aac_only": ("hapo", {**_ALL_OFF, "hapo_adaptive_clip": True}),
    "dualclip_only": ("hapo", {**_ALL_OFF, "hapo_dual_clip_c": 10.0}),
    "dapo_entropy": ("grpo", {"entropy_coef": prereg.ENTROPY_COEF}),
}  # fmt: skip
COLORS = {
    "dapo": "black", "hapo_reference": "tab:red", "hapo_signed": "tab:blue", "temperature_only": "tab:orange",
    "tlga_only": "tab:green", "adr_only": "tab:purple", "aac_only": "tab:brown", "dualclip_only": "tab:gray",
    "dapo_entropy": "tab:olive",
}  # fmt: skip
BUCKETS = ("fork", "chain", "high", "low")
FORK_EVERY = 4  # optimizer steps between exact fork-entropy evaluations


# The task (pure functions)
def target(digit: int, direction: int, length: int) -> str:
    """The L digits that count from ``digit`` in ``direction`` (+1 up, -1 down), modulo 10, ``digit`` excluded."""
    return "".join(str((digit + direction * k) % 10) for k in range(1, length + 1))


def fork_reward(digit: int, text: str, ended: bool, length: int, easy_reward: float = 1.0) -> float:
    """The reward of a completion of ``d=``: correct-prefix length of the L+1 targets (L digits, then EOS) under the
    direction of the first token, / (L+1), times that branch's value: ``easy_reward`` for the easy branch (count up,
    ``EASY``), 1 for the better one (count down, ``BETTER``).

    ``text`` is the completion with one character per generated token (tokens outside the digits as any non-digit
    character) and without the EOS; ``ended`` says whether the completion stopped with EOS right after ``text``.
    """
    if not text:
        return 0.0
    if text[0] == str((digit + EASY) % 10):
        goal, value = target(digit, EASY, length), easy_reward
    elif text[0] == str((digit + BETTER) % 10):
        goal, value = target(digit, BETTER, length), 1.0
    else:
        return 0.0
    prefix = 0
    for got, want in zip(text, goal):
        if got != want:
            break
        prefix += 1
    if prefix == length and len(text) == length and ended:
        prefix += 1
    return value * prefix / (length + 1)


def expected_reward(logps, length: int, easy_reward: float) -> dict:
    """The exact expected reward at T = 1 from teacher-forced log-probs of the two correct completions.

    ``logps``: (P, 2, L + 1) log-probabilities of the correct tokens (fork token, L - 1 chain digits, EOS) of each
    prompt's easy (index 0) and better (index 1) completion, each conditioned on the correct prefix. The reward is a
    sum of prefix indicators, so E[R] = sum_branch value_b / (L + 1) sum_t prod_{j <= t} p_j. Returns the mean over
    prompts of ``reward`` and of each branch's share ``easy`` / ``better`` of it.
    """
    prefix = logps.double().cumsum(-1).exp().sum(-1) / (length + 1)  # (P, 2)
    easy, better = easy_reward * prefix[:, 0], prefix[:, 1]
    return {"reward": float((easy + better).mean()), "reward_easy": float(easy.mean()),
            "reward_better": float(better.mean()),
            "chain_easy": float(logps[:, 0, 1:].double().sum(-1).exp().mean()),
            "chain_better": float(logps[:, 1, 1:].double().sum(-1).exp().mean())}  # fmt: skip


def binary_entropy(p: float) -> float:
    """Entropy in nats of a Bernoulli(p)."""
    return -sum(q * math.log(q) for q in (p, 1 - p) if q > 0)


def clip_flags(ratio, advantages, clip_low, clip_high, dual_clip_c=None):
    """Per-token bool tensors (clipped, dual_clipped) of a PPO-style surrogate.

    clipped: the ratio left [1 - eps_low, 1 + eps_high] on the side where the clipped branch is active, which zeroes
    the token's gradient (A > 0 and r > 1 + eps_high, or A < 0 and r < 1 - eps_low). dual_clipped: A < 0 and r > c
    (the dual clip caps the loss, zeroing the gradient too); all False when ``dual_clip_c`` is None.
    """
    import torch

    clipped = ((advantages > 0) & (ratio > 1 + clip_high)) | ((advantages < 0) & (ratio < 1 - clip_low))
    if dual_clip_c is None:
        dual = torch.zeros_like(clipped)
    else:
        dual = (advantages < 0) & (ratio > dual_clip_c)
    return clipped, dual


def bucket_masks(entropies, mask, pivot_quantile: float = 0.8) -> dict:
    """Bool (B, T) masks of the four buckets over the loss tokens ``mask``: fork (position 0), chain (positions >= 1),
    high (entropy above the micro-batch's nearest-rank ``pivot_quantile`` of the loss tokens' entropies, HAPO's pivot)
    and low (the rest)."""
    import torch

    valid = mask.bool()
    position = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0).expand_as(valid)
    values = entropies[valid]
    if values.numel() == 0:
        high = torch.zeros_like(valid)
    else:
        index = round(pivot_quantile * (values.numel() - 1))
        pivot = torch.kthvalue(values.float(), index + 1).values
        high = valid & (entropies > pivot)
    return {"fork": valid & (position == 0), "chain": valid & (position > 0), "high": high, "low": valid & ~high}


def fork_statistics(probs, digits: list[int], digit_ids: list[int]) -> dict:
    """Fork metrics from the first-token distributions ``probs`` (P, V) of the prompts ``digits`` (T=1).

    Returns the mean over prompts of the entropy of the whole distribution (``fork_entropy``), of the binary entropy
    of p(easy) / (p(easy) + p(better)) (``direction_entropy``), of p(easy) + p(better) (``valid``) and of
    p(better) / (p(easy) + p(better)) (``p_better``, and per prompt ``p_better_per_prompt``).
    """
    import torch

    probs = probs.double()
    entropy = -(probs * torch.log(probs.clamp(min=1e-30))).sum(-1)
    easy = torch.stack([probs[i, digit_ids[(d + EASY) % 10]] for i, d in enumerate(digits)])
    better = torch.stack([probs[i, digit_ids[(d + BETTER) % 10]] for i, d in enumerate(digits)])
    valid = easy + better
    share = better / valid.clamp(min=1e-30)
    direction = [binary_entropy(float(u / v)) if v > 0 else 0.0 for u, v in zip(easy, valid)]
    return {
        "fork_entropy": float(entropy.mean()), "direction_entropy": statistics.fmean(direction),
        "valid": float(valid.mean()), "p_better": float(share.mean()), "p_better_per_prompt": share.tolist(),
    }  # fmt: skip


# Model, warm start, data
def _tokenizer_ids(tokenizer) -> tuple[list[int], int, int]:
    digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in DIGITS]
    equals = tokenizer.convert_tokens_to_ids("=")
    return digit_ids, equals, tokenizer.eos_token_id


def teaching_rows(tokenizer, length: int, better_known: int):
    """The warm start's supervised rows ``(input_ids, labels)``: per digit one easy and one better completion (so the
    fork starts balanced); the easy one labelled in full (L digits and EOS), the better one on its first
    ``better_known`` tokens only (the fork token included), so its chain has to be learned by RL."""
    import torch

    digit_ids, equals, eos = _tokenizer_ids(tokenizer)
    rows, labels = [], []
    for digit in range(10):
        for direction in (EASY, BETTER):
            chain = [digit_ids[int(c)] for c in target(digit, direction, length)]
            row = [digit_ids[digit], equals, *chain, eos]
            label = [-100, -100, *row[2:]]  # loss on the completion only (prompt "d=" is 2 tokens)
            if direction == BETTER:
                label = [token if i < 2 + better_known else -100 for i, token in enumerate(label)]
            rows.append(row)
            labels.append(label)
    return torch.tensor(rows), torch.tensor(labels)


def warm_start(seed: int, options) -> str:
    """A tiny random Qwen2 trained for ``options.sft_steps`` cross-entropy steps on :func:`teaching_rows` (cached)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ext.tiny_models import build_tiny_checkpoint

    root = Path(tempfile.gettempdir()) / "trl-ext-hapo-fork"
    base = build_tiny_checkpoint(
        str(root / f"init-seed{seed}"), alphabet=ALPHABET, hidden_size=64, num_layers=2, num_heads=4,
        initializer_range=0.1, seed=seed,
    )  # fmt: skip
    name = f"sft-seed{seed}-steps{options.sft_steps}-lr{options.sft_lr}-L{options.chain}-k{options.better_known}"
    out = root / name
    if (out / "done").exists():
        return str(out)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    data, labels = teaching_rows(tokenizer, options.chain, options.better_known)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.sft_lr, weight_decay=0.0)
    model.train()
    for _ in range(options.sft_steps):
        index = torch.randint(0, len(data), (32,), generator=generator)
        loss = model(input_ids=data[index], labels=labels[index]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "done").write_text("ok")
    return str(out)


def make_dataset(num_rows: int, seed: int):
    """Rows ``{"prompt": "d=", "digit": d}``, each digit equally often, shuffled with ``seed``."""
    import random

    from datasets import Dataset

    digits = [i % 10 for i in range(num_rows)]
    random.Random(seed).shuffle(digits)
    return Dataset.from_dict({"prompt": [f"{d}=" for d in digits], "digit": digits})


def make_reward(tokenizer, length: int, easy_reward: float):
    digit_ids, _, eos = _tokenizer_ids(tokenizer)
    id_to_char = {token: DIGITS[i] for i, token in enumerate(digit_ids)}

    def chain_reward(prompts, completions, completion_ids, digit, **kwargs):
        rewards = []
        for ids, d in zip(completion_ids, digit, strict=True):
            ids = list(ids)
            ended = bool(ids) and ids[-1] == eos
            text = "".join(id_to_char.get(t, "?") for t in (ids[:-1] if ended else ids))
            rewards.append(fork_reward(int(d), text, ended, length, easy_reward))
        return rewards

    return chain_reward


# Instrumentation
class Recorder:
    """Per-optimizer-step sums of the loss-side measurements, filled by the instrumented trainer."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.current: dict = defaultdict(float)

    def add(self, key: str, value: float) -> None:
        self.current[key] += value

    def close_step(self) -> None:
        self.steps.append(dict(self.current))
        self.current = defaultdict(float)


def instrumented(trainer_cls, recorder: Recorder):
    """A subclass of ``trainer_cls`` whose loss metrics step also feeds ``recorder`` (train micro-batches only)."""
    import torch

    class Instrumented(trainer_cls):
        def _loss_metrics(self, ctx):
            super()._loss_metrics(ctx)
            if ctx.mode != "train":
                return
            with torch.no_grad():
                mask = ctx.mask.bool()
                ent = ctx.entropies.detach()
                # With gradient_accumulation_steps=1 and num_iterations=1 the micro-batch at global_step % spg == 0
                # is the first of its generation batch (pi_old = pi_theta, r = 1); every later one is off-policy.
                off_policy = self.state.global_step % self.args.steps_per_generation != 0
                dual_c = (
                    getattr(self.policy_objective, "dual_clip_c", None)
                    if hasattr(self.args, "hapo_dual_clip_c")
                    else None
                )
                ratio = ctx.ratio.detach()
                adv = (
                    ctx.advantages.detach().expand_as(ratio)
                    if ctx.advantages.shape != ratio.shape
                    else ctx.advantages.detach()
                )
                clipped, dual = clip_flags(ratio, adv, ctx.clip_low, ctx.clip_high, dual_c)
                # The same tokens against the baseline's fixed bounds (and TRL's advantage before any redistribution):
                # separates "wider bounds" from "ratios that moved less".
                base_adv = ctx.inputs["advantages"].detach()
                base_adv = base_adv.unsqueeze(1) if base_adv.dim() == 1 else base_adv
                at_base, _ = clip_flags(
                    ratio, base_adv.expand_as(ratio), BASE_CLIP["epsilon"], BASE_CLIP["epsilon_high"]
                )
                buckets = bucket_masks(ent, mask)
                position = torch.arange(mask.shape[1]).unsqueeze(0).expand_as(mask)
                chain = mask & (position > 0)
                recorder.add("chain_entropy_sum", float(ent[chain].sum()))
                recorder.add("chain_tokens", float(chain.sum()))
                recorder.add("fork_sampled_entropy_sum", float(ent[:, 0][mask[:, 0]].sum()))
                recorder.add("fork_sampled_tokens", float(mask[:, 0].sum()))
                if off_policy:
                    for name, bucket in buckets.items():
                        recorder.add(f"{name}_tokens", float(bucket.sum()))
                        recorder.add(f"{name}_clipped", float((clipped & bucket).sum()))
                        recorder.add(f"{name}_dual", float((dual & bucket).sum()))
                        recorder.add(f"{name}_clipped_at_base", float((at_base & bucket).sum()))
                        recorder.add(f"{name}_ratio_dev", float((ratio - 1).abs()[bucket].sum()))
                    recorder.add("all_tokens", float(mask.sum()))
                    recorder.add("all_clipped", float((clipped & mask).sum()))
                    recorder.add("all_dual", float((dual & mask).sum()))
            if self.accelerator.sync_gradients:
                recorder.close_step()

    return Instrumented


def fork_callback(tokenizer, every: int, records: list[dict], length: int, easy_reward: float):
    """A TrainerCallback recording :func:`fork_statistics` and :func:`expected_reward` (exact, at T = 1, from one
    teacher-forced forward pass over both correct completions of the 10 prompts) at the start and every ``every``
    optimizer steps."""
    import torch
    from transformers import TrainerCallback

    digit_ids, equals, eos = _tokenizer_ids(tokenizer)
    rows = [
        [digit_ids[d], equals, *[digit_ids[int(c)] for c in target(d, direction, length)], eos]
        for d in range(10)
        for direction in (EASY, BETTER)
    ]
    sequences = torch.tensor(rows)  # (20, L + 3): prompt d, easy / better completion

    def measure(model, step: int) -> None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=sequences.to(model.device)).logits.float().cpu()
        model.train(was_training)
        logps = torch.log_softmax(logits[:, 1:-1], -1).gather(-1, sequences[:, 2:, None]).squeeze(-1)
        fork = torch.softmax(logits[0::2, 1], -1)  # the first-token distribution of each prompt
        records.append({
            "step": step, **fork_statistics(fork, list(range(10)), digit_ids),
            **expected_reward(logps.view(10, 2, length + 1), length, easy_reward),
        })  # fmt: skip

    class Fork(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            measure(model, 0)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0:
                measure(model, state.global_step)

    return Fork()


# One run
def train_run(arm: str, checkpoint: str, seed: int, options) -> dict:
    from transformers import AutoTokenizer

    from trl_ext import get_trainer

    trainer_name, extra = ARMS[arm]
    easy_reward = options.easy_reward
    recorder, forks = Recorder(), []
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    config = dict(
        use_cpu=True, bf16=False, learning_rate=options.lr, lr_scheduler_type="constant", max_grad_norm=1.0,
        per_device_train_batch_size=32, gradient_accumulation_steps=1,
        steps_per_generation=options.steps_per_generation, num_generations=8, max_completion_length=options.chain + 3,
        temperature=1.0, max_steps=options.steps, **BASE_CLIP, **extra,
    )  # fmt: skip
    run = harness.run_arm(
        trainer_name, model=checkpoint, reward_funcs=[make_reward(tokenizer, options.chain, easy_reward)],
        train_dataset=make_dataset(32 * options.steps + 64, seed), seed=seed, config=config,
        trainer_cls=instrumented(get_trainer(trainer_name)[0], recorder),
        callbacks=[fork_callback(tokenizer, FORK_EVERY, forks, options.chain, easy_reward)], processing_class=tokenizer,
    )  # fmt: skip
    logs = run.logs("clip_ratio/region_mean")
    # Rollout metrics (reward, length, temperature) are logged at the steps that generate (every
    # steps_per_generation-th); TRL's clip metric every step (0 on the first, on-policy, micro-batch).
    history = [e for e in logs if "reward" in e]
    return {
        "fork": forks, "loss_side": recorder.steps, "generation_step": [e["step"] for e in history],
        "reward": [e["reward"] for e in history], "length": [e.get("completions/mean_length") for e in history],
        "truncated": [e.get("completions/clipped_ratio") for e in history],
        "temperature_min": [e.get("hapo/temperature_min") for e in history],
        "temperature_max": [e.get("hapo/temperature_max") for e in history],
        "clip_region_trl": [e["clip_ratio/region_mean"] for e in logs],
    }  # fmt: skip


# Summary
def _frac(steps: list[dict], num: str, den: str) -> float | None:
    n = sum(s.get(num, 0.0) for s in steps)
    d = sum(s.get(den, 0.0) for s in steps)
    return n / d if d else None


def summarise_run(run: dict) -> dict:
    forks = run["fork"]
    quarter = max(1, len(forks) // 4)
    steps = run["loss_side"]
    n = len(steps)
    chain_entropy = [s["chain_entropy_sum"] / s["chain_tokens"] if s.get("chain_tokens") else None for s in steps]
    q = max(1, n // 4)
    lengths = [v for v in run["length"] if v is not None]
    rewards = run["reward"]
    summary = {
        "reward_exact_start": forks[0]["reward"],
        "reward_exact_second_half": prereg.primary_of_run(run),  # the primary metric
        "reward_exact_end": forks[-1]["reward"],
        "p_better_start": forks[0]["p_better"],
        "p_better_last_quarter": statistics.fmean(f["p_better"] for f in forks[-quarter:]),
        "better_share_end": prereg.better_share_end(run),
        "chain_better_start": forks[0]["chain_better"],
        "chain_better_end": forks[-1]["chain_better"],
        "fork_entropy_start": forks[0]["fork_entropy"],
        "fork_entropy_mean": statistics.fmean(f["fork_entropy"] for f in forks[1:]),
        "fork_entropy_last_quarter": statistics.fmean(f["fork_entropy"] for f in forks[-quarter:]),
        "direction_entropy_mean": statistics.fmean(f["direction_entropy"] for f in forks[1:]),
        "direction_entropy_last_quarter": statistics.fmean(f["direction_entropy"] for f in forks[-quarter:]),
        "fork_valid_last_quarter": statistics.fmean(f["valid"] for f in forks[-quarter:]),
        "chain_entropy_first_quarter": statistics.fmean(v for v in chain_entropy[:q] if v is not None),
        "chain_entropy_last_quarter": statistics.fmean(v for v in chain_entropy[-q:] if v is not None),
        "reward_first_quarter": statistics.fmean(rewards[: max(1, len(rewards) // 4)]),
        "reward_last_quarter": statistics.fmean(rewards[-max(1, len(rewards) // 4) :]),
        "length_first_quarter": statistics.fmean(lengths[: max(1, len(lengths) // 4)]),
        "length_last_quarter": statistics.fmean(lengths[-max(1, len(lengths) // 4) :]),
        "clip_all": _frac(steps, "all_clipped", "all_tokens"),
        "dual_all": _frac(steps, "all_dual", "all_tokens"),
        # TRL's own clip_ratio/region_mean, averaged over all optimizer steps (on-policy ones included): a cross-check
        # of the instrumentation (about clip_all x (1 - 1 / steps_per_generation) for the baseline).
        "clip_trl_region_mean": statistics.fmean(run["clip_region_trl"]),
    }
    summary["length_drift"] = summary["length_last_quarter"] - summary["length_first_quarter"]
    for bucket in BUCKETS:
        summary[f"clip_{bucket}"] = _frac(steps, f"{bucket}_clipped", f"{bucket}_tokens")
        summary[f"dual_{bucket}"] = _frac(steps, f"{bucket}_dual", f"{bucket}_tokens")
        summary[f"ratio_dev_{bucket}"] = _frac(steps, f"{bucket}_ratio_dev", f"{bucket}_tokens")
        summary[f"clip_at_base_{bucket}"] = _frac(steps, f"{bucket}_clipped_at_base", f"{bucket}_tokens")
    return summary


def summarise(runs: dict) -> dict:
    """Per arm: mean/min/max over seeds of every per-run summary (the verdict is :func:`prereg.judge`'s)."""
    per_run = {arm: {seed: summarise_run(run) for seed, run in seeds.items()} for arm, seeds in runs.items()}
    arms = {}
    for arm, seeds in per_run.items():
        keys = next(iter(seeds.values())).keys()
        arms[arm] = {key: harness.spread([s[key] for s in seeds.values()]) for key in keys}
    return {"arms": arms, "per_run": per_run}


# Plot
def plot(report: dict, path: Path) -> None:
    runs = report["runs"]
    main_arms = [a for a in prereg.ARMS if a in runs]
    with harness.figure(path, 2, 3, figsize=(17, 9), dpi=100) as (fig, axes):
        for arm in main_arms + [a for a in runs if a not in main_arms]:
            main = arm in main_arms
            style = {"linestyle": "-" if main else "--", "linewidth": 1.8 if main else 1.0, "fill": main}
            seeds = list(runs[arm].values())
            label = f"{arm} ({len(seeds)} seeds)"
            forks = [f["step"] for f in seeds[0]["fork"]]
            for axis, key in ((axes[0, 0], "reward"), (axes[0, 1], "direction_entropy"), (axes[0, 2], "p_better")):
                curves = [[f[key] for f in r["fork"]] for r in seeds]
                harness.band(axis, forks, curves, color=COLORS[arm], label=label, **style)
            curves = [r["reward"] for r in seeds]
            harness.band(axes[1, 0], seeds[0]["generation_step"], curves, color=COLORS[arm], label=label, **style)
            chain = [[s["chain_entropy_sum"] / s["chain_tokens"] for s in r["loss_side"]] for r in seeds]
            harness.band(axes[1, 1], range(1, len(chain[0]) + 1), chain, color=COLORS[arm], label=label, **style)
        axes[0, 1].axhline(math.log(2), color="gray", linewidth=0.8, linestyle=":")
        axes[0, 0].set_title("exact expected reward at T = 1 (mean of 10 prompts)")
        axes[0, 1].set_title("fork direction entropy H(p_easy / (p_easy + p_better))")
        axes[0, 2].set_title("p_better / (p_easy + p_better) at the fork, mean of prompts")
        axes[1, 0].set_title("mean sampled reward (rollouts)")
        axes[1, 1].set_title("chain entropy (positions >= 1, sampled completions)")
        for axis in axes.flat[:5]:
            axis.set_xlabel("optimizer step")
        axes[0, 0].legend(fontsize=7)
        arms = report["summary"]["arms"]
        names, width = list(arms), 0.2
        for i, bucket in enumerate(BUCKETS):
            values = [arms[a][f"clip_{bucket}"]["mean"] or 0.0 for a in names]
            axes[1, 2].bar([k + (i - 1.5) * width for k in range(len(names))], values, width, label=bucket)
        axes[1, 2].set_xticks(range(len(names)))
        axes[1, 2].set_xticklabels(names, rotation=40, ha="right", fontsize=7)
        axes[1, 2].set_title("clip fraction per bucket (off-policy tokens, mean of seeds)")
        axes[1, 2].legend(fontsize=7)
        fig.suptitle(
            "HAPO fork task: d= then count up (easy branch, worth less) or down (better, chain partly taught)",
            fontsize=11,
        )


def docs_tables(report: dict) -> str:
    """The markdown tables docs/results.md quotes, derived from the report alone (a test compares them)."""
    judged = report["verdict"]
    lines = [
        "| arm - `dapo` | mean difference [95% interval] | seeds in favour | verdict |",
        "|---|---|---|---|",
    ]
    for arm, effect in judged["effects"].items():
        lines.append(
            f"| `{arm}` | {effect['mean']:+.3f} [{effect['low']:+.3f}, {effect['high']:+.3f}] "
            f"| {effect['in_favour']}/{effect['n']} | {judged['verdicts'][arm]} |"
        )
    checks = judged["controls"]
    positive = checks["positive_control_effect"]
    lines += [
        "",
        "| control | value | held |",
        "|---|---|---|",
        f"| `dapo` clips off-policy tokens (>= {prereg.MIN_CLIP_FRACTION:g}) | {checks['baseline_clip_fraction']:.4f} "
        f"| {checks['clipping_acts']} |",
        f"| `dapo` fork direction entropy, last quarter < {prereg.COLLAPSE_FACTOR:g} x start "
        f"| {checks['baseline_direction_entropy_start']:.3f} → {checks['baseline_direction_entropy_last_quarter']:.3f} "
        f"| {checks['fork_collapses']} |",
        f"| `dapo` prompts settled on the easy branch at the end (>= {prereg.MIN_EASY_SHARE:g}) "
        f"| {checks['baseline_easy_share_end']:.2f} | {checks['baseline_settles_on_easy']} |",
        f"| positive control `dapo_entropy` - `dapo` (interval above 0) | {positive['mean']:+.3f} "
        f"[{positive['low']:+.3f}, {positive['high']:+.3f}], {positive['in_favour']}/{positive['n']} "
        f"| {checks['entropy_pays']} |",
    ]
    lines += [
        "",
        "| arm - `dapo` (difference [95% interval], seeds with a difference > 0) | fork direction entropy, run mean "
        "| high-entropy clip fraction | prompts on the better branch, end |",
        "|---|---|---|---|",
    ]
    for arm, measures in judged["secondary"].items():
        cells = " | ".join(
            f"{e['mean']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}], {e['in_favour']}/{e['n']}"
            for e in (measures[k] for k in ("direction_entropy_mean", "clip_high", "better_share_end"))
        )
        lines.append(f"| `{arm}` | {cells} |")
    arms = report["summary"]["arms"]
    lines += [
        "",
        "| arm | primary: exact reward, 2nd half | exact reward, start | prompts on the better branch, end "
        "| better chain completed, end | fork direction entropy, run mean | clip, all off-policy | clip, high-entropy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in prereg.ARMS:
        row = arms[arm]

        def cell(key: str, digits: int = 3, row: dict = row) -> str:
            value = row[key]
            return f"{value['mean']:.{digits}f} ({value['min']:.{digits}f}-{value['max']:.{digits}f})"

        lines.append(
            f"| `{arm}` | {cell('reward_exact_second_half')} | {cell('reward_exact_start')} | {cell('better_share_end', 2)} "
            f"| {cell('chain_better_end', 2)} | {cell('direction_entropy_mean')} | {cell('clip_all', 4)} "
            f"| {cell('clip_high', 4)} |"
        )
    return "\n".join(lines)


# Main
def print_summary(report: dict) -> None:
    summary = report["summary"]
    keys = "reward_exact_start reward_exact_second_half p_better_last_quarter better_share_end chain_better_end"
    keys += " fork_entropy_mean direction_entropy_mean direction_entropy_last_quarter clip_all clip_high"
    harness.print_table(
        {arm: {k: (v or {}).get("mean") for k, v in row.items()} for arm, row in summary["arms"].items()},
        keys.split(),
    )
    judged = report.get("verdict")
    if judged:
        for arm, effect in judged["effects"].items():
            print(f"{arm} - dapo: {effect['mean']:+.4f} [{effect['low']:+.4f}, {effect['high']:+.4f}] "
                  f"({effect['in_favour']}/{effect['n']} seeds in favour) -> {judged['verdicts'][arm]}")  # fmt: skip
        checks = {k: v for k, v in judged["controls"].items() if k != "positive_control_effect"}
        print(json.dumps(checks, indent=1))
        effect = judged["controls"]["positive_control_effect"]
        print(f"positive control: {effect['mean']:+.4f} [{effect['low']:+.4f}, {effect['high']:+.4f}] "
              f"({effect['in_favour']}/{effect['n']})")  # fmt: skip


def merge(paths: list[Path]) -> dict:
    """The runs of partial results (``--arms`` split over processes) in one report."""
    reports = [harness.load_report(path) for path in paths]
    runs: dict = {}
    for report in reports:
        for arm, seeds in report["runs"].items():
            runs.setdefault(arm, {}).update(seeds)
    merged = dict(reports[0])
    merged["runs"] = runs
    merged["arms"] = {arm: spec for report in reports for arm, spec in report["arms"].items()}
    merged["command"] = [r.get("command") or r["provenance"]["command"] for r in reports]
    merged["wall_s"] = [r["wall_s"] for r in reports]
    return merged


def run(options) -> dict:
    from trl_ext.training import set_threads

    set_threads(1)
    start = time.perf_counter()
    runs: dict = {arm: {} for arm in options.arms}
    for seed in options.seeds:
        checkpoint = warm_start(seed, options)
        for arm in options.arms:
            t0 = time.perf_counter()
            runs[arm][str(seed)] = train_run(arm, checkpoint, seed, options)
            s = summarise_run(runs[arm][str(seed)])
            print(
                f"seed {seed} {arm:>16}: {time.perf_counter() - t0:5.1f}s | R* {s['reward_exact_start']:.3f} -> "
                f"{s['reward_exact_end']:.3f} (2nd half {s['reward_exact_second_half']:.3f}) | p_better "
                f"{s['p_better_start']:.2f} -> {s['p_better_last_quarter']:.2f} | chain_better "
                f"{s['chain_better_start']:.2f} -> {s['chain_better_end']:.2f} | fork H {s['fork_entropy_start']:.3f} -> "
                f"{s['fork_entropy_last_quarter']:.3f} (mean {s['fork_entropy_mean']:.3f}) | chain H last "
                f"{s['chain_entropy_last_quarter']:.3f} | reward {s['reward_first_quarter']:.3f} -> "
                f"{s['reward_last_quarter']:.3f} | len {s['length_first_quarter']:.2f} -> "
                f"{s['length_last_quarter']:.2f} | clip all {s['clip_all']:.4f} fork {s['clip_fork']} "
                f"high {s['clip_high']}"
            )
    return {
        "preregistration": prereg.__doc__,
        "settings": {k: v for k, v in vars(options).items() if k not in ("merge", "out", "replot")},
        "arms": {arm: {"trainer": ARMS[arm][0], "config": {**BASE_CLIP, **ARMS[arm][1]}} for arm in options.arms},
        "runs": runs, "wall_s": time.perf_counter() - start,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_common_args(parser, RESULTS / "hapo_fork.json", seeds=prereg.SEEDS)
    parser.add_argument("--arms", nargs="+", default=list(prereg.ARMS), choices=list(ARMS))
    settings = prereg.SETTINGS
    parser.add_argument("--steps", type=int, default=settings["steps"], help="optimizer steps per run")
    parser.add_argument("--steps_per_generation", type=int, default=settings["steps_per_generation"])
    parser.add_argument("--lr", type=float, default=settings["lr"])
    parser.add_argument("--chain", type=int, default=settings["chain"], help="L, the chain length")
    parser.add_argument("--sft_steps", type=int, default=settings["sft_steps"])
    parser.add_argument("--sft_lr", type=float, default=settings["sft_lr"])
    parser.add_argument("--easy_reward", type=float, default=settings["easy_reward"], help="the easy branch's value")
    parser.add_argument(
        "--better_known",
        type=int,
        default=settings["better_known"],
        help="better-branch tokens the warm start teaches",
    )
    parser.add_argument("--merge", nargs="+", type=Path, help="merge these result JSONs into --out and plot")
    options = parser.parse_args(argv)
    if options.merge:
        report = merge(options.merge)
    else:
        report = harness.load_report(options.out) if options.replot else run(options)
    report["summary"] = summarise(report["runs"])
    if all(arm in report["runs"] for arm in prereg.ARMS):
        report["verdict"] = prereg.judge(report)
    return harness.finish(options, report, argv, plot=plot, show=print_summary)


if __name__ == "__main__":
    main()
