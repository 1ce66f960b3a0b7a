"""Hydra composes verl's ``ppo_trainer`` with the token-weight options (``configs/ppo.yaml``); bad options and
settings that would defeat the weights fail at start-up, naming the valid values or the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, InstantiationException
from omegaconf import open_dict

import ranktuner_verl.integration as integration
from ranktuner_verl.integration.rl.policy_loss import (HIGH_ENTROPY_PARAMS, OPTIONS, weighted_modes,
                                                    TokenWeightedPolicyLossConfig, check_ppo_config, weighted_policy_loss)
from ranktuner_verl.methods import METHODS

CONFIGS = Path(integration.__file__).parent / "configs"
MODE = "actor_rollout_ref.actor.policy_loss.loss_mode"
OPTION = "actor_rollout_ref.actor.policy_loss.token_weight."


def _compose(*overrides, config="ppo"):
    import verl  # noqa: F401  (the plugin, as in main_ppo)

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name=config, overrides=list(overrides))


def _actor_config(config):
    """The actor config as verl's worker builds it (``engine_workers.ActorRolloutRefWorker``)."""
    from verl.utils.config import omega_conf_to_dataclass

    with open_dict(config):
        config.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu = 2  # what a launch script sets
    return omega_conf_to_dataclass(config.actor_rollout_ref.actor)


def test_ranktuner_options_compose_and_build_the_actor_config():
    config = _compose(f"{MODE}=ranktuner", f"{OPTION}form=exact", f"{OPTION}apply_to=positive")
    check_ppo_config(config)
    policy_loss = _actor_config(config).policy_loss
    assert isinstance(policy_loss, TokenWeightedPolicyLossConfig)
    from ranktuner_verl.integration.rl.policy_loss import options_of

    options = options_of(policy_loss)
    assert options.method.params["form"] == "exact" and options.method.params["base"] == "one"  # RL default
    assert options.apply_to == "positive" and options.base_loss == "vanilla" and options.clamp_max == 2.0
    assert options.mean_one  # the RL default: the update keeps vanilla's scale (docs/rl.md)
    assert not options_of(_actor_config(_compose(f"{MODE}=high_entropy")).policy_loss).mean_one  # a plain 0/1 mask
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    assert get_policy_loss_fn("ranktuner") is weighted_policy_loss  # registered when verl imported core_algos


def test_the_yaml_lists_exactly_the_options_of_every_mode():
    config = _compose()
    listed = set(config.actor_rollout_ref.actor.policy_loss.token_weight)
    expected = set(OPTIONS) | set(HIGH_ENTROPY_PARAMS)
    for mode in weighted_modes():
        expected |= set(METHODS[mode].params)
    assert listed == expected


@pytest.mark.parametrize("overrides,message", [
    ((f"{OPTION}form=fast",), "form='fast' is not valid; use one of 'practical', 'exact'"),
    ((f"{OPTION}rho=0.3",), "unknown token_weight option(s) ['rho']; valid: base_loss"),
    ((f"{OPTION}clamp_min=3",), "clamp_min=3.0 exceeds clamp_max=2.0"),
    ((f"{OPTION}base_loss=geo_mean",), "base_loss='geo_mean' is not valid; use one of 'vanilla'"),
    (("actor_rollout_ref.model.use_fused_kernels=True", "actor_rollout_ref.model.fused_kernel_options.impl_backend=triton"),
     "impl_backend='triton' computes the log-probs in a kernel that the token statistics cannot share"),
    (("algorithm.rollout_correction.bypass_mode=True", "trainer.use_v1=False"),
     "bypass_mode=True with trainer.use_v1=False: verl's v0 trainer replaces policy_loss.loss_mode"),
])
def test_a_bad_setting_fails_at_start_up_naming_the_fix(overrides, message):
    config = _compose(f"{MODE}=ranktuner", *overrides)
    with pytest.raises(ValueError) as error:
        check_ppo_config(config)
    assert message in str(error.value)


def test_bypass_mode_under_the_default_v1_trainer_keeps_the_loss_mode():
    """verl 0.9.1's v1 trainer (trainer.use_v1=True, the default) takes old_log_probs from the rollout in bypass mode
    and never touches the loss mode; only the v0 trainer's ``apply_bypass_mode`` swaps it for 'bypass_mode'."""
    import verl

    def source(module):  # read, not imported: the v1 trainer imports the rollout servers' dependencies
        return (Path(verl.__file__).parent / module).with_suffix(".py").read_text()

    config = _compose(f"{MODE}=ranktuner", "algorithm.rollout_correction.bypass_mode=True")
    assert config.trainer.use_v1
    check_ppo_config(config)
    policy_loss = _actor_config(config).policy_loss
    assert isinstance(policy_loss, TokenWeightedPolicyLossConfig) and policy_loss.loss_mode == "ranktuner"
    v0, v1 = source("trainer/ppo/ray_trainer"), source("trainer/ppo/v1/trainer_base")
    assert "apply_bypass_mode" in v0 and "apply_bypass_mode" not in v1 and "loss_mode" not in v1


def test_a_mistyped_loss_mode_is_refused_at_start_up_listing_the_valid_ones():
    for config in (_compose(f"{MODE}=ranktunr"), _compose(f"{MODE}=vanila")):
        with pytest.raises(ValueError) as error:
            check_ppo_config(config)
        message = str(error.value)
        assert "is not a policy loss; valid: verl's" in message
        assert all(mode in message for mode in (*weighted_modes(), "vanilla", "gspo", "bypass_mode"))
    with pytest.raises(InstantiationException, match="'ranktunr' is not a policy loss"):
        _actor_config(_compose(f"{MODE}=ranktunr"))  # and where the worker builds its config


def test_the_missing_statistics_error_names_only_settings_verl_has():
    """The error once names ``trainer.use_legacy_worker_impl``, which verl 0.9.1 does not have."""
    from hydra import initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        stock = compose(config_name="ppo_trainer")
    config = _actor_config(_compose(f"{MODE}=dft"))
    with pytest.raises(RuntimeError) as error:
        weighted_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), config=config)
    named = re.findall(r"\b((?:trainer|actor_rollout_ref)\.[\w.]+)=", str(error.value))
    assert named == ["actor_rollout_ref.actor.strategy"] or not named
    assert "actor_rollout_ref.actor.strategy" in str(error.value)
    assert "use_legacy_worker_impl" not in str(error.value) and "use_legacy_worker_impl" not in str(stock.trainer)


def test_fused_kernels_with_the_torch_backend_pass_the_checks():
    check_ppo_config(_compose(f"{MODE}=ranktuner", "actor_rollout_ref.model.use_fused_kernels=True"))


def test_an_engine_other_than_fsdp_is_refused():
    config = _compose(f"{MODE}=dft")
    with open_dict(config):
        config.actor_rollout_ref.actor.strategy = "megatron"
    with pytest.raises(ValueError, match="strategy=megatron: the statistics are computed in verl's FSDP engine"):
        check_ppo_config(config)


def test_a_bad_option_also_fails_where_the_worker_builds_its_config():
    with pytest.raises(InstantiationException, match="top_k=0 is out of range"):
        _actor_config(_compose(f"{MODE}=eaft", f"{OPTION}top_k=0"))
    with pytest.raises(InstantiationException, match="token_weight is set but policy_loss.loss_mode='bypass_mode' ignores it"):
        _actor_config(_compose(f"{MODE}=bypass_mode", f"{OPTION}clamp_max=3"))


def test_an_unknown_option_name_fails_in_hydra():
    with pytest.raises(ConfigCompositionException):
        _compose(f"{MODE}=ranktuner", f"{OPTION}forms=exact")


def test_verls_own_ppo_config_builds_as_before():
    from hydra import initialize_config_module
    from verl.workers.config import PolicyLossConfig

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        stock = compose(config_name="ppo_trainer")
    check_ppo_config(stock)  # vanilla: nothing to check
    policy_loss = _actor_config(stock).policy_loss
    assert type(policy_loss) is PolicyLossConfig and policy_loss.loss_mode == "vanilla"


def test_train_grpo_script_stops_on_a_bad_option_before_ray_starts(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(integration.__file__).parents[2]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(root / "scripts/train_grpo.sh"), f"{MODE}=ranktuner", f"{OPTION}base=two"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode != 0
    assert "base='two' is not valid; use one of 'p', 'one'" in result.stderr
    assert "Ray instance" not in result.stdout + result.stderr  # stopped before Ray started
