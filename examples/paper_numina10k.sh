#!/usr/bin/env bash
# The paper's SFT run (configs/experiment/paper_numina10k.yaml): NuminaMath-CoT 10k, 4 GPUs, 1 epoch, AdamW lr 5e-5
# betas (0.9, 0.95), wd 0.01, cosine with warmup 0.1, clip 1.0, batch 256, max length 2048. One loss or all:
#     MODEL=Qwen/Qwen3-8B LOSS=ranktuner bash examples/paper_numina10k.sh   (a method of ranktuner_verl.methods, or all)
# Extra Hydra overrides pass through (e.g. loss.base=one). The per-model presets next to this file set MODEL.
# Variables (default):
#   MODEL      the backbone (required)
#   LOSS       one loss or all (ranktuner)
#   NPROC      GPUs (4)
#   DATA_DIR   NuminaMath-CoT 10k, prepared here when missing (data/numina10k)
#   NAME       the project name (from MODEL, e.g. qwen3_8b_numina10k)
#   CKPT_ROOT  checkpoints, one folder per loss (checkpoints/$NAME)
#   PYTHON     the interpreter (.venv/bin/python when .venv exists, else python)
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
help_if_asked "$0" "$@"
use_venv_python
cd "$ROOT"

MODEL=${MODEL:?set MODEL, e.g. Qwen/Qwen3-8B or Qwen/Qwen2.5-Math-7B}
NAME=${NAME:-$(basename "$MODEL" | tr 'A-Z.-' 'a-z__')_numina10k}
DATA_DIR=${DATA_DIR:-data/numina10k}
NPROC=${NPROC:-4}
LOSS=${LOSS:-ranktuner}
CKPT_ROOT=${CKPT_ROOT:-checkpoints/$NAME}

[ -f "$DATA_DIR/train.parquet" ] || "$PYTHON" -m ranktuner_verl.data.numina --out "$DATA_DIR"

losses=("$LOSS")
[ "$LOSS" = all ] && read -ra losses <<< "$(all_methods)"
for loss in "${losses[@]}"; do
    NPROC=$NPROC PYTHON=$PYTHON bash scripts/train.sh experiment=paper_numina10k loss="$loss" model.path="$MODEL" \
        data.train_files="$DATA_DIR/train.parquet" data.val_files="$DATA_DIR/val.parquet" \
        trainer.project_name="$NAME" trainer.default_local_dir="$CKPT_ROOT/$loss" "$@"
done
