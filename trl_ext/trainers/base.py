"""The base trainer: ``trl.GRPOTrainer`` with an advantage seam and a loss pipeline of overridable steps.

With the default components (``advantage_estimator="grpo"``, ``policy_objective="grpo"``) it reproduces
``trl.GRPOTrainer`` exactly: same advantages, loss, gradients and logged metrics (see ``tests/test_parity.py``).

Advantage seam
    TRL 1.16 gathers the rewards of every process inside ``_calculate_rewards`` and computes advantages inline.
    We capture the gathered ``(N, K)`` rewards, gather only the extra per-sequence facts the estimator declares,
    call the estimator once on the whole generation batch and keep this process's rows. Every process computes the
    same estimate from the same gathered data, so no further synchronisation is needed.

Objective seam
    ``_compute_loss`` is re-implemented once as the sequence of ``_loss_*`` steps below over a
    :class:`~trl_ext.objectives.base.LossContext`. A policy objective overrides hooks (advantage reshaping, token
    weights, clip bounds, surrogate, metrics); a trainer subclass may override whole steps.

Checkpoints, resume and the model card live in :mod:`trl_ext.trainers.persistence` (a base of the trainer), the
checks that refuse bad input in :mod:`trl_ext.trainers.checks`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import gather, gather_object
from trl import GRPOConfig, GRPOTrainer

from trl_ext import compat
from trl_ext._quiet import progress_bars_disabled
from trl_ext.advantages.base import AdvantageBatch, AdvantageEstimator
from trl_ext.objectives import functional as F
from trl_ext.objectives.base import LossContext, PolicyObjective
from trl_ext.processors import check_pixel_limits, load_processor, set_pixel_limits
from trl_ext.registry import get_advantage_estimator, get_policy_objective
from trl_ext.trainers.checks import (
    check_advantages,
    check_prompt_column,
    check_prompt_lengths,
    check_rewards,
    check_train_dataset_size,
    checked_reward_funcs,
    has_accelerator,
)
from trl_ext.trainers.persistence import PersistenceMixin

logger = logging.getLogger(__name__)

_OPTIONAL_FACTS = frozenset({"completion_lengths", "completion_mask", "completion_ids"})


@dataclass
class BaseGRPOConfig(GRPOConfig):
    r"""
    Configuration for [`BaseGRPOTrainer`]: every field of `trl.GRPOConfig`, plus the names of the two components
    that the trl-ext seams plug in.

    Parameters:
        advantage_estimator (`str`, *optional*, defaults to `"grpo"`):
            Registered advantage estimator (see `trl-ext list` or `trl_ext.list_advantage_estimators()`). `"grpo"`
            is TRL's group-relative advantage and honours `scale_rewards` and `multi_objective_aggregation`.
        policy_objective (`str`, *optional*, defaults to `"grpo"`):
            Registered policy objective (`trl_ext.list_policy_objectives()`). `"grpo"` is TRL's surrogate for
            the configured `loss_type`.
        max_pixels (`int` or `None`, *optional*, defaults to `None`):
            Upper pixel limit of a vision-language model's image processor (Qwen2-VL, Qwen2.5-VL): every image, a
            DIVA variant's too, is resized to at most `max_pixels` pixels, so it becomes at most
            `max_pixels / patch_size**2` patches. `None` keeps the processor's own limit. Applied to the processor the
            trainer loads (or to the `processing_class` passed, in place); a model whose image processor has no pixel
            limits (a fixed-size one, e.g. LLaVA's CLIP) refuses it (`trl_ext.processors`).
        min_pixels (`int` or `None`, *optional*, defaults to `None`):
            Lower pixel limit of the same processor (images are enlarged to at least `min_pixels`); as `max_pixels`
            otherwise.
    """

    advantage_estimator: str = field(
        default="grpo",
        metadata={"help": "Registered advantage estimator name (see `trl-ext list`). 'grpo' is TRL's advantage."},
    )
    policy_objective: str = field(
        default="grpo",
        metadata={"help": "Registered policy objective name (see `trl-ext list`). 'grpo' is TRL's surrogate."},
    )
    max_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Largest image in pixels after the processor's resize (Qwen2-VL / Qwen2.5-VL image processors); "
            "None keeps the processor's own limit."
        },
    )
    min_pixels: int | None = field(
        default=None,
        metadata={"help": "Smallest image in pixels after the processor's resize; None keeps the processor's own."},
    )

    def __post_init__(self):
        # Values TRL accepts silently but that make no sense (a negative clip range or KL weight, no update per
        # generation, empty completions): refuse them before anything is built.
        for name, low, what in (
            ("epsilon", 0.0, "the lower clip range (ratios below 1 - epsilon are clipped)"),
            ("epsilon_high", 0.0, "the upper clip range (ratios above 1 + epsilon_high are clipped)"),
            ("beta", 0.0, "the KL coefficient (0 disables the KL term)"),
        ):
            value = getattr(self, name, None)
            if value is not None and not value >= low:
                raise ValueError(f"{name} must be >= {low:g}, {what}; got {value!r}")
        if not (isinstance(self.num_iterations, int) and self.num_iterations >= 1):
            raise ValueError(
                f"num_iterations must be >= 1, an integer (optimizer passes per generation batch); got "
                f"{self.num_iterations!r}"
            )
        max_steps = self.max_steps
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or (max_steps < 1 and max_steps != -1):
            # 0 trained one step and saved a model; below -1 means nothing. -1 is TRL's "use num_train_epochs".
            raise ValueError(
                f"max_steps must be a positive number of optimizer steps, or -1 to train for num_train_epochs; got "
                f"{max_steps!r}"
            )
        check_pixel_limits(self.max_pixels, self.min_pixels)
        if self.max_completion_length is not None and not self.max_completion_length >= 1:
            raise ValueError(
                f"max_completion_length must be >= 1 (tokens generated per completion), got {self.max_completion_length!r}"
            )
        if (
            getattr(self, "bf16", None) is None
            and not getattr(self, "fp16", False)
            and not getattr(self, "use_cpu", False)
            and not has_accelerator()
        ):
            # TRL turns bf16 on when it is left unset, and transformers then refuses a machine without a GPU unless
            # use_cpu is set. Only there, where TRL itself would refuse to start, leave bf16 off instead (an explicit
            # bf16=True still errors). With use_cpu=True TRL starts, in bf16 autocast, and so does every trl-ext
            # trainer: the same arguments train the same run as trl.GRPOTrainer.
            self.bf16 = False
            logger.info("no GPU found and use_cpu unset: bf16 left off (set bf16=True explicitly to override)")
        super().__post_init__()
        for field_name, lookup in (
            ("advantage_estimator", get_advantage_estimator),
            ("policy_objective", get_policy_objective),
        ):
            try:
                lookup(getattr(self, field_name))
            except KeyError as exc:
                raise ValueError(f"{field_name}: {exc.args[0]}") from None


class BaseGRPOTrainer(PersistenceMixin, GRPOTrainer):
    """``trl.GRPOTrainer`` with an advantage seam, a loss pipeline of overridable steps and a checkpoint hook.

    Accepts every argument of ``trl.GRPOTrainer``. ``args`` may be a plain ``GRPOConfig`` (the default components
    are used then) or any ``BaseGRPOConfig`` subclass. Reward functions are wrapped in
    :class:`~trl_ext.trainers.checks.CheckedRewardFunction` (same name; yours is its ``__wrapped__``), which refuses
    a returned value that is not a number or None, naming the function and the completion.
    """

    _tag_names = ["trl", "grpo", "trl-ext"]
    _name = "GRPO"
    #: Dataset columns a prompt comes from (any one suffices; checked at construction): TRL generates from "prompt".
    _prompt_columns: tuple[str, ...] = ("prompt",)

    @classmethod
    def _with_default_args(cls, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The constructor's arguments with ``args`` filled in when it was not given.

        ``trl.GRPOTrainer`` builds a plain ``GRPOConfig`` then, which would silently turn every trl-ext trainer into
        plain GRPO (the base falls back to the ``grpo`` components). Instead each trainer gets its own config's
        defaults (``<model>-<Trainer>`` as output directory, as TRL names it). Idempotent.
        """
        bound = compat.grpo_trainer_arguments(args, kwargs)
        if bound.arguments.get("args") is not None:
            return args, kwargs
        from trl_ext.registry import get_trainer_entry, list_trainers

        config_cls = next(
            (get_trainer_entry(n).config_cls for n in list_trainers() if get_trainer_entry(n).trainer_cls is cls),
            BaseGRPOConfig,
        )
        model = bound.arguments.get("model")
        model_name = model if isinstance(model, str) else compat.get_config_model_id(model.config)
        bound.arguments["args"] = config_cls(f"{model_name.split('/')[-1]}-{cls._name}")
        return bound.args[1:], bound.kwargs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        args, kwargs = self._with_default_args(args, kwargs)
        bound = compat.grpo_trainer_arguments(args, kwargs)
        config = bound.arguments["args"]
        for name in ("train_dataset", "eval_dataset"):  # before the model loads
            check_prompt_column(bound.arguments.get(name), name, self._prompt_columns)
        if bound.arguments.get("reward_funcs") is not None:
            # Each reward function's output is checked where it is returned, so that a wrong value (a string, say)
            # names the function and the completion instead of failing in TRL's tensor conversion.
            bound.arguments["reward_funcs"] = checked_reward_funcs(bound.arguments["reward_funcs"])
            args, kwargs = bound.args[1:], bound.kwargs
        if getattr(config, "max_pixels", None) is not None or getattr(config, "min_pixels", None) is not None:
            # TRL loads the processor with AutoProcessor and no pixel limits: load it (or adjust the one given) here.
            bound.arguments["processing_class"] = self._processor_with_pixel_limits(bound, config)
            args, kwargs = bound.args[1:], bound.kwargs
        with progress_bars_disabled(bool(getattr(config, "disable_tqdm", False))):  # no "Loading weights" bars
            super().__init__(*args, **kwargs)
        self.advantage_estimator: AdvantageEstimator = self._build_component(
            "advantage_estimator", get_advantage_estimator
        )
        self.policy_objective: PolicyObjective = self._build_component("policy_objective", get_policy_objective)
        unknown = set(self.advantage_estimator.requires) - _OPTIONAL_FACTS
        if unknown:
            raise ValueError(
                f"advantage estimator {self.advantage_estimator.name!r} requires unknown facts {sorted(unknown)}; "
                f"known: {sorted(_OPTIONAL_FACTS)}"
            )
        self._captured_rewards_per_func: torch.Tensor | None = None
        self._check_train_dataset_size()
        check_prompt_lengths(self)
        self._observers: list[Any] = []
        for callback in self.callback_handler.callbacks:  # e.g. trl_ext.diagnose.RegimeCallback
            bind = getattr(callback, "bind_trainer", None)
            if callable(bind):
                bind(self)

    def add_observer(self, observer: Any) -> None:
        """Hand ``observer`` the training data as it is computed (read-only; it must not change anything).

        After the advantages of each training generation batch: ``observer.on_advantages(trainer, batch,
        advantages, inputs)`` with the gathered :class:`~trl_ext.advantages.base.AdvantageBatch`, the advantages of
        the whole batch and this process's input rows (rollout fields included). After the loss of each training
        micro-batch: ``observer.on_loss(trainer, ctx)`` with the :class:`~trl_ext.objectives.base.LossContext`. Either
        method may be absent. Called on every process; :class:`trl_ext.diagnose.callback.RegimeCallback` registers itself
        here. A callback with a ``bind_trainer(trainer)`` method, passed in ``callbacks=[...]``, gets it called at the
        end of the constructor.
        """
        if observer not in self._observers:
            self._observers.append(observer)

    def _notify(self, event: str, *args: Any) -> None:
        for observer in getattr(self, "_observers", ()):
            handler = getattr(observer, event, None)
            if callable(handler):
                handler(self, *args)

    @staticmethod
    def _processor_with_pixel_limits(bound, config):
        """The processor with ``config.max_pixels`` / ``min_pixels`` applied: the ``processing_class`` given (changed
        in place), else the one TRL would load for the model (:func:`trl_ext.processors.load_processor`)."""
        from trl_ext.generation import capabilities_of

        limits = {"max_pixels": config.max_pixels, "min_pixels": config.min_pixels}
        if capabilities_of(config).name.startswith("vllm"):
            logger.warning(
                "max_pixels / min_pixels reach the trainer's processor, not vLLM's: vLLM loads the model's processor "
                "with its own limits. An image outside them would get different image tokens in vLLM and in the "
                "trainer; resize images to within max_pixels beforehand (docs/trainers/diva.md, 'Image size')."
            )
        processor = bound.arguments.get("processing_class")
        if processor is not None:
            return set_pixel_limits(processor, **limits)
        model = bound.arguments.get("model")
        model_id = model if isinstance(model, str) else compat.get_config_model_id(model.config)
        init_kwargs = config.model_init_kwargs if isinstance(config.model_init_kwargs, dict) else {}
        return load_processor(
            model_id, revision=init_kwargs.get("revision"), trust_remote_code=config.trust_remote_code, **limits
        )

    def _prompts_per_generation_batch(self) -> int:
        """Distinct dataset rows one generation batch draws (TRL's sampler drops an incomplete last batch)."""
        return max(1, int(self.args.generation_batch_size) // int(self.num_generations))

    def _check_train_dataset_size(self) -> None:
        """Refuse a training set too small for one generation batch (:func:`~trl_ext.trainers.checks.
        check_train_dataset_size`)."""
        check_train_dataset_size(self, self._prompts_per_generation_batch())

    def _build_component(self, field_name: str, lookup):
        name = getattr(self.args, field_name, "grpo")
        try:
            cls = lookup(name)
        except KeyError as exc:
            raise ValueError(f"{field_name}: {exc.args[0]}") from None
        return cls(self.args)

    # ------------------------------------------------------------------------------------------------------------
    # Advantage seam
    # ------------------------------------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._check_rewards(rewards_per_func)
        self._captured_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _check_rewards(self, rewards_per_func: torch.Tensor) -> None:
        """Refuse infinite or absurdly large rewards (:func:`~trl_ext.trainers.checks.check_rewards`)."""
        check_rewards(rewards_per_func, list(getattr(self, "reward_func_names", [])))

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        self._captured_rewards_per_func = None
        output = super()._generate_and_score_completions(inputs)
        rewards_per_func = self._captured_rewards_per_func
        self._captured_rewards_per_func = None
        if rewards_per_func is None:  # pragma: no cover - TRL always scores through _calculate_rewards
            raise RuntimeError("trl-ext: _calculate_rewards was not called; the advantage seam cannot run")

        mode = "train" if self.model.training else "eval"
        batch = self.build_advantage_batch(inputs, output, rewards_per_func, mode)
        result = self.advantage_estimator(batch)
        advantages = self._check_advantages(result.advantages, batch)

        local = advantages[batch.process_slice]
        if local.dim() == 2:
            local = local[:, : output["completion_ids"].size(1)]
        output["advantages"] = local.to(device=output["completion_ids"].device, dtype=torch.float32).contiguous()

        for name, value in result.metrics.items():
            self._metrics[mode][name].append(float(value))
        self._replace_logged_advantages(advantages, batch)
        if mode == "train":
            self._notify("on_advantages", batch, advantages, inputs)
        return output

    def build_advantage_batch(
        self, inputs: list[dict[str, Any]], output: dict[str, Any], rewards_per_func: torch.Tensor, mode: str
    ) -> AdvantageBatch:
        """Assemble the gathered facts the estimator declared in ``requires`` and ``columns``."""
        estimator = self.advantage_estimator
        num_local = len(inputs)
        process_index = self.accelerator.process_index
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        batch = AdvantageBatch(
            rewards_per_func=rewards_per_func,
            reward_weights=self.reward_weights.to(rewards_per_func.device),
            reward_func_names=list(self.reward_func_names),
            num_generations=num_generations,
            process_slice=slice(process_index * num_local, (process_index + 1) * num_local),
            mode=mode,
        )
        requires = set(estimator.requires)
        loss_mask = output["completion_mask"]
        if "tool_mask" in output:
            loss_mask = loss_mask * output["tool_mask"]
        if "completion_lengths" in requires:
            batch.completion_lengths = gather(loss_mask.sum(dim=1))
        if "completion_mask" in requires:
            batch.completion_mask = gather(self.accelerator.pad_across_processes(loss_mask, dim=1, pad_index=0))
        if "completion_ids" in requires:
            ids = self.accelerator.pad_across_processes(
                output["completion_ids"], dim=1, pad_index=self._tokenizer.pad_token_id
            )
            batch.completion_ids = gather(ids)
        for column in estimator.columns:
            if column not in inputs[0]:
                raise ValueError(
                    f"advantage estimator {estimator.name!r} needs the dataset column {column!r}, which the training "
                    f"dataset does not have (columns: {sorted(inputs[0])})"
                )
            batch.columns[column] = gather_object([row[column] for row in inputs])
        return batch

    def _check_advantages(self, advantages: torch.Tensor, batch: AdvantageBatch) -> torch.Tensor:
        """The estimator's output checked for shape and finiteness (:func:`~trl_ext.trainers.checks.
        check_advantages`)."""
        return check_advantages(advantages, batch, self.advantage_estimator.name)

    def _replace_logged_advantages(self, advantages: torch.Tensor, batch: AdvantageBatch) -> None:
        # TRL logged its own advantages for this batch; the completions table must show the ones we train on.
        if advantages.dim() == 2:
            mask = batch.completion_mask.to(advantages.dtype)
            advantages = (advantages * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logged = self._logs["advantages"]
        values = advantages.tolist()
        count = min(len(values), len(logged))
        for _ in range(count):
            logged.pop()
        logged.extend(values[len(values) - count :])

    # ------------------------------------------------------------------------------------------------------------
    # Objective seam: the loss pipeline
    # ------------------------------------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        ctx = LossContext(inputs=inputs, mode=mode, mask=mask)
        # No closure over ctx: a ctx -> lambda -> ctx cycle would keep the micro-batch's tensors alive until the
        # cyclic garbage collector runs. ctx.mask is never reassigned, so binding the tensor is the same.
        ctx.global_masked_mean = functools.partial(self._global_masked_mean, mask=mask)
        self._loss_forward(model, ctx)
        self._loss_entropy_mask(ctx)
        self._loss_advantages(ctx)
        self._loss_off_policy_mask(ctx)
        self._loss_importance_ratio(ctx)
        self._loss_kl(ctx)
        self._loss_token_weights(ctx)
        self._loss_clip_bounds(ctx)
        self._loss_surrogate(ctx)
        self._loss_apply_masks(ctx)
        self._loss_add_kl(ctx)
        self._loss_aggregate(ctx)
        self._loss_regularizers(ctx)
        self._loss_metrics(ctx)
        if mode == "train":
            self._notify("on_loss", ctx)
        return ctx.loss

    def _loss_forward(self, model, ctx: LossContext) -> None:
        """Per-token log-probs and entropies of the policy on prompt + completion."""
        inputs = ctx.inputs
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        # Keywords the installed TRL does not take are left out (the multimodal ones differ between minors).
        ctx.logps, ctx.entropies, ctx.aux_loss = compat.call_accepted(
            self._get_per_token_logps_and_entropies,
            model,
            input_ids,
            attention_mask,
            inputs["completion_ids"].size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            num_images=inputs.get("num_images"),
            pixel_attention_mask=inputs.get("pixel_attention_mask"),
            spatial_shapes=inputs.get("spatial_shapes"),
            num_tiles=inputs.get("num_tiles"),
            image_sizes=inputs.get("image_sizes"),
            token_type_ids=inputs.get("token_type_ids"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
            image_position_ids=inputs.get("image_position_ids"),
        )

    def _loss_entropy_mask(self, ctx: LossContext) -> None:
        """Keep only the top ``top_entropy_quantile`` tokens by entropy (global quantile), when configured."""
        if self.top_entropy_quantile < 1.0:
            ctx.entropy_mask = self.get_high_entropy_mask(ctx.entropies, ctx.mask, 1 - self.top_entropy_quantile)

    def _loss_advantages(self, ctx: LossContext) -> None:
        """(B,) -> (B, 1); the objective may replace them (e.g. token-level redistribution)."""
        advantages = ctx.inputs["advantages"]
        ctx.advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
        old = ctx.inputs.get("old_per_token_logps")
        # On-policy (one iteration, no buffered generation) TRL skips computing old log-probs: pi_old = sg(pi_theta).
        ctx.old_logps = ctx.logps.detach() if old is None else old
        reshaped = self.policy_objective.reshape_advantages(ctx)
        if reshaped is not None:
            ctx.advantages = reshaped

    def _loss_off_policy_mask(self, ctx: LossContext) -> None:
        if self.off_policy_mask_threshold is not None:
            sampling = ctx.inputs.get("sampling_per_token_logps", ctx.old_logps)
            ctx.off_policy_mask = F.off_policy_sequence_mask(
                ctx.advantages, ctx.logps, sampling, ctx.mask, self.off_policy_mask_threshold
            )

    def _loss_importance_ratio(self, ctx: LossContext) -> None:
        ctx.log_ratio = ctx.logps - ctx.old_logps
        ctx.log_weights = F.importance_log_weights(ctx.log_ratio, ctx.mask, self.importance_sampling_level)
        ctx.ratio = torch.exp(ctx.log_weights)

    def _loss_kl(self, ctx: LossContext) -> None:
        if self.beta != 0.0:
            ctx.per_token_kl = F.k3_kl(ctx.inputs["ref_per_token_logps"], ctx.logps)
            if self.args.use_bias_correction_kl:
                ctx.per_token_kl = ctx.per_token_kl * ctx.ratio

    def _loss_token_weights(self, ctx: LossContext) -> None:
        ctx.token_weights = self.policy_objective.token_weights(ctx)

    def _loss_clip_bounds(self, ctx: LossContext) -> None:
        bounds = self.policy_objective.clip_bounds(ctx)
        ctx.clip_low, ctx.clip_high = (self.epsilon_low, self.epsilon_high) if bounds is None else bounds

    def _loss_surrogate(self, ctx: LossContext) -> None:
        custom = self.policy_objective.surrogate(ctx)
        if custom is not None:
            ctx.per_token_loss = custom
        elif self.loss_type in F.CLIPPED_LOSS_TYPES:
            ctx.per_token_loss, ctx.ratio = F.clipped_surrogate(
                ctx.ratio, ctx.advantages, ctx.clip_low, ctx.clip_high, self.args.delta
            )
        elif self.loss_type == "cispo":
            ctx.per_token_loss = F.cispo_surrogate(ctx.ratio, ctx.advantages, ctx.logps, self.epsilon_high)
        elif self.loss_type == "sapo":
            ctx.per_token_loss = F.sapo_surrogate(
                ctx.ratio, ctx.advantages, self.args.sapo_temperature_pos, self.args.sapo_temperature_neg
            )
        elif self.loss_type == "vespo":
            phi = F.vespo_gamma_weights(
                ctx.advantages,
                ctx.log_ratio,
                ctx.mask,
                ctx.inputs.get("importance_sampling_ratio"),
                self.args.vespo_k_pos,
                self.args.vespo_lambda_pos,
                self.args.vespo_k_neg,
                self.args.vespo_lambda_neg,
            )
            ctx.extras["vespo_phi"] = phi
            ctx.per_token_loss = F.vespo_surrogate(phi, ctx.advantages, ctx.logps)
        else:
            raise ValueError(f"loss_type must be one of {F.LOSS_TYPES}, got {self.loss_type!r}")
        if ctx.token_weights is not None:
            ctx.per_token_loss = ctx.per_token_loss * ctx.token_weights

    def _loss_apply_masks(self, ctx: LossContext) -> None:
        if ctx.off_policy_mask is not None:
            ctx.per_token_loss = ctx.per_token_loss * ctx.off_policy_mask
        if ctx.entropy_mask is not None:
            ctx.per_token_loss = ctx.per_token_loss * ctx.entropy_mask
        # TRL puts the ratio in the batch exactly when it applies it (vLLM with vllm_importance_sampling_correction).
        importance_ratio = ctx.inputs.get("importance_sampling_ratio")
        if importance_ratio is not None and self.loss_type != "vespo":
            ctx.per_token_loss = ctx.per_token_loss * importance_ratio

    def _loss_add_kl(self, ctx: LossContext) -> None:
        if self.beta != 0.0:
            ctx.per_token_loss = ctx.per_token_loss + self.beta * ctx.per_token_kl

    def _loss_aggregate(self, ctx: LossContext) -> None:
        """Reduce to a scalar per ``loss_type`` and scale for gradient accumulation as TRL does."""
        train = ctx.mode == "train"
        if self.loss_type in ("cispo", "dapo", "vespo"):
            # num_items_in_batch spans the generation batch: rescale it to one accumulation window.
            normalizer = ctx.inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if train:
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            ctx.loss = F.aggregate_loss(
                ctx.per_token_loss,
                ctx.mask,
                self.loss_type,
                max_completion_length=self.max_completion_length,
                num_items=normalizer,
            )
            ctx.policy_loss = ctx.loss.detach()
        else:
            loss = F.aggregate_loss(
                ctx.per_token_loss, ctx.mask, self.loss_type, max_completion_length=self.max_completion_length
            )
            ctx.policy_loss = loss.detach()
            ctx.loss = loss / (self.current_gradient_accumulation_steps if train else 1.0)

    def _loss_regularizers(self, ctx: LossContext) -> None:
        """Entropy bonus (static or adaptive, TRL semantics) and the MoE router auxiliary loss."""
        mode = ctx.mode
        if self._entropy_bonus_enabled:
            effective_mask = ctx.mask if ctx.entropy_mask is None else ctx.mask * ctx.entropy_mask
            accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            entropy_loss = (ctx.entropies * effective_mask).sum() / effective_mask.sum().clamp(min=1.0) / accumulation
            if self.use_adaptive_entropy:
                apply_coef = self.entropy_coef if self._last_world_entropy <= self.args.entropy_target else 0.0
            else:
                apply_coef = self.entropy_coef
            ctx.loss = ctx.loss - apply_coef * entropy_loss
            self._metrics[mode]["policy_loss"].append(self.accelerator.gather(ctx.policy_loss).nanmean().item())
            if self.use_adaptive_entropy and mode == "train":
                self._update_adaptive_entropy(ctx.entropies, effective_mask)
            if mode == "train" and self.accelerator.sync_gradients:
                self._metrics[mode]["entropy_coef"].append(self.entropy_coef)
        if self.aux_loss_enabled:
            normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            ctx.loss = ctx.loss + self.router_aux_loss_coef * ctx.aux_loss / normalizer
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(ctx.aux_loss).mean().item())

    def _update_adaptive_entropy(self, entropies: torch.Tensor, effective_mask: torch.Tensor) -> None:
        # Window-global, token-weighted entropy; the coefficient moves once per optimizer step (TRL semantics).
        stats = torch.stack([(entropies * effective_mask).sum(), effective_mask.sum()]).detach()
        self._entropy_window_stats = (
            stats if self._entropy_window_stats is None else self._entropy_window_stats + stats
        )
        if self.accelerator.sync_gradients:
            window = self.accelerator.reduce(self._entropy_window_stats, reduction="sum")
            world_entropy = (window[0] / window[1].clamp(min=1.0)).item()
            if world_entropy <= self.args.entropy_target:
                self.entropy_coef = min(self.entropy_coef + self.args.entropy_coef_delta, self.args.entropy_coef_max)
            else:
                self.entropy_coef = max(self.entropy_coef - self.args.entropy_coef_delta, self.args.entropy_coef_min)
            self._last_world_entropy = world_entropy
            self._entropy_window_stats = None

    def _global_masked_mean(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        """Mean of x over the loss tokens of every process ((B, 1) inputs count once per sequence)."""
        if x.shape[1] == 1:
            local_sum, local_count = x.sum(), torch.tensor(float(x.shape[0]), device=x.device)
        else:
            local_sum, local_count = (x * mask).sum(), mask.sum().float()
        totals = self.accelerator.reduce(torch.stack([local_sum, local_count]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def _masked_seq_mean(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            return x.squeeze(1)
        return (x * mask).sum(-1) / mask.sum(-1)

    def _loss_metrics(self, ctx: LossContext) -> None:
        """TRL's loss metrics (kl, entropy, clip ratios) plus the objective's own."""
        metrics = self._metrics[ctx.mode]
        if self.beta != 0.0:
            metrics["kl"].append(ctx.global_masked_mean(ctx.per_token_kl))
        metrics["entropy"].append(ctx.global_masked_mean(ctx.entropies))
        if self.loss_type in F.CLIPPED_LOSS_TYPES:
            is_low = (ctx.ratio < 1 - ctx.clip_low) & (ctx.advantages < 0)
            is_high = (ctx.ratio > 1 + ctx.clip_high) & (ctx.advantages > 0)
            is_region = is_low | is_high
            metrics["clip_ratio/low_mean"].append(ctx.global_masked_mean(is_low.float()))
            metrics["clip_ratio/high_mean"].append(ctx.global_masked_mean(is_high.float()))
            metrics["clip_ratio/region_mean"].append(ctx.global_masked_mean(is_region.float()))
            low_per_seq = self.accelerator.gather(self._masked_seq_mean(is_low.float(), ctx.mask))
            metrics["clip_ratio/low_min"].append(compat.nanmin(low_per_seq).item())
            high_per_seq = self.accelerator.gather(self._masked_seq_mean(is_high.float(), ctx.mask))
            metrics["clip_ratio/high_max"].append(compat.nanmax(high_per_seq).item())
        elif self.loss_type == "cispo":
            is_clipped = (ctx.ratio > self.epsilon_high) & (ctx.advantages > 0)
            metrics["cispo_clip_ratio"].append(ctx.global_masked_mean(is_clipped.float()))
        elif self.loss_type == "vespo":
            metrics["vespo/phi_seq_mean"].append(ctx.global_masked_mean(ctx.extras["vespo_phi"]))
        for name, value in self.policy_objective.metrics(ctx).items():
            metrics[name].append(float(value))
