#!/usr/bin/env bash
# Evaluate a model on benchmarks (math; ARC-C, GPQA-D, HumanEval on request): sample, grade, Pass@k -> OUT/<bench>/.
#
# Usage: bash scripts/eval.sh MODEL OUT [extra options of `python -m ranktuner_verl.eval run`]
#   MODEL: a Hugging Face model dir, a verl FSDP checkpoint (global_step_N), a verl checkpoint root (the folder
#          with latest_checkpointed_iteration.txt: its latest step), or a LoRA run (the adapter is merged in).
#          Checkpoints are merged to HF format first, once, into WORK_DIR (ranktuner_verl.checkpoints).
#   An interrupted evaluation resumes when run again with the same OUT.
#   bash scripts/eval.sh -h | --help: this text and the variables below with their defaults; does nothing else.
# Examples:
#   bash scripts/eval.sh checkpoints/ranktuner-verl/ranktuner results/ranktuner
#   BACKEND=hf N=2 MAX_NEW_TOKENS=64 BENCHMARKS=aime24 LIMIT=3 DATA_DIR=../shared/data/eval \
#       bash scripts/eval.sh /tmp/tiny_model results/tiny
set -euo pipefail

# Environment variables (name, default, meaning), read below and printed by --help.
VARIABLES=(
    "PYTHON|python|the Python that has ranktuner_verl (.venv/bin/python when it exists)"
    "BACKEND|vllm|vllm (GPUs) or hf (transformers, CPU)"
    "NUM_GPUS|nvidia-smi -L count|GPUs on this node"
    "TP|1|vllm: tensor-parallel GPUs per replica"
    "DP|NUM_GPUS / TP|vllm: replicas (default: fill the node)"
    "N|16|samples per problem (the paper: 16 at T=1.0, top_p=1.0, 4096 new tokens)"
    "TEMPERATURE|1.0|sampling temperature (0: greedy)"
    "TOP_P|1.0|nucleus sampling"
    "MAX_NEW_TOKENS|4096|new tokens per sample (capped by the model's context; recorded in generation.json)"
    "SEED|0|run seed (one seed per problem is derived from it)"
    "BENCHMARKS|the five math benchmarks|comma-separated names (python -m ranktuner_verl.eval run --help lists them)"
    "GRADER|math-verify|math grader: math-verify or qwen (the Qwen2.5-Math harness's rules)"
    "DATA_DIR||folder of local benchmark .jsonl files; empty: the Hugging Face hub"
    "LIMIT||first N problems per benchmark; empty: all"
    "WORK_DIR||where merged checkpoints go; empty: beside the checkpoint"
    "ALLOW_UNISOLATED_CODE|0|1: run HumanEval programs even where bubblewrap/unshare cannot isolate them (unsafe)"
)

usage() {
    sed -n '2,13p' "$0"
    echo "Environment variables (default):"
    for entry in "${VARIABLES[@]}"; do
        IFS='|' read -r name default meaning <<< "$entry"
        printf '  %-22s %-28s %s\n' "$name" "${default:-(empty)}" "$meaning"
    done
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
if [ $# -lt 2 ]; then
    usage >&2
    exit 2
fi

source "$(dirname "$0")/lib.sh"
use_venv_python
BACKEND=${BACKEND:-vllm}
NUM_GPUS=${NUM_GPUS:-$( (nvidia-smi -L 2>/dev/null || true) | wc -l)}
TP=${TP:-1}
DP=${DP:-$(( NUM_GPUS / TP > 0 ? NUM_GPUS / TP : 1 ))}
N=${N:-16}
TEMPERATURE=${TEMPERATURE:-1.0}
TOP_P=${TOP_P:-1.0}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-4096}
SEED=${SEED:-0}
BENCHMARKS=${BENCHMARKS:-}
GRADER=${GRADER:-math-verify}
DATA_DIR=${DATA_DIR:-}
LIMIT=${LIMIT:-}
WORK_DIR=${WORK_DIR:-}
ALLOW_UNISOLATED_CODE=${ALLOW_UNISOLATED_CODE:-0}

MODEL=$1
OUT=$2
shift 2

ARGS=(--model "$MODEL" --out "$OUT" --backend "$BACKEND" --n "$N" --temperature "$TEMPERATURE" --top-p "$TOP_P"
      --max-new-tokens "$MAX_NEW_TOKENS" --seed "$SEED" --grader "$GRADER")
if [ "$BACKEND" = vllm ]; then ARGS+=(--tp "$TP" --dp "$DP"); fi
if [ -n "$BENCHMARKS" ]; then ARGS+=(--benchmarks "$BENCHMARKS"); fi
if [ -n "$DATA_DIR" ]; then ARGS+=(--data-dir "$DATA_DIR"); fi
if [ -n "$LIMIT" ]; then ARGS+=(--limit "$LIMIT"); fi
if [ -n "$WORK_DIR" ]; then ARGS+=(--work-dir "$WORK_DIR"); fi
if [ "$ALLOW_UNISOLATED_CODE" = 1 ]; then ARGS+=(--allow-unisolated-code); fi

exec "$PYTHON" -m ranktuner_verl.eval run "${ARGS[@]}" "$@"
