#!/usr/bin/env bash
# Token-weighted SFT on one node with torchrun (verl's SPMD SFT trainer + the ranktuner_verl loss).
# Usage: bash scripts/train.sh loss=ranktuner model.path=Qwen/Qwen3-8B data.train_files=DIR/train.parquet [overrides]
#        NPROC=4 bash scripts/train.sh ...       (all Hydra overrides pass through; see configs/sft.yaml, configs/loss/)
set -euo pipefail

NPROC=${NPROC:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
MASTER_PORT=${MASTER_PORT:-29500}

exec torchrun --standalone --nnodes=1 --nproc_per_node="$NPROC" --master_port="$MASTER_PORT" \
    -m ranktuner_verl.integration.trainer "$@"
