"""``trl-ext compare``: end to end on the quickstart recipe (table, JSON, PNG), resume, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trl_ext import compare as compare_module
from trl_ext.compare import compare, parse_arm

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "grpo" / "quickstart.yaml")
STEPS = 4


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """grpo and bnpo, 2 seeds x 4 steps of the quickstart recipe, plus an extra labelled hapo arm on one seed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    output = tmp_path_factory.mktemp("compare")
    lines: list[str] = []
    try:
        report = compare(
            ["grpo", "bnpo"], config=RECIPE, seeds=2, max_steps=STEPS, output_dir=output, log=lines.append
        )
    finally:
        torch.set_num_threads(threads)
    return report, output, lines


def test_every_run_is_recorded_with_its_seed_and_steps(compared):
    report, output, _ = compared
    assert report["seeds"] == [0, 1]  # a count of seeds starts at the recipe's seed (0 in quickstart.yaml)
    runs = {(r["arm"], r["seed"]): r for r in report["results"]}
    assert set(runs) == {("grpo", 0), ("grpo", 1), ("bnpo", 0), ("bnpo", 1)}
    for (arm, seed), run in runs.items():
        assert run["steps"] == list(range(1, STEPS + 1))
        assert all(math.isfinite(r) and 0.0 <= r <= 1.0 for r in run["reward"])
        # 128 completions per step (per_device_train_batch_size 128, one process, one iteration)
        assert run["completions"] == [128 * s for s in range(1, STEPS + 1)]
        assert run["peak_memory_bytes"] > 0 and run["num_processes"] == 1
        on_disk = json.loads((output / "runs" / arm / f"seed-{seed}.json").read_text())
        assert on_disk["reward"] == run["reward"]
    # the seed reaches the run: the two seeds of an arm sample different batches
    assert runs[("grpo", 0)]["reward"] != runs[("grpo", 1)]["reward"]
    # the trainer's own metrics are recorded in its namespace, and only there
    assert {"bnpo/alpha", "bnpo/beta", "bnpo/max_weight"} <= set(runs[("bnpo", 0)]["metrics"])
    assert runs[("grpo", 0)]["metrics"] == {}


def test_runs_are_interleaved(compared):
    _, _, lines = compared
    starts = [line.split(":")[0] for line in lines if line.startswith("[")]
    assert starts == [
        "[1/4] arm grpo (grpo) seed 0",
        "[2/4] arm bnpo (bnpo) seed 0",
        "[3/4] arm bnpo (bnpo) seed 1",
        "[4/4] arm grpo (grpo) seed 1",
    ]


def test_table_json_and_plot(compared):
    report, output, lines = compared
    summary = json.loads((output / "comparison.json").read_text())["summary"]
    assert summary == json.loads(json.dumps(report["summary"]))
    for arm in ("grpo", "bnpo"):
        row = summary["arms"][arm]
        runs = [r for r in report["results"] if r["arm"] == arm]
        finals = [sum(r["reward"][-1:]) for r in runs]  # window = max(1, 4 // 10) = 1: the last step
        assert row["final_reward"]["mean"] == pytest.approx(sum(finals) / 2)
        assert row["final_reward"]["min"] == pytest.approx(min(finals))
        assert row["seeds"] == [0, 1]
        assert row["median_step_time"] > 0
    assert summary["arms"]["grpo"]["step_time_ratio"] == 1.0
    assert 0.2 < summary["arms"]["bnpo"]["step_time_ratio"] < 5
    best = max(max(r["reward"]) for r in report["results"])
    assert summary["best_reward"] == pytest.approx(best)
    assert set(summary["arms"]["bnpo"]["metrics"]) >= {"bnpo/alpha", "bnpo/max_weight"}

    table = (output / "comparison.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| arm | trainer | final reward")
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| grpo", "| bnpo"]
    assert "bnpo/max_weight" in rows[2]
    png = (output / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert any(line.startswith("highest final reward:") for line in lines)


def test_rerunning_resumes_without_training(compared, monkeypatch):
    report, output, _ = compared

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare_module, "_train_one", no_training)
    monkeypatch.setattr("trl_ext.training.build_trainer", no_training)  # nor is anything built (no preflight needed)
    lines: list[str] = []
    again = compare(["grpo", "bnpo"], config=RECIPE, seeds=2, max_steps=STEPS, output_dir=output, log=lines.append)
    assert again["summary"] == report["summary"]
    assert "(4 already finished)" in lines[0]


def test_an_interrupted_comparison_reruns_only_what_is_missing(compared, tmp_path, monkeypatch):
    report, output, _ = compared
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    (copy / "runs" / "bnpo" / "seed-1.json").unlink()  # as if killed during that run
    (copy / "runs" / "grpo" / "seed-1.json").write_text("{ half")  # as if killed while writing: not finished
    trained: list[tuple[str, int]] = []
    real = compare_module._train_one

    def counting(arm, seed, *args, **kwargs):
        trained.append((arm.label, seed))
        return real(arm, seed, *args, **kwargs)

    monkeypatch.setattr(compare_module, "_train_one", counting)
    again = compare(["grpo", "bnpo"], config=RECIPE, seeds=2, max_steps=STEPS, output_dir=copy, log=lambda *_: None)
    assert sorted(trained) == [("bnpo", 1), ("grpo", 1)]
    rerun = {(r["arm"], r["seed"]): r["reward"] for r in again["results"]}
    first = {(r["arm"], r["seed"]): r["reward"] for r in report["results"]}
    assert rerun == first  # same seed, same recipe: the rerun reproduces the lost runs exactly


def test_changed_settings_rerun(compared, tmp_path, monkeypatch):
    _, output, _ = compared
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    trained: list[tuple[str, int]] = []

    def record(arm, seed, *args, **kwargs):
        trained.append((arm.label, seed))
        raise KeyboardInterrupt  # stop at the first run that would train

    monkeypatch.setattr(compare_module, "_train_one", record)
    with pytest.raises(KeyboardInterrupt):
        compare(
            ["grpo", "bnpo"],
            config=RECIPE,
            seeds=2,
            max_steps=STEPS,
            output_dir=copy,
            extra_args=["--learning_rate", "5e-4"],
            preflight=False,
            log=lambda *_: None,
        )
    assert trained == [("grpo", 0)]  # the stored runs had another learning rate: not reused


def test_python_api_with_a_dict_recipe_and_arm_overrides(tmp_path):
    import torch
    import yaml

    recipe = yaml.safe_load(Path(RECIPE).read_text())
    recipe["per_device_train_batch_size"] = 32
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = compare(
            ["hapo"],
            config=recipe,
            seeds=[3],
            max_steps=2,
            output_dir=tmp_path,
            arms=["hapo:hapo_temperature_tau=0.2", "ref=hapo:hapo_entropy_sign_mode=reference"],
            log=lambda *_: None,
        )
    finally:
        torch.set_num_threads(threads)
    assert [a["label"] for a in report["arms"]] == ["hapo", "ref"]
    assert report["arms"][0]["overrides"] == {"hapo_temperature_tau": "0.2"}
    assert (tmp_path / "recipe.yaml").is_file()
    runs = {r["arm"]: r for r in report["results"]}
    assert runs["hapo"]["completions"] == [32, 64] and runs["ref"]["seed"] == 3
    # the override reached the trainer: tau 0.2 spreads the temperatures wider than the default 0.05 would
    assert "hapo/temperature_max" in runs["hapo"]["metrics"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trainers": ["grpo", "nope"]}, "arm 'nope': unknown trainer 'nope'"),
        (
            {"trainers": ["grpo", "hapo"], "arms": ["hapo:hapo_nonsense=1"]},
            "arm 'hapo': --hapo_nonsense names no field of HAPOConfig",
        ),
        ({"trainers": ["grpo", "hapo"], "arms": ["hapo:hapo_temperature_tau=2"]}, "arm 'hapo'"),
        ({"trainers": ["grpo"], "arms": ["grpo"]}, "--arm 'grpo': expected"),
        ({"trainers": ["grpo"], "arms": ["x=grpo:lr"]}, "is not field=value"),
        ({"trainers": ["grpo"], "seeds": 0}, "--seeds: give at least one seed"),
        ({"trainers": ["grpo"], "seeds": [1, 1]}, "--seeds: give distinct seeds"),
        ({"trainers": ["grpo"], "config": "missing.yaml"}, "--config: no such file"),
        ({"trainers": ["grpo", "diva"]}, "arm 'diva' (diva) cannot run this recipe: the training dataset's 'id'"),
    ],
)
def test_bad_input_fails_before_any_training(tmp_path, monkeypatch, kwargs, message):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before the input was checked")

    monkeypatch.setattr(compare_module, "_train_one", no_training)
    options = {"config": RECIPE, "seeds": 1, "max_steps": 2, "output_dir": tmp_path / "out", "log": lambda *_: None}
    options.update(kwargs)
    with pytest.raises(ValueError) as error:
        compare(options.pop("trainers"), **options)
    assert message in str(error.value)
    assert not list((tmp_path / "out").glob("runs/*/*.json"))


def test_parse_arm():
    assert vars(parse_arm("hapo:a=1, b = x")) == {
        "label": "hapo",
        "trainer": "hapo",
        "overrides": {"a": "1", "b": "x"},
    }
    assert vars(parse_arm("ref=hapo:--a=1")) == {"label": "ref", "trainer": "hapo", "overrides": {"a": "1"}}


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    from trl_ext.cli import main

    assert main(["compare", "--trainers", "grpo", "nope", "--config", RECIPE, "--output_dir", str(tmp_path)]) == 2
    assert "trl-ext compare: error: arm 'nope': unknown trainer" in capsys.readouterr().err


def test_under_accelerate_launch_every_run_uses_both_processes(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from twoproc import launch_two_processes

    output = tmp_path / "out"
    result = launch_two_processes(
        "-m",  # accelerate's --module: the console script's module, as `accelerate launch -m trl_ext.cli compare`
        "trl_ext.cli",
        "compare",
        "--trainers",
        "grpo",
        "bnpo",
        "--config",
        RECIPE,
        "--seeds",
        "1",
        "--max_steps",
        "2",
        "--output_dir",
        str(output),
        "--per_device_train_batch_size",
        "64",
    )
    assert result.stdout.count("trl-ext compare: 2 arms x 1 seeds") == 1  # printed by the main process only
    report = json.loads((output / "comparison.json").read_text())
    for run in report["results"]:
        assert run["num_processes"] == 2
        assert run["completions"] == [128, 256]  # 64 per process x 2 processes per step
        assert all(math.isfinite(r) for r in run["reward"])


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_compare_rejects_threads_below_one(threads, capsys):
    from trl_ext.compare import compare_main

    with pytest.raises(SystemExit) as exit_info:
        compare_main(["--trainers", "grpo", "--threads", threads, "--output_dir", "/nonexistent/never-written"])
    assert exit_info.value.code == 2
    assert f"--threads must be at least 1 (torch CPU threads), got {threads}" in capsys.readouterr().err
