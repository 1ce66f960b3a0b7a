"""SFT with a token-weighted loss through verl's own torchrun (SPMD) trainer.

    torchrun --standalone --nproc_per_node=N -m ranktuner_verl.integration.sft.trainer \
        model.path=... data.train_files=... loss=ranktuner loss.form=exact

``RankTunerSFTTrainer`` extends ``verl.trainer.sft_trainer.SFTTrainer``: the only change is the loss given to the
training worker (``WeightedSFTLoss`` instead of the hard-coded ``sft_loss``) and the per-step metrics it adds
(weighted loss, plain NLL, weight mean and percentiles). The config (``configs/sft.yaml``) is verl's
``sft_trainer_engine`` plus the ``loss`` group. Everything is checked before the model loads (``prepare``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import hydra
from omegaconf import DictConfig

from ranktuner_verl.integration import plugin  # noqa: F401  (first: installs the CPU platform before verl loads)
from ranktuner_verl.integration import run_log
from ranktuner_verl.integration.sft import checks, run_guard
from ranktuner_verl.integration.sft.checks import prepare  # noqa: F401  (trainer.prepare, as before)
from ranktuner_verl.integration.sft.config import (  # noqa: F401  (compose_config: for trainer users)
    CONFIG_DIR, CONFIG_NAME, apply_cpu_defaults, build_loss, compose_config,
)
from ranktuner_verl.integration.sft.checkpoint_guard import (
    GuardedCheckpoints, clear_finished, finished_before_loading, finished_message, mark_finished, remove_incomplete,
)
from ranktuner_verl.integration.sft.loss import SUPERVISED_TOKENS, reduce_step_metrics, take_nll_sums

run_log.quiet_verl_engine_warnings()
from verl.trainer import sft_trainer as verl_sft_trainer  # noqa: E402  (after the plugin)
from verl.trainer.sft_trainer import SFTTrainer  # noqa: E402  (after the plugin: it must see the CPU platform)

def use_weighted_loss(trainer, step_metrics_client: type[StepMetricsClient]) -> None:
    """After verl's ``_build_engine``: give the trainer's training client the loss named by ``config.loss`` in place of
    verl's ``sft_loss``, and wrap the client in ``step_metrics_client`` (torchrun and Ray trainers alike)."""
    trainer.loss_fn = build_loss(trainer.config)
    trainer.training_client.set_loss_fn(loss_fn=trainer.loss_fn)
    trainer.training_client = step_metrics_client(trainer.training_client)


class RankTunerSFTTrainer(SFTTrainer):
    """verl's SPMD SFT trainer with the loss named by ``config.loss``."""

    def __init__(self, config):
        with run_log.config_to_file(verl_sft_trainer):
            super().__init__(config)

    def _build_engine(self):
        super()._build_engine()
        use_weighted_loss(self, StepMetricsClient)

    def _build_ckpt_handler(self):
        super()._build_ckpt_handler()
        self.ckpt_handler = GuardedCheckpoints(self.ckpt_handler, self.config, writes_record=self.rank == 0)

    def fit(self):
        fit_unless_finished(self, verl_sft_trainer, super().fit, is_printing=self.rank == 0)


def fit_unless_finished(trainer, verl_module, verl_fit, is_printing: bool) -> None:
    """verl's ``fit`` with ``val/nll`` logged beside ``val/loss``; a run resumed at its last step says it is finished
    instead of training one step past ``trainer.total_training_steps`` (what verl 0.9.1 does). A run that saves its
    last step is recorded as finished (``mark_finished``; ``is_printing``: the process that writes it)."""
    root, total = str(trainer.config.trainer.default_local_dir), trainer.total_training_steps
    message = finished_message(trainer.resume_global_step, total, root)
    if message:
        if is_printing:
            print(message, flush=True)
            mark_finished(root, trainer.resume_global_step, trainer.config)
        return
    if is_printing:
        clear_finished(root)
    with logging_validation_nll(verl_module, trainer.training_client.validation):
        verl_fit()
    if is_printing and trainer.ckpt_handler.saved_step >= total:
        mark_finished(root, trainer.ckpt_handler.saved_step, trainer.config)


class ValidationNLL:
    """The plain NLL of the validation set, a token mean over every batch and rank: ``val/loss`` is the weighted
    objective, which differs between losses; ``val/nll`` is comparable across them."""

    def __init__(self):
        self.nll_sum, self.tokens = 0.0, 0

    def add(self, output):
        if output is not None:
            from verl.utils import tensordict_utils as tu

            nll_sum, tokens = take_nll_sums(tu.get(output, "metrics"))
            self.nll_sum += nll_sum
            self.tokens += tokens
        return output

    def take(self) -> float | None:
        value = self.nll_sum / self.tokens if self.tokens else None
        self.nll_sum, self.tokens = 0.0, 0
        return value


@contextlib.contextmanager
def logging_validation_nll(verl_module, validation: ValidationNLL):
    """While verl's ``fit`` runs, its tracker logs ``val/nll`` with every ``val/loss``."""
    original = verl_module.Tracking

    class Tracking(original):
        def log(self, data, step, backend=None):
            if "val/loss" in data:
                nll = validation.take()
                data = {**data, "val/nll": nll} if nll is not None else data
            return super().log(data, step, backend)

    verl_module.Tracking = Tracking
    try:
        yield
    finally:
        verl_module.Tracking = original


class StepMetricsClient:
    """A training worker whose ``train_batch`` output carries our metrics reduced to one value per step, and whose
    ``infer_batch`` (validation) adds its plain NLL to ``validation``."""

    def __init__(self, client):
        self._client = client
        self.validation = ValidationNLL()

    def __getattr__(self, name):
        return getattr(self._client, name)

    def train_batch(self, *args, **kwargs):
        started = time.perf_counter()
        return self._then(self._client.train_batch(*args, **kwargs), lambda out: with_reduced_metrics(out, started))

    def infer_batch(self, *args, **kwargs):
        return self._then(self._client.infer_batch(*args, **kwargs), self.validation.add)

    @staticmethod
    def _then(output, then):
        return then(output)


def with_reduced_metrics(output, started: float):
    """Reduce our micro-batch metrics in ``output`` (``reduce_step_metrics``); add ``perf/step_time_s`` (wall time of
    the train step), and warn when the step had no supervised token (its loss is 0/0: it trained on nothing)."""
    if output is not None:
        from verl.utils import tensordict_utils as tu

        metrics = reduce_step_metrics(tu.get(output, "metrics"))
        metrics["perf/step_time_s"] = time.perf_counter() - started
        if metrics.get(SUPERVISED_TOKENS) == 0:
            print("WARNING: a training step had no supervised token (every response in the batch was truncated "
                  "away or masked): it trained on nothing and verl logs train/loss nan. Raise data.max_length "
                  "or drop the rows the start-up checks named.", file=sys.stderr, flush=True)
    return output


def build(config: DictConfig) -> "RankTunerSFTTrainer":
    """The trainer of a ``prepare``d config, in this torchrun process (one rank is enough)."""
    from verl.utils.device import auto_set_device
    from verl.utils.distributed import initialize_global_process_group

    apply_cpu_defaults(config)
    auto_set_device(config)
    initialize_global_process_group()
    return RankTunerSFTTrainer(config=config)


def run(config: DictConfig) -> None:
    from verl.utils.distributed import destroy_global_process_group

    prepare(config)
    if os.environ.get("RANK", "0") == "0":
        own_checkpoint_folder(config)
    finished = finished_before_loading(config)
    if finished:
        if os.environ.get("RANK", "0") == "0":
            print(finished, flush=True)
        return
    build(config).fit()
    destroy_global_process_group()


def own_checkpoint_folder(config: DictConfig) -> None:
    """Before the model loads, in the one process that lives as long as the run (rank 0, the Ray driver): lock the
    checkpoint folder for the run (``run_guard.lock_folder``) and clear the failed saves of earlier runs."""
    run_guard.lock_folder(config)
    remove_incomplete(run_guard.checkpoint_folder(config))


def refuse_bad_loss_overrides() -> None:
    """Before Hydra composes the config: a ``loss.KEY`` the chosen loss lacks is named with the loss that takes it."""
    try:
        checks.check_loss_overrides(sys.argv[1:])
    except checks.StartupError as error:
        sys.exit(f"error: {error}")


def hydra_entry_point(run_config):
    """The ``main`` of a trainer module: refuse bad ``loss.KEY`` overrides, then let Hydra compose ``configs/sft.yaml``
    with the command line and hand the config to ``run_config``."""
    hydra_main = hydra.main(config_path=CONFIG_DIR, config_name=CONFIG_NAME, version_base=None)(run_config)

    def main() -> None:
        run_guard.stop_with_launcher()  # a torchrun rank: stop when the launcher dies
        refuse_bad_loss_overrides()
        hydra_main()

    return main


main = hydra_entry_point(run)


if __name__ == "__main__":
    main()
