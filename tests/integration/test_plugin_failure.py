"""What happens when our verl plugin is not loaded: real trainer subprocesses and our real loss object.

verl loads ``verl.plugins`` entry points unless ``VERL_USE_EXTERNAL_PLUGINS`` excludes them. Our torchrun trainer
imports the plugin itself, so it does not depend on that. The Ray trainer's workers load it only through verl's entry
point: the driver refuses to start when they would not, naming the variable and the fix. And our loss, called
without the statistics the hook computes, names the missing statistic and the fix.
"""

from __future__ import annotations

import math

import pytest
import torch

from ranktuner_verl.integration.sft.runs import RAY_TRAINER, TRAINER, run_trainer, tiny_overrides

NO_VERL_PLUGINS = {"VERL_USE_EXTERNAL_PLUGINS": "none"}
# verl plugins off, only the CPU platform loaded: a worker as on a GPU machine where our plugin is excluded
CPU_PLATFORM_WITHOUT_HOOK = {**NO_VERL_PLUGINS, "VERL_USE_EXTERNAL_MODULES": "ranktuner_verl.integration.cpu_only"}
MISSING_STATISTIC = "needs the token statistic"


def one_step_overrides(tiny, out_dir, *extra):
    return tiny_overrides(tiny / "model", tiny / "train.parquet", out_dir, steps=1, batch=8) + [
        "loss=ranktuner", "trainer.total_epochs=1", *extra]


# ---------------------------------------------------------------------------------------------------------------------
# real trainers
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_trainer_loads_its_plugin_itself_when_verl_plugins_are_disabled(tiny, tmp_path):
    """With verl's plugin discovery off, our trainer still has the engine hook: RankTuner's statistics are logged."""
    run = run_trainer(one_step_overrides(tiny, tmp_path), tmp_path, module=TRAINER, env=NO_VERL_PLUGINS, check=False)
    assert run.returncode == 0, run.output[-4000:]
    assert run.trained_steps() == [1]
    near_one = run.values("train/s_near_one")  # computed from the hook's rank/entropy statistics
    assert len(near_one) == 1 and math.isfinite(near_one[0]) and 0 <= near_one[0] <= 1
    assert MISSING_STATISTIC not in run.output


@pytest.mark.parametrize("env", [NO_VERL_PLUGINS, CPU_PLATFORM_WITHOUT_HOOK, {"VERL_USE_EXTERNAL_PLUGINS": "other_plugin"}],
                         ids=["plugins-off", "cpu-layer-only", "other-plugin-only"])
def test_ray_trainer_refuses_to_start_when_its_workers_would_lack_the_plugin(tiny, tmp_path, env):
    """Before Ray starts (no NCCL error from a worker later): the message names the setting and the fix."""
    overrides = one_step_overrides(tiny, tmp_path, "trainer.n_gpus_per_node=1")
    run = run_trainer(overrides, tmp_path, module=RAY_TRAINER, ray=True, env=env, check=False, timeout=300)
    assert run.returncode != 0
    assert run.trained_steps() == []
    assert "The Ray workers would not load the ranktuner_verl plugin" in run.output, run.output[-3000:]
    assert "VERL_USE_EXTERNAL_PLUGINS" in run.output and "pip install -e ." in run.output
    assert "Started a local Ray instance" not in run.output and "NCCL" not in run.output


@pytest.mark.parametrize(
    "plugins, modules, loads",
    [
        (None, None, True),  # verl's default policy, "auto"
        ("none", None, False),
        ("other_plugin", None, False),
        ("other_plugin, ranktuner_verl", None, True),
        ("none", "ranktuner_verl.integration.plugin", True),
        ("none", "ranktuner_verl.integration.cpu_only", False),
    ],
)
def test_which_verl_plugin_settings_load_the_plugin_in_workers(monkeypatch, plugins, modules, loads):
    from ranktuner_verl.integration import activation, plugin  # noqa: F401  (plugin: installs the engine hook)

    for name, value in (("VERL_USE_EXTERNAL_PLUGINS", plugins), ("VERL_USE_EXTERNAL_MODULES", modules)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert activation.loads_with_verl() is loads
    if loads:
        activation.require(for_workers=True)
    else:
        with pytest.raises(RuntimeError, match="VERL_USE_EXTERNAL_PLUGINS"):
            activation.require(for_workers=True)


# ---------------------------------------------------------------------------------------------------------------------
# the loss object on a model output without the hook's statistics
# ---------------------------------------------------------------------------------------------------------------------

VOCAB = 50
LENGTHS = (6, 9, 4)


def verl_micro_batch(seed: int = 0):
    """A NO_PADDING micro-batch built by verl's own collator and tensordict helpers, and its logits and labels."""
    from verl.utils import tensordict_utils as tu
    from verl.utils.dataset.dataset_utils import DatasetPadMode, SFTTensorCollator

    gen = torch.Generator().manual_seed(seed)
    samples = []
    for n in LENGTHS:
        loss_mask = torch.ones(n, dtype=torch.long)
        loss_mask[0] = 0
        samples.append({"input_ids": torch.randint(0, VOCAB, (n,), generator=gen), "loss_mask": loss_mask})
    batch = SFTTensorCollator(DatasetPadMode.NO_PADDING)(samples)
    input_ids = batch["input_ids"]
    data = tu.get_tensordict(tensor_dict={"input_ids": input_ids, "loss_mask": batch["loss_mask"]},
                             non_tensor_dict={"pad_mode": DatasetPadMode.NO_PADDING})
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(batch["loss_mask"].values().sum()))
    labels = torch.roll(input_ids.values(), shifts=-1, dims=0)  # as verl's engine: label i is input id i + 1
    logits = torch.randn(labels.numel(), VOCAB, generator=gen)
    return data, input_ids.offsets(), logits, labels


def model_output(loss, logits, labels, offsets, leave_out: str | None):
    """verl's model output (jagged log-probs) plus the hook's statistics, all but ``leave_out``."""
    from ranktuner_verl.integration.engine_hook import stat_key
    from ranktuner_verl.stats import token_stats

    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, labels[:, None]).squeeze(-1)
    output = {"log_probs": torch.nested.nested_tensor_from_jagged(log_probs, offsets)}
    stats = token_stats(logits, labels, loss.engine_stat_names, **loss.stat_kwargs)
    for name in loss.engine_stat_names - {leave_out}:
        output[stat_key(name)] = torch.nested.nested_tensor_from_jagged(stats[name], offsets)
    return output


CASES = [("ranktuner", {}, "rank"), ("ranktuner", {}, "entropy"), ("ranktuner", {"form": "exact"}, "expected_rank"),
         ("eaft", {}, "topk_entropy"), ("deft", {"gate": "renyi2"}, "sum_pi_squared")]


@pytest.mark.parametrize("name, params, missing", CASES)
def test_loss_without_a_statistic_raises_naming_it_and_the_fix(name, params, missing):
    from ranktuner_verl.integration.sft.loss import WeightedSFTLoss

    loss = WeightedSFTLoss(name, **params)
    assert missing in loss.engine_stat_names
    data, offsets, logits, labels = verl_micro_batch()
    with pytest.raises(RuntimeError) as error:
        loss(model_output(loss, logits, labels, offsets, leave_out=missing), data)
    message = str(error.value)
    assert f"loss={name} needs the token statistic {missing!r}" in message
    assert "engine hook is not active" in message and "VERL_USE_EXTERNAL_PLUGINS" in message


@pytest.mark.parametrize("name, params, _missing", CASES)
def test_the_same_output_with_every_statistic_gives_a_finite_loss(name, params, _missing):
    """Control for the test above: the model output built here is one the loss accepts when nothing is missing."""
    from ranktuner_verl.integration.sft.loss import WeightedSFTLoss

    loss = WeightedSFTLoss(name, **params)
    data, offsets, logits, labels = verl_micro_batch()
    value, metrics = loss(model_output(loss, logits, labels, offsets, leave_out=None), data)
    assert value.dim() == 0 and math.isfinite(value.item()) and value.item() > 0
    assert metrics["ranktuner/tokens"] == sum(n - 1 for n in LENGTHS)
