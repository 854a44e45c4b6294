#!/usr/bin/env bash
# The prepared GPU check (issue 16): trl.GRPOTrainer and every trl-ext trainer for a few steps on a randomly
# initialised Qwen2.5-1.5B-architecture model in bf16, 8 prompts x 8 completions of up to 512 new tokens; step time,
# completion tokens per second and torch.cuda.max_memory_allocated, each as a ratio to TRL, in one JSON.
#
#   bash benchmarks/gpu_check.sh --prepare    # here, with PyPI: the wheels the GPU machine lacks -> .gpu_wheels/ (ignored)
#   bash benchmarks/gpu_check.sh              # on the GPU machine (python 3.12, torch+CUDA, transformers, accelerate,
#                                             # peft, pandas, pyarrow already there): install the wheels, run, write
#                                             # $OUT/gpu_check.json (or ./gpu_check.json without $OUT)
#   bash benchmarks/gpu_check.sh --dry-run [--out FILE]   # anywhere, CPU, scaled-down model, no install: seconds
#
# With the device tool: `run` with carry [".gpu_wheels"], command "bash benchmarks/gpu_check.sh", timeout_s 540.
# The check itself skips arms that would end after --budget_s (default 400 s) so that the JSON always comes back.
#
# Wheels carried (exactly these; pure Python; about 1.9 MB): trl 1.16.0, datasets 5.2.0 and its two dependencies the
# lent image does not have, dill 0.4.1 and multiprocess 0.70.19. trl-ext itself runs from the working tree
# (PYTHONPATH), and the image's own torch, transformers, accelerate, peft, pyarrow and pandas are used.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WHEELS_DIR="${GPU_WHEELS:-.gpu_wheels}"
WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
PYTHON="${PYTHON:-python3}"
mode=run
extra=()
while (($#)); do
    case "$1" in
        --prepare) mode=prepare ;;
        --dry-run) mode=dry-run ;;
        --out) extra+=(--out "$2"); shift ;;
        *) extra+=("$1") ;;
    esac
    shift
done

case "$mode" in
prepare)
    mkdir -p "$WHEELS_DIR"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS_DIR" "${WHEELS[@]}"
    du -sh "$WHEELS_DIR"
    ;;
dry-run)
    [[ " ${extra[*]-} " == *" --out "* ]] || extra+=(--out "${TMPDIR:-/tmp}/gpu_check_dry_run.json")
    PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" benchmarks/gpu_check.py --dry-run "${extra[@]}"
    ;;
run)
    shopt -s nullglob
    found=("$WHEELS_DIR"/*.whl)
    if ((${#found[@]} != ${#WHEELS[@]})); then
        echo "gpu_check: expected ${#WHEELS[@]} wheels in $WHEELS_DIR, found ${#found[@]}; run --prepare first" >&2
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site \
        "${found[@]}"
    export PYTHONPATH="/tmp/gpu-check-site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    [[ " ${extra[*]-} " == *" --out "* ]] || extra+=(--out "${OUT:-.}/gpu_check.json")
    timeout 480 "$PYTHON" benchmarks/gpu_check.py "${extra[@]}"
    ;;
esac
