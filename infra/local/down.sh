#!/usr/bin/env bash
# Stop the local stack started by up.sh (both process groups) and remove its MLflow database
# (the S3 endpoint kept everything in memory); --keep-db keeps .tmp/local-stack/mlflow.db.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
exec "$PY" -m infra.local.stack down "$@"
