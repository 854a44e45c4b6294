"""The one place where trl-ext reaches into TRL's internals.

trl-ext subclasses ``trl.GRPOTrainer`` and so depends on more of TRL than its public API: private methods it
overrides or calls, attributes of the trainer it reads, keys of TRL's batch dict, helpers in TRL's submodules. TRL
changes some of those bodies in nearly every minor release, so they are kept narrow and in sight:

* every TRL symbol outside the public top level (``trl.GRPOTrainer``, ``trl.GRPOConfig``, ...) is imported here and
  nowhere else in the package;
* calls into TRL keep only the keyword arguments the callee accepts (:func:`call_accepted`), so a keyword TRL adds in
  one minor and lacks in another does not break the call;
* arguments of TRL's constructor and of ``_generate_single_turn`` are bound by TRL's own signature
  (:func:`grpo_trainer_arguments`, :func:`single_turn_arguments`), never by a copy of it;
* attributes TRL may add or rename are read with :func:`trainer_attr`, with a default or a clear error.

``python -m trl_ext.drift inventory`` lists everything trl-ext touches inside TRL, generated from the source, and
``python -m trl_ext.drift check`` compares the fingerprints of those symbols with the ones reviewed for each supported
TRL version (``docs/maintaining.md``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import get_config_model_id, nanmax, nanmin

__all__ = [
    "GRPOTrainer",
    "accepted_kwargs",
    "call_accepted",
    "get_config_model_id",
    "grpo_trainer_arguments",
    "last_generation_rewards",
    "nanmax",
    "nanmin",
    "single_turn_arguments",
    "sync_vllm_weights",
    "vllm_generation_session",
    "trainer_attr",
    "trainer_metrics",
    "trl_version",
    "unwrapped_for_generation",
    "vllm_serve_tools",
]

_MISSING = object()


def trl_version() -> str:
    """The installed TRL's version string."""
    import trl

    return str(trl.__version__)


@functools.cache
def _parameters(fn: Callable[..., Any]) -> tuple[frozenset[str], bool]:
    signature = inspect.signature(fn)
    names = frozenset(
        name
        for name, p in signature.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    return names, takes_any


def accepted_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without the keywords ``fn`` does not accept (all of them when ``fn`` takes ``**kwargs``)."""
    target = getattr(fn, "__func__", fn)
    names, takes_any = _parameters(target)
    if takes_any:
        return dict(kwargs)
    return {key: value for key, value in kwargs.items() if key in names}


def call_accepted(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the keywords ``fn`` does not accept left out.

    For keywords that one TRL minor has and another lacks (``gradient_checkpointing_kwargs`` of
    ``unwrap_model_for_generation`` is 1.16-only; ``_get_per_token_logps_and_entropies`` gained and lost multimodal
    keywords between minors). A keyword left out must be one whose absence means TRL's default behaviour.
    """
    return fn(*args, **accepted_kwargs(fn, kwargs))


def grpo_trainer_arguments(args: tuple, kwargs: dict[str, Any]) -> inspect.BoundArguments:
    """``GRPOTrainer.__init__``'s arguments bound by name (``self`` excluded from ``arguments``' use, bound as None).

    The one place that knows TRL's constructor signature: trainers read ``bound.arguments.get("args")``,
    ``.get("rollout_func")`` etc. and may set ``bound.arguments["args"]`` before ``bound.args[1:], bound.kwargs``.
    """
    return inspect.signature(GRPOTrainer.__init__).bind(None, *args, **kwargs)


def single_turn_arguments(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a ``GRPOTrainer._generate_single_turn(*args, **kwargs)`` call by name, defaults applied.

    TRL has inserted positional parameters into this method between minors (``num_generations`` in 1.14), so an
    override takes ``*args, **kwargs``, passes them on unchanged, and reads what it needs from here.
    """
    bound = inspect.signature(GRPOTrainer._generate_single_turn).bind(None, *args, **kwargs)
    bound.apply_defaults()
    return {name: value for name, value in bound.arguments.items() if name != "self"}


def trainer_attr(obj: Any, name: str, default: Any = _MISSING, *, needed_for: str | None = None) -> Any:
    """``obj.name`` where TRL may not set it in every supported minor.

    With a ``default``, a missing attribute reads as the default. Without one the attribute is essential: a missing
    one raises ``AttributeError`` naming the attribute, the TRL version and what needs it (``needed_for``).
    """
    value = getattr(obj, name, _MISSING)
    if value is not _MISSING:
        return value
    if default is not _MISSING:
        return default
    purpose = f" (needed for {needed_for})" if needed_for else ""
    raise AttributeError(
        f"trl-ext expects {type(obj).__name__}.{name}{purpose}, which TRL {trl_version()} does not set; see "
        "docs/maintaining.md for the supported TRL versions"
    )


def trainer_metrics(trainer: Any, mode: str = "train") -> dict[str, list[float]]:
    """The lists of values TRL's ``GRPOTrainer.log`` averages into the next log entry (``trainer._metrics[mode]``).

    A value appended here reaches the console line, ``state.log_history`` and every tracker with TRL's own metrics;
    ``log`` clears the lists after each log. Used by :class:`trl_ext.diagnose.callback.RegimeCallback`, which is not a
    subclass and so has no ``self._metrics``.
    """
    metrics = trainer_attr(trainer, "_metrics", needed_for="logging regime/* metrics")
    return metrics[mode]


def last_generation_rewards(trainer: Any) -> tuple[list[list[float]], list[float]] | None:
    """The gathered rewards of the latest generation batch as TRL keeps them for its completions table
    (``trainer._logs["rewards"]``: one deque per reward function, at most one generation batch long), as
    ``(per-function columns, reward weights)``; None when TRL keeps none yet."""
    logs = trainer_attr(trainer, "_logs", None)
    if not logs or not logs.get("rewards"):
        return None
    names = list(trainer_attr(trainer, "reward_func_names", []))
    columns = [list(logs["rewards"][name]) for name in names if name in logs["rewards"]]
    if not columns or len(columns) != len(names):
        return None
    weights = trainer_attr(trainer, "reward_weights", None)
    weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
    return columns, weights


@contextlib.contextmanager
def unwrapped_for_generation(trainer: Any) -> Iterator[Any]:
    """The trainer's model ready for ``generate``, as TRL's own transformers generation prepares it.

    TRL's ``unwrap_model_for_generation`` (ZeRO-3 parameters gathered when ``ds3_gather_for_generation``, gradient
    checkpointing off while generating), ``torch.no_grad()``, and under FSDP the full parameters summoned.
    """
    import torch

    args = trainer.args
    with contextlib.ExitStack() as stack:
        model = stack.enter_context(
            call_accepted(
                unwrap_model_for_generation,
                trainer.model_wrapped,
                trainer.accelerator,
                gather_deepspeed3_params=trainer_attr(args, "ds3_gather_for_generation", True),
                generation_kwargs=trainer_attr(trainer, "generation_kwargs", None),
                gradient_checkpointing_kwargs=trainer_attr(args, "gradient_checkpointing_kwargs", None),
            )
        )
        stack.enter_context(torch.no_grad())
        dist = trainer_attr(trainer, "_dist", None)
        if dist is not None and hasattr(dist, "summon_full_params"):  # FSDP: full weights while generating
            stack.enter_context(dist.summon_full_params(trainer.model_wrapped, recurse=False))
        yield model


def sync_vllm_weights(trainer: Any) -> None:
    """Push the training weights into the trainer's vLLM engine if the step changed since the last push, or if sleep
    mode discarded the engine's weights (as TRL's own generation does before it samples)."""
    step = trainer.state.global_step
    generation = trainer.vllm_generation
    discarded = _sleeps(generation) and bool(getattr(generation, "_llm_weights_sleeping", False))
    if discarded or trainer_attr(trainer, "_last_loaded_step", None) != step:
        generation.sync_weights()
        trainer._last_loaded_step = step


def _sleeps(generation: Any) -> bool:
    """Whether ``generation`` is a colocated engine in sleep mode (TRL puts it to sleep between generations)."""
    return getattr(generation, "mode", None) == "colocate" and bool(getattr(generation, "enable_sleep_mode", False))


@contextlib.contextmanager
def vllm_generation_session(trainer: Any) -> Iterator[Any]:
    """The trainer's ``VLLMGeneration``, with the current weights, for the duration of the block.

    Before: :func:`sync_vllm_weights`. After: a colocated engine in sleep mode is put back to sleep at level 2 and
    marked so (``_llm_weights_sleeping``), as TRL's ``VLLMGeneration.generate`` does after sampling, so that the
    optimizer step gets the engine's memory back and the next session pushes the weights again.
    """
    generation = trainer.vllm_generation
    sync_vllm_weights(trainer)
    yield generation
    if _sleeps(generation):
        generation.llm.sleep(level=2)
        generation._llm_weights_sleeping = True


def vllm_serve_tools() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """TRL's ``trl vllm-serve`` argument parser factory and command builder: ``(make_parser, build_command)``.

    Imported on call: the module pulls in TRL's script machinery, which library use does not need.
    """
    from trl.scripts.vllm_serve import build_command, make_parser

    return make_parser, build_command
