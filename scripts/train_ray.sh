#!/usr/bin/env bash
# Token-weighted SFT with verl's Ray trainer: one Ray worker per device, on one node or many.
# Local cluster (started for you):
#     NGPUS_PER_NODE=4 bash scripts/train_ray.sh loss=ranktuner model.path=... data.train_files=...
# Existing cluster (any number of nodes), through `ray job submit`:
#     RAY_ADDRESS=http://HEAD:8265 NNODES=2 NGPUS_PER_NODE=8 bash scripts/train_ray.sh loss=ranktuner ...
# The package must be installed on every node (its verl plugin loads in each worker). Overrides pass through.
# A multi-node run needs shared storage: the job runs in Ray's temporary copy of this directory on each node, so with
# RAY_ADDRESS every relative model, data and checkpoint path is made absolute against this directory (and
# trainer.default_local_dir, verl's relative checkpoints/... by default, too); that folder must be on storage every
# node sees (docs/verl_integration.md). The driver refuses relative paths left on a cluster of several nodes.
# The upload leaves out run outputs (checkpoints/, quickstart/, runs/, results/, outputs/, .venv/, ... and the run's
# checkpoint folder): Ray refuses an upload over 100 MiB. Ctrl-C stops following the job's log, not the job: the
# message names `ray job stop --address=... ID`.
# Variables (default):
#   NNODES          nodes (1)
#   NGPUS_PER_NODE  workers per node (the number of visible CUDA GPUs, at least 1)
#   RAY_ADDRESS     a running cluster's dashboard address (empty: start a local cluster)
#   JOB_PYTHON      the interpreter the job runs on the cluster; a relative path is made absolute against this
#                   directory, a bare name is found on the nodes' PATH (PYTHON: this checkout's .venv/bin/python, so
#                   the nodes must see this checkout at the same path, e.g. on shared storage; else name theirs)
#   RAY_AUTH_MODE   (disabled: Ray >= 2.5x otherwise writes ~/.ray/auth_token for a new local cluster)
#   PYTHON          the interpreter here (.venv/bin/python when .venv exists, else python)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
help_if_asked "$0" "$@"
use_venv_python

NNODES=${NNODES:-1}
NGPUS_PER_NODE=${NGPUS_PER_NODE:-$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}
RAY_ADDRESS=${RAY_ADDRESS:-}
JOB_PYTHON=${JOB_PYTHON:-$PYTHON}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}

OVERRIDES=(trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$NGPUS_PER_NODE" "$@")
if [ -z "$RAY_ADDRESS" ]; then
    exec "$PYTHON" -m ranktuner_verl.integration.sft.trainer_ray "${OVERRIDES[@]}"
fi
export RAY_ADDRESS JOB_PYTHON
exec "$PYTHON" -m ranktuner_verl.integration.sft.cluster "${OVERRIDES[@]}"
