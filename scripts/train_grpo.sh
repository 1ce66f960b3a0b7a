#!/usr/bin/env bash
# Token-weighted GRPO/PPO: verl's PPO trainer (Ray; vLLM or sglang rollout on GPUs) with a ranktuner_verl policy loss.
# Usage: bash scripts/train_grpo.sh actor_rollout_ref.actor.policy_loss.loss_mode=ranktuner \
#            actor_rollout_ref.model.path=Qwen/Qwen2.5-Math-1.5B data.train_files=DIR/train.parquet [overrides]
#        (all Hydra overrides of verl's main_ppo pass through; the options: configs/ppo.yaml, docs/rl.md)
# Defaults to GRPO (algorithm.adv_estimator=grpo); a later override wins. Bad options stop before Ray starts.
set -euo pipefail

exec python -m ranktuner_verl.integration.trainer_ppo algorithm.adv_estimator=grpo "$@"
