"""Relative paths and a multi-node Ray cluster (``ranktuner_verl.integration.sft.cluster``): resolved by
scripts/train_ray.sh against the submitting directory, refused by the driver on a cluster of several nodes."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ranktuner_verl.integration.sft import cluster


def test_relative_paths_become_absolute_against_the_submitting_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    resolved = cluster.resolve_overrides(
        ["loss=dft", "model.path=model", "data.train_files=data/train.parquet",
         "data.val_files=[data/a.parquet,/abs/b.parquet]"], str(tmp_path))
    assert resolved == [
        "loss=dft", f"model.path={tmp_path}/model", f"data.train_files={tmp_path}/data/train.parquet",
        f"data.val_files=[{tmp_path}/data/a.parquet,/abs/b.parquet]",
        f"trainer.default_local_dir={tmp_path}/checkpoints/ranktuner-verl/dft"]  # verl's default, made absolute
    kept = cluster.resolve_overrides(["model.path=Qwen/Qwen3-8B", "trainer.default_local_dir=/shared/ckpt"], "/x")
    assert kept == ["model.path=Qwen/Qwen3-8B", "trainer.default_local_dir=/shared/ckpt"]  # a hub id stays


def test_the_driver_refuses_relative_paths_on_several_nodes_only():
    config = OmegaConf.create({"model": {"path": "Qwen/Qwen3-8B", "tokenizer_path": None},
                               "data": {"train_files": "/shared/train.parquet", "val_files": None},
                               "trainer": {"default_local_dir": "checkpoints/ranktuner-verl/sft"}})
    cluster.refuse_relative_paths(config, nodes=1)
    with pytest.raises(ValueError, match=r"2 nodes and trainer.default_local_dir=checkpoints/ranktuner-verl/sft is "
                                         r"relative.*storage every node shares"):
        cluster.refuse_relative_paths(config, nodes=2)
    config.trainer.default_local_dir = "/shared/ckpt"
    cluster.refuse_relative_paths(config, nodes=2)
