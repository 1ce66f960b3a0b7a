"""PPO/GRPO with token-weighted policy losses: verl 0.9.1's ``main_ppo`` on ``configs/ppo.yaml``, after the
start-up checks of ``policy_loss.check_ppo_config`` (docs/rl.md). Every Hydra override of ``main_ppo`` works here.

    python -m ranktuner_verl.integration.rl.trainer actor_rollout_ref.actor.policy_loss.loss_mode=ranktuner ...
"""

from __future__ import annotations

import hydra

from ranktuner_verl.integration import CONFIGS


@hydra.main(config_path=CONFIGS, config_name="ppo", version_base=None)
def main(config) -> None:
    from verl.trainer import main_ppo

    from ranktuner_verl.integration.rl.policy_loss import check_ppo_config

    check_ppo_config(config)
    main_ppo.main.__wrapped__(config)  # verl's own entry, minus its @hydra.main


if __name__ == "__main__":
    main()
