#!/usr/bin/env bash
# The paper's run on Qwen3-8B, 4 GPUs: LOSS=<method>|all bash examples/qwen3_8b_numina10k.sh
# Qwen3's chat template adds <think></think> to the last assistant turn only when it renders the whole conversation,
# so verl's dataset (which tokenises turn by turn) would stop at its consistency check: the turn-by-turn tokens are
# used instead (data.ignore_input_ids_mismatch=True). Variables and options: bash examples/paper_numina10k.sh --help
set -euo pipefail
case "${1:-}" in -h|--help) exec bash "$(dirname "$0")/paper_numina10k.sh" --help ;; esac
MODEL=${MODEL:-Qwen/Qwen3-8B} exec bash "$(dirname "$0")/paper_numina10k.sh" data.ignore_input_ids_mismatch=True "$@"
