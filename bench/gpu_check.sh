#!/usr/bin/env bash
# GPU readiness in one run (at most 10 minutes on one GPU): matmul rate, ResNet-50 224 bf16 img/s and MFU
# against lightly, host syncs, batched augmentation, a 2-minute MoCo v2 run with kNN. Writes
# bench/results_gpu.json (and a copy into $OUT when set). Check it on a CPU first:
#     bash bench/gpu_check.sh --device cpu --dry-run
# It installs nothing from the network: the Python of $PYTHON, else ./.venv, else python3, needs sslhub's
# dependencies (and lightly for the comparison, the `bench` extra; without it those parts are reported as
# failed). On a machine without PyPI, `python bench/gpu_kit.py` (run where PyPI answers) packs the missing
# ones as wheels into .gpu/, with the CIFAR-10 data: this script installs them into a temporary folder when
# its Python lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
# The kit, where this Python lacks sslhub's dependencies (datasets is the one the GPU image lacks).
if compgen -G ".gpu/wheels/*.whl" >/dev/null && ! "$PYTHON" -c "import datasets" 2>/dev/null; then
    site="$(mktemp -d)"
    if "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" .gpu/wheels/*.whl; then
        export PYTHONPATH="$PYTHONPATH:$site"  # the kit holds only what the machine lacks: it shadows nothing
        echo "installed $(ls .gpu/wheels | wc -l) wheels of .gpu/wheels into $site"
    else
        echo "warning: the wheels of .gpu/wheels do not install here (made for another Python?); going on without them" >&2
    fi
fi
if [ -f .gpu/cifar10/train.parquet ] && [ -z "${SSLHUB_CIFAR10:-}" ]; then
    export SSLHUB_CIFAR10="$PWD/.gpu/cifar10/train.parquet"
fi
exec timeout 600 "$PYTHON" bench/gpu_check.py "$@"
