"""Every trainer under DeepSpeed ZeRO-2, ZeRO-3 and FSDP2, on two CPU processes, with the recipes' accelerate configs.

The ``engines`` lane (``python -m pytest -m engines``; deselected by default, see ``pyproject.toml``; needs
``pip install deepspeed``, and a missing DeepSpeed fails these tests instead of skipping them). One ``accelerate
launch`` per engine, with ``recipes/accelerate_configs/<engine>.yaml`` as shipped and command-line overrides for this
machine (``--num_processes 2 --mixed_precision no``), trains ``trl.GRPOTrainer`` and every trl-ext trainer for two
optimizer steps in turn (``tests/scripts/engine_train.py``); every process records what wraps the model and how the
parameters are split, the trainer's cross-step state and a digest of the gathered weights. FSDP2 on CPU goes through
``tests/engine_shims`` (accelerate would otherwise silently fall back to DDP or to no wrapper on CPU processes).

Asserted per (trainer, engine): two processes, two steps, the engine really in place (a ``DeepSpeedEngine`` at the
configured ZeRO stage with ZeRO-2 optimizer partitions / ZeRO-3 parameter partitions of about half the model; FSDP2
DTensor parameters sharded on dim 0 whose local shards add up to the model), the same full weights and trainer state
on both processes, and weights moved by training. ``grpo`` must end with ``trl.GRPOTrainer``'s weights under each
engine. ``calibadv`` runs its real rollout with scripted turns in which process 0 needs one turn and process 1 three,
which hangs (ZeRO-3) or aborts (FSDP2) without lockstep turns; the launch timeout turns a hang into a failure. A
checkpoint saved under ZeRO-3 at step 2 and resumed to step 4 must reproduce the uninterrupted 4-step run bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from calibadv_helpers import build_deepsearch_checkpoint
from twoproc import free_port, offline_env

pytestmark = pytest.mark.engines

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "engine_train.py"
SHIMS = ROOT / "tests" / "engine_shims"
CONFIGS = ROOT / "recipes" / "accelerate_configs"
ENGINES = ("zero2", "zero3", "fsdp2")
TRAINERS = ("grpo", "bnpo", "minpro", "hapo", "diva", "calibadv")
STEPS = 2
#: One launch trains seven trainers; about 2-4 minutes on two CPU cores (plus DeepSpeed's one-off op build).
LAUNCH_TIMEOUT_S = 900


def launch(engine: str, out: Path, *args: str, timeout: int = LAUNCH_TIMEOUT_S) -> None:
    """``accelerate launch`` the engine script with ``recipes/accelerate_configs/<engine>.yaml`` on 2 CPU processes."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / f"{engine}.yaml"),
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(free_port()),
        str(SCRIPT),
        "--out",
        str(out),
        *args,
    ]
    env = offline_env()
    if engine == "fsdp2":  # the CPU launch shim (its docstring says why); inert on GPU machines
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SHIMS), env.get("PYTHONPATH")]))
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        tail = (error.stderr or b"")[-6000:]
        pytest.fail(f"{engine} launch did not finish in {timeout} s (a hang between processes?):\n{tail!r}")
    assert result.returncode == 0, f"{engine} launch failed:\n{result.stdout[-3000:]}\n{result.stderr[-8000:]}"


def records(out: Path, trainer: str) -> list[dict]:
    return [json.loads((out / trainer / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, tmp_path_factory) -> dict[str, str]:
    return {
        "tiny": tiny_checkpoint,
        "deepsearch": build_deepsearch_checkpoint(str(tmp_path_factory.mktemp("engines-deepsearch"))),
    }


@pytest.fixture(scope="module")
def engine_runs(checkpoints, tmp_path_factory):
    """``run(engine)``: the output directory of that engine's launch (every trainer), launched on first use."""
    import deepspeed  # noqa: F401  (the lane requires it: an ImportError here fails every engine test)

    done: dict[str, Path] = {}

    def run(engine: str) -> Path:
        if engine not in done:
            out = tmp_path_factory.mktemp(f"engine-{engine}")
            launch(
                engine,
                out,
                "--checkpoint",
                checkpoints["tiny"],
                "--calibadv-checkpoint",
                checkpoints["deepsearch"],
                "--trainers",
                ",".join(("trl", *TRAINERS)),
                "--max-steps",
                str(STEPS),
            )
            done[engine] = out
        return done[engine]

    return run


def test_deepspeed_is_installed():
    import deepspeed

    assert deepspeed.__version__


def _check_engine(engine: str, proof: dict) -> None:
    full, local = proof["full_numel"], proof["local_numel"]
    assert full > 100_000
    if engine in ("zero2", "zero3"):
        assert proof["deepspeed_engine"] and proof["wrapper"].endswith("DeepSpeedEngine")
        assert proof["zero_stage"] == int(engine[-1])
    if engine == "zero2":  # parameters replicated, the fp32 optimizer copy split in two
        assert local == full
        assert full / 2 <= proof["optimizer_partition_numel"] < 0.6 * full
    elif engine == "zero3":  # each process holds about half of every parameter (partitions padded)
        assert full / 2 <= local < 0.6 * full
    elif engine == "fsdp2":
        assert not proof["deepspeed_engine"]
        assert proof["fsdp_module"] and proof["all_dtensor"] and proof["all_shard0"]
        assert local < 0.6 * full


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("engine", ENGINES)
def test_trainer_trains_sharded(engine_runs, checkpoints, engine, trainer):
    out = engine_runs(engine)
    ranks = records(out, trainer)
    assert [r["num_processes"] for r in ranks] == [2, 2] and [r["process_index"] for r in ranks] == [0, 1]
    assert [r["global_step"] for r in ranks] == [STEPS, STEPS]
    for rank in ranks:
        _check_engine(engine, rank["engine"])
        assert len(rank["losses"]) == STEPS and all(math.isfinite(loss) for loss in rank["losses"])
    if engine == "fsdp2":  # the local shards of the two processes make up the whole model
        assert sum(r["engine"]["local_numel"] for r in ranks) == ranks[0]["engine"]["full_numel"]
    # The gathered full weights and the cross-step state are the same on both processes.
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["trl_ext_state"] == ranks[1]["trl_ext_state"]
    assert ranks[0].get("diva_store") == ranks[1].get("diva_store")
    # Training moved the weights away from the checkpoint, so the comparisons above could fail.
    from transformers import AutoModelForCausalLM

    source = "deepsearch" if trainer == "calibadv" else "tiny"
    initial = dict(AutoModelForCausalLM.from_pretrained(checkpoints[source]).named_parameters())
    final = torch.load(out / trainer / "weights.pt")
    assert sorted(final) == sorted(initial)
    assert any(not torch.allclose(final[name], initial[name].float()) for name in initial)


@pytest.mark.parametrize("engine", ENGINES)
def test_trainer_state_is_kept_under_the_engine(engine_runs, engine):
    out = engine_runs(engine)
    # HAPO's rollout-temperature statistics were computed from the gathered entropies (identical on both processes,
    # asserted above) and are in its checkpointed state.
    temperature = records(out, "hapo")[0]["trl_ext_state"]["trainer"]["hapo_temperature"]
    assert temperature["current"]["num_tokens"] > 0 and math.isfinite(temperature["current"]["pivot"])
    # DIVA's difficulty store saw both generation rounds and moved some problems off their initial level.
    store = records(out, "diva")[0]["diva_store"]
    assert store["round_index"] == STEPS and store["levels"]


@pytest.mark.parametrize("engine", ENGINES)
def test_grpo_ends_with_trl_weights(engine_runs, engine):
    out = engine_runs(engine)
    trl, grpo = records(out, "trl")[0], records(out, "grpo")[0]
    _check_engine(engine, trl["engine"])
    # Bit-identical: same sampling, same loss, same engine arithmetic (measured on CPU for all three engines).
    assert grpo["losses"] == trl["losses"]
    assert grpo["weights_sha256"] == trl["weights_sha256"]
    expected, actual = torch.load(out / "trl" / "weights.pt"), torch.load(out / "grpo" / "weights.pt")
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("engine", ENGINES)
def test_calibadv_processes_with_uneven_turns_finish(engine_runs, engine):
    ranks = records(engine_runs(engine), "calibadv")
    # One rollout per step; process 0's question takes one turn, process 1's three (two searches, then the answer).
    assert ranks[0]["calibadv_turns"] == [[1] * 4] * STEPS
    assert ranks[1]["calibadv_turns"] == [[3] * 4] * STEPS
    synced = engine != "zero2"  # transformers synchronises generate across ranks under ZeRO-3 and FSDP
    assert [r["calibadv_collective"] for r in ranks] == [[synced] * STEPS] * 2
    if synced:  # lockstep: process 0 joins process 1's later turns with empty calls
        assert ranks[0]["calibadv_generator_calls"] == [[4, 0, 0]] * STEPS
    else:  # no extra collective: process 0 stops after its only turn
        assert ranks[0]["calibadv_generator_calls"] == [[4]] * STEPS
    assert ranks[1]["calibadv_generator_calls"] == [[4, 4, 4]] * STEPS


@pytest.mark.parametrize("trainer", ["hapo", "diva"])
def test_zero3_checkpoint_resume_matches_uninterrupted_run(checkpoints, tmp_path_factory, trainer):
    import deepspeed  # noqa: F401

    full, resumed = tmp_path_factory.mktemp(f"z3-{trainer}-full"), tmp_path_factory.mktemp(f"z3-{trainer}-resumed")
    common = ["--checkpoint", checkpoints["tiny"], "--trainers", trainer, "--max-steps", "4", "--save-steps", "2"]
    launch("zero3", full, *common)
    launch("zero3", resumed, *common, "--resume-run", str(full), "--resume-step", "2")
    uninterrupted, after_resume = records(full, trainer), records(resumed, trainer)
    assert [r["global_step"] for r in after_resume] == [4, 4]
    assert all(r["engine"]["zero_stage"] == 3 for r in after_resume)
    # The log history of steps 1-2 comes back with the checkpoint; steps 3-4 were trained again after resuming.
    assert len(after_resume[0]["losses"]) == len(uninterrupted[0]["losses"]) == 4
    assert after_resume[0]["losses"][2:] == uninterrupted[0]["losses"][2:]
    for key in ("trl_ext_state", "diva_store"):
        assert after_resume[0].get(key) == uninterrupted[0].get(key), key
        assert after_resume[1].get(key) == after_resume[0].get(key), key
    # Weights, optimizer partitions and RNG states come back from the ZeRO-3 checkpoint: bit-identical weights.
    assert after_resume[0]["weights_sha256"] == uninterrupted[0]["weights_sha256"]
    expected, actual = torch.load(full / trainer / "weights.pt"), torch.load(resumed / trainer / "weights.pt")
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, atol=0, rtol=0, msg=name)
    # Step-4 checkpoint state files agree too (written by the resumed run from the restored state).
    state = "trl_ext_state.json"
    assert json.loads((resumed / trainer / "trainer" / "checkpoint-4" / state).read_text()) == json.loads(
        (full / trainer / "trainer" / "checkpoint-4" / state).read_text()
    )
