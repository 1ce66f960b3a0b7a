"""Relative paths and a multi-node Ray cluster (``ranktuner_verl.integration.sft.cluster``): resolved by
scripts/train_ray.sh against the submitting directory, refused by the driver on a cluster of several nodes."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ranktuner_verl.integration.sft import cluster

REPO = Path(__file__).parents[3]


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


# --- issue 20 items 7 and 8: what a job uploads, and the interpreter it runs on ---------------------------------------

def submitted(overrides, cwd, job_python="python"):
    """(the runtime env, the entrypoint) of scripts/train_ray.sh's `ray job submit` from ``cwd``."""
    command = cluster.submit_command(overrides, "http://127.0.0.1:8265", job_python, str(cwd), "ranktuner-test")
    runtime_env = json.loads(next(a for a in command if a.startswith("--runtime-env-json=")).partition("=")[2])
    return runtime_env, command[command.index("--") + 1:]


def test_a_job_upload_leaves_out_run_outputs(tmp_path):
    """Ray's own packaging (what `ray job submit` zips) with our excludes: the data and code go up, the checkpoints
    (verl's default folder and one given below the directory), the quickstart's and Hydra's outputs do not."""
    from ray._private.runtime_env.packaging import _zip_files

    for name in ["train.py", "data/train.parquet", "checkpoints/sft/global_step_1/model.pt", "quickstart/sft/x.pt",
                 "outputs/2026-12-06/trainer.log", "mine/ckpt/global_step_2/model.pt", "mine/notes.txt",
                 ".venv/bin/python"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    runtime_env, _ = submitted(["model.path=Qwen/Qwen3-8B", "trainer.default_local_dir=mine/ckpt"], tmp_path)
    assert runtime_env["working_dir"] == str(tmp_path)
    package = tmp_path.parent / f"{tmp_path.name}.zip"
    _zip_files(str(tmp_path), runtime_env["excludes"], str(package), include_gitignore=True)
    uploaded = {name for name in zipfile.ZipFile(package).namelist() if not name.endswith("/")}
    assert uploaded == {"train.py", "data/train.parquet", "mine/notes.txt"}


def test_git_ignores_every_run_output():
    ignored = subprocess.run(["git", "check-ignore", *[f"{name}/x" for name in cluster.RUN_OUTPUTS]], cwd=REPO,
                             capture_output=True, text=True).stdout.split()
    assert ignored == [f"{name}/x" for name in cluster.RUN_OUTPUTS]


def test_the_job_interpreter_is_absolute_unless_a_bare_name(tmp_path):
    """JOB_PYTHON=.venv/bin/python named the job's temporary copy of the directory (which has no venv)."""
    assert submitted([], tmp_path, ".venv/bin/python")[1][0] == str(tmp_path / ".venv" / "bin" / "python")
    assert submitted([], tmp_path, "/opt/env/bin/python")[1][0] == "/opt/env/bin/python"
    _, entrypoint = submitted(["data.train_files=data/my file.parquet"], tmp_path, "python3")
    assert entrypoint[:3] == ["python3", "-m", "ranktuner_verl.integration.sft.trainer_ray"]
    assert f"data.train_files={tmp_path}/data/my file.parquet" in entrypoint  # one argument, space and all
