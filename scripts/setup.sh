#!/usr/bin/env bash
# Creates .venv and installs the project. torch==2.13.0 goes in first, so that nothing resolved
# afterwards pulls another torch. Which build it is depends on where pip looks (`pip config list`):
# plain PyPI's Linux wheel is the CUDA build; for the CPU build set TORCH_INDEX_URL to PyTorch's
# CPU wheel index. The last line says which build was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[all]"
.venv/bin/python -c "import torch, cgsgan; print('setup ok: torch', torch.__version__,
      f'(CUDA {torch.version.cuda} build)' if torch.version.cuda else '(CPU build)')"
