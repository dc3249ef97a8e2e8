#!/usr/bin/env bash
# Start the local stack in the background: S3 endpoint (moto) on 127.0.0.1:9000 with bucket
# `cgsgan`, MLflow on 127.0.0.1:5000 (artifacts proxied to s3://cgsgan/mlflow); pid files and
# logs under .tmp/local-stack/. Prints the export lines; to use them in this shell:
#   eval "$(infra/local/up.sh)"
# Options are passed on: --s3-port N --mlflow-port N --state-dir DIR --bucket NAME.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
exec "$PY" -m infra.local.stack up "$@"
