#!/usr/bin/env bash
# The GPU check, in one go (at most ~8 minutes on one GPU): the CUDA tests, the
# fusion self-check of every architecture (bf16 and fp32), a short bf16 lineage
# on CIFAR-shaped data, `bench` figures on CUDA (fused K = 4/8/16 against K solo
# lineages in sequence and K packed processes). Writes one JSON file,
# $OUT/gpu_check.json by default; exits 1 when a part fails, no CUDA test was
# collected, or a round trained no epoch. `--smoke` for toy sizes (what CI runs,
# on the CPU).
#
#   bash bench/gpu_check.sh [--smoke] [--out FILE] [--only PART...]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m bench.gpu_check "$@"
