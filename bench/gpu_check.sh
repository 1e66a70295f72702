#!/usr/bin/env bash
# The GPU check, in one go (at most ~8 minutes on one GPU): CUDA tests, a short
# bf16 lineage on CIFAR-shaped data, `bench` figures on CUDA (packed 4
# processes, fused K = 4/8/16). Writes one JSON file, $OUT/gpu_check.json by
# default; `--smoke` for toy sizes (what CI runs, on the CPU).
#
#   bash bench/gpu_check.sh [--smoke] [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m bench.gpu_check "$@"
