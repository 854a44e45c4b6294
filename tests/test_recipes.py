"""Every recipe parses into its trainer's config with the script arguments and TRL's ModelConfig; its header states
its launch, batch geometry and generation engine in a checked form."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
import yaml
from recipe_headers import PAPER, RECIPES, ROOT, TINY, commands, header, launch, option, stated_geometry

from trl_ext import get_trainer
from trl_ext.training import make_train_parser


def test_every_trainer_directory_has_recipes():
    assert RECIPES, "no recipes found"
    assert {p.parent.name for p in RECIPES} >= {"grpo", "bnpo", "minpro", "hapo", "diva"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses_into_its_trainer_config(path):
    config = yaml.safe_load(path.read_text())
    name = config.get("trainer")
    assert name == path.parent.name, "a recipe lives in the folder of the trainer it names"
    _, config_cls = get_trainer(name)
    # GPU recipes ask for bf16; parsing on a CPU-only machine needs use_cpu to get past transformers' device check.
    script_args, training_args, model_args, _ = make_train_parser(name).parse_args_and_config(
        ["--config", str(path), "--use_cpu", "true", "--bf16", "false"]
    )
    assert type(training_args) is config_cls
    assert script_args.trainer == name
    assert script_args.task or script_args.dataset_name, "a recipe names a dataset or a built-in task"
    assert script_args.tiny_model or model_args.model_name_or_path, "a recipe names a model"
    for key, value in config.items():
        if hasattr(training_args, key) and key not in ("use_cpu", "bf16", "report_to"):
            parsed = getattr(training_args, key)
            if isinstance(value, list) and len(value) == 1 and not isinstance(parsed, list):
                value = value[0]
            if hasattr(parsed, "value"):  # enums such as lr_scheduler_type
                parsed = parsed.value
            if isinstance(parsed, float) and isinstance(value, str):
                value = float(value)  # YAML 1.1 reads 1.0e6 (no sign in the exponent) as a string
            assert parsed == value or str(parsed) == str(value), key


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_reward_functions_resolve(path):
    from trl_ext.data import get_task
    from trl_ext.training import resolve_reward_funcs

    name = yaml.safe_load(path.read_text())["trainer"]
    script_args, training_args, _, _ = make_train_parser(name).parse_args_and_config(
        ["--config", str(path), "--use_cpu", "true", "--bf16", "false"]
    )
    task = get_task(script_args.task) if script_args.task else None
    rewards = resolve_reward_funcs(script_args, task)
    assert rewards and all(callable(r) or isinstance(r, str) for r in rewards)
    if training_args.reward_weights is not None:
        assert len(training_args.reward_weights) == len(rewards), "one weight per reward function"


def test_hapo_paper_recipe_is_the_authors_run():
    from trl_ext.training import resolve_reward_funcs

    path = ROOT / "recipes" / "hapo" / "dapo_math_qwen.yaml"
    script_args, training_args, _, _ = make_train_parser("hapo").parse_args_and_config(
        ["--config", str(path), "--use_cpu", "true", "--bf16", "false"]
    )
    assert training_args.hapo_entropy_sign_mode == "reference"  # the authors' code, not the library default
    assert training_args.hapo_tlga_fallback_mode == "reference"
    accuracy, overlong = resolve_reward_funcs(script_args, None)
    assert accuracy.__name__ == "accuracy_reward" and training_args.reward_weights == [2.0, 1.0]
    # DAPO's soft overlong punishment with the authors' buffer: 0 up to 12288 - 4096 tokens, then linear down to -1
    lengths = [8192, 10240, 12288, 12289]
    assert overlong([[0] * n for n in lengths]) == pytest.approx([0.0, -0.5, -1.0, -1.0])


def test_diva_paper_recipe_uses_the_authors_batch_statistic():
    path = ROOT / "recipes" / "diva" / "qwen2.5-vl-7b_mmk12.yaml"
    _, training_args, _, _ = make_train_parser("diva").parse_args_and_config(
        ["--config", str(path), "--use_cpu", "true", "--bf16", "false"]
    )
    assert training_args.diva_batch_norm == "reference"


def test_reward_factory_calls_and_their_errors():
    from trl_ext.training import TrainScriptArguments, resolve_reward_funcs

    (punish,) = resolve_reward_funcs(
        TrainScriptArguments(reward_funcs=["get_soft_overlong_punishment(100, soft_punish_cache=20)"]), None
    )
    assert punish([[1] * 90]) == pytest.approx([-0.5])
    for spec, message in [
        ("get_soft_overlong_punishment(max_completion_len=n)", "not a call with literal arguments"),
        ("no_such_factory(1)", "no reward factory 'no_such_factory'"),
        ("get_soft_overlong_punishment(1, 2, 3)", "get_soft_overlong_punishment(1, 2, 3)"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            resolve_reward_funcs(TrainScriptArguments(reward_funcs=[spec]), None)


# ---------------------------------------------------------------------------------------------------------------------
# Generation engine and batch geometry against the header comment (tests/recipe_headers.py reads the header)
# ---------------------------------------------------------------------------------------------------------------------


def _parsed(path):
    name = yaml.safe_load(path.read_text())["trainer"]
    return make_train_parser(name).parse_args_and_config(
        ["--config", str(path), "--use_cpu", "true", "--bf16", "false"]
    )


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_header_states_its_geometry(path):
    """The header's `geometry:` line matches the recipe's values, the processes of its launch command, and itself."""
    _, args, _, _ = _parsed(path)
    _, stated = stated_geometry(path)
    processes = launch(path).num_processes
    assert stated["P"] == processes, "processes: the header's launch command"
    assert (stated["B"], stated["G"], stated["G2"]) == (
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        args.gradient_accumulation_steps,
    )
    # parsed for one process: steps_per_generation is the recipe's (or gradient_accumulation_steps), not derived
    assert (stated["S"], stated["I"], stated["K"]) == (
        args.steps_per_generation,
        args.num_iterations,
        args.num_generations,
    )
    completions = processes * args.per_device_train_batch_size * args.gradient_accumulation_steps
    generation = processes * args.per_device_train_batch_size * args.steps_per_generation
    assert stated["C"] == completions and stated["Q"] == Fraction(completions, args.num_generations)
    assert stated["GC"] == generation and stated["GQ"] == Fraction(generation, args.num_generations)
    assert stated["O"] == Fraction(args.steps_per_generation * args.num_iterations, args.gradient_accumulation_steps)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_generation_engine(path):
    """Tiny recipes generate with transformers (CPU CI); paper recipes with vLLM colocated, sized in the header, or
    say in a `generation: transformers, not vLLM: <reason>` header line why not."""
    _, args, _, _ = _parsed(path)
    text = "\n".join(header(path))
    if path in TINY:
        assert not args.use_vllm
        return
    reason = [line for line in header(path) if line.startswith("generation: transformers, not vLLM:")]
    if not args.use_vllm:
        assert reason and len(text.split("generation: transformers, not vLLM:", 1)[1]) > 200, "a stated reason"
        return
    assert not reason
    assert args.vllm_mode == "colocate"
    assert 0 < args.vllm_gpu_memory_utilization < 1
    assert launch(path).num_processes % args.vllm_tensor_parallel_size == 0
    assert args.vllm_max_model_length > args.max_completion_length, "room for the prompt"
    # the header's memory arithmetic is about these very settings
    assert f"gpu_memory_utilization {args.vllm_gpu_memory_utilization:g} = " in text
    assert f"tensor_parallel_size {args.vllm_tensor_parallel_size}" in text
    assert f"max_model_length {args.vllm_max_model_length}" in text
    assert "Memory per 80 GB GPU" in text


@pytest.mark.parametrize(
    "path", [p for p in PAPER if yaml.safe_load(p.read_text()).get("use_vllm")], ids=lambda p: p.name
)
def test_recipe_header_has_the_server_mode_commands(path):
    """A `trl-ext vllm-serve` command for the recipe's model that TRL's server parser accepts, and a training command
    with --vllm_mode server on the same processes that the train parser accepts."""
    from trl_ext.compat import vllm_serve_tools

    script_args, args, model_args, _ = _parsed(path)
    found = commands(path)
    (serve,) = [words for words in found if words[:2] == ["trl-ext", "vllm-serve"]]
    make_parser, _ = vllm_serve_tools()
    served, remaining = make_parser().parse_args_and_config(serve[2:], return_remaining_strings=True)
    assert not remaining and served.model == model_args.model_name_or_path
    assert served.max_model_len == args.vllm_max_model_length
    (train,) = [words for words in found if words[:2] == ["accelerate", "launch"] and "--vllm_mode" in words]
    assert int(option(train, "--num_processes")) == launch(path).num_processes
    recipe_args = train[train.index("recipes/train.py") + 1 :]
    assert option(recipe_args, "--config") == str(path.relative_to(ROOT))
    name = script_args.trainer
    _, server_args, _, _ = make_train_parser(name).parse_args_and_config(
        [*recipe_args, "--use_cpu", "true", "--bf16", "false"]
    )
    assert server_args.use_vllm and server_args.vllm_mode == "server" and server_args.vllm_server_host == "vllm-host"
