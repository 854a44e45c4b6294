"""``RegimeCallback``: log ``regime/*`` metrics during any GRPO run (``callbacks=[RegimeCallback()]``).

How it sees the data. A ``TrainerCallback`` is not handed the trainer, so the callback binds to it:

* a trl-ext trainer (every named trainer, ``grpo`` included) calls ``bind_trainer`` from its constructor, and the
  callback registers as an observer of the trainer's two seams (``BaseGRPOTrainer.add_observer``): it receives each
  training generation batch's gathered rewards and rollout fields, and each micro-batch's loss context (per-token
  log-probs, behaviour log-probs, entropies, clip bounds). Everything is measured.
* ``trl.GRPOTrainer`` (or a trainer added with ``trainer.add_callback`` after construction): at ``on_train_begin``
  the callback finds the trainer that calls it (the ``self`` of the calling frame that holds this callback in its
  ``callback_handler``), or you call ``callback.bind_trainer(trainer)`` yourself. It then reads what TRL keeps for its
  completions table (the latest generation batch's rewards) and its logged mean entropy, through
  :mod:`trl_ext.compat`. TRL's loss keeps no per-token tensors, so the per-token quantities are reported as not
  measurable, with that reason (train with trl-ext's ``grpo`` trainer, the same loss, to measure them).

Under several processes the rewards are the gathered ones and the per-token statistics are pooled over every
process once per step (:meth:`~trl_ext.diagnose.measures.TokenAccumulator.all_reduce`), so every process logs the same
values. Values go into the trainer's logged metrics (TRL averages them over each logging window), so they appear on the
console line, in ``state.log_history`` and in every tracker. The callback also keeps the whole series and, at the end
of training, writes ``<output_dir>/regime.json`` (per metric: mean, last, min, max, the series; and every metric it
could not measure with the reason), which ``trl-ext diagnose --from`` reads.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from trl_ext import compat
from trl_ext.diagnose.measures import TokenAccumulator, group_measures, slope, useful_step_share

__all__ = ["REGIME_FILE", "RegimeCallback"]

#: The file the callback writes into the run's output directory at the end of training.
REGIME_FILE = "regime.json"

_TOKEN_KEYS_TRL = (
    "regime/logratio_abs_mean",
    "regime/prefix_to_token_spread",
    "regime/minpro_weight_min",
    "regime/minpro_weight_max",
    "regime/sampler_logratio_abs_mean",
    "regime/entropy_p10",
    "regime/entropy_p50",
    "regime/entropy_p90",
    "regime/clip_frac_high_entropy",
    "regime/clip_frac_low_entropy",
)


class RegimeCallback(TrainerCallback):
    """Measure which method's regime a GRPO run is in, as ``regime/*`` metrics (see :mod:`trl_ext.diagnose`).

    Args:
        success_threshold: a completion whose total reward is at least this passes (splits zero-signal groups into
            all-pass and all-fail). Default 0.5, for rewards in [0, 1] (every built-in task).
        reward_range: ``(low, high)`` mapping rewards to success rates for the Beta fit, as BNPO's
            ``bnpo_reward_min`` / ``bnpo_reward_max``. Default (0, 1).
        entropy_pivot: tokens at or above this quantile of a micro-batch's entropies count as high-entropy (HAPO's
            default pivot, 0.8).
        max_entropy_tokens: entropies kept per step for the quantiles (a uniform subsample beyond). Default 8192.
        write_file: write ``<output_dir>/regime.json`` at the end of training. Default True.
    """

    def __init__(
        self,
        success_threshold: float = 0.5,
        reward_range: tuple[float, float] = (0.0, 1.0),
        entropy_pivot: float = 0.8,
        max_entropy_tokens: int = 8192,
        write_file: bool = True,
    ) -> None:
        if not (
            isinstance(reward_range, tuple | list) and len(reward_range) == 2 and reward_range[0] < reward_range[1]
        ):
            raise ValueError(f"reward_range must be (low, high) with low < high, got {reward_range!r}")
        if not math.isfinite(success_threshold):
            raise ValueError(f"success_threshold must be a finite number, got {success_threshold!r}")
        self.success_threshold = float(success_threshold)
        self.reward_range = (float(reward_range[0]), float(reward_range[1]))
        self.tokens = TokenAccumulator(entropy_pivot=entropy_pivot, max_entropy_tokens=max_entropy_tokens)
        self.write_file = write_file
        self.trainer: Any = None
        self.observed = False  # bound to a trl-ext trainer's seams
        self.series: dict[str, list[tuple[int, float]]] = {}
        self.reasons: dict[str, str] = {}
        self._entropy_means: list[float] = []
        self._seen_generations = 0

    # Binding --------------------------------------------------------------------------------------------------------
    def bind_trainer(self, trainer: Any) -> None:
        """Read ``trainer``'s data (called by every trl-ext trainer's constructor; call it yourself for another)."""
        self.trainer = trainer
        add_observer = getattr(trainer, "add_observer", None)
        if callable(add_observer):
            add_observer(self)
            self.observed = True

    def _find_trainer(self) -> Any:
        from transformers import Trainer

        frame = inspect.currentframe()
        try:
            while frame is not None:
                candidate = frame.f_locals.get("self")
                if isinstance(candidate, Trainer) and self in candidate.callback_handler.callbacks:
                    return candidate
                frame = frame.f_back
        finally:
            del frame
        return None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is None:
            trainer = self._find_trainer()
            if trainer is not None:
                self.bind_trainer(trainer)
        if self.trainer is None:
            reason = "the callback is not bound to a trainer: call RegimeCallback.bind_trainer(trainer)"
            self.reasons.setdefault("regime/zero_signal_frac", reason)
            self.reasons.setdefault("regime/logratio_abs_mean", reason)
        elif not self.observed:
            reason = (
                f"{type(self.trainer).__name__} computes per-token ratios and entropies inside its loss and keeps "
                "none; trl-ext's `grpo` trainer (the same loss) hands them to this callback"
            )
            for key in _TOKEN_KEYS_TRL:
                self.reasons.setdefault(key, reason)
            multi = "regime/neg_traj_useful_step_frac"
            self.reasons.setdefault(multi, f"{type(self.trainer).__name__} does not hand rollout fields to callbacks")

    # Recording ------------------------------------------------------------------------------------------------------
    def _record(
        self, trainer: Any, values: dict[str, float], reasons: dict[str, str], step: int | None = None
    ) -> None:
        """Append ``values`` to the trainer's logged metrics and the series; ``step`` defaults to the optimizer step
        being trained (data seen inside a training step belong to the step that ends next)."""
        step = int(trainer.state.global_step) + 1 if step is None else step
        metrics = compat.trainer_metrics(trainer)
        for key, value in values.items():
            if not math.isfinite(value):  # pragma: no cover - the measures are finite by construction
                self.reasons[key] = f"non-finite value {value!r} at step {step}"
                continue
            metrics[key].append(float(value))
            self.series.setdefault(key, []).append((step, float(value)))
        for key, reason in reasons.items():
            self.reasons[key] = reason

    def _record_rewards(
        self, trainer: Any, total: torch.Tensor, num_generations: int, step: int | None = None
    ) -> None:
        values, reasons = group_measures(
            total, num_generations, success_threshold=self.success_threshold, reward_range=self.reward_range
        )
        self._record(trainer, values, reasons, step)

    # Observer of a trl-ext trainer's seams ---------------------------------------------------------------------------
    def on_advantages(self, trainer: Any, batch: Any, advantages: torch.Tensor, inputs: list[dict[str, Any]]) -> None:
        rewards = batch.rewards_per_func.detach().float()
        weights = batch.reward_weights.to(rewards.device, rewards.dtype)
        total = (rewards * weights).nansum(dim=1)
        total[torch.isnan(rewards).all(dim=1)] = float("nan")
        self._record_rewards(trainer, total, batch.num_generations)
        self._record_steps(trainer, batch, total, inputs)

    def _record_steps(self, trainer: Any, batch: Any, total: torch.Tensor, inputs: list[dict[str, Any]]) -> None:
        key = "regime/neg_traj_useful_step_frac"
        first = inputs[0] if inputs else {}
        if "calibadv_steps" not in first:
            self.reasons[key] = "single-turn rollouts: no search steps to judge (a multi-turn search rollout has them)"
            return
        if "supporting_doc_ids" not in first:
            self.reasons[key] = "the dataset has no `supporting_doc_ids` column: no ground truth for a step's use"
            return
        from accelerate.utils import gather_object

        steps = gather_object([row.get("calibadv_steps") for row in inputs])
        support = gather_object([row.get("supporting_doc_ids") for row in inputs])
        groups = total.view(-1, batch.num_generations)
        means = torch.nanmean(groups, dim=1, keepdim=True)
        negative = (groups < means - 1e-6).flatten().tolist()  # GRPO's row advantage below 0 (NaN rows: not negative)
        self._record(trainer, *useful_step_share(steps, support, negative))

    def on_loss(self, trainer: Any, ctx: Any) -> None:
        inputs = ctx.inputs
        clipped = None
        clip_low, clip_high = getattr(ctx, "clip_low", None), getattr(ctx, "clip_high", None)
        if clip_low is not None and ctx.ratio is not None and ctx.advantages is not None:
            from trl_ext.objectives import functional as F

            if getattr(trainer, "loss_type", None) in F.CLIPPED_LOSS_TYPES:
                ratio = ctx.ratio.detach()
                clipped = ((ratio < 1 - clip_low) & (ctx.advantages < 0)) | (
                    (ratio > 1 + clip_high) & (ctx.advantages > 0)
                )
                clipped = clipped.expand_as(ctx.mask)
        self.tokens.add(
            logps=ctx.logps,
            old_logps=inputs.get("old_per_token_logps"),
            mask=ctx.mask,
            entropies=ctx.entropies,
            sampling_logps=inputs.get("sampling_per_token_logps"),
            clipped=clipped,
        )

    # Once per optimizer step ----------------------------------------------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer is None:
            return
        metrics = compat.trainer_metrics(trainer)
        if not self.observed:
            generations = len(metrics.get("reward", []))
            if generations > self._seen_generations:  # TRL scored a new generation batch during this step
                logged = compat.last_generation_rewards(trainer)
                if logged is not None:
                    columns, weights = logged
                    rewards = torch.tensor(columns, dtype=torch.float64).T
                    total = (rewards * torch.tensor(weights, dtype=torch.float64)).nansum(dim=1)
                    total[torch.isnan(rewards).all(dim=1)] = float("nan")
                    generation = int(compat.trainer_attr(trainer, "num_generations", 1))
                    if total.numel() % generation == 0:
                        self._record_rewards(trainer, total, generation, int(state.global_step))
            self._seen_generations = generations
        accelerator = getattr(trainer, "accelerator", None)
        if self.observed and accelerator is not None and accelerator.num_processes > 1:
            self.tokens.all_reduce(accelerator)  # every process reaches on_step_end once per step: a safe collective
        values, reasons = self.tokens.result()
        entropy = values.get("regime/entropy_mean")
        if entropy is None and metrics.get("entropy"):
            entropy = float(metrics["entropy"][-1])  # TRL's own token-mean entropy of the step's last micro-batch
        if entropy is not None and math.isfinite(entropy):
            self._entropy_means.append(entropy)
        if len(self._entropy_means) >= 3:
            values["regime/entropy_slope"] = slope(self._entropy_means)
        else:
            reasons["regime/entropy_slope"] = (
                f"the entropy trend needs 3 steps with a logged entropy; this run has {len(self._entropy_means)}"
            )
        self._record(trainer, values, reasons, int(state.global_step))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._seen_generations = 0  # TRL's log() clears the metric lists it has just averaged

    def on_train_end(self, args, state, control, **kwargs):
        if self.write_file and state.is_world_process_zero and args.output_dir:
            path = Path(args.output_dir) / REGIME_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.summary(), indent=2, sort_keys=True))
            os.replace(tmp, path)

    # Results --------------------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """``{"trainer", "steps", "measured": {key: {mean, last, min, max, n}}, "series": {key: [[step, value]]},
        "not_measurable": {key: reason}}``: a metric measured at least once is not listed as not measurable."""
        measured = {}
        for key, points in sorted(self.series.items()):
            numbers = [value for _, value in points]
            measured[key] = {
                "mean": math.fsum(numbers) / len(numbers),
                "last": numbers[-1],
                "min": min(numbers),
                "max": max(numbers),
                "n": len(numbers),
            }
        trainer = self.trainer
        return {
            "trainer": type(trainer).__name__ if trainer is not None else None,
            "steps": int(trainer.state.global_step) if trainer is not None else 0,
            "settings": {
                "success_threshold": self.success_threshold,
                "reward_range": list(self.reward_range),
                "entropy_pivot": self.tokens.entropy_pivot,
            },
            "measured": measured,
            "series": {key: [[step, value] for step, value in points] for key, points in sorted(self.series.items())},
            "not_measurable": {key: reason for key, reason in sorted(self.reasons.items()) if key not in measured},
        }
