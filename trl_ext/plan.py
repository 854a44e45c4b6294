"""``trl-ext plan``: what a run will do, worked out before anything loads, with every problem listed at once.

    trl-ext plan --config RECIPE.yaml [--accelerate_config FILE] [--num_processes N] [--any_config_field value ...]

A command of its own rather than ``trl-ext train --dry_run``: the plan takes options that are no training field (the
launch it plans for: ``--accelerate_config``, ``--num_processes``), and a ``dry_run`` field would sit in every
trainer's config and reach ``recipes/train.py`` under ``accelerate launch``, where each of N processes would plan.

Checked without weights, downloads or an accelerator, every problem collected: unknown recipe keys and options
(with the nearest field names); the script arguments, the trainer's config (its ``__post_init__``: estimator,
objective, TRL's batch rules for the planned processes), ``ModelConfig`` and the dataset mixture; each reward function
and ``reward_weights``; the columns the run reads (prompt, trainer, rewards' required arguments) where the data is
local (a built-in task, a local directory or data files; Hub datasets are not checked offline); a local model path;
vLLM's tensor-parallel size and context. Printed: trainer and components, model, rewards, data, engine, processes and
strategy, the ``geometry:`` line (the format recipe headers state), the off-policy degree, the largest micro-batch and,
where the model's ``config.json`` is local or cached, the model states per process. Exit 0 with the plan; 2 with each
problem on a line of its own (``trl-ext plan: error: ...``) after as much of the plan as could be worked out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from trl_ext.errors import OneLineArgumentParser, message_of
from trl_ext.plan_data import dataset_columns, looks_local, required_columns

__all__ = [
    "Geometry",
    "Launch",
    "Plan",
    "count_parameters",
    "launch_of",
    "make_plan",
    "model_states_bytes",
    "plan_main",
]

PROG = "trl-ext plan"

#: Environment variables that make accelerate's state start a process group; the plan builds the trainer's config
#: without them (it evaluates TRL's batch rules for the planned processes itself).
_LAUNCH_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


# ---------------------------------------------------------------------------------------------------------------------
# Batch geometry
# ---------------------------------------------------------------------------------------------------------------------


def _number(value: Fraction | int) -> str:
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


@dataclass(frozen=True)
class Geometry:
    """TRL's batch geometry (``GRPOConfig`` after ``__post_init__``) for a number of processes.

    A *micro-batch* is ``per_device_train_batch_size`` completions on one process; an optimizer step accumulates
    ``gradient_accumulation_steps`` of them on every process. One *generation batch* is generated at once:
    ``steps_per_generation`` micro-batches on every process (TRL's ``generation_batch_size``), each used
    ``num_iterations`` times before the next generation (``GRPOTrainer._prepare_inputs`` regenerates every
    ``steps_per_generation x num_iterations`` micro-steps). So a generation batch feeds
    ``steps_per_generation x num_iterations / gradient_accumulation_steps`` optimizer steps: the off-policy degree
    (above 1, later steps train on rollouts of an older policy).
    """

    num_processes: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    num_iterations: int
    num_generations: int

    @property
    def completions_per_step(self) -> int:
        return self.num_processes * self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def prompts_per_step(self) -> Fraction:
        return Fraction(self.completions_per_step, self.num_generations)

    @property
    def generation_completions(self) -> int:
        """TRL's ``generation_batch_size``."""
        return self.num_processes * self.per_device_train_batch_size * self.steps_per_generation

    @property
    def generation_prompts(self) -> Fraction:
        return Fraction(self.generation_completions, self.num_generations)

    @property
    def steps_per_generation_batch(self) -> Fraction:
        return Fraction(self.steps_per_generation * self.num_iterations, self.gradient_accumulation_steps)

    def line(self) -> str:
        """The ``geometry:`` line; recipe headers state their geometry in this format (``tests/test_plan.py``)."""
        steps = self.steps_per_generation_batch
        return (
            f"geometry: {self.num_processes} process{'' if self.num_processes == 1 else 'es'} x per_device_train_batch_size "
            f"{self.per_device_train_batch_size} x gradient_accumulation_steps {self.gradient_accumulation_steps} = "
            f"{self.completions_per_step} completions = {_number(self.prompts_per_step)} prompts x num_generations "
            f"{self.num_generations} per optimizer step; steps_per_generation {self.steps_per_generation} x "
            f"num_iterations {self.num_iterations} / gradient_accumulation_steps {self.gradient_accumulation_steps} = "
            f"{_number(steps)} optimizer step{'' if steps == 1 else 's'} per generation batch of "
            f"{self.generation_completions} completions = {_number(self.generation_prompts)} prompts"
        )

    def off_policy(self) -> str:
        steps = self.steps_per_generation_batch
        if steps < 1:
            return (
                f"on-policy: one optimizer step spans {_number(1 / steps)} generation batches (TRL computes the old "
                "log-probs for the ratio)"
            )
        if steps == 1:
            return "on-policy: each generation batch feeds exactly one optimizer step"
        return (
            f"off-policy degree {_number(steps)}: each generation batch feeds {_number(steps)} optimizer steps, the "
            f"last of them on rollouts {_number(steps - 1)} update{'' if steps == 2 else 's'} old"
        )


def geometry_of(args: Any, num_processes: int) -> Geometry:
    """The geometry of a trainer config built for ``num_processes`` (TRL's ``__post_init__`` derived
    ``steps_per_generation`` from ``generation_batch_size`` when only that was given)."""
    return Geometry(
        num_processes=num_processes,
        per_device_train_batch_size=int(args.per_device_train_batch_size),
        gradient_accumulation_steps=int(args.gradient_accumulation_steps),
        steps_per_generation=int(args.steps_per_generation),
        num_iterations=int(args.num_iterations),
        num_generations=int(args.num_generations),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Launch: processes and strategy
# ---------------------------------------------------------------------------------------------------------------------

_STRATEGY_NAMES = {
    "single": "one process",
    "ddp": "DDP: every process holds the whole model",
    "zero0": "DeepSpeed ZeRO-0: nothing sharded",
    "zero1": "DeepSpeed ZeRO-1: optimizer state sharded",
    "zero2": "DeepSpeed ZeRO-2: optimizer state and gradients sharded",
    "zero3": "DeepSpeed ZeRO-3: parameters, gradients and optimizer state sharded",
    "fsdp": "FSDP: parameters, gradients and optimizer state sharded",
}


@dataclass(frozen=True)
class Launch:
    """How many processes train and how the model is spread over them."""

    num_processes: int
    strategy: str  # a key of _STRATEGY_NAMES
    source: str
    mixed_precision: str | None = None  # the accelerate config's, when one is given
    offload: tuple[str, ...] = ()

    def describe(self) -> str:
        offload = f"; offloaded to CPU: {', '.join(self.offload)}" if self.offload else ""
        return f"{self.num_processes} ({self.source}; {_STRATEGY_NAMES[self.strategy]}{offload})"


def launch_of(
    num_processes: int | None = None, accelerate_config: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Launch, list[str]]:
    """The planned launch: processes from ``num_processes``, else the accelerate config's ``num_processes``, else
    ``WORLD_SIZE``, else 1; the strategy from the accelerate config (DDP for several processes without one)."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    strategy, source, mixed, offload, file_processes = None, None, None, (), None
    if accelerate_config is not None:
        import yaml

        try:
            with open(accelerate_config) as f:
                config = yaml.safe_load(f) or {}
            if not isinstance(config, dict):
                raise ValueError("it is not a YAML mapping")
        except (OSError, ValueError, yaml.YAMLError) as exc:
            problems.append(f"--accelerate_config: cannot read {accelerate_config!r}: {message_of(exc)}")
            config = {}
        kind = str(config.get("distributed_type", "NO")).upper()
        if kind == "DEEPSPEED":
            deepspeed = config.get("deepspeed_config") or {}
            strategy = f"zero{int(deepspeed.get('zero_stage', 0))}"
            devices = {"optimizer state": "offload_optimizer_device", "parameters": "offload_param_device"}
            offload = tuple(k for k, v in devices.items() if str(deepspeed.get(v, "none")).lower() not in ("none", ""))
        elif kind == "FSDP":
            strategy = "fsdp"
            offload = ("parameters",) if (config.get("fsdp_config") or {}).get("fsdp_offload_params") else ()
        elif kind == "NO":
            strategy = "single"
        else:  # MULTI_GPU, MULTI_CPU, MULTI_XPU, ...
            strategy = "ddp"
        mixed = config.get("mixed_precision")
        file_processes = int(config.get("num_processes", 1) or 1)
        source = os.path.relpath(accelerate_config) if os.path.isabs(accelerate_config) else accelerate_config
    if num_processes is not None:
        count, source = num_processes, "--num_processes" + (f", {source}" if source else "")
    elif file_processes is not None:
        count = file_processes
    elif environ.get("WORLD_SIZE", "").isdigit():
        count, source = int(environ["WORLD_SIZE"]), "WORLD_SIZE"
    else:
        count, source = 1, "default"
    if count < 1:
        problems.append(f"--num_processes: at least 1, got {count}")
        count = 1
    if strategy is None:
        strategy = "ddp" if count > 1 else "single"
    elif strategy == "single" and count > 1:
        problems.append(
            f"--accelerate_config: {accelerate_config} runs one process (distributed_type NO), but {count} processes "
            "were asked for; use a multi-process config (recipes/accelerate_configs/)"
        )
    return Launch(count, strategy, source, mixed, offload), problems


# ---------------------------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------------------------


def model_states_bytes(
    num_parameters: int,
    *,
    strategy: str,
    num_processes: int,
    param_bytes: int = 2,
    mixed_precision: bool = True,
    quantization: str | None = None,
    peft: bool = False,
) -> tuple[float, str]:
    """Bytes per process of the model's weights, gradients and Adam's two moments (no activations), and how.

    * DDP / one process: weights, gradients and both moments in the parameters' dtype (the Trainer does not upcast
      a model loaded in bf16): ``4 x param_bytes`` per parameter.
    * DeepSpeed with bf16/fp16: 16-bit weights (2) and gradients (2), fp32 master weights and moments (12); ZeRO-1
      shards the 12, ZeRO-2 also the gradients, ZeRO-3 everything. Without mixed precision: 4 + 4 + 8.
    * FSDP: accelerate upcasts the parameters to fp32 under mixed precision: 16 bytes, sharded; else
      ``4 x param_bytes``, sharded.
    * PEFT: the frozen base only (4-bit: 0.5 bytes, 8-bit: 1, else ``param_bytes``; sharded under ZeRO-3/FSDP);
      the adapter and its optimizer state are left out (small).
    """
    n = num_processes
    if peft:
        base = {"4bit": 0.5, "8bit": 1.0}.get(quantization or "", float(param_bytes))
        shard = n if strategy in ("zero3", "fsdp") else 1
        how = f"frozen base at {base:g} bytes/parameter" + (f" / {n} processes" if shard > 1 else "")
        return num_parameters * base / shard, how + "; LoRA adapter not counted"
    if strategy.startswith("zero"):
        stage = int(strategy[4:])
        weights, grads, optim = (2, 2, 12) if mixed_precision else (4, 4, 8)
        per = weights / (n if stage >= 3 else 1) + grads / (n if stage >= 2 else 1) + optim / (n if stage >= 1 else 1)
        how = f"ZeRO-{stage}: {weights} + {grads} + {optim} bytes/parameter" + (
            f", {'all' if stage >= 3 else 'part'} / {n} processes" if stage >= 1 else ""
        )
    elif strategy == "fsdp":
        total = 16 if mixed_precision else 4 * param_bytes
        per, how = total / n, f"FSDP: {total} bytes/parameter / {n} processes"
    else:
        per, how = 4 * param_bytes, f"weights, gradients, Adam m and v at {param_bytes} bytes: {4 * param_bytes}"
        how += " bytes/parameter"
    return num_parameters * per, how


def count_parameters(
    model: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> tuple[int | None, Any, str]:
    """``(parameters, config, note)`` of a model from its ``config.json`` alone (a local directory, or the Hub
    cache), counted on the meta device; ``(None, None, why not)`` when the config is not here."""
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            return None, None, f"no config.json in {model}"
        directory = path
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json", revision=revision)
        except ValueError:  # not a valid repo id
            cached = None
        if not isinstance(cached, str):
            return None, None, f"not estimated offline: no config.json of {model} in the local Hugging Face cache"
        directory = os.path.dirname(cached)
    import transformers
    from accelerate import init_empty_weights

    try:
        config = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        return None, None, f"cannot read {model}'s config.json: {message_of(exc)}"
    for auto in ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModel"):
        try:
            with init_empty_weights():
                built = getattr(transformers, auto).from_config(config, trust_remote_code=trust_remote_code)
        except (ValueError, KeyError, ImportError, OSError, AttributeError):
            continue
        return sum(p.numel() for p in built.parameters()), config, f"counted from {model}'s config.json"
    return None, config, f"no transformers model class builds {type(config).__name__}"


def _param_bytes(dtype: str | None, config: Any) -> int:
    name = str(dtype or "auto")
    if name == "auto":
        name = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    return 2 if any(short in name for short in ("bfloat16", "float16")) else 4


def _max_positions(config: Any) -> int | None:
    for owner in (config, getattr(config, "text_config", None)):
        value = getattr(owner, "max_position_embeddings", None)
        if isinstance(value, int):
            return value
    return None


# ---------------------------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What ``trl-ext plan`` prints: the plan's lines and the problems found."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    geometry: Geometry | None = None

    def add(self, key: str, value: str) -> None:
        self.lines.append(f"{key + ':':<13} {value}")


def _plan_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(
        prog=PROG,
        usage=f"{PROG} --config RECIPE.yaml [--accelerate_config FILE] [--num_processes N] [--FIELD VALUE ...]",
        description="Check a recipe and print the run's plan (engine, processes, batch geometry, memory) without "
        "loading a model or downloading anything. Any other option overrides a recipe field, as in `trl-ext train`.",
    )
    parser.add_argument("--config", required=True, help="the recipe (YAML) to plan")
    parser.add_argument(
        "--accelerate_config", help="the accelerate config the run launches with (strategy, processes)"
    )
    parser.add_argument(
        "--num_processes", type=int, help="training processes (default: the accelerate config's, WORLD_SIZE, or 1)"
    )
    return parser


@contextlib.contextmanager
def _without_launch_env() -> Iterator[None]:
    saved = {key: os.environ.pop(key) for key in _LAUNCH_ENV if key in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _for_processes(config_cls: type, num_processes: int) -> type:
    """``config_cls`` whose ``world_size`` is the planned number of processes, so that TRL's ``__post_init__``
    derives and checks the generation batch for the launch being planned, not for this one process."""
    return type(config_cls.__name__, (config_cls,), {"world_size": property(lambda self: num_processes)})


class _BadValue(ValueError):
    pass


def _parse_values(plan: Plan, parser: Any, overrides: list[str], defaults: dict[str, Any]) -> tuple[Any, list[str]]:
    """``parser.parse_known_args(overrides)``, where a value that does not convert (``num_generations: abc``) is a
    problem rather than the end: its option is dropped (or its recipe value reset to the default) and parsing goes on."""

    def fail(message: str) -> None:
        raise _BadValue(message)

    parser.error = fail  # argparse reports a bad value through error(), which exits at once for trl-ext train
    seen: set[str] = set()
    while True:
        try:
            return parser.parse_known_args(overrides)
        except _BadValue as exc:
            message = str(exc)
            named = [a for a in parser._actions if a.option_strings and f"{'/'.join(a.option_strings)}:" in message]
            if not named or named[0].dest in seen:
                raise
            action = named[0]
            seen.add(action.dest)
            plan.problems.append(f"{action.dest}: {message.split(': ', 1)[-1]}")
            token = [item.split("=", 1)[0] for item in overrides]  # argparse also accepts unambiguous prefixes
            given = [
                i for i, t in enumerate(token) if t[:2] == "--" and any(o.startswith(t) for o in action.option_strings)
            ]
            if given:
                del overrides[given[-1] : given[-1] + (1 if "=" in overrides[given[-1]] else 2)]
            else:
                parser.set_defaults(**{action.dest: defaults.get(action.dest)})


def _parse(plan: Plan, config_path: str, overrides: list[str], num_processes: int) -> tuple[str, Any, list[Any]]:
    """Parse the recipe and overrides as ``trl-ext train`` does, recording problems instead of stopping at the first.
    Returns ``(trainer, namespace, [script_args, config, model_args, dataset_args])``, None for one that failed."""
    import yaml

    from trl_ext.registry import get_trainer
    from trl_ext.trainers.checks import has_accelerator
    from trl_ext.training import make_train_parser, peek_trainer_name

    trainer = peek_trainer_name(["--config", config_path, *overrides])
    _, config_cls = get_trainer(trainer)
    parser = make_train_parser(trainer)
    with open(config_path) as f:
        recipe = yaml.safe_load(f) or {}
    recipe.pop("env", None)  # TrlParser exports these to the environment; the plan leaves the environment alone
    known = {action.dest for action in parser._actions}
    for key in [key for key in recipe if key not in known]:
        plan.problems.append(
            f"--config: {parser._suggest(str(key), prefix='')} is not a field of the {trainer!r} trainer "
            f"({config_cls.__name__}), the script, ModelConfig or the dataset mixture"
        )
        del recipe[key]
    defaults = {action.dest: action.default for action in parser._actions}
    parser.set_defaults_with_config(**recipe)
    namespace, remaining = _parse_values(plan, parser, list(overrides), defaults)
    for option in [item for item in remaining if item.startswith("-")] or remaining:
        plan.problems.append(
            f"{parser._suggest(option.lstrip('-').replace('-', '_'))}: is not an option of the {trainer!r} trainer"
        )
    built: list[Any] = []
    for dtype in parser.dataclass_types:
        names = {f.name for f in dataclasses.fields(dtype) if f.init}
        inputs = {key: value for key, value in vars(namespace).items() if key in names}
        cls = dtype
        if dtype is config_cls:
            cls = _for_processes(config_cls, num_processes)
            if not has_accelerator():  # bf16/fp16 are the launch machine's to check; the plan checks the rest
                inputs.update(bf16=False, fp16=False)
        try:
            with _without_launch_env():
                built.append(cls(**inputs))
        except (ValueError, TypeError, LookupError, OSError, ImportError) as exc:
            plan.problems.append(message_of(exc))
            built.append(None)
    return trainer, namespace, built


def _resolve_rewards(plan: Plan, script_args: Any, training_args: Any) -> list[Any]:
    from trl_ext.training import resolve_reward_funcs

    task = None
    if script_args.task is not None:
        from trl_ext.data import get_task

        task = get_task(script_args.task)
    rewards = list(task.reward_funcs) if task is not None else []
    for name in script_args.reward_funcs or []:
        single = dataclasses.replace(script_args, reward_funcs=[name], reward_model_name_or_path=None)
        try:
            resolved = resolve_reward_funcs(single, task)
        except (ValueError, LookupError, ImportError, AttributeError, TypeError) as exc:
            text = message_of(exc)
            plan.problems.append(text if text.startswith("reward_funcs") else f"reward_funcs: {name!r}: {text}")
            continue
        rewards += resolved[len(task.reward_funcs) if task is not None else 0 :]
    if script_args.reward_model_name_or_path:
        rewards.append(script_args.reward_model_name_or_path)
    if not rewards and not any(p.startswith("reward_funcs") for p in plan.problems):
        plan.problems.append("reward_funcs: no reward function given; set `task`, `reward_funcs` or a reward model")
    weights = getattr(training_args, "reward_weights", None) if training_args is not None else None
    if weights is not None and len(weights) != len(rewards):
        plan.problems.append(f"reward_weights: {len(weights)} weights for {len(rewards)} reward functions")
    return rewards


def _engine(plan: Plan, args: Any, launch: Launch, model: str) -> None:
    from trl_ext.generation import capabilities_of

    name = capabilities_of(args).name
    if name == "vllm-colocate":
        tp = int(args.vllm_tensor_parallel_size)
        if launch.num_processes % tp:
            plan.problems.append(
                f"vllm_tensor_parallel_size: {tp} does not divide the {launch.num_processes} processes (TRL groups "
                "colocated vLLM ranks by it)"
            )
        length = args.vllm_max_model_length
        if length is not None and args.max_completion_length is not None and length <= args.max_completion_length:
            plan.problems.append(
                f"vllm_max_model_length: {length} leaves no room for a prompt before max_completion_length "
                f"{args.max_completion_length}"
            )
        text = (
            f"vLLM colocate: tensor_parallel_size {tp} ({max(1, launch.num_processes // tp)} engines), "
            f"gpu_memory_utilization {args.vllm_gpu_memory_utilization:g}, max_model_length "
            f"{length if length is not None else 'from the model config'}"
        )
        plan.add("generation", text + (", sleep mode" if args.vllm_enable_sleep_mode else ""))
    elif name == "vllm-server":
        where = args.vllm_server_base_url or f"{args.vllm_server_host}:{args.vllm_server_port}"
        plan.add("generation", f"vLLM server at {where} (start it first: trl-ext vllm-serve --model {model})")
    else:
        plan.add("generation", f"{name} generate (use_vllm false)")
    if capabilities_of(args).vllm_engine:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            plan.add("note", "vLLM is not installed in this environment; the launch machine needs it")


def _memory(plan: Plan, script_args, args, model_args, launch: Launch, mixed_precision: bool) -> None:
    if script_args.tiny_model:
        plan.add("memory", "tiny random model built at run time: negligible")
        return
    count, config, note = count_parameters(
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=args.trust_remote_code
    )
    if count is None:
        plan.add("memory", note)
        return
    param_bytes = _param_bytes(model_args.dtype, config)
    quantization = "4bit" if model_args.load_in_4bit else "8bit" if model_args.load_in_8bit else None
    mixed = mixed_precision and launch.mixed_precision != "no"
    states, how = model_states_bytes(
        count,
        strategy=launch.strategy,
        num_processes=launch.num_processes,
        param_bytes=param_bytes,
        mixed_precision=mixed,
        quantization=quantization,
        peft=bool(model_args.use_peft),
    )
    extra = ""
    if float(args.beta) > 0 and not model_args.use_peft:
        shard = launch.num_processes if launch.strategy in ("zero3", "fsdp") else 1
        states += count * param_bytes / shard
        extra = " + the reference model's weights (beta > 0)"
    text = f"{states / 2**30:.1f} GiB of model states per process ({count / 1e9:.2f}B parameters, {how}{extra})"
    from trl_ext.generation import capabilities_of

    if capabilities_of(args).name == "vllm-colocate":
        weights = 2 * count / int(args.vllm_tensor_parallel_size) / 2**30
        text += (
            f" + vLLM's share, gpu_memory_utilization {args.vllm_gpu_memory_utilization:g} of each GPU (its 16-bit "
            f"weights, {weights:.1f} GiB at tensor_parallel_size {args.vllm_tensor_parallel_size}, and the KV cache)"
        )
    plan.add("memory", text + "; activations and logits come on top")
    positions = _max_positions(config)
    from trl_ext.generation import capabilities_of

    length = args.vllm_max_model_length if capabilities_of(args).vllm_engine else None
    if positions is not None and length is not None and length > positions:
        plan.problems.append(
            f"vllm_max_model_length: {length} is beyond the model's max_position_embeddings {positions}"
        )


def _model(plan: Plan, script_args: Any, model_args: Any) -> str:
    """Add the model line (and a problem for a missing one); returns the model's name or path."""
    if script_args is None or model_args is None:
        return "MODEL"
    if script_args.tiny_model:
        plan.add("model", "tiny random Qwen2 (tiny_model: built at run time)")
        return "MODEL"
    name = model_args.model_name_or_path or ""
    if not name:
        plan.problems.append("model_name_or_path: give a model id or path, or set `tiny_model: true`")
    elif looks_local(name) and not os.path.isdir(os.path.expanduser(name)):
        plan.problems.append(f"model_name_or_path: no such directory {name!r}")
    where = "local" if name and os.path.isdir(os.path.expanduser(name)) else "Hub id"
    peft = ""
    if model_args.use_peft:
        quantized = "4-bit " if model_args.load_in_4bit else "8-bit " if model_args.load_in_8bit else ""
        peft = f"; {quantized}LoRA r {model_args.lora_r}"
    plan.add("model", f"{name} ({where}){peft}")
    return name


def _data(plan: Plan, trainer: str, script_args: Any, args: Any, dataset_args: Any) -> None:
    """Add the rewards, data and columns lines, with a problem for each unresolvable reward and missing column."""
    rewards = _resolve_rewards(plan, script_args, args)
    names = [getattr(r, "__name__", str(r)) for r in rewards]
    weights = getattr(args, "reward_weights", None) if args is not None else None
    if weights is not None and len(weights) == len(names):
        names = [f"{n} (weight {w:g})" for n, w in zip(names, weights)]
    plan.add("rewards", ", ".join(names) or "none")
    seed = int(getattr(args, "seed", 42)) if args is not None else 42
    try:
        description, columns, problems = dataset_columns(script_args, dataset_args, seed)
    except (ValueError, LookupError) as exc:
        description, columns, problems = "unreadable", None, [message_of(exc)]
    plan.problems += problems
    plan.add("data", description)
    needs = required_columns(trainer, script_args, rewards)
    wanted = ", ".join(f"{' or '.join(alternatives)} ({who})" for alternatives, who in needs)
    if columns is None:
        plan.add("columns", f"needs {wanted}; not checked offline")
        return
    for alternatives, who in needs:
        if not any(column in columns for column in alternatives):
            if who == "dataset_prompt_column":
                head = f"dataset_prompt_column: the dataset has no column {alternatives[0]!r}"
            else:
                head = f"{who}: the training data has no column {' or '.join(map(repr, alternatives))}"
            plan.problems.append(f"{head} (columns: {columns})")
    plan.add("columns", f"needs {wanted}; the data has {columns}")


def make_plan(argv: Sequence[str]) -> Plan:
    """The plan for ``trl-ext plan`` arguments (see the module docstring); never raises for the user's input."""
    plan = Plan()
    options, overrides = _plan_parser().parse_known_args(list(argv))
    launch, problems = launch_of(options.num_processes, options.accelerate_config)
    plan.problems += problems
    plan.lines.append(f"plan for {options.config} (nothing downloaded, no weights loaded)")
    try:
        trainer, namespace, built = _parse(plan, options.config, overrides, launch.num_processes)
    except (ValueError, LookupError, OSError) as exc:  # no such recipe, not a mapping, an unknown trainer
        plan.problems.append(message_of(exc))
        return plan
    script_args, args, model_args, dataset_args = built
    if args is not None:
        estimator = getattr(args, "advantage_estimator", "grpo")
        objective = getattr(args, "policy_objective", "grpo")
        plan.add(
            "trainer",
            f"{trainer} ({type(args).__name__}): advantage_estimator {estimator}, policy_objective {objective}",
        )
    model_name = _model(plan, script_args, model_args)
    if script_args is not None:
        _data(plan, trainer, script_args, args, dataset_args)
    if args is None:
        return plan
    _engine(plan, args, launch, model_name)
    plan.add("processes", launch.describe())
    plan.geometry = geometry_of(args, launch.num_processes)
    plan.lines.append(plan.geometry.line())
    plan.add("off-policy", plan.geometry.off_policy())
    per_device, completion = args.per_device_train_batch_size, args.max_completion_length
    if completion is None:
        micro = f"{per_device} sequences x (prompt + completion), max_completion_length unset: unbounded"
    else:
        micro = f"{per_device} sequences x (prompt + max_completion_length {completion}) tokens"
        from trl_ext.generation import capabilities_of

        if capabilities_of(args).vllm_engine and args.vllm_max_model_length is not None:
            length = args.vllm_max_model_length
            micro += f": at most {per_device} x {length} = {per_device * length} tokens (vllm_max_model_length)"
        else:
            micro += f": {per_device * completion} completion tokens plus the prompts (TRL does not truncate prompts)"
    plan.add("micro-batch", micro)
    if model_args is not None and script_args is not None:
        # The precision asked for (the plan built the config with bf16 off on a machine without a GPU); TRL turns bf16
        # on when it is left unset, except on CPU.
        bf16 = getattr(namespace, "bf16", None)
        mixed = bool(getattr(namespace, "fp16", False)) or (bf16 if bf16 is not None else not args.use_cpu)
        _memory(plan, script_args, args, model_args, launch, bool(mixed))
    return plan


def plan_main(argv: Sequence[str] | None = None) -> Plan:
    """``trl-ext plan``: print the plan; with problems, print each as ``trl-ext plan: error: ...`` and exit 2."""
    plan = make_plan(list(sys.argv[1:] if argv is None else argv))
    print("\n".join(plan.lines), flush=True)
    if plan.problems:
        for problem in plan.problems:
            print(f"{PROG}: error: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    return plan
