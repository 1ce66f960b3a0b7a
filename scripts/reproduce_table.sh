#!/usr/bin/env bash
# Reproduce the paper's main table for one backbone: for each loss, train on NuminaMath-CoT, evaluate on the five
# math benchmarks (Pass@1 / Pass@16) once per seed in SEEDS, then collect the table (Markdown, CSV, LaTeX) under
# $WORK/table.*: one row per loss, the mean over its seeds with a 95% interval (docs/data_and_grading.md, "Tables").
#
# Usage: bash scripts/reproduce_table.sh [extra Hydra overrides for every training run]
#   e.g.  BASE_MODEL=Qwen/Qwen2.5-Math-7B NUM_GPUS=4 bash scripts/reproduce_table.sh
#         LOSSES="sft ranktuner" bash scripts/reproduce_table.sh optim.lr=2e-5
# Finished stages are skipped when run again: data (train.parquet), training (only a run that saved its planned last
# step: it writes ranktuner_finished.json; an interrupted one is resumed from its last checkpoint, never evaluated),
# finished samples (evaluation resumes), so the script can simply be run again after an interruption.
# Setup and numbers: docs/methods.md ("The paper's setup"): 4 x A800 80GB, lr 5e-5 cosine, warmup 0.1, batch 256,
# max length 2048, 1 epoch; 16 samples at temperature 1.0, top_p 1.0, 4096 new tokens.
# Variables (default):
#   BASE_MODEL     the backbone (Qwen/Qwen2.5-Math-7B; or Qwen/Qwen3-8B)
#   LOSSES         the losses, space-separated (every method of ranktuner_verl.methods.METHODS)
#   NUM_GPUS       GPUs on this node (the count nvidia-smi lists)
#   WORK           everything this script writes (runs/<model name>)
#   NUMINA_SOURCE  hub id or a local .parquet/.jsonl (AI-MO/NuminaMath-CoT)
#   NUM_ROWS       training rows, the first N (10000)      VAL_SIZE  validation rows (500)
#   BENCHMARKS     (math500,minerva_math,olympiadbench,aime24,amc23)
#   DATA_DIR       local benchmark .jsonl files (empty: the hub)
#   TP             vLLM tensor parallel per replica (1)    EVAL_N  samples per problem (16)
#   SEEDS          evaluation seeds, comma-separated (0,1,2): one result folder per loss and seed,
#                  results/<loss>/seed<S>; the checkpoint is the same (verl's SFT data order is fixed)
#   TABLE_K        the k of Pass@k in the table ("1 16")
#   PYTHON         the interpreter (.venv/bin/python when .venv exists, else python)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
help_if_asked "$0" "$@"
use_venv_python
cd "$ROOT"

BASE_MODEL=${BASE_MODEL:-Qwen/Qwen2.5-Math-7B}   # or Qwen/Qwen3-8B
LOSSES=${LOSSES:-$(all_methods)}
NUM_GPUS=${NUM_GPUS:-$( (nvidia-smi -L 2>/dev/null || true) | wc -l)}
WORK=${WORK:-runs/$(basename "$BASE_MODEL")}    # data/, checkpoints/<loss>/, results/<loss>/, table.{md,csv,tex}
NUMINA_SOURCE=${NUMINA_SOURCE:-AI-MO/NuminaMath-CoT}   # hub id or a local .parquet/.jsonl
NUM_ROWS=${NUM_ROWS:-10000}                      # the paper: the first 10,000 rows
VAL_SIZE=${VAL_SIZE:-500}
BENCHMARKS=${BENCHMARKS:-math500,minerva_math,olympiadbench,aime24,amc23}
DATA_DIR=${DATA_DIR:-}                           # local benchmark .jsonl files; empty: the hub
TP=${TP:-1}                                      # vLLM tensor parallel per replica; replicas fill the node
EVAL_N=${EVAL_N:-16}
SEEDS=${SEEDS:-0,1,2}
TABLE_K=${TABLE_K:-"1 16"}
# The paper's optimisation (verl keys); anything given on the command line is appended and wins.
TRAIN_ARGS=(
    model.path="$BASE_MODEL"
    data.train_batch_size=256
    data.max_length=2048
    data.truncation=right
    trainer.total_epochs=1
    optim.lr=5e-5
    optim.lr_scheduler_type=cosine
    optim.lr_warmup_steps_ratio=0.1
    "optim.betas=[0.9,0.95]"
    optim.weight_decay=0.01
    optim.clip_grad=1.0
    trainer.n_gpus_per_node="$NUM_GPUS"
)

DATA="$WORK/data"
if [ ! -f "$DATA/train.parquet" ]; then
    "$PYTHON" -m ranktuner_verl.data.numina --source "$NUMINA_SOURCE" --num-rows "$NUM_ROWS" \
        --val-size "$VAL_SIZE" --out "$DATA"
fi
VAL_ARGS=()
if [ -f "$DATA/val.parquet" ]; then VAL_ARGS=(data.val_files="$DATA/val.parquet"); fi

RUNS=()
LABELS=()
for LOSS in $LOSSES; do
    CKPT="$WORK/checkpoints/$LOSS"
    if ! "$PYTHON" -m ranktuner_verl.checkpoints --finished "$CKPT" >&2; then
        NPROC=$NUM_GPUS PYTHON=$PYTHON bash scripts/train.sh loss="$LOSS" "${TRAIN_ARGS[@]}" data.train_files="$DATA/train.parquet" \
            "${VAL_ARGS[@]}" trainer.default_local_dir="$CKPT" trainer.experiment_name="$LOSS" "$@"
        "$PYTHON" -m ranktuner_verl.checkpoints --finished "$CKPT" >&2 || {
            echo "error: training $LOSS ended without saving its last step; not evaluating a half-trained model" >&2
            exit 1
        }
    fi
    for SEED in ${SEEDS//,/ }; do
        PYTHON=$PYTHON TP=$TP N=$EVAL_N SEED=$SEED BENCHMARKS=$BENCHMARKS DATA_DIR=$DATA_DIR NUM_GPUS=$NUM_GPUS \
            bash scripts/eval.sh "$CKPT" "$WORK/results/$LOSS/seed$SEED"
        RUNS+=("$WORK/results/$LOSS/seed$SEED")
        LABELS+=("$LOSS")
    done
done

# One row per loss: the folders of its seeds share its label.
# shellcheck disable=SC2086 # TABLE_K is a list of k
"$PYTHON" -m ranktuner_verl.eval table "${RUNS[@]}" --labels "$(IFS=,; echo "${LABELS[*]}")" --k $TABLE_K \
    --out "$WORK/table"
