#!/usr/bin/env bash
# CI lane "trl": trl-ext against the other TRL releases it supports, then a look at the newest TRL on PyPI.
#
# 1. Matrix: for each version in TRL_MATRIX_VERSIONS (default 1.15.0, the older minor of the supported window), install
#    exactly that TRL over the package's other dependencies (`pip install --no-deps`) and run the parity tests and
#    every trainer's tests (TESTS below; experiment, benchmark and TRL-independent tests are left to the main lane).
#    A failure here fails the lane. The newest 1.16.x is not repeated here: the main lane installs the newest TRL that
#    pyproject.toml's pin admits and runs the whole suite on it.
# 2. Probe (informational, never fails the lane): the newest TRL on PyPI, pre-releases included. If it is newer than
#    the pin's upper bound, install it (--no-deps) and print `python -m trl_ext.drift report` (when that module
#    exists) and the parity tests' result; otherwise print one line saying that no newer TRL exists.
#
# On TRL 1.15 without Triton (the CPU torch wheel has none) the tests install a pure-torch stand-in for TRL's chunked
# log-prob kernel (tests/trl_compat/trl_compat_shims.py). Runs from the repository root on a fresh machine (Python
# 3.11 with pip, no GPU, network limited to PyPI), in its own virtual environment outside the repository (CI=true
# recreates it). About 7 minutes on 2 cores with CI=true: 3 to install, 4 for the TRL 1.15.0 tests, seconds for the
# probe when no newer TRL exists (13 minutes when other jobs shared the 2 cores).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_PROGRESS_BAR=off

PYTHON="${PYTHON:-python3}"
VENV="${TRL_VENV:-${TMPDIR:-/tmp}/trl-ext-venv-trl}"
TRL_MATRIX_VERSIONS="${TRL_MATRIX_VERSIONS:-1.15.0}"

# Parity (BaseGRPOTrainer == trl.GRPOTrainer on text and image batches: tests/test_parity.py, tests/test_vlm.py) and
# every trainer's tests that build or run a trainer: each trainer's own file, the checkpoint hook, multi-process runs,
# QLoRA, the loss pipeline's memory, registered components inside the trainer, and the recipes parsed into TRL's
# configs. Left to the main lane: the trainers' pure-math files (test_diva_math, test_diva_variants,
# test_calibadv_math: no TRL in them), experiment and benchmark tests, the CLI / compare / first-day tests (they train
# the same trainers end to end, through the recipe parsing test_recipes covers), the retrievers and the built-in tasks.
# The compat layer's bindings of TRL's signatures (test_generation_seam) and the drift check of the installed TRL
# against its recorded fingerprints (test_drift) run here too.
TESTS=(
    tests/test_parity.py
    tests/test_vlm.py
    tests/test_vlm_qwen.py
    tests/test_bnpo.py
    tests/test_diva.py
    tests/test_hapo.py
    tests/test_minpro.py
    tests/test_calibadv_rollout.py
    tests/test_calibadv_trainer.py
    tests/test_checkpoint.py
    tests/test_distributed.py
    tests/test_qlora.py
    tests/test_memory.py
    tests/test_registry.py
    tests/test_recipes.py
    tests/test_trl_compat_shims.py
    tests/test_generation_seam.py
    tests/test_drift.py
)

step() { printf '\n==> [lane trl] %s\n' "$*"; }
declare -a PART_NAMES=() PART_SECONDS=()
timed() { # timed NAME START: record the seconds since START under NAME
    PART_NAMES+=("$1")
    PART_SECONDS+=($((SECONDS - $2)))
}

start=$SECONDS
step "virtual environment ($VENV)"
if [ "${CI:-}" = "true" ] || [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv --clear "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
python -m pip install --upgrade pip
# torch first and pinned (the CPU wheel); anything else resolves to the CUDA build and gigabytes of nvidia wheels.
python -m pip install torch==2.13.0
python -m pip install -e ".[test]"
timed "install" "$start"

versions() {
    python - <<'EOF'
import importlib.util
import platform

import accelerate
import peft
import torch
import transformers
import trl

print(f"python       {platform.python_version()}")
print(f"torch        {torch.__version__} (triton importable: {importlib.util.find_spec('triton') is not None})")
print(f"transformers {transformers.__version__}")
print(f"accelerate   {accelerate.__version__}")
print(f"peft         {peft.__version__}")
print(f"trl          {trl.__version__}")
EOF
}

failed=()
for version in $TRL_MATRIX_VERSIONS; do
    start=$SECONDS
    step "TRL $version: parity and trainer tests"
    python -m pip install --no-deps "trl==$version"
    versions
    status=0
    python -m pytest -q "${TESTS[@]}" || status=$?
    if [ "$status" -ne 0 ]; then
        echo "ERROR: tests failed under TRL $version (pytest exit code $status)" >&2
        failed+=("$version")
    fi
    timed "trl $version" "$start"
done

start=$SECONDS
step "probe (informational): the newest TRL on PyPI"
# The upper bound of pyproject.toml's TRL pin, e.g. 1.17 for "trl>=1.16,<1.17"
upper="$(python - <<'EOF'
import tomllib

from packaging.requirements import Requirement

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
for dependency in project["dependencies"]:
    requirement = Requirement(dependency)
    if requirement.name == "trl":
        bounds = [s.version for s in requirement.specifier if s.operator == "<"]
        print(bounds[0] if bounds else "")
EOF
)"
# `pip index versions` prints "Available versions: a, b, ..."; take the highest by PEP 440, not the first listed.
newest="$(python -m pip index versions --pre trl 2>/dev/null | python -c '
import sys

from packaging.version import Version

for line in sys.stdin:
    if line.startswith("Available versions:"):
        print(max((v.strip() for v in line.split(":", 1)[1].split(",")), key=Version))
' || true)"
if [ -z "$upper" ]; then
    echo "informational: pyproject.toml's TRL pin has no upper bound; nothing to probe"
elif [ -z "$newest" ]; then
    echo "informational: could not list TRL versions on PyPI; probe skipped"
elif python -c 'import sys; from packaging.version import Version; sys.exit(Version(Version(sys.argv[1]).base_version) < Version(sys.argv[2]))' "$newest" "$upper"; then
    echo "informational: TRL $newest is newer than the supported window (<$upper); its results do not fail the lane"
    if python -m pip install --no-deps "trl==$newest"; then
        versions || true
        if python -c 'import trl_ext.drift' 2>/dev/null; then
            python -m trl_ext.drift report || echo "informational: drift report exited with $? under TRL $newest"
        else
            echo "informational: trl_ext.drift is not importable here; no drift report"
        fi
        probe_status=0
        python -m pytest -q tests/test_parity.py || probe_status=$?
        echo "informational: parity tests under TRL $newest: pytest exit code $probe_status"
    else
        echo "informational: could not install TRL $newest"
    fi
else
    echo "informational: no TRL newer than the supported window (<$upper) on PyPI (newest: $newest)"
fi
timed "probe" "$start"

echo
for i in "${!PART_NAMES[@]}"; do
    printf 'lane trl: %-12s %5d s\n' "${PART_NAMES[$i]}" "${PART_SECONDS[$i]}"
done
if [ "${#failed[@]}" -ne 0 ]; then
    echo "ERROR: lane trl failed under TRL ${failed[*]}" >&2
    exit 1
fi
