"""HAPO trainer (``"hapo"``): entropy-adaptive rollout temperature, token-level group average advantage,
differential advantage redistribution and asymmetric adaptive clipping with a dual clip.

"From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature", arXiv 2509.16591; spec
``specs/hapo.md``. The math lives in :mod:`trl_ext.advantages.hapo` (TLGA, the ``"hapo_tlga"`` estimator),
:mod:`trl_ext.objectives.hapo` (entropy normalisation, AAC, ADR, dual clip, the ``"hapo"`` objective) and
:mod:`trl_ext.rollout.temperature` (the adaptive-temperature logits processor and its checkpointed statistics).
This module is the preset (config with the ``hapo_`` fields) and the rollout glue:

* **Statistics.** During the first pass over a training generation batch the loss pipeline's valid-token entropies
  are kept; after the batch's last micro-batch they are gathered over all processes and reduced to the §2.2
  statistics, identical on every process. The next training generation samples with them; the first generation of a
  fresh run and every eval generation use the plain temperature T0.
* **Sampling.** While the base single-turn ``generate`` runs, the unwrapped model's ``generate`` receives the
  :class:`~trl_ext.rollout.temperature.AdaptiveTemperatureLogitsProcessor`, and the generation config's own
  temperature / top-k / top-p / min-p are neutralised (the processor applies them). ``self.temperature`` stays T0,
  so log-probs and entropies are computed as in TRL. With ``use_vllm=True`` the statistics go with every request
  (``extra_args`` / ``vllm_xargs``) to :class:`~trl_ext.rollout.vllm_temperature.HAPOTemperatureLogitsProcessor`,
  which the trainer registers in TRL's colocated engine (server mode: start the server with ``trl-ext vllm-serve``);
  vLLM then returns the log-probs of the adapted distribution, which TRL's importance-sampling correction uses.
* **Checkpoint.** The statistics are saved in ``trl_ext_state.json`` and restored on every process on resume.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessorList
from trl import GRPOTrainer

from trl_ext.advantages.hapo import FALLBACK_MODES, validate_tlga_fields
from trl_ext.catalogue import BUILTIN_TRAINERS
from trl_ext.objectives.base import LossContext
from trl_ext.objectives.hapo import SIGN_MODES, validate_objective_fields, validate_sign_mode
from trl_ext.registry import TrainerEntry, register_trainer
from trl_ext.rollout.temperature import (
    AdaptiveTemperatureLogitsProcessor,
    RolloutTemperatureState,
    TemperatureStatistics,
)
from trl_ext.trainers.base import BaseGRPOConfig, BaseGRPOTrainer

__all__ = ["HAPOConfig", "HAPOTrainer"]

# generate()'s own sampling warpers, set to values that make them no-ops (not None: transformers fills None values
# from the model's generation_config, e.g. Qwen's top_k=20).
_NEUTRAL_SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


@dataclass
class HAPOConfig(BaseGRPOConfig):
    r"""
    Configuration for [`HAPOTrainer`]: every field of [`BaseGRPOConfig`] (hence of `trl.GRPOConfig`), plus the HAPO
    fields below ([arXiv 2509.16591](https://arxiv.org/abs/2509.16591), spec `specs/hapo.md`). Each of the four
    components has its own switch; with all four off and `hapo_dual_clip_c=None` the trainer is `grpo` exactly.

    Parameters:
        hapo_entropy_sign_mode (`str`, *optional*, defaults to `"signed"`):
            How the normalised entropy h is signed. `"signed"` (the paper's intent): h in [-1, 0] below the pivot
            and [0, 1] above, so low-entropy tokens get a wider *lower* clip bound and (in the ratio band) a damped
            advantage. `"reference"` reproduces the authors' code: h in [0, 1] at both tails, so eps_low never
            adapts and the upper bound widens for both the highest- and the lowest-entropy tokens.
        hapo_entropy_pivot (`float`, *optional*, defaults to `0.8`):
            Quantile q in [0, 1] of log-entropy used as the pivot m (nearest rank).
        hapo_adaptive_temperature (`bool`, *optional*, defaults to `True`):
            Component 1: sample at T_t = T0 (1 + tau h_t) with h from the previous training batch's statistics.
            With `use_vllm=True` a vLLM logits processor applies it (colocate: registered by the trainer; server:
            start the server with `trl-ext vllm-serve`). Not supported with
            `use_transformers_continuous_batching=True` (`ValueError`).
        hapo_temperature_tau (`float`, *optional*, defaults to `0.05`):
            tau in [0, 1): the temperature range is [0.95, 1.05] T0 (signed) or [T0, 1.05 T0] (reference).
            T0 is TRL's `temperature`.
        hapo_temperature_stats_max_tokens (`int` or `None`, *optional*, defaults to `None`):
            If set (> 0), the statistics use a seeded uniform subsample of at most this many token entropies
            (bounds the memory of the cross-process gather). `None`: every valid token (exact).
        hapo_token_level_advantage (`bool`, *optional*, defaults to `True`):
            Component 2: the token-level group average advantage (TLGA) with its GRPO fallback. `False`: TRL's GRPO
            advantage (honouring `scale_rewards`).
        hapo_tlga_scale_by_std (`bool`, *optional*, defaults to `True`):
            Divide the TLGA (and its fallback) by the group's std (the reference's `norm_adv_by_std_in_grpo`).
        hapo_tlga_fallback_threshold (`float`, *optional*, defaults to `5.0`):
            A group falls back to GRPO if any of its rows has |A| >= this (> 0).
        hapo_tlga_fallback_mode (`str`, *optional*, defaults to `"valid"`):
            `"valid"`: test the real rows only. `"reference"`: also test the padding "phantom" -mu/(sigma + eps)
            that the authors' code sees at padding positions.
        hapo_adaptive_advantage (`bool`, *optional*, defaults to `True`):
            Component 3: differential advantage redistribution A (1 + beta h) (see the docs for the condition).
        hapo_adv_beta (`float`, *optional*, defaults to `1.0`):
            beta >= 0 (at most 1 in `"signed"` mode, where a larger value could flip an advantage's sign).
        hapo_adaptive_clip (`bool`, *optional*, defaults to `True`):
            Component 4: asymmetric adaptive clipping, eps_high (1 + alpha h) for h > 0 and eps_low (1 - alpha h)
            for h <= 0. Needs a clipped `loss_type`.
        hapo_clip_alpha (`float`, *optional*, defaults to `1.0`):
            alpha >= 0.
        hapo_dual_clip_c (`float` or `None`, *optional*, defaults to `10.0`):
            Dual-clip constant c > 1 for negative advantages (the per-token loss is capped at -A c). `None`
            disables it. The reference yaml default is 3.0; its recipes use 10. Must agree with TRL's `delta` if
            both are set.
        hapo_advantage_eps (`float`, *optional*, defaults to `1e-6`):
            epsilon > 0 in the TLGA and fallback-GRPO denominators.
        advantage_estimator (`str`, *optional*, defaults to `"hapo_tlga"`):
            Inherited seam field; HAPO's TLGA estimator (GRPO when `hapo_token_level_advantage=False`).
        policy_objective (`str`, *optional*, defaults to `"hapo"`):
            Inherited seam field; HAPO's objective (ADR, AAC, dual clip).

    The base clip range is TRL's `epsilon` (eps_low, default 0.2) and `epsilon_high` (defaults to `epsilon`); set
    `epsilon_high` explicitly. The reference aggregates the loss as a token mean per micro-batch, TRL's
    `loss_type="bnpo"` (unrelated to the BNPO method); the default here stays TRL's `"dapo"`, a token mean over the
    accumulation window.
    """

    hapo_entropy_sign_mode: str = field(
        default="signed",
        metadata={
            "help": "'signed' (paper's intent: h <= 0 for low-entropy tokens) or 'reference' (authors' code: h >= 0).",
            "choices": list(SIGN_MODES),
        },
    )
    hapo_entropy_pivot: float = field(
        default=0.8, metadata={"help": "Quantile q in [0, 1] of log-entropy used as the pivot. Default 0.8."}
    )
    hapo_adaptive_temperature: bool = field(
        default=True,
        metadata={"help": "Component 1: entropy-adaptive sampling temperature T0 (1 + tau h)."},
    )
    hapo_temperature_tau: float = field(
        default=0.05, metadata={"help": "tau in [0, 1): T_t = T0 (1 + tau h_t). Default 0.05."}
    )
    hapo_temperature_stats_max_tokens: int | None = field(
        default=None,
        metadata={"help": "Seeded subsample size (> 0) for the rollout statistics; None = every valid token."},
    )
    hapo_token_level_advantage: bool = field(
        default=True, metadata={"help": "Component 2: token-level group average advantage with GRPO fallback."}
    )
    hapo_tlga_scale_by_std: bool = field(
        default=True, metadata={"help": "Divide the TLGA by the group's token-weighted std. Default True."}
    )
    hapo_tlga_fallback_threshold: float = field(
        default=5.0, metadata={"help": "Fall back to GRPO for a group if any |A| >= this (> 0). Default 5.0."}
    )
    hapo_tlga_fallback_mode: str = field(
        default="valid",
        metadata={
            "help": "'valid': test real rows only. 'reference': also the padding phantom, as the authors' code.",
            "choices": list(FALLBACK_MODES),
        },
    )
    hapo_adaptive_advantage: bool = field(
        default=True, metadata={"help": "Component 3: differential advantage redistribution A (1 + beta h)."}
    )
    hapo_adv_beta: float = field(
        default=1.0, metadata={"help": "beta >= 0 of the redistribution (<= 1 in 'signed' mode). Default 1.0."}
    )
    hapo_adaptive_clip: bool = field(
        default=True, metadata={"help": "Component 4: asymmetric adaptive clip bounds. Default True."}
    )
    hapo_clip_alpha: float = field(default=1.0, metadata={"help": "alpha >= 0 of the adaptive clip. Default 1.0."})
    hapo_dual_clip_c: float | None = field(
        default=10.0, metadata={"help": "Dual-clip constant c > 1 for negative advantages; None disables it."}
    )
    hapo_advantage_eps: float = field(
        default=1e-6, metadata={"help": "epsilon > 0 in the TLGA and fallback-GRPO denominators. Default 1e-6."}
    )
    advantage_estimator: str = field(
        default="hapo_tlga",
        metadata={"help": "Registered advantage estimator; 'hapo_tlga' is HAPO's token-level group average."},
    )
    policy_objective: str = field(
        default="hapo",
        metadata={"help": "Registered policy objective; 'hapo' is HAPO's (ADR, AAC, dual clip)."},
    )

    def __post_init__(self):
        super().__post_init__()
        validate_sign_mode(self.hapo_entropy_sign_mode)
        for name in (
            "hapo_adaptive_temperature",
            "hapo_token_level_advantage",
            "hapo_tlga_scale_by_std",
            "hapo_adaptive_advantage",
            "hapo_adaptive_clip",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not 0.0 <= self.hapo_temperature_tau < 1.0:
            raise ValueError(f"hapo_temperature_tau must be in [0, 1), got {self.hapo_temperature_tau}")
        max_tokens = self.hapo_temperature_stats_max_tokens
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise ValueError(
                f"hapo_temperature_stats_max_tokens must be a positive integer or None, got {max_tokens!r}"
            )
        validate_tlga_fields(self.hapo_tlga_fallback_threshold, self.hapo_tlga_fallback_mode, self.hapo_advantage_eps)
        validate_objective_fields(
            self.hapo_entropy_pivot,
            self.hapo_adv_beta,
            self.hapo_clip_alpha,
            self.hapo_dual_clip_c,
            self.hapo_entropy_sign_mode,
            self.hapo_adaptive_clip,
            self.loss_type,
            self.delta,
        )
        if self.hapo_adaptive_temperature and self.use_transformers_continuous_batching:
            raise ValueError(
                "hapo_adaptive_temperature=True is not supported with use_transformers_continuous_batching=True "
                "(generate_batch takes no logits processor); set one of them to False."
            )


@contextmanager
def _vllm_logits_processor_registered(enabled: bool) -> Iterator[None]:
    """While TRL builds its colocated engine, add HAPO's vLLM logits processor to the ``vllm.LLM(...)`` call.

    TRL 1.16 constructs ``LLM`` inside ``VLLMGeneration`` without a ``logits_processors`` argument; the processor is
    passed by name, as vLLM loads it. A no-op when ``enabled`` is False (nothing is imported then).
    """
    if not enabled:
        yield
        return
    from trl.generation import vllm_generation

    from trl_ext.rollout.vllm_temperature import LOGITS_PROCESSOR_FQCN

    original = vllm_generation.LLM

    def build_llm(*args: Any, **kwargs: Any) -> Any:
        processors = list(kwargs.pop("logits_processors", None) or [])
        if LOGITS_PROCESSOR_FQCN not in processors:
            processors.append(LOGITS_PROCESSOR_FQCN)
        return original(*args, logits_processors=processors, **kwargs)

    vllm_generation.LLM = build_llm
    try:
        yield
    finally:
        vllm_generation.LLM = original


class HAPOTrainer(BaseGRPOTrainer):
    """GRPO with HAPO's four token-adaptive components (arXiv 2509.16591); see [`HAPOConfig`].

    Accepts every argument of ``trl.GRPOTrainer``. The advantage comes from the ``"hapo_tlga"`` estimator and the
    loss from the ``"hapo"`` objective (the config's defaults); this class adds the adaptive rollout temperature:
    its statistics (:attr:`hapo_temperature`), the logits processor installed during training generation, the
    rollout metrics and the checkpointed state.
    """

    _tag_names = ["trl", "grpo", "trl-ext", "hapo"]
    _name = "HAPO"
    _paper = {
        "title": "From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature",
        "id": "2509.16591",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{liu2025hapo,
                title        = {{From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature}},
                author       = {Liu and others},
                year         = 2025,
                eprint       = {arXiv:2509.16591},
            }"""),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        args, kwargs = self._with_default_args(args, kwargs)
        config = inspect.signature(GRPOTrainer.__init__).bind(None, *args, **kwargs).arguments.get("args")
        colocated = (
            config is not None
            and bool(getattr(config, "hapo_adaptive_temperature", False))
            and bool(getattr(config, "use_vllm", False))
            and getattr(config, "vllm_mode", None) == "colocate"
        )
        with _vllm_logits_processor_registered(colocated):
            super().__init__(*args, **kwargs)
        self.hapo_temperature = RolloutTemperatureState()
        self.hapo_adaptive_temperature = bool(getattr(self.args, "hapo_adaptive_temperature", False))
        if self.hapo_adaptive_temperature and self.use_transformers_continuous_batching:
            raise ValueError("hapo_adaptive_temperature=True does not work with use_transformers_continuous_batching")
        # Tags this trainer's vLLM requests so that the colocated processor's temperature summaries can be found.
        self._hapo_vllm_tag = f"hapo-{os.getpid()}-{id(self)}"
        self._hapo_processor: AdaptiveTemperatureLogitsProcessor | None = None
        self._hapo_collect_remaining = 0
        self._hapo_entropy_buffer: list[torch.Tensor] = []

    # ------------------------------------------------------------------------------------------------------------
    # Rollout: statistics -> logits processor -> generate
    # ------------------------------------------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        adapt = self.hapo_adaptive_temperature and mode == "train"
        stats = self.hapo_temperature.advance() if adapt else None
        on_vllm = self.use_vllm and stats is not None
        self._hapo_processor = self.hapo_build_processor(stats) if stats is not None and not self.use_vllm else None
        try:
            with self._vllm_statistics(stats) if on_vllm else contextlib.nullcontext():
                output = super()._generate_and_score_completions(inputs)
        finally:
            processor, self._hapo_processor = self._hapo_processor, None
        if adapt:
            summary = None
            if processor is not None:
                summary = processor.summary_tensor(self.accelerator.device)
            elif on_vllm:
                summary = self._vllm_temperature_summary()
            self._log_rollout_metrics(summary, stats)
            # The loss pipeline's entropies of this batch's first pass feed the next generation's statistics.
            self._hapo_collect_remaining = self.args.steps_per_generation
            self._hapo_entropy_buffer = []
        return output

    def hapo_build_processor(self, stats: TemperatureStatistics | None) -> AdaptiveTemperatureLogitsProcessor:
        """The adaptive-temperature processor for the unwrapped model's effective sampling settings."""
        sampling = self._effective_sampling()
        return AdaptiveTemperatureLogitsProcessor(
            stats,
            self.args.hapo_temperature_tau,
            sampling["temperature"],
            top_k=sampling["top_k"],
            top_p=sampling["top_p"],
            min_p=sampling["min_p"],
            finished_token_ids=[*self.eos_token_ids, self._tokenizer.pad_token_id],
        )

    def _effective_sampling(self) -> dict[str, Any]:
        # What generate() would use: TRL's generation config, with None filled from the model's generation_config.
        if self.use_vllm:  # TRL builds no generation config for vLLM; the engine samples with TRL's own fields
            generation = self.vllm_generation
            return {name: getattr(generation, name, None) for name in _NEUTRAL_SAMPLING}
        model_config = getattr(self.accelerator.unwrap_model(self.model_wrapped), "generation_config", None)
        effective = {}
        for name in _NEUTRAL_SAMPLING:
            value = getattr(self.generation_config, name, None)
            if value is None and model_config is not None:
                value = getattr(model_config, name, None)
            effective[name] = value
        if effective["temperature"] is None:
            effective["temperature"] = 1.0
        return effective

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        processor = self._hapo_processor
        if processor is None or self.use_vllm or self.use_transformers_continuous_batching:
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        with self._adaptive_sampling(processor):
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )

    @contextmanager
    def _adaptive_sampling(self, processor: AdaptiveTemperatureLogitsProcessor) -> Iterator[None]:
        """Neutralise generate()'s own warpers and hand ``processor`` to the unwrapped model's ``generate``."""
        model = self.accelerator.unwrap_model(self.model_wrapped)
        saved_config, saved_kwargs = self.generation_config, self.generation_kwargs
        neutral_config = copy.deepcopy(saved_config)
        for name, value in _NEUTRAL_SAMPLING.items():
            setattr(neutral_config, name, value)
        original_generate = model.generate
        shadowed = model.__dict__.get("generate")

        def generate(*args: Any, **kwargs: Any):
            processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
            processors.append(processor)
            return original_generate(*args, logits_processor=processors, **kwargs)

        self.generation_config = neutral_config
        self.generation_kwargs = {**saved_kwargs, **_NEUTRAL_SAMPLING}
        model.generate = generate
        try:
            yield
        finally:
            self.generation_config, self.generation_kwargs = saved_config, saved_kwargs
            if shadowed is None:
                del model.generate
            else:
                model.generate = shadowed

    @contextmanager
    def _vllm_statistics(self, stats: TemperatureStatistics) -> Iterator[None]:
        """Send ``stats`` with every vLLM request of this generation (the engine's processor applies them).

        Colocate: TRL turns ``generation_kwargs`` into ``SamplingParams`` fields (``extra_args``). Server: they go into
        the OpenAI request body, where vLLM takes per-request extra arguments as ``vllm_xargs``.
        """
        from trl_ext.rollout.vllm_temperature import temperature_extra_args

        generation = self.vllm_generation
        saved = generation.generation_kwargs
        key = "vllm_xargs" if generation.mode == "server" else "extra_args"
        extra = {
            **(saved.get(key) or {}),
            **temperature_extra_args(stats, self.args.hapo_temperature_tau, self._hapo_vllm_tag),
        }
        generation.generation_kwargs = {**saved, key: extra}
        try:
            yield
        finally:
            generation.generation_kwargs = saved

    def _vllm_temperature_summary(self) -> torch.Tensor | None:
        """[min, max, sum, count] of the temperatures the colocated engine realised in this process; ``None`` in
        server mode, where the processor runs in the server process."""
        if self.vllm_generation.mode != "colocate":
            return None
        from trl_ext.rollout.vllm_temperature import pop_temperature_summary

        summary = pop_temperature_summary(self._hapo_vllm_tag)
        if summary is None:  # no token generated in this process
            summary = torch.tensor([float("inf"), float("-inf"), 0.0, 0.0])
        return summary.to(self.accelerator.device)

    def _log_rollout_metrics(self, summary: torch.Tensor | None, stats: TemperatureStatistics | None) -> None:
        """Log the realised temperature range from this process's [min, max, sum, count] ``summary`` (gathered).

        ``stats`` None: the generation sampled at plain T0. ``summary`` None with statistics (vLLM server mode): the
        temperatures are not observable here and only the statistics are logged. Both decisions are the same on
        every process, so the gather is matched.
        """
        metrics = self._metrics["train"]
        base = float(self._effective_sampling()["temperature"])
        if stats is None:  # first generation of a fresh run: plain T0
            low, high, mean = base, base, base
        elif summary is None:
            low = high = mean = None
        else:
            totals = self.accelerator.gather(summary.unsqueeze(0))
            count = totals[:, 3].sum()
            if count > 0:
                low, high = totals[:, 0].min().item(), totals[:, 1].max().item()
                mean = (totals[:, 2].sum() / count).item()
            else:
                low = high = mean = base
        if mean is not None:
            metrics["hapo/temperature_min"].append(low)
            metrics["hapo/temperature_max"].append(high)
            metrics["hapo/temperature_mean"].append(mean)
        if stats is not None:
            metrics["hapo/rollout_entropy_pivot"].append(stats.pivot)
            metrics["hapo/rollout_entropy_scale"].append(stats.scale)

    # ------------------------------------------------------------------------------------------------------------
    # Loss: collect the first pass's entropies for the next rollout
    # ------------------------------------------------------------------------------------------------------------
    def _loss_forward(self, model, ctx: LossContext) -> None:
        super()._loss_forward(model, ctx)
        if self._hapo_collect_remaining > 0 and ctx.mode == "train":
            self._hapo_entropy_buffer.append(ctx.entropies.detach()[ctx.mask.bool()].float())
            self._hapo_collect_remaining -= 1
            if self._hapo_collect_remaining == 0:
                self._update_temperature_statistics()

    def _update_temperature_statistics(self) -> None:
        """Gather this generation batch's valid-token entropies over all processes and compute the §2.2 statistics.

        A collective: every process reaches it after the same number of micro-batches.
        """
        args = self.args
        state = self.hapo_temperature
        local = torch.cat(self._hapo_entropy_buffer) if self._hapo_entropy_buffer else torch.zeros(0)
        local = local.to(self.accelerator.device)
        self._hapo_entropy_buffer = []
        max_tokens = args.hapo_temperature_stats_max_tokens
        if max_tokens is not None:
            # Subsample locally before the gather so that its memory is bounded too; seeded per process and update.
            share = -(-max_tokens // self.accelerator.num_processes)
            if local.numel() > share:
                generator = torch.Generator().manual_seed(
                    args.seed + 1_000_003 * state.updates + self.accelerator.process_index
                )
                local = local[torch.randperm(local.numel(), generator=generator)[:share].to(local.device)]
        padded = self.accelerator.pad_across_processes(local, dim=0, pad_index=float("nan"))
        gathered = self.accelerator.gather(padded)
        values = gathered[~torch.isnan(gathered)]
        stats = TemperatureStatistics.from_entropies(
            values,
            args.hapo_entropy_pivot,
            args.hapo_entropy_sign_mode,
            max_tokens=max_tokens,
            seed=args.seed + state.updates,
        )
        if stats is not None:  # no valid token anywhere: keep the previous statistics
            state.pending = stats
        state.updates += 1

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoint
    # ------------------------------------------------------------------------------------------------------------
    def extra_state_dict(self) -> dict[str, Any]:
        if not self.hapo_adaptive_temperature:
            return {}
        return {"hapo_temperature": self.hapo_temperature.state_dict()}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        if "hapo_temperature" in state:
            self.hapo_temperature.load_state_dict(state["hapo_temperature"])


register_trainer(
    TrainerEntry(
        name="hapo",
        trainer_cls=HAPOTrainer,
        config_cls=HAPOConfig,
        changes=BUILTIN_TRAINERS["hapo"][0],
        paper=BUILTIN_TRAINERS["hapo"][1],
    )
)
