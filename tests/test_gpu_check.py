"""``benchmarks/gpu_check.sh`` cannot rot: its dry run trains every arm on CPU through the same code the GPU run uses,
and its install step refuses a missing wheel folder before doing anything (issue 16, item 3)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=900, env=environment, cwd=ROOT
    )


def test_dry_run_trains_every_arm_and_writes_the_ratios(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = _run("--dry-run", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert report["skipped"] == {}
    assert list(report["arms"]) == ["trl", "hapo", "grpo", "bnpo", "minpro", "diva", "calibadv"]
    for arm, row in report["arms"].items():
        assert "error" not in row, (arm, row)
        assert len(row["step_times"]) == report["steps"] == 2, arm
        for key in ("median_step_s", "completion_tokens_per_s", "step_time_ratio_vs_trl", "tokens_per_s_ratio_vs_trl"):
            assert math.isfinite(row[key]) and row[key] > 0, (arm, key, row[key])
    assert report["arms"]["trl"]["step_time_ratio_vs_trl"] == 1.0
    versions = report["provenance"]["versions"]
    assert versions["trl"] and versions["transformers"]


def test_gpu_run_refuses_to_start_without_the_wheels(tmp_path):
    result = _run(GPU_WHEELS=str(tmp_path / "none"))
    assert result.returncode == 2
    assert "expected 4 wheels" in result.stderr and "--prepare" in result.stderr
