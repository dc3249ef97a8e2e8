#!/usr/bin/env bash
# Sets up the project (scripts/setup.sh) and runs the whole test suite, slow integration tests
# included. The integration tests start their own services (moto S3, mlflow server, Ray) on
# 127.0.0.1 and stop them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONHASHSEED=0
# Keep the synthetic-data cache inside the checkout so CI runs start clean.
export CGSGAN_DATA_CACHE="${CGSGAN_DATA_CACHE:-$PWD/.tmp/data-cache}"
# ... and the compiled CPU renderer's cache, so each run builds it once (about a second).
export CGSGAN_KERNEL_CACHE="${CGSGAN_KERNEL_CACHE:-$PWD/.tmp/kernels}"
exec .venv/bin/python -m pytest -q "$@"
