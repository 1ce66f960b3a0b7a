#!/usr/bin/env bash
# Token-weighted SFT with verl's Ray trainer: one Ray worker per device, on one node or many.
# Local cluster (started for you):
#     NGPUS_PER_NODE=4 bash scripts/train_ray.sh loss=ranktuner model.path=... data.train_files=...
# Existing cluster (any number of nodes), through `ray job submit`:
#     RAY_ADDRESS=http://HEAD:8265 NNODES=2 NGPUS_PER_NODE=8 bash scripts/train_ray.sh loss=ranktuner ...
# The package must be installed on every node (its verl plugin loads in each worker). Overrides pass through.
set -euo pipefail

NNODES=${NNODES:-1}
NGPUS_PER_NODE=${NGPUS_PER_NODE:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
RAY_ADDRESS=${RAY_ADDRESS:-}
# Ray >= 2.5x writes ~/.ray/auth_token for a new local cluster unless told not to.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}

TRAIN=(python -m ranktuner_verl.integration.trainer_ray
       trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$NGPUS_PER_NODE" "$@")

if [ -n "$RAY_ADDRESS" ]; then
    exec ray job submit --address="$RAY_ADDRESS" --working-dir=. -- "${TRAIN[@]}"
else
    exec "${TRAIN[@]}"
fi
