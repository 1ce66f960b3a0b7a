#!/usr/bin/env bash
# GRPO on GSM8K with token weights in the policy loss, one node of GPUs, vLLM rollout (docs/rl.md):
#     LOSS_MODE=ranktuner bash examples/grpo_gsm8k_ranktuner.sh [extra Hydra overrides]
# Data: verl's own GSM8K preprocessing (verl repository, examples/data_preprocess/gsm8k.py --local_save_dir DIR)
# writes DIR/train.parquet and DIR/test.parquet with the prompt, data_source and ground truth verl's reward reads.
# Variables (default):
#   MODEL        the policy (Qwen/Qwen2.5-Math-1.5B)
#   DATA_DIR     verl's GSM8K parquet files ($HOME/data/gsm8k)
#   NGPUS        GPUs on the node (8)
#   LOSS_MODE    a method of ranktuner_verl.methods but sft, or high_entropy; vanilla: stock verl (ranktuner)
#   PYTHON       the interpreter (.venv/bin/python when .venv exists, else python)
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
help_if_asked "$0" "$@"

MODEL=${MODEL:-Qwen/Qwen2.5-Math-1.5B}
DATA_DIR=${DATA_DIR:-$HOME/data/gsm8k}
NGPUS=${NGPUS:-8}
LOSS_MODE=${LOSS_MODE:-ranktuner}
if [ ! -f "$DATA_DIR/train.parquet" ]; then
    echo "no $DATA_DIR/train.parquet: run verl's examples/data_preprocess/gsm8k.py --local_save_dir $DATA_DIR" >&2
    exit 1
fi

exec bash "$ROOT/scripts/train_grpo.sh" \
    actor_rollout_ref.actor.policy_loss.loss_mode="$LOSS_MODE" \
    data.train_files="$DATA_DIR/train.parquet" data.val_files="$DATA_DIR/test.parquet" \
    data.train_batch_size=256 data.max_prompt_length=512 data.max_response_length=1024 \
    actor_rollout_ref.model.path="$MODEL" actor_rollout_ref.model.use_remove_padding=True \
    actor_rollout_ref.actor.optim.lr=1e-6 actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 actor_rollout_ref.actor.use_kl_loss=True \
    actor_rollout_ref.actor.kl_loss_coef=0.001 actor_rollout_ref.actor.kl_loss_type=low_var_kl \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.rollout.name=vllm actor_rollout_ref.rollout.n=5 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16 \
    algorithm.use_kl_in_reward=False \
    trainer.logger='[console]' trainer.project_name=ranktuner_grpo trainer.experiment_name="gsm8k_$LOSS_MODE" \
    trainer.n_gpus_per_node="$NGPUS" trainer.nnodes=1 trainer.save_freq=50 trainer.test_freq=10 \
    trainer.total_epochs=15 "$@"
