#!/usr/bin/env bash
# Token-weighted SFT on one node with torchrun (verl's SPMD SFT trainer + the ranktuner_verl loss).
# Usage: bash scripts/train.sh loss=ranktuner model.path=Qwen/Qwen3-8B data.train_files=DIR/train.parquet [overrides]
#        NPROC=4 bash scripts/train.sh ...       (all Hydra overrides pass through; see configs/sft.yaml, configs/loss/)
# The start-up checks run once first (python -m ranktuner_verl.integration.sft.checks): a bad option or bad input stops
# before torchrun starts its ranks, with its message on the last line.
# Variables (default):
#   NPROC        processes on this node (the number of visible CUDA GPUs, at least 1)
#   MASTER_PORT  torchrun's port (29500)
#   PYTHON       the interpreter (.venv/bin/python when .venv exists, else python)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
help_if_asked "$0" "$@"
use_venv_python

NPROC=${NPROC:-$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
MASTER_PORT=${MASTER_PORT:-29500}

"$PYTHON" -m ranktuner_verl.integration.sft.checks "$@"
RANKTUNER_VERL_CHECKED=1 exec "$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node="$NPROC" \
    --master_port="$MASTER_PORT" -m ranktuner_verl.integration.sft.trainer "$@"
