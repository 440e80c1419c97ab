#!/usr/bin/env bash
# GPU readiness in one run (at most 10 minutes on one GPU): matmul rate, ResNet-50 224 bf16 img/s and MFU
# against lightly, host syncs, batched augmentation, a 2-minute MoCo v2 run with kNN. Writes
# bench/results_gpu.json (and a copy into $OUT when set). Check it on a CPU first:
#     bash bench/gpu_check.sh --device cpu --dry-run
# It installs nothing: the Python of $PYTHON, else ./.venv, else python3, needs sslhub's dependencies (and
# lightly for the comparison, the `bench` extra; without it those parts are reported as failed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
exec timeout 600 "$PYTHON" bench/gpu_check.py "$@"
