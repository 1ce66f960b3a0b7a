#!/usr/bin/env bash
# One command on a fresh CPU machine: tiny model + math CoT data built locally, trained with loss=sft and
# loss=ranktuner through the real verl trainer. Runs scripts/setup.sh first when .venv is missing.
# Usage: bash scripts/quickstart.sh [--out DIR] [--methods sft,dft,...] [--steps N] [--examples N] [--batch N]
#        [--nproc N]    (DIR is relative to where you run the command; default ./quickstart)
#        bash scripts/quickstart.sh --rl [--steps N] [--modes vanilla,ranktuner] [--out DIR]
#               GRPO instead: verl's PPO trainer with the CPU rollout on a toy task; per-step table, reward PNG
# Variables: none (setup's TORCH_SPEC and EXTRAS apply when it runs setup).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
for arg in "$@"; do
    case "$arg" in -h|--help)  # the options with their defaults (--rl --help: the RL ones), without setting up
        if [ -x "$ROOT/.venv/bin/python" ]; then exec "$ROOT/.venv/bin/python" -m ranktuner_verl.quickstart "$@"; fi
        help_if_asked "$0" --help ;;
    esac
done
[ -x "$ROOT/.venv/bin/python" ] || bash "$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/python" -m ranktuner_verl.quickstart "$@"
