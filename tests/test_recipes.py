"""Every recipe parses into its trainer's config with the script arguments and TRL's ModelConfig."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from trl_ext import get_trainer
from trl_ext.training import make_train_parser

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if p.parent.name != "accelerate_configs")


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
