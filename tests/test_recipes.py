"""Every recipe parses into its trainer's config with the script arguments and TRL's ModelConfig."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trl_ext import get_trainer
from trl_ext.cli import make_train_parser

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
