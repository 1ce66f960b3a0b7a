#!/usr/bin/env bash
# Token-weighted GRPO/PPO: verl's PPO trainer (Ray; vLLM or sglang rollout on GPUs, the plugin's hf rollout on a CPU)
# with a ranktuner_verl policy loss.
# Usage: bash scripts/train_grpo.sh actor_rollout_ref.actor.policy_loss.loss_mode=ranktuner \
#            actor_rollout_ref.model.path=Qwen/Qwen2.5-Math-1.5B data.train_files=DIR/train.parquet [overrides]
# All Hydra overrides of verl's main_ppo pass through; the token-weight options: configs/ppo.yaml, docs/rl.md.
# GRPO advantages by default (algorithm.adv_estimator=grpo; a later override wins). A bad option, fused kernels, a
# non-FSDP actor or rollout-correction bypass stop before Ray starts.
# Variables (default):
#   PYTHON       the interpreter (.venv/bin/python when .venv exists, else python)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
help_if_asked "$0" "$@"
use_venv_python

exec "$PYTHON" -m ranktuner_verl.integration.rl.trainer algorithm.adv_estimator=grpo "$@"
