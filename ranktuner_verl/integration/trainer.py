"""SFT with a token-weighted loss through verl's own torchrun (SPMD) trainer.

    torchrun --standalone --nproc_per_node=N -m ranktuner_verl.integration.trainer \
        model.path=... data.train_files=... loss=ranktuner loss.form=exact

``RankTunerSFTTrainer`` extends ``verl.trainer.sft_trainer.SFTTrainer``: the only change is the loss given to the
training worker (``WeightedSFTLoss`` instead of the hard-coded ``sft_loss``) and the per-step metrics it adds
(weighted loss, plain NLL, weight mean and percentiles). The config (``configs/sft.yaml``) is verl's
``sft_trainer_engine`` plus the ``loss`` group. Everything is checked before the model loads (``prepare``).
"""

from __future__ import annotations

import os
import time

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from ranktuner_verl.integration import platform_cpu, plugin
from ranktuner_verl.integration.loss import WeightedSFTLoss, reduce_step_metrics

from verl.trainer.sft_trainer import SFTTrainer  # noqa: E402  (after the plugin: it must see the CPU platform)

CONFIG_DIR = "configs"
CONFIG_NAME = "sft"
EXPECTED_COLUMN_HELP = (
    "Each row needs a list of chat turns [{'role': 'system'|'user'|'assistant', 'content': str}, ...] with a "
    "non-empty assistant turn. Write such a file with `python -m ranktuner_verl.data.numina --out-dir DIR` "
    "or ranktuner_verl.data.tiny.write_sft_parquet."
)


def build_loss(config: DictConfig) -> WeightedSFTLoss:
    """The loss named by ``config.loss`` (``name`` plus the method's parameters); ValueError on bad input."""
    params = OmegaConf.to_container(config.loss, resolve=True)
    name = params.pop("name", None)
    if name is None:
        raise ValueError("config.loss has no `name`: choose one with loss=sft|dft|talr|eaft|deft|ranktuner")
    return WeightedSFTLoss(name, **params)


def validate_data(config: DictConfig) -> None:
    """Stop before training when a data file lacks the messages column or holds an example with an empty response."""
    if config.data.custom_cls.get("path", None):
        return  # a user dataset class reads its own schema
    import pyarrow.parquet as pq

    key = config.data.messages_key
    for split in ("train_files", "val_files"):
        files = config.data.get(split)
        if not files:
            continue
        for path in [files] if isinstance(files, str) else list(files):
            path = os.path.expanduser(path)
            if not os.path.exists(path):
                raise FileNotFoundError(f"data.{split}: {path} does not exist. {EXPECTED_COLUMN_HELP}")
            schema_names = pq.read_schema(path).names
            if key not in schema_names:
                raise ValueError(
                    f"data.{split}: {path} has columns {schema_names} but no {key!r} column "
                    f"(data.messages_key). {EXPECTED_COLUMN_HELP}"
                )
            for row, messages in enumerate(pq.read_table(path, columns=[key]).column(key).to_pylist()):
                responses = [turn.get("content") for turn in messages or [] if turn.get("role") == "assistant"]
                if not responses or any(not (text or "").strip() for text in responses):
                    raise ValueError(
                        f"data.{split}: {path} row {row} has an empty or missing assistant response: there is "
                        f"nothing to train on. Drop the row or fill the response. {EXPECTED_COLUMN_HELP}"
                    )


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


def prepare(config: DictConfig, for_workers: bool = False) -> WeightedSFTLoss:
    """Everything that can fail before the model loads: the plugin (``for_workers``: also in Ray workers), the loss
    and its parameters, the data."""
    plugin.require(for_workers)
    loss = build_loss(config)
    validate_data(config)
    return loss


def use_weighted_loss(trainer, step_metrics_client: type[StepMetricsClient]) -> None:
    """After verl's ``_build_engine``: give the trainer's training client the loss named by ``config.loss`` in place of
    verl's ``sft_loss``, and wrap the client in ``step_metrics_client`` (torchrun and Ray trainers alike)."""
    trainer.loss_fn = build_loss(trainer.config)
    trainer.training_client.set_loss_fn(loss_fn=trainer.loss_fn)
    trainer.training_client = step_metrics_client(trainer.training_client)


class RankTunerSFTTrainer(SFTTrainer):
    """verl's SPMD SFT trainer with the loss named by ``config.loss``."""

    def _build_engine(self):
        super()._build_engine()
        use_weighted_loss(self, StepMetricsClient)


class StepMetricsClient:
    """A training worker whose ``train_batch`` output carries our metrics reduced to one value per step."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def train_batch(self, *args, **kwargs):
        started = time.perf_counter()
        return self._reduced(self._client.train_batch(*args, **kwargs), started)

    @staticmethod
    def _reduced(output, started: float):
        return with_reduced_metrics(output, started)


def with_reduced_metrics(output, started: float):
    """Reduce our micro-batch metrics in ``output`` and add ``perf/step_time_s`` (wall time of the train step)."""
    if output is not None:
        from verl.utils import tensordict_utils as tu

        metrics = tu.get(output, "metrics")
        reduce_step_metrics(metrics)
        metrics["perf/step_time_s"] = time.perf_counter() - started
    return output


def run(config: DictConfig) -> None:
    from verl.utils.device import auto_set_device
    from verl.utils.distributed import destroy_global_process_group, initialize_global_process_group

    prepare(config)
    apply_cpu_defaults(config)
    auto_set_device(config)
    initialize_global_process_group()
    RankTunerSFTTrainer(config=config).fit()
    destroy_global_process_group()


@hydra.main(config_path=CONFIG_DIR, config_name=CONFIG_NAME, version_base=None)
def main(config: DictConfig) -> None:
    run(config)


if __name__ == "__main__":
    main()
