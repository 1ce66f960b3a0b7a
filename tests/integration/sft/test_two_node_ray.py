"""``ray job submit`` to a two-node Ray cluster started on this machine (``ray start --head`` plus ``ray start
--address``, loopback only, free ports): scripts/train_ray.sh makes relative paths absolute so the checkpoint lands
in the submitting directory, and a job submitted with a relative checkpoint folder is refused by the driver.
Only the processes this test started are stopped, by PID."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from ranktuner_verl.integration.sft.checkpoint_guard import LOSS_RECORD, TRACKER

pytestmark = pytest.mark.slow
REPO = Path(__file__).parents[3]
RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def cluster():
    gcs, dashboard, client, agent_head, agent_worker = free_ports(5)
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--block"]
    started = [subprocess.Popen(
        RAY + ["start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
               "--include-dashboard=true", f"--ray-client-server-port={client}", f"--temp-dir={temp_dir}",
               f"--dashboard-agent-listen-port={agent_head}", *common],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        wait_for_nodes(gcs, 1, env)
        started.append(subprocess.Popen(
            RAY + ["start", f"--address=127.0.0.1:{gcs}", f"--dashboard-agent-listen-port={agent_worker}", *common],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait_for_nodes(gcs, 2, env)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        stop(started)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_nodes(gcs: int, count: int, env: dict, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = subprocess.run(RAY + ["status", f"--address=127.0.0.1:{gcs}"], env=env, capture_output=True,
                                text=True)
        if result.stdout.count(" node_") >= count:
            return
        time.sleep(2)
    raise TimeoutError(f"the Ray cluster did not reach {count} nodes: {result.stdout[-2000:]}{result.stderr[-2000:]}")


def stop(started: list[subprocess.Popen]) -> None:
    """SIGTERM each `ray start` we launched and every process under it (collected first), by PID; then SIGKILL."""
    processes = []
    for proc in started:
        try:
            parent = psutil.Process(proc.pid)
            processes += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for process in processes:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=20)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def project(tiny, tmp_path_factory):
    """A user's folder: the model and data under relative paths."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(tiny / "model", root / "model")
    (root / "data").mkdir()
    shutil.copy(tiny / "train.parquet", root / "data" / "train.parquet")
    return root


OVERRIDES = ["loss=sft", "model.path=model", "data.train_files=data/train.parquet", "data.train_batch_size=8",
             "data.micro_batch_size_per_gpu=2", "data.use_dynamic_bsz=False", "data.max_length=256",
             "data.num_workers=0", "trainer.total_training_steps=1", "trainer.total_epochs=1",
             "trainer.logger=[console]", "+engine.mixed_precision.param_dtype=fp32"]


def test_train_ray_sh_submits_absolute_paths_and_the_checkpoint_lands_here(cluster, project):
    """Also: JOB_PYTHON relative to the submitting directory (it named the job's copy of it, which has no venv)."""
    address, env = cluster
    job_python = os.path.relpath(REPO / ".venv" / "bin" / "python", project)
    result = subprocess.run(["bash", str(REPO / "scripts" / "train_ray.sh"), *OVERRIDES], cwd=project,
                            env={**env, "RAY_ADDRESS": address, "NNODES": "1", "NGPUS_PER_NODE": "1",
                                 "JOB_PYTHON": job_python},
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    checkpoints = project / "checkpoints" / "ranktuner-verl" / "sft"
    assert (checkpoints / TRACKER).read_text().strip() == "1", output[-3000:]
    assert (checkpoints / "global_step_1" / LOSS_RECORD).is_file()


def test_a_job_with_a_relative_checkpoint_folder_is_refused_on_two_nodes(cluster, project):
    address, env = cluster
    absolute = [f"model.path={project / 'model'}", f"data.train_files={project / 'data' / 'train.parquet'}"]
    overrides = [o for o in OVERRIDES if not o.startswith(("model.path=", "data.train_files="))] + absolute + [
        "trainer.experiment_name=refused"]  # not the folder the other test's run wrote
    result = subprocess.run(
        RAY + ["job", "submit", f"--address={address}", "--working-dir=.", "--", "python", "-m",
               "ranktuner_verl.integration.sft.trainer_ray", "trainer.n_gpus_per_node=1", *overrides],
        cwd=project, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    refusal = "this Ray cluster has 2 nodes and trainer.default_local_dir=checkpoints/ranktuner-verl/refused is relative"
    assert refusal in output, output[-4000:]
    assert "Saving checkpoint" not in output


def test_ctrl_c_says_the_job_runs_on_and_how_to_stop_it(cluster, project):
    """Ctrl-C (SIGINT to the foreground process group) stops following the log, not the job: the last line says so
    and names `ray job stop`; the job is still running until that command stops it. The job runs on this
    checkout's .venv interpreter by default (no activated venv needed)."""
    address, env = cluster
    process = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "train_ray.sh"), *OVERRIDES, "trainer.experiment_name=interrupted"],
        cwd=project, env={**env, "RAY_ADDRESS": address, "NNODES": "1", "NGPUS_PER_NODE": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    for line in process.stdout:  # until `ray job submit` follows the log
        lines.append(line)
        if "Tailing logs" in line:
            break
    os.killpg(process.pid, signal.SIGINT)
    output = "".join(lines) + process.communicate(timeout=120)[0]
    assert process.returncode == 130, output[-3000:]
    assert "submitting ranktuner-" in output and f"{REPO}/.venv/bin/python -m ranktuner_verl" in output
    last = output.strip().splitlines()[-1]
    job = re.search(r"Stopped following job (\S+), which is (RUNNING|PENDING) on the cluster", last)
    assert job, output[-3000:]
    stop = re.search(r"Stop it with: (.+?)  \(", last).group(1).split()
    assert stop[1:] == ["job", "stop", f"--address={address}", job.group(1)]
    stopped = subprocess.run(stop, env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    status = subprocess.run(RAY + ["job", "status", f"--address={address}", job.group(1)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert "was stopped" in status.stdout + status.stderr
