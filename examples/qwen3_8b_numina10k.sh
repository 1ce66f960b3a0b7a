#!/usr/bin/env bash
# The paper's run on Qwen3-8B, 4 GPUs: LOSS=sft|dft|talr|eaft|deft|ranktuner|all bash examples/qwen3_8b_numina10k.sh
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen3-8B} exec bash "$(dirname "$0")/paper_numina10k.sh" "$@"
