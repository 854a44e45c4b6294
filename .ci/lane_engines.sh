#!/usr/bin/env bash
# CI lane "engines": every trainer under DeepSpeed ZeRO-2, ZeRO-3 and FSDP2 on two CPU processes (gloo), launched with
# the shipped recipes/accelerate_configs/{zero2,zero3,fsdp2}.yaml (tests/test_engines.py, `pytest -m engines`).
#
# Runs from the repository root on a fresh machine (Python 3.11 with pip, no GPU, network limited to PyPI), in its own
# virtual environment (outside the repository, so that ruff and git never see it; CI=true recreates it). DeepSpeed is required here: a missing DeepSpeed fails the
# lane instead of skipping it. About 5 minutes on 2 cores, plus about 2 minutes the first time DeepSpeed builds its CPU
# communication op (cached under TORCH_EXTENSIONS_DIR).
set -euo pipefail

export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_PROGRESS_BAR=off
# DeepSpeed compiles its CPU op (deepspeed_shm_comm) with ninja on first use; keep the build between runs.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/trl-ext-torch-extensions}"

PYTHON="${PYTHON:-python3}"
VENV="${ENGINES_VENV:-${TMPDIR:-/tmp}/trl-ext-venv-engines}"

if [ "${CI:-}" = "true" ] || [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv --clear "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
python -m pip install --upgrade pip
# torch first and pinned (the CPU wheel); anything else resolves to the CUDA build and gigabytes of nvidia wheels.
python -m pip install torch==2.13.0
python -m pip install -e ".[test]" deepspeed
python -c "import deepspeed, torch; print('deepspeed', deepspeed.__version__, 'torch', torch.__version__)"

python -m pytest -m engines -q
