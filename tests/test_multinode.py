"""A two-machine launch, on this one machine: two ``accelerate launch`` commands with ``--num_machines 2`` and
``--machine_rank`` 0 and 1 over 127.0.0.1, one CPU process each (gloo), as a cluster's nodes run them
(docs/distributed.md, "More than one machine"). HAPO (every component on) trains 2 steps from a recipe; both machines
end with the same weights and the same trainer state. ``output_dir`` is shared, as on a cluster's shared filesystem.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from twoproc import free_port, offline_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "multinode_train.py"


def _machine(rank: int, port: int, output_dir: Path, record: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_machines", "2", "--num_processes", "2",  # processes in all: one per machine here
        "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
        "--rdzv_backend", "static", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(SCRIPT), "--config", str(ROOT / "recipes" / "hapo" / "arithmetic_tiny.yaml"),
        "--max_steps", "2", "--per_device_train_batch_size", "32", "--logging_steps", "1",
        "--reward_funcs", "multinode_train.length_reward",  # the script's own: importable from its directory
        "--output_dir", str(output_dir), "--record", str(record),
    ]  # fmt: skip
    return subprocess.Popen(command, env=offline_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_machines_train_hapo_to_identical_weights_and_state(tmp_path):
    port = free_port()
    record = tmp_path / "record"
    machines = [_machine(rank, port, tmp_path / "out", record) for rank in (0, 1)]
    logs = []
    try:
        for machine in machines:
            logs.append(machine.communicate(timeout=420)[0])
    finally:
        for machine in machines:
            machine.kill()
    codes = [machine.returncode for machine in machines]
    assert codes == [0, 0], "\n".join(f"machine {rank} (exit {codes[rank]}):\n{logs[rank][-5000:]}" for rank in (0, 1))

    records = [json.loads((record / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # one job of two processes, one on each machine
    assert [(r["num_processes"], r["process_index"], r["machine_rank"]) for r in records] == [(2, 0, 0), (2, 1, 1)]
    assert records[0]["global_step"] == records[1]["global_step"] == 2
    clock = ("time", "per_second", "runtime")  # wall-clock measurements differ between processes; nothing else may
    strip = [
        [{k: v for k, v in e.items() if not any(c in k for c in clock)} for e in r["log_history"]] for r in records
    ]
    assert strip[0] == strip[1] and len(strip[0]) >= 2
    assert records[0]["trl_ext_state"] == records[1]["trl_ext_state"]
    assert "hapo_temperature" in json.dumps(records[0]["trl_ext_state"])  # HAPO's statistics are in the state

    weights = [load_file(record / f"rank{rank}.safetensors") for rank in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], atol=0, rtol=0, msg=name)
    # the two steps moved the weights (so the equality above could fail), and the global main process saved them
    initial = load_file(tmp_path / "out" / "tiny-model" / "model.safetensors")
    assert any(not torch.equal(weights[0][k], initial[k]) for k in initial if k in weights[0])
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert all(torch.equal(saved[k], weights[0][k]) for k in saved if k in weights[0])
