"""The objective seam: the state that flows through the loss pipeline, and the hooks an objective overrides.

The base trainer computes the loss as a fixed sequence of steps over a :class:`LossContext`:

    forward (log-probs, entropies) -> entropy mask -> advantages (reshape hook) -> off-policy mask
    -> importance ratio -> KL -> per-token weights (hook) -> clip bounds (hook) -> surrogate (hook)
    -> masks (off-policy, entropy, vLLM importance correction) -> + beta * KL -> aggregation (loss_type)
    -> entropy bonus and aux loss -> metrics (hook)

A :class:`PolicyObjective` changes one or more of the hooked steps and nothing else. Each hook returns ``None``
to keep the default behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class LossContext:
    """Tensors of one micro-batch as they move through the loss pipeline (B sequences, T completion tokens).

    Filled step by step; a hook may read everything computed before it.

    Attributes:
        inputs: the micro-batch dict produced by ``_generate_and_score_completions``.
        mode: ``"train"`` or ``"eval"``.
        mask: (B, T) loss mask, ``completion_mask * tool_mask``.
        logps: (B, T) log pi_theta of the sampled tokens (with grad).
        entropies: (B, T) token entropies of pi_theta (no grad).
        aux_loss: router auxiliary loss (MoE) or ``None``.
        old_logps: (B, T) behaviour-policy log-probs (``logps.detach()`` when on-policy).
        advantages: (B, 1) or (B, T).
        entropy_mask: (B, T) bool from ``top_entropy_quantile`` or ``None``.
        off_policy_mask: (B, 1) or ``None``.
        log_ratio: (B, T) log pi_theta - log pi_old.
        log_weights: (B, T) or (B, 1) log importance weights (token or sequence level).
        ratio: exp(log_weights); after the surrogate, the ratio as TRL's clip metrics read it (delta-capped).
        per_token_kl: (B, T) k3 KL to the reference or ``None``.
        token_weights: detached (B, T) multipliers of the surrogate (MinPRO) or ``None``.
        clip_low, clip_high: epsilon_low / epsilon_high, floats or (B, T) tensors (adaptive clipping).
        per_token_loss: (B, T) or (B, 1) loss before aggregation.
        loss: the scalar loss returned to ``Trainer``; ``policy_loss`` its detached policy part.
        global_masked_mean: ``f(x) -> float``, the mean of x over the loss tokens of every process (use it for
            metrics; it is a collective, so call it on every process).
        extras: scratch space for objectives.
    """

    inputs: dict[str, Any]
    mode: str
    mask: torch.Tensor
    logps: torch.Tensor | None = None
    entropies: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    old_logps: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    entropy_mask: torch.Tensor | None = None
    off_policy_mask: torch.Tensor | None = None
    log_ratio: torch.Tensor | None = None
    log_weights: torch.Tensor | None = None
    ratio: torch.Tensor | None = None
    per_token_kl: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None
    clip_low: float | torch.Tensor = 0.2
    clip_high: float | torch.Tensor = 0.2
    per_token_loss: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    policy_loss: torch.Tensor | None = None
    global_masked_mean: Callable[[torch.Tensor], float] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class PolicyObjective:
    """Base class for policy objectives; subclass it and register it with
    :func:`trl_ext.registry.register_policy_objective`.

    The constructor receives the trainer config and validates the fields it reads (``ValueError`` naming the
    field and the accepted values). Every hook returns ``None`` to keep the base behaviour.
    """

    name: ClassVar[str] = ""

    def __init__(self, args: Any) -> None:
        self.args = args

    def reshape_advantages(self, ctx: LossContext) -> torch.Tensor | None:
        """Return replacement advantages ((B, 1) or (B, T)), e.g. token-level redistribution."""
        return None

    def token_weights(self, ctx: LossContext) -> torch.Tensor | None:
        """Return detached (B, T) weights that multiply the surrogate (e.g. MinPRO's prefix-min ratio)."""
        return None

    def clip_bounds(self, ctx: LossContext) -> tuple[float | torch.Tensor, float | torch.Tensor] | None:
        """Return ``(epsilon_low, epsilon_high)``, floats or (B, T) tensors."""
        return None

    def surrogate(self, ctx: LossContext) -> torch.Tensor | None:
        """Return the per-token surrogate loss, replacing the ``loss_type`` surrogate (e.g. a dual clip)."""
        return None

    def metrics(self, ctx: LossContext) -> dict[str, float]:
        """Extra metrics for this micro-batch, averaged over the logging window. Use ``ctx.global_masked_mean``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state saved with checkpoints (empty for stateless objectives)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
