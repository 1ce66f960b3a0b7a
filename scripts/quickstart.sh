#!/usr/bin/env bash
# One command on a fresh CPU machine: tiny model + math CoT data built locally, trained with loss=sft and
# loss=ranktuner through the real verl trainer. Options: --out-dir DIR --losses sft,dft,... --steps N (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
exec .venv/bin/python -m ranktuner_verl.quickstart "$@"
