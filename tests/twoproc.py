"""Launching a test script on two real CPU processes (gloo), shared by the multi-process tests.

``accelerate launch --cpu --num_processes 2`` starts ONE process with accelerate 1.15 (its simple launcher ignores
``--num_processes`` without an MPI host file). ``--multi_gpu`` goes through torchrun and, with no GPU visible and
``use_cpu=True`` in the script's config, gives two processes over gloo. Scripts should record their
``num_processes`` so that a silent single-process run fails the test.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from typing import Any

#: The prompts the two-process training scripts train on: 16 one-digit sums.
SCRIPT_PROMPTS = [f"{a}+{b}=" for a in range(4) for b in range(4)]


def script_cli(doc: str) -> argparse.Namespace:
    """A two-process script's ``--checkpoint`` (tiny checkpoint directory) and ``--out`` (per-process records)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="tiny checkpoint directory (build_tiny_checkpoint)")
    parser.add_argument("--out", required=True, help="directory for the per-process records")
    return parser.parse_args()


def script_config(out: str, **overrides: Any) -> dict[str, Any]:
    """The settings the two-process training scripts share (8 rows x 4 generations per process, 6 tokens, 2 steps
    at lr 5e-2, float32 on CPU, seed 0, a log per step, nothing saved), with ``overrides``; trainer output in
    ``out/trainer``."""
    return {
        "output_dir": os.path.join(out, "trainer"), "per_device_train_batch_size": 8, "num_generations": 4,
        "max_completion_length": 6, "learning_rate": 5e-2, "max_steps": 2, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "use_cpu": True, "bf16": False, "seed": 0, **overrides,
    }  # fmt: skip


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_env() -> dict[str, str]:
    """This environment without distributed variables, offline, one thread, no visible GPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
        CUDA_VISIBLE_DEVICES="",  # CPU processes even on a GPU machine
    )
    return env


def run_checked(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a command with :func:`offline_env`; fail with its output tail if it exits non-zero."""
    result = subprocess.run(command, env=offline_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return result


def launch_two_processes(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``accelerate launch`` ``script`` on two CPU processes and wait for it (see the module docstring)."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(script),
        *args,
    ]
    return run_checked(command, timeout)
