#!/usr/bin/env bash
# The paper's run on Qwen2.5-Math-7B, 4 GPUs: LOSS=<method>|all bash examples/qwen2_5_math_7b_numina10k.sh
# Variables and options: bash examples/paper_numina10k.sh --help
set -euo pipefail
case "${1:-}" in -h|--help) exec bash "$(dirname "$0")/paper_numina10k.sh" --help ;; esac
MODEL=${MODEL:-Qwen/Qwen2.5-Math-7B} exec bash "$(dirname "$0")/paper_numina10k.sh" "$@"
