"""SFT with a token-weighted loss through verl's Ray trainer (a driver plus one Ray worker per device).

    python -m ranktuner_verl.integration.trainer_ray trainer.n_gpus_per_node=4 trainer.nnodes=1 loss=ranktuner ...

``RankTunerRaySFTTrainer`` extends ``verl.trainer.sft_trainer_ray.SFTTrainer`` the same way the torchrun trainer does:
our loss is sent to every worker (the workers load the plugin, hence the engine hook, when they import verl) and the
per-step metrics are reduced on the driver. Connects to the cluster in ``RAY_ADDRESS`` (``ray job submit``), or
starts a local one.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ranktuner_verl.integration.trainer import (
    CONFIG_DIR, CONFIG_NAME, StepMetricsClient, apply_cpu_defaults, prepare, use_weighted_loss, with_reduced_metrics,
)

from verl.trainer.sft_trainer_ray import SFTTrainer as VerlRaySFTTrainer  # noqa: E402  (after the plugin)


class RankTunerRaySFTTrainer(VerlRaySFTTrainer):
    """verl's Ray SFT trainer with the loss named by ``config.loss``."""

    def _build_engine(self):
        super()._build_engine()
        use_weighted_loss(self, _StepMetricsWorkerGroup)


class _StepMetricsWorkerGroup(StepMetricsClient):
    """A Ray worker group: ``train_batch`` returns a future, whose result carries our metrics reduced per step."""

    @staticmethod
    def _reduced(future, started: float):
        return _ReducedOnGet(future, started)


class _ReducedOnGet:
    def __init__(self, future, started: float):
        self._future, self._started = future, started

    def get(self):
        return with_reduced_metrics(self._future.get(), self._started)


def run(config: DictConfig) -> None:
    import ray
    from verl.utils.device import auto_set_device

    prepare(config, for_workers=True)
    if not ray.is_initialized():
        ray.init()
    # only now: on a CPU head node the CPU platform stays active until ray.init shows the cluster's GPUs
    apply_cpu_defaults(config)
    auto_set_device(config)
    RankTunerRaySFTTrainer(config=config).fit()


@hydra.main(config_path=CONFIG_DIR, config_name=CONFIG_NAME, version_base=None)
def main(config: DictConfig) -> None:
    run(config)


if __name__ == "__main__":
    main()
