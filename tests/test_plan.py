"""``trl-ext plan``: every recipe plans offline with the geometry its header states; a broken recipe lists every
problem at once (exit 2, one line each, no traceback); the geometry, launch and memory arithmetic."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from recipe_headers import RECIPES, ROOT, launch, stated_geometry

from trl_ext.cli import main
from trl_ext.plan import Geometry, launch_of, make_plan, model_states_bytes

ZERO3 = str(ROOT / "recipes" / "accelerate_configs" / "zero3.yaml")


def _plan(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``trl-ext plan ARGV`` in process: (exit status, stdout, stderr)."""
    try:
        status = main(["plan", *argv])
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_plans_offline_with_the_geometry_its_header_states(capsys, path):
    stated, _ = stated_geometry(path)
    status, out, err = _plan(capsys, ["--config", str(path.relative_to(ROOT)), *launch(path).plan_options])
    assert status == 0, err
    assert err == ""
    assert stated in out.splitlines(), out  # the very line, with the processes of the header's launch command
    recipe = yaml.safe_load(path.read_text())
    engine = [line for line in out.splitlines() if line.startswith("generation:")]
    assert engine and ("vLLM colocate" in engine[0]) == bool(recipe.get("use_vllm")), engine
    if recipe.get("model_name_or_path"):  # no model is cached on the test machines
        assert "memory:       not estimated offline" in out


def _broken_recipe(tmp_path: Path) -> Path:
    data = tmp_path / "questions.jsonl"
    data.write_text('{"question": "1+1=", "answer": "2"}\n{"question": "2+2=", "answer": "4"}\n')
    recipe = {
        "trainer": "grpo",
        "tiny_model": True,
        "output_dir": str(tmp_path / "out"),
        "datasets": [{"path": "json", "data_files": str(data), "split": "train"}],
        "dataset_prompt_column": "problem",  # the file has `question`, not `problem`
        "reward_funcs": ["no_such_reward"],
        "learning_rat": 1.0e-5,  # learning_rate
        "num_generations": 2,
        "per_device_train_batch_size": 2,
        "use_cpu": True,
        "report_to": "none",
    }
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_broken_recipe_lists_all_three_problems_one_line_each_exit_2(tmp_path):
    path = _broken_recipe(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "trl_ext.cli", "plan", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith("trl-ext plan: error: ") for line in lines), lines
    unknown_field, reward, column = lines
    assert "'learning_rat' (did you mean 'learning_rate'?) is not a field of the 'grpo' trainer" in unknown_field
    assert "reward_funcs: cannot resolve 'no_such_reward'" in reward
    assert "dataset_prompt_column: the dataset has no column 'problem' (columns: ['question', 'answer'])" in column
    # what could be planned still is: the geometry does not depend on the broken parts
    assert "geometry: 1 process x per_device_train_batch_size 2 x gradient_accumulation_steps 1" in result.stdout


def test_each_problem_alone_is_found(tmp_path, capsys):
    """The control for the test above: the fixed recipe plans cleanly, and each fault alone is the one problem."""
    path = _broken_recipe(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    fixed = {**recipe, "dataset_prompt_column": "question", "reward_funcs": ["accuracy"]}
    fixed["learning_rate"] = fixed.pop("learning_rat")
    fixed["reward_funcs"] = ["trl_ext.data.accuracy"]  # needs `answer`, which the file has (a default: not required)
    for fault, expected in [
        ({}, None),
        ({"learning_rat": 1e-5}, "'learning_rat'"),
        ({"reward_funcs": ["no_such_reward"]}, "no_such_reward"),
        ({"dataset_prompt_column": "problem"}, "'problem'"),
        (
            {"reward_funcs": ["accuracy_reward"]},
            "reward_funcs: accuracy_reward: the training data has no column 'solution'",
        ),
    ]:
        path.write_text(yaml.safe_dump({**fixed, **fault}))
        status, _, err = _plan(capsys, ["--config", str(path)])
        if expected is None:
            assert status == 0 and err == "", err
        else:
            assert status == 2 and err.count("error:") == 1 and expected in err, (fault, err)


def test_values_that_do_not_convert_are_problems_too(tmp_path, capsys):
    """argparse ends a parse at the first bad value (one line, exit 2, for trl-ext train); the plan goes on."""
    recipe = yaml.safe_load((ROOT / "recipes" / "grpo" / "quickstart.yaml").read_text())
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({**recipe, "num_generations": "abc", "learning_rat": 1.0}))
    status, out, err = _plan(capsys, ["--config", str(path), "--max_steps", "x", "--logging_steps=y"])
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 4, lines
    assert "'learning_rat' (did you mean 'learning_rate'?)" in lines[0]
    assert lines[1:] == [
        "trl-ext plan: error: max_steps: invalid int value: 'x'",
        "trl-ext plan: error: logging_steps: invalid float value: 'y'",
        "trl-ext plan: error: num_generations: invalid int value: 'abc'",
    ]
    assert "geometry: 1 process x per_device_train_batch_size 128" in out  # planned with the defaults instead


def test_problems_of_the_launch_and_the_engine(tmp_path, capsys):
    recipe = str(ROOT / "recipes" / "grpo" / "quickstart.yaml")
    status, _, err = _plan(
        capsys,
        ["--config", recipe, "--num_processes", "3", "--use_vllm", "true", "--vllm_tensor_parallel_size", "2",
         "--vllm_max_model_length", "2", "--max_completion_length", "2", "--per_device_batch_size", "4"],
    )  # fmt: skip
    assert status == 2
    assert "vllm_tensor_parallel_size: 2 does not divide the 3 processes" in err
    assert "vllm_max_model_length: 2 leaves no room for a prompt before max_completion_length 2" in err
    assert "--per_device_batch_size (did you mean " in err and ": is not an option of the 'grpo' trainer" in err
    # TRL's batch rule, evaluated for the planned processes: 3 x 128 completions are not whole groups of 256
    status, _, err = _plan(capsys, ["--config", recipe, "--num_processes", "3", "--num_generations", "256"])
    assert status == 2 and "generation_batch_size (384) must be divisible by num_generations (256)" in err
    status, out, _ = _plan(capsys, ["--config", recipe, "--num_processes", "2", "--num_generations", "256"])
    assert status == 0 and "= 256 completions = 1 prompts x num_generations 256" in out


def test_processes_come_from_the_option_the_accelerate_config_or_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch_of()[0].num_processes == 1 and launch_of()[0].strategy == "single"
    assert (
        launch_of(accelerate_config=ZERO3)[0].num_processes == 8
        and launch_of(accelerate_config=ZERO3)[0].strategy == "zero3"
    )
    assert launch_of(4, ZERO3)[0].num_processes == 4
    assert launch_of(environ={"WORLD_SIZE": "6"})[0].num_processes == 6
    assert launch_of(2, environ={"WORLD_SIZE": "6"})[0].num_processes == 2
    assert launch_of(environ={"WORLD_SIZE": "6"})[0].strategy == "ddp"
    single = str(ROOT / "recipes" / "accelerate_configs" / "single_gpu.yaml")
    assert "runs one process" in launch_of(4, single)[1][0]
    assert "cannot read" in launch_of(accelerate_config="no/such.yaml")[1][0]


def test_world_size_in_the_environment_plans_without_starting_a_process_group(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "4")
    status, out, err = _plan(capsys, ["--config", str(ROOT / "recipes" / "minpro" / "offpolicy_tiny.yaml")])
    assert status == 0, err
    assert "processes:    4 (WORLD_SIZE; DDP" in out
    assert "geometry: 4 processes x per_device_train_batch_size 64 x gradient_accumulation_steps 1 = 256" in out


def test_geometry_with_several_steps_per_generation_and_iterations():
    # 2 processes x 4 per device, 2 accumulation steps, a generation of 6 micro-batches replayed 3 times
    geometry = Geometry(
        num_processes=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        steps_per_generation=6,
        num_iterations=3,
        num_generations=4,
    )
    assert geometry.completions_per_step == 16 and geometry.prompts_per_step == 4
    assert geometry.generation_completions == 48 and geometry.generation_prompts == 12
    assert geometry.steps_per_generation_batch == 9  # 6 x 3 micro-steps per generation / 2 per optimizer step
    assert "off-policy degree 9" in geometry.off_policy() and "8 updates old" in geometry.off_policy()
    # an optimizer step spanning two generation batches, and prompt groups split across optimizer steps
    half = Geometry(1, 6, 2, 1, 1, 4)
    assert half.steps_per_generation_batch == Fraction(1, 2) and half.prompts_per_step == Fraction(3)
    assert "1/2 optimizer steps per generation batch of 6 completions = 3/2 prompts" in half.line()
    assert "spans 2 generation batches" in half.off_policy()


def test_geometry_equals_what_trl_derives_for_the_planned_processes():
    """TRL's GRPOConfig derives steps_per_generation from generation_batch_size for its world size; the plan builds
    the config for the planned processes, so its geometry is TRL's own."""
    recipe = str(ROOT / "recipes" / "grpo" / "quickstart.yaml")
    plan = make_plan(["--config", recipe, "--num_processes", "4", "--per_device_train_batch_size", "8",
                      "--generation_batch_size", "96", "--num_generations", "8", "--gradient_accumulation_steps", "3",
                      "--num_iterations", "2"])  # fmt: skip
    assert plan.problems == []
    geometry = plan.geometry
    assert geometry.steps_per_generation == 3  # 96 / (8 x 4), as TRL derives it for 4 processes (not 12 for 1)
    assert geometry.generation_completions == 96 and geometry.completions_per_step == 96
    assert geometry.steps_per_generation_batch == 2  # 3 micro-batches x 2 iterations / 3 accumulation steps
    plan = make_plan(["--config", recipe, "--num_processes", "5", "--per_device_train_batch_size", "8",
                      "--generation_batch_size", "96", "--num_generations", "8"])  # fmt: skip
    assert any(
        "generation_batch_size (96) must be divisible by the global batch size (40)" in p for p in plan.problems
    )


def test_model_states_per_process_by_strategy():
    p = 1_000_000_000
    assert model_states_bytes(p, strategy="zero3", num_processes=8)[0] == 16 * p / 8
    assert model_states_bytes(p, strategy="zero2", num_processes=8)[0] == (2 + 14 / 8) * p
    assert model_states_bytes(p, strategy="zero1", num_processes=8)[0] == (4 + 12 / 8) * p
    assert model_states_bytes(p, strategy="ddp", num_processes=8)[0] == 8 * p  # bf16 weights, grads, m, v
    assert model_states_bytes(p, strategy="single", num_processes=1, param_bytes=4)[0] == 16 * p
    assert model_states_bytes(p, strategy="fsdp", num_processes=4)[0] == 16 * p / 4  # upcast to fp32
    assert model_states_bytes(p, strategy="single", num_processes=1, peft=True, quantization="4bit")[0] == p / 2


def test_memory_of_a_local_model_is_counted_from_its_config(tmp_path, capsys, tiny_checkpoint):
    from transformers import AutoModelForCausalLM

    parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_checkpoint).parameters())
    recipe = str(ROOT / "recipes" / "grpo" / "quickstart.yaml")
    argv = ["--config", recipe, "--tiny_model", "false", "--model_name_or_path", tiny_checkpoint]
    status, out, err = _plan(capsys, [*argv, "--accelerate_config", ZERO3, "--num_processes", "4"])
    assert status == 0, err
    # the checkpoint is float32 and the recipe trains without mixed precision: ZeRO-3 keeps 4 + 4 + 8 bytes, / 4
    assert f"{16 * parameters / 4 / 2**30:.1f} GiB of model states per process ({parameters / 1e9:.2f}B" in out
    assert "ZeRO-3: 4 + 4 + 8 bytes/parameter, all / 4 processes" in out


@pytest.mark.parametrize("path", [p for p in RECIPES if "multinode.sbatch" in p.read_text()], ids=lambda p: p.name)
def test_the_multinode_command_in_a_paper_recipe_keeps_its_geometry(path):
    # The header's two-training-node line (16 processes) halves the accumulation so that prompts per optimizer step,
    # the generation batch and the off-policy degree stay those of the 8-process launch the header states.
    lines = path.read_text().splitlines()
    at = next(
        i
        for i, line in enumerate(lines)
        if "multinode.sbatch" in line and line.lstrip("# ").startswith(("sbatch", "ACCELERATE"))
    )
    overrides = lines[at + 1].lstrip("#").split()
    one = make_plan(["--config", str(path.relative_to(ROOT)), *launch(path).plan_options])
    two = make_plan(["--config", str(path.relative_to(ROOT)), "--num_processes", "16", *overrides])
    assert not one.problems and not two.problems, (one.problems, two.problems)
    assert (one.geometry.num_processes, two.geometry.num_processes) == (8, 16)
    for quantity in ("prompts_per_step", "generation_completions", "steps_per_generation_batch"):
        assert getattr(two.geometry, quantity) == getattr(one.geometry, quantity), quantity
