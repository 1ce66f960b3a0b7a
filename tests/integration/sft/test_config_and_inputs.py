"""The config and its checks, through real Hydra and the real prepare step, without starting training."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from ranktuner_verl.integration.sft import trainer
from ranktuner_verl.integration.sft.loss import WeightedSFTLoss
from ranktuner_verl.methods import METHODS

CONFIG_DIR = Path(trainer.__file__).parent / trainer.CONFIG_DIR
LOSSES = list(METHODS)


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=trainer.CONFIG_NAME, overrides=list(overrides))


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_config_builds_its_method_with_verl_config_around_it(name):
    cfg = config(f"loss={name}")
    loss = trainer.build_loss(cfg)
    assert isinstance(loss, WeightedSFTLoss) and loss.method.name == name
    assert cfg.data.messages_key == "messages" and cfg.trainer.experiment_name == name  # verl's sft_trainer_engine
    # the weights' p_t comes from the engine's fp32 statistics (verl's log-probs may be bf16); sft needs nothing
    assert ("log_prob" in loss.engine_stat_names) == (name != "sft")


def test_loss_parameters_reach_the_method():
    loss = trainer.build_loss(config("loss=ranktuner", "loss.form=exact", "loss.base=one"))
    assert dict(loss.method.params) == {"form": "exact", "base": "one", "proxy": "piecewise"}
    assert loss.engine_stat_names == {"log_prob", "rank", "expected_rank"}
    assert trainer.build_loss(config("loss=ranktuner")).engine_stat_names == {"log_prob", "rank", "entropy", "p_max"}
    loss = trainer.build_loss(config("loss=ranktuner", "loss.proxy=massey"))
    assert loss.method.params["proxy"] == "massey" and loss.engine_stat_names == {"log_prob", "rank", "entropy"}


def test_unknown_loss_is_refused_with_the_valid_names():
    with pytest.raises(MissingConfigException) as error:
        config("loss=focal")
    assert all(name in str(error.value) for name in LOSSES)
    with pytest.raises(ValueError, match="unknown loss 'focal'; valid: .*ranktuner"):
        trainer.build_loss(config("loss.name=focal"))


@pytest.mark.parametrize("overrides, message", [
    (["loss=ranktuner", "loss.form=bogus"], "form='bogus' is not valid"),
    (["loss=eaft", "loss.top_k=0"], "top_k=0 is out of range"),
    (["loss=dft", "+loss.alpha=2"], r"unknown parameter\(s\) \['alpha'\]"),
])
def test_bad_parameters_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        trainer.prepare(config(*overrides))


def test_a_data_file_without_the_messages_column_is_refused(tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"prompt": ["1+1?"], "response": ["2"]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"has columns \['prompt', 'response'\] but no 'messages' column"):
        trainer.prepare(config(f"data.train_files={path}"))


def test_an_empty_response_is_refused(tmp_path):
    from ranktuner_verl.data.tiny import math_cot_examples, to_messages

    rows = [to_messages(r["problem"], r["solution"]) for r in math_cot_examples(3)]
    rows[2][-1]["content"] = "  "
    path = tmp_path / "train.parquet"
    pd.DataFrame({"messages": rows}).to_parquet(path)
    with pytest.raises(ValueError, match="row 2 has an empty or missing assistant response"):
        trainer.prepare(config(f"data.train_files={path}"))


def test_a_missing_data_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="nope.parquet does not exist"):
        trainer.prepare(config(f"data.train_files={tmp_path / 'nope.parquet'}"))


def test_the_plugin_is_registered_and_active():
    from importlib.metadata import entry_points

    from ranktuner_verl.integration import engine_hook

    assert [ep.value for ep in entry_points(group="verl.plugins") if ep.name == "ranktuner_verl"] == [
        "ranktuner_verl.integration.plugin"]
    import verl  # noqa: F401  (loads the entry point)

    assert engine_hook.is_installed()


@pytest.mark.slow
def test_the_configs_ship_in_the_wheel_and_compose_from_it(tmp_path):
    """Build the wheel, install it alone into a folder, and compose the trainer's config from there."""
    root = Path(trainer.__file__).parents[3]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(root)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("ranktuner_verl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for name in ["sft", *(f"loss/{loss}" for loss in LOSSES)]:
        assert f"ranktuner_verl/integration/configs/{name}.yaml" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "ranktuner_verl.integration.sft.trainer", "--cfg", "job", "loss=ranktuner",
         "loss.form=exact"],
        cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "form: exact" in result.stdout and "messages_key: messages" in result.stdout


def test_the_paper_preset_sets_the_paper_hyperparameters():
    cfg = config("experiment=paper_numina10k", "loss=ranktuner")
    assert (cfg.data.train_batch_size, cfg.data.max_length, cfg.trainer.total_epochs) == (256, 2048, 1)
    assert (cfg.optim.lr, list(cfg.optim.betas), cfg.optim.weight_decay, cfg.optim.clip_grad) == (
        5e-5, [0.9, 0.95], 0.01, 1.0)
    assert (cfg.optim.lr_scheduler_type, cfg.optim.lr_warmup_steps_ratio) == ("cosine", 0.1)
    assert cfg.trainer.n_gpus_per_node == 4 and cfg.trainer.experiment_name == "numina10k-ranktuner"
