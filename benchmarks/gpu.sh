#!/usr/bin/env bash
# One CUDA GPU, under 8 minutes (gsplat's kernels built on first use included):
#   1. the CUDA tests (tests/gpu): gsplat against the CPU rasterizer, images and gradients, on
#      random and head-shaped multi-view scenes; training steps of the 512 config with gsplat, in
#      float32 and with bf16 autocast. Nothing is skipped: CGSGAN_REQUIRE_CUDA=1 turns "no CUDA"
#      into failures;
#   2. images/s and peak GPU memory of the 512 config (batch 8, 4 views), against the
#      reference's ~14.5 images/s per H100 (target 1.5x);
#   3. everything into benchmarks/results/gpu.md, with the machine described.
# Run it with the Python that has CUDA torch and gsplat (the training image's), e.g.
#   bash benchmarks/gpu.sh                    # python3 on PATH
#   PYTHON=/opt/venv/bin/python bash benchmarks/gpu.sh
# Exit status: 0 when the tests passed and the timing ran.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
start=$(date +%s)
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "benchmarks/gpu.sh: $PY has no CUDA device (torch.cuda.is_available() is False)" >&2
  exit 2
fi
if ! "$PY" -c "import pytest" 2>/dev/null; then
  echo "benchmarks/gpu.sh: $PY has no pytest (the training image installs no dev tools): $PY -m pip install pytest" >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CGSGAN_REQUIRE_CUDA=1 CGSGAN_GPU_DATA="$work/heads512" PYTHONUNBUFFERED=1
"$PY" -m pytest tests/gpu -v -rs -p no:cacheprovider --junitxml="$work/gpu-tests.xml" -o junit_family=xunit1
tests_rc=$?
"$PY" benchmarks/gpu.py --junit "$work/gpu-tests.xml" --data "$work/heads512"
bench_rc=$?
echo "benchmarks/gpu.sh: tests exit $tests_rc, timing exit $bench_rc, $(( $(date +%s) - start )) s in all"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
