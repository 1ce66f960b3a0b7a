#!/usr/bin/env bash
# Create .venv (if missing) and install the package with its test extra, CPU torch first. The other scripts use
# .venv/bin/python when .venv exists, so nothing needs activating.
# Usage: bash scripts/setup.sh            (CPU machine: torch 2.13.0 CPU build)
#        TORCH_SPEC="torch==2.11.0" EXTRAS=test,gpu bash scripts/setup.sh   (another torch, e.g. a CUDA build)
# Variables (default):
#   PYTHON      the interpreter that creates .venv (python3)
#   TORCH_SPEC  the torch requirement installed first (torch==2.13.0)
#   EXTRAS      the package extras (test; add gpu on a GPU cluster: vLLM, flash-attn)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
help_if_asked "$0" "$@"
cd "$ROOT"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-test}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=77"
# torch before anything that depends on it: a bare `torch` requirement would pull a CUDA build.
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[${EXTRAS}]"
command -v bwrap >/dev/null || echo "notice: bubblewrap (bwrap) is missing; HumanEval grading falls back to unshare," \
    "or refuses without isolation. Install it (root): apt-get install bubblewrap. See docs/data_and_grading.md."
echo "ready: $(.venv/bin/python -c 'import torch, verl; print("torch", torch.__version__, "| verl", verl.__version__)')"
