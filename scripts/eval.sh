#!/usr/bin/env bash
# Evaluate a model on the five math benchmarks: sample, grade (math-verify), Pass@1 / Pass@k -> OUT/<benchmark>/.
#
# Usage: bash scripts/eval.sh MODEL OUT [extra options of `python -m ranktuner_verl.eval run`]
#   MODEL: a Hugging Face model dir, a verl FSDP checkpoint (global_step_N), or a verl checkpoint root
#          (the folder with latest_checkpointed_iteration.txt: its latest step is used).
#          FSDP checkpoints are merged to HF format first (python -m verl.model_merger), into MERGED_DIR.
#   An interrupted evaluation resumes when run again with the same OUT.
# Examples:
#   bash scripts/eval.sh checkpoints/ranktuner-verl/ranktuner results/ranktuner
#   BACKEND=hf N=2 MAX_NEW_TOKENS=64 BENCHMARKS=aime24 LIMIT=3 DATA_DIR=../shared/data/eval \
#       bash scripts/eval.sh /tmp/tiny_model results/tiny
set -euo pipefail

PYTHON=${PYTHON:-python}
BACKEND=${BACKEND:-vllm}                          # vllm (GPUs) or hf (transformers, CPU)
NUM_GPUS=${NUM_GPUS:-$( (nvidia-smi -L 2>/dev/null || true) | wc -l)}
TP=${TP:-1}                                       # vllm: tensor-parallel GPUs per replica
DP=${DP:-$(( NUM_GPUS / TP > 0 ? NUM_GPUS / TP : 1 ))}   # vllm: replicas (default: fill the node)
N=${N:-16}                                        # the paper's evaluation: 16 samples, T=1.0, top_p=1.0, 4096 tokens
TEMPERATURE=${TEMPERATURE:-1.0}
TOP_P=${TOP_P:-1.0}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-4096}
SEED=${SEED:-0}
BENCHMARKS=${BENCHMARKS:-math500,minerva_math,olympiadbench,aime24,amc23}
DATA_DIR=${DATA_DIR:-}                            # folder of local benchmark .jsonl files; empty: the HF hub
LIMIT=${LIMIT:-}                                  # first N problems per benchmark; empty: all

if [ $# -lt 2 ]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
MODEL=${1%/}
OUT=$2
shift 2

# A checkpoint root -> its latest step.
if [ -f "$MODEL/latest_checkpointed_iteration.txt" ]; then
    MODEL="$MODEL/global_step_$(tr -d '[:space:]' < "$MODEL/latest_checkpointed_iteration.txt")"
fi
# A verl FSDP checkpoint -> a merged HF model dir (merged once, into a temporary folder renamed when complete).
if [ -f "$MODEL/fsdp_config.json" ]; then
    MERGED_DIR=${MERGED_DIR:-$MODEL/merged_hf}
    if [ ! -f "$MERGED_DIR/config.json" ]; then
        echo "merging FSDP checkpoint $MODEL -> $MERGED_DIR"
        rm -rf "$MERGED_DIR.partial"
        "$PYTHON" -m verl.model_merger merge --backend fsdp --local_dir "$MODEL" --target_dir "$MERGED_DIR.partial"
        mv "$MERGED_DIR.partial" "$MERGED_DIR"
    fi
    MODEL=$MERGED_DIR
elif [ ! -f "$MODEL/config.json" ]; then
    echo "error: $MODEL is neither a Hugging Face model dir (config.json), a verl FSDP checkpoint" \
         "(fsdp_config.json) nor a checkpoint root (latest_checkpointed_iteration.txt)" >&2
    exit 2
fi

ARGS=(--model "$MODEL" --out "$OUT" --backend "$BACKEND" --benchmarks "$BENCHMARKS" --n "$N"
      --temperature "$TEMPERATURE" --top-p "$TOP_P" --max-new-tokens "$MAX_NEW_TOKENS" --seed "$SEED")
if [ "$BACKEND" = vllm ]; then ARGS+=(--tp "$TP" --dp "$DP"); fi
if [ -n "$DATA_DIR" ]; then ARGS+=(--data-dir "$DATA_DIR"); fi
if [ -n "$LIMIT" ]; then ARGS+=(--limit "$LIMIT"); fi

exec "$PYTHON" -m ranktuner_verl.eval run "${ARGS[@]}" "$@"
