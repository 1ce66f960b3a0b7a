"""The SFT trainers' config: ``configs/sft.yaml`` (verl's ``sft_trainer_engine`` plus the ``loss`` group), composed
as the trainers compose it, the loss it names, and the CPU platform's defaults."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from ranktuner_verl.integration import CONFIGS, platform_cpu
from ranktuner_verl.integration.sft.loss import WeightedSFTLoss
from ranktuner_verl.methods import METHODS

CONFIG_DIR = CONFIGS  # absolute: Hydra takes it as it is
CONFIG_NAME = "sft"


def compose_config(overrides: list[str]) -> DictConfig:
    """Our SFT config (``configs/sft.yaml``) with Hydra ``overrides``, as ``python -m ...trainer`` would compose it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name=CONFIG_NAME, overrides=overrides)


def build_loss(config: DictConfig) -> WeightedSFTLoss:
    """The loss named by ``config.loss`` (``name`` plus the method's parameters; null: the default in code, the
    loss YAMLs name the method only); ValueError on bad input."""
    params = {k: v for k, v in OmegaConf.to_container(config.loss, resolve=True).items() if v is not None}
    name = params.pop("name", None)
    if name is None:
        raise ValueError(f"config.loss has no `name`: choose one with loss={'|'.join(METHODS)}")
    return WeightedSFTLoss(name, **params)


def apply_cpu_defaults(config: DictConfig) -> None:
    """On the CPU platform: device cpu, FSDP2 (FSDP1 refuses CPU parameters), SDPA attention (no flash-attn).
    The Ray driver calls it once connected, when the CPU platform knows whether the cluster has accelerators."""
    if not platform_cpu.active():
        return
    with open_dict(config):
        config.trainer.device = "cpu"
        if config.engine.strategy == "fsdp":
            config.engine.strategy = "fsdp2"
        config.model.override_config.setdefault("attn_implementation", "sdpa")
