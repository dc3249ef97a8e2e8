#!/usr/bin/env bash
# Creates .venv and installs the project. torch==2.13.0 (CPU) goes in first so that nothing
# resolved afterwards can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[all]"
.venv/bin/python -c "import torch, cgsgan; print('setup ok: torch', torch.__version__)"
