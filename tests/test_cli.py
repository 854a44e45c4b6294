"""The console script and the shared training entry point (recipes/train.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trl_ext.cli import main
from trl_ext.training import make_train_parser, peek_trainer_name, resolve_reward_funcs

ROOT = Path(__file__).resolve().parents[1]


def test_list_prints_the_trainer_table(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["name", "changes", "paper"]
    assert any(line.startswith("grpo ") and "arXiv 2402.03300" in line for line in out)


def test_unknown_command_is_an_error(capsys):
    assert main(["nope"]) == 2
    assert "trl-ext: unknown command 'nope'; choose one of list, train" in capsys.readouterr().err


def test_trainer_name_comes_from_flag_then_yaml(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("trainer: grpo\nlearning_rate: 0.1\n")
    assert peek_trainer_name(["--config", str(config)]) == "grpo"
    assert peek_trainer_name(["--trainer", "other", "--config", str(config)]) == "other"
    assert peek_trainer_name([]) == "grpo"
    with pytest.raises(KeyError, match="Unknown trainer 'other'"):
        make_train_parser("other")


def test_parser_exposes_trainer_config_and_model_flags(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trainer": "grpo",
                "output_dir": str(tmp_path),
                "use_cpu": True,
                "advantage_estimator": "grpo",
                "beta": 0.1,
            }
        )
    )
    parser = make_train_parser("grpo")
    script_args, training_args, model_args, _ = parser.parse_args_and_config(
        ["--config", str(config), "--use_peft", "--load_in_4bit", "--learning_rate", "0.5"]
    )
    assert script_args.trainer == "grpo"
    assert training_args.advantage_estimator == "grpo" and training_args.beta == 0.1
    assert training_args.learning_rate == 0.5  # the command line overrides the YAML
    assert model_args.use_peft and model_args.load_in_4bit


def test_unknown_reward_name_is_a_clear_error():
    from trl_ext.training import TrainScriptArguments

    with pytest.raises(ValueError, match="reward_funcs: cannot resolve 'nope'"):
        resolve_reward_funcs(TrainScriptArguments(reward_funcs=["nope"]), None)
    with pytest.raises(ValueError, match="no reward function"):
        resolve_reward_funcs(TrainScriptArguments(), None)


def test_train_from_yaml_runs_offline(tmp_path):
    """`trl-ext train --config FILE` end to end in a subprocess: tiny model, built-in task, two steps."""
    config = yaml.safe_load((ROOT / "recipes/grpo/quickstart.yaml").read_text())
    config.update(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=16,
        task_num_rows=64,
        logging_steps=1,
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes/train.py"), "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step    2/2 | reward" in result.stdout
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_prompt_column_becomes_conversational_prompt():
    from datasets import Dataset

    from trl_ext.training import TrainScriptArguments, to_conversational_prompts

    dataset = Dataset.from_dict({"problem": ["1+1?"], "solution": ["\\boxed{2}"]})
    args = TrainScriptArguments(dataset_prompt_column="problem", system_prompt="Think step by step.")
    converted = to_conversational_prompts(dataset, args)
    assert converted[0]["prompt"] == [
        {"role": "system", "content": "Think step by step."},
        {"role": "user", "content": "1+1?"},
    ]
    assert converted[0]["solution"] == "\\boxed{2}"
    with pytest.raises(ValueError, match="dataset_prompt_column: the dataset has no column 'question'"):
        to_conversational_prompts(dataset, TrainScriptArguments(dataset_prompt_column="question"))


def test_quickstart_reward_rises_offline(tmp_path):
    """The README's main job: a random tiny model learns the built-in task by RL alone (about 30 s on 2 cores)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "trl_ext.cli", "quickstart", "--output_dir", str(tmp_path / "qs")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(lines) == 30 and lines[-1].startswith("step  300/300")
    rewards = [float(line.split("reward ")[1].split(" ")[0]) for line in lines]
    assert rewards[0] < 0.2 and rewards[-1] > rewards[0] + 0.4, rewards
    assert "(rising;" in result.stdout
