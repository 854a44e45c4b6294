"""HAPO trainer (``"hapo"``): entropy-adaptive rollout temperature, token-level group average advantage,
differential advantage redistribution and asymmetric adaptive clipping with a dual clip.

"From Uniform to Heterogeneous: Tailoring Policy Optimization to Every Token's Nature", arXiv 2509.16591. The
math lives in :mod:`trl_ext.advantages.hapo` (TLGA, the ``"hapo_tlga"`` estimator),
:mod:`trl_ext.objectives.hapo` (entropy normalisation, AAC, ADR, dual clip, the ``"hapo"`` objective) and
:mod:`trl_ext.rollout.temperature` (the adaptive-temperature logits processor and its checkpointed statistics).
This module is the preset (config with the ``hapo_`` fields) and the rollout glue:

* **Statistics.** During the first pass over a training generation batch the loss pipeline's valid-token entropies
  are kept; after the batch's last micro-batch they are gathered over all processes and reduced to the entropy
  statistics, identical on every process. The next training generation samples with them; the first generation of a
  fresh run and every eval generation use the plain temperature T0.
* **Sampling.** The temperature is stated once, as a sampling change
  (:class:`~trl_ext.rollout.temperature.AdaptiveTemperature`), and every backend of :mod:`trl_ext.generation` applies
  it: transformers ``generate`` with the :class:`~trl_ext.rollout.temperature.AdaptiveTemperatureLogitsProcessor` in
  place of its own temperature / top-k / top-p / min-p, vLLM (colocated or server) with the statistics sent as
  per-request arguments to :class:`~trl_ext.rollout.vllm_temperature.HAPOTemperatureLogitsProcessor`, which every
  engine loads through vLLM's entry-point group. While a change is active, TRL's single-turn generation is sampled
  through the trainer's backend; a multi-turn rollout (CalibAdv's) asks :meth:`HAPOTemperatureMixin.
  rollout_sampling_change` and passes it to the backend it opens. ``self.temperature`` stays T0, so log-probs and
  entropies are computed as in TRL; under vLLM the returned log-probs are those of the adapted distribution, which
  TRL's importance-sampling correction uses. Nothing of TRL or of the model is patched.
* **Checkpoint.** The statistics are saved in ``trl_ext_state.json`` and restored on every process on resume.
"""

from __future__ import annotations

import os
import textwrap
from typing import Any

import torch

from trl_ext import compat
from trl_ext.generation import SamplingSettings, capabilities_of, open_backend
from trl_ext.objectives.base import LossContext
from trl_ext.rollout.temperature import (
    AdaptiveTemperature,
    AdaptiveTemperatureLogitsProcessor,
    RolloutTemperatureState,
    TemperatureStatistics,
)
from trl_ext.trainers.base import BaseGRPOTrainer
from trl_ext.trainers.hapo_config import HAPOConfig

__all__ = ["HAPOConfig", "HAPOTemperatureMixin", "HAPOTrainer"]  # HAPOConfig: trl_ext.trainers.hapo_config


class HAPOTemperatureMixin:
    """HAPO's entropy-adaptive rollout temperature (component 1) for any trl-ext trainer.

    Put it before the trainer in the bases (``class T(HAPOTemperatureMixin, CalibAdvTrainer)``) and give the config the
    ``hapo_`` temperature fields (``hapo_adaptive_temperature``, ``hapo_temperature_tau``,
    ``hapo_temperature_stats_max_tokens``, ``hapo_entropy_pivot``, ``hapo_entropy_sign_mode``; a config that inherits
    from [`HAPOConfig`] has them). It keeps the statistics (:attr:`hapo_temperature`), states the temperature once as
    a sampling change (:class:`~trl_ext.rollout.temperature.AdaptiveTemperature`) for the training generation, logs
    the realised temperatures and checkpoints the statistics. The change reaches every backend through
    :mod:`trl_ext.generation`: TRL's single-turn generation (this class samples it through the trainer's backend
    while a change is active) and any rollout that opens the backend with :meth:`rollout_sampling_change` (CalibAdv's
    multi-turn search agent).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hapo_temperature = RolloutTemperatureState()
        self.hapo_adaptive_temperature = bool(getattr(self.args, "hapo_adaptive_temperature", False))
        if self.hapo_adaptive_temperature:
            capabilities = capabilities_of(self.args)
            if not capabilities.sampling_changes:
                raise ValueError(
                    f"hapo_adaptive_temperature=True is not supported with the {capabilities.name} backend (it takes "
                    "no logits processor); set use_transformers_continuous_batching=False or "
                    "hapo_adaptive_temperature=False"
                )
        # Tags this trainer's vLLM requests so that the colocated processor's temperature summaries can be found.
        self._hapo_vllm_tag = f"hapo-{os.getpid()}-{id(self)}"
        self._hapo_sampling: AdaptiveTemperature | None = None
        self._hapo_collect_remaining = 0
        self._hapo_entropy_buffer: list[torch.Tensor] = []

    # ------------------------------------------------------------------------------------------------------------
    # Rollout: statistics -> sampling change -> the trainer's backend
    # ------------------------------------------------------------------------------------------------------------
    def rollout_sampling_change(self) -> AdaptiveTemperature | None:
        """The sampling change of the generation in progress (``None``: sample as TRL does)."""
        return self._hapo_sampling

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        adapt = self.hapo_adaptive_temperature and mode == "train"
        stats = self.hapo_temperature.advance() if adapt else None
        self._hapo_sampling = self.hapo_sampling_change(stats) if stats is not None else None
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            change, self._hapo_sampling = self._hapo_sampling, None
        if adapt:
            summary = None
            if change is not None and capabilities_of(self.args).samples_in_process:
                summary = change.summary_tensor(self.accelerator.device)
            self._log_rollout_metrics(summary, stats)
            # The loss pipeline's entropies of this batch's first pass feed the next generation's statistics.
            self._hapo_collect_remaining = self.args.steps_per_generation
            self._hapo_entropy_buffer = []
        return output

    def hapo_sampling_change(self, stats: TemperatureStatistics) -> AdaptiveTemperature:
        """The adaptive temperature with ``stats``, as one sampling change for every backend."""
        return AdaptiveTemperature(
            stats,
            self.args.hapo_temperature_tau,
            self._hapo_vllm_tag,
            build_processor=lambda settings: self.hapo_build_processor(stats, settings),
        )

    def hapo_build_processor(
        self, stats: TemperatureStatistics | None, settings: SamplingSettings
    ) -> AdaptiveTemperatureLogitsProcessor:
        """The transformers processor for the backend's sampling ``settings`` (T0 and the filters)."""
        return AdaptiveTemperatureLogitsProcessor(
            stats,
            self.args.hapo_temperature_tau,
            settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            min_p=settings.min_p,
            finished_token_ids=[*self.eos_token_ids, self._tokenizer.pad_token_id],
        )

    def _generate_single_turn(self, *args: Any, **kwargs: Any):
        change = self._hapo_sampling
        if change is None:
            return super()._generate_single_turn(*args, **kwargs)
        call = compat.single_turn_arguments(args, kwargs)
        images = call.get("images")
        if (images is not None and any(image is not None for image in images)) or call.get("multimodal_fields"):
            raise ValueError(
                "hapo_adaptive_temperature=True samples text prompts only; this batch has images. Set "
                "hapo_adaptive_temperature=False for vision-language training"
            )
        with open_backend(self, sampling=change) as backend:
            outputs = backend.generate(call["prompt_ids"], self.max_completion_length)
        completion_ids = [ids for ids, _ in outputs]
        # Log-probs go to TRL only where its own path returns them (vLLM); TRL's transformers path returns None.
        logprobs = [lps for _, lps in outputs] if backend.capabilities.sampling_logprobs else None
        return completion_ids, logprobs

    def _log_rollout_metrics(self, summary: torch.Tensor | None, stats: TemperatureStatistics | None) -> None:
        """Log the realised temperature range from this process's [min, max, sum, count] ``summary`` (gathered).

        ``stats`` None: the generation sampled at plain T0. ``summary`` None with statistics (vLLM server mode): the
        temperatures are not observable here and only the statistics are logged. Both decisions are the same on
        every process, so the gather is matched.
        """
        metrics = self._metrics["train"]
        base = float(self.args.temperature)
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
        """Gather this generation batch's valid-token entropies over all processes and compute the entropy statistics.

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
        state = dict(super().extra_state_dict())
        if self.hapo_adaptive_temperature:
            state["hapo_temperature"] = self.hapo_temperature.state_dict()
        return state

    def check_extra_state_dict(self, state: dict[str, Any]) -> None:
        super().check_extra_state_dict(state)
        if "hapo_temperature" in state:
            RolloutTemperatureState.check_state_dict(state["hapo_temperature"], "trainer.hapo_temperature")

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        super().load_extra_state_dict(state)
        if "hapo_temperature" in state:
            self.hapo_temperature.load_state_dict(state["hapo_temperature"])


class HAPOTrainer(HAPOTemperatureMixin, BaseGRPOTrainer):
    """GRPO with HAPO's four token-adaptive components (arXiv 2509.16591); see [`HAPOConfig`].

    Accepts every argument of ``trl.GRPOTrainer``. The advantage comes from the ``"hapo_tlga"`` estimator and the
    loss from the ``"hapo"`` objective (the config's defaults); :class:`HAPOTemperatureMixin` adds the adaptive
    rollout temperature: its statistics (``hapo_temperature``), the sampling change of each training generation,
    the rollout metrics and the checkpointed state.
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
        super().__init__(*args, **kwargs)
