"""SFT with a token-weighted loss through verl's Ray trainer (a driver plus one Ray worker per device).

    python -m ranktuner_verl.integration.sft.trainer_ray trainer.n_gpus_per_node=4 trainer.nnodes=1 loss=ranktuner ...

``RankTunerRaySFTTrainer`` extends ``verl.trainer.sft_trainer_ray.SFTTrainer`` the same way the torchrun trainer does:
our loss is sent to every worker (the workers load the plugin, hence the engine hook, when they import verl) and the
per-step metrics are reduced on the driver. Connects to the cluster in ``RAY_ADDRESS`` (``ray job submit``), or
starts a local one.
"""

from __future__ import annotations

from omegaconf import DictConfig

from ranktuner_verl.integration import run_log
from ranktuner_verl.integration.sft.checkpoint_guard import GuardedCheckpoints, finished_before_loading
from ranktuner_verl.integration.sft.cluster import refuse_relative_paths
from ranktuner_verl.integration.sft.run_guard import check_on_every_node
from ranktuner_verl.integration.sft.trainer import (
    StepMetricsClient, apply_cpu_defaults, fit_unless_finished, hydra_entry_point, own_checkpoint_folder, prepare,
    use_weighted_loss,
)

from verl.trainer import sft_trainer_ray as verl_sft_trainer_ray  # noqa: E402  (after the plugin)
from verl.trainer.sft_trainer_ray import SFTTrainer as VerlRaySFTTrainer  # noqa: E402


class RankTunerRaySFTTrainer(VerlRaySFTTrainer):
    """verl's Ray SFT trainer with the loss named by ``config.loss``."""

    def __init__(self, config):
        with run_log.config_to_file(verl_sft_trainer_ray):
            super().__init__(config)

    def _build_engine(self):
        super()._build_engine()
        use_weighted_loss(self, _StepMetricsWorkerGroup)

    def _build_ckpt_handler(self):
        super()._build_ckpt_handler()
        self.ckpt_handler = GuardedCheckpoints(self.ckpt_handler, self.config, writes_record=True)

    def fit(self):
        fit_unless_finished(self, verl_sft_trainer_ray, super().fit, is_printing=True)


class _StepMetricsWorkerGroup(StepMetricsClient):
    """A Ray worker group: its calls return futures; our metrics are handled when the result is fetched."""

    @staticmethod
    def _then(future, then):
        return _ThenOnGet(future, then)


class _ThenOnGet:
    def __init__(self, future, then):
        self._future, self._then = future, then

    def get(self):
        return self._then(self._future.get())


def run(config: DictConfig) -> None:
    import ray
    from verl.utils.device import auto_set_device

    prepare(config, for_workers=True)
    if not ray.is_initialized():
        ray.init()
    refuse_relative_paths(config, nodes=sum(node["Alive"] for node in ray.nodes()))
    check_on_every_node(config)
    own_checkpoint_folder(config)
    finished = finished_before_loading(config)
    if finished:
        print(finished, flush=True)
        return
    # only now: on a CPU head node the CPU platform stays active until ray.init shows the cluster's GPUs
    apply_cpu_defaults(config)
    auto_set_device(config)
    RankTunerRaySFTTrainer(config=config).fit()


main = hydra_entry_point(run)


if __name__ == "__main__":
    main()
