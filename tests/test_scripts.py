"""The shell scripts as a user runs them: -h/--help prints the usage and every variable with its default, exits 0,
and does no work (a fake interpreter records any call); the scripts pick .venv's interpreter when .venv exists."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ranktuner_verl.checkpoints import FINISHED_FILE

REPO = Path(__file__).parents[1]
# script -> the variables its help must list (eval.sh belongs to another helper)
SCRIPTS = {
    "scripts/setup.sh": ["PYTHON", "TORCH_SPEC", "EXTRAS"],
    "scripts/train.sh": ["NPROC", "MASTER_PORT", "PYTHON"],
    "scripts/train_ray.sh": ["NNODES", "NGPUS_PER_NODE", "RAY_ADDRESS", "JOB_PYTHON", "PYTHON"],
    "scripts/quickstart.sh": ["--out", "--methods", "--steps"],
    "scripts/reproduce_table.sh": ["BASE_MODEL", "LOSSES", "NUM_GPUS", "WORK", "EVAL_N", "SEEDS", "TABLE_K", "PYTHON"],
    "examples/paper_numina10k.sh": ["MODEL", "LOSS", "NPROC", "DATA_DIR", "CKPT_ROOT", "PYTHON"],
    "examples/qwen3_8b_numina10k.sh": ["MODEL", "LOSS", "NPROC"],
    "examples/qwen2_5_math_7b_numina10k.sh": ["MODEL", "LOSS", "NPROC"],
    "scripts/train_grpo.sh": ["PYTHON"],
    "examples/grpo_gsm8k_ranktuner.sh": ["MODEL", "DATA_DIR", "NGPUS", "LOSS_MODE", "PYTHON"],
}


# A fake training run records its run as finished in its checkpoint folder; `checkpoints --finished ROOT` says so.
FAKE_TRAINING = ('for arg in "$@"; do case "$arg" in trainer.default_local_dir=*) mkdir -p "${arg#*=}" && '
                 f'touch "${{arg#*=}}/{FINISHED_FILE}";; esac; last=$arg; done\n'
                 f'case "$*" in *"checkpoints --finished"*) [ -f "$last/{FINISHED_FILE}" ]; exit $?;; esac\n')


@pytest.fixture
def bare_checkout(tmp_path):
    """The scripts in a folder without .venv, and a fake interpreter on PATH that records every call."""
    for folder in ("scripts", "examples"):
        shutil.copytree(REPO / folder, tmp_path / "repo" / folder)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for name in ("python", "python3", "torchrun", "ray", "nvidia-smi"):
        fake = bin_dir / name
        fake.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n{FAKE_TRAINING}exit 0\n')
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return tmp_path / "repo", {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}, calls


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_the_variables_and_does_no_work(bare_checkout, script, flag):
    repo, env, calls = bare_checkout
    env = {k: v for k, v in env.items() if k != "PYTHON"}
    result = subprocess.run(["bash", script, flag], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in SCRIPTS[script]:
        assert re.search(rf"(^|[\s\[]){re.escape(name)}\b", result.stdout), (name, result.stdout)
    assert not calls.exists(), calls.read_text()  # nothing ran: no install, no training, no GPU probe
    assert not (repo / ".venv").exists()


def test_the_launch_scripts_use_the_venv_interpreter_when_it_exists(bare_checkout):
    """After scripts/setup.sh the README's `bash scripts/train.sh ...` must not need an activated venv."""
    repo, env, calls = bare_checkout
    env = {k: v for k, v in env.items() if k != "PYTHON"}
    venv_python = repo / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f'#!/bin/sh\necho "venv $*" >> {calls}\n'
                           'case "$*" in *"print(max("*) echo 1 ;; esac\nexit 0\n')
    venv_python.chmod(0o755)
    result = subprocess.run(["bash", "scripts/train.sh", "loss=sft"], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    assert lines and all(line.startswith("venv ") for line in lines), lines
    assert any("ranktuner_verl.integration.sft.checks loss=sft" in line for line in lines)
    assert any("torch.distributed.run" in line and "ranktuner_verl.integration.sft.trainer loss=sft" in line
               for line in lines)
    result = subprocess.run(["bash", "scripts/eval.sh", "model", "out"], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines()[-1].startswith("venv -m ranktuner_verl.eval run")


def test_reproduce_table_evaluates_every_seed_into_its_own_folder_and_tabulates_them_as_one_row(bare_checkout):
    repo, env, calls = bare_checkout
    env = {**env, "PYTHON": "python", "LOSSES": "sft ranktuner", "SEEDS": "1,2", "WORK": "w", "NUM_GPUS": "1"}
    result = subprocess.run(["bash", "scripts/reproduce_table.sh"], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    evals = [line for line in lines if "ranktuner_verl.eval run" in line]
    expected = [(loss, seed) for loss in ("sft", "ranktuner") for seed in (1, 2)]
    assert len(evals) == len(expected)
    for line, (loss, seed) in zip(evals, expected):
        assert f"--model w/checkpoints/{loss} --out w/results/{loss}/seed{seed} " in line and f"--seed {seed} " in line
    assert sum("torch.distributed.run" in line for line in lines) == 2, "one training run per loss"
    folders = " ".join(f"w/results/{loss}/seed{seed}" for loss, seed in expected)
    assert lines[-1] == f"python -m ranktuner_verl.eval table {folders} --labels sft,sft,ranktuner,ranktuner " \
                        "--k 1 16 --out w/table"
