"""Paths for a run on a multi-node Ray cluster (``ray job submit``, ``scripts/train_ray.sh`` with ``RAY_ADDRESS``).

A submitted job runs in Ray's temporary copy of the working directory on each node, so a relative path names a
different, temporary folder on each: checkpoints written to verl's default ``checkpoints/...`` end up split across
the nodes' Ray temp folders, where Ray may delete them. A multi-node run needs shared storage (NFS, Lustre, a
mounted bucket) for the model, the data and the checkpoints, given as absolute paths.

- ``resolve_overrides``: what ``scripts/train_ray.sh`` submits: every relative path of ``PATH_KEYS`` made absolute
  against the submitting directory, and ``trainer.default_local_dir`` added (absolute) when it was not given.
- ``refuse_relative_paths``: the Ray driver on a cluster of more than one node refuses relative paths left.
- ``submit``: what ``scripts/train_ray.sh`` runs with ``RAY_ADDRESS``: ``ray job submit`` of the Ray trainer with the
  resolved overrides, on the interpreter ``job_interpreter`` names, uploading the submitting directory without run
  outputs (``upload_excludes``: Ray refuses an upload over 100 MiB); Ctrl-C stops following the job, not the job,
  and says how to stop it.
      python -m ranktuner_verl.integration.sft.cluster OVERRIDES...   # env: RAY_ADDRESS, JOB_PYTHON
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from omegaconf import DictConfig

from ranktuner_verl.integration import run_log
from ranktuner_verl.integration.sft.runs import RAY_TRAINER

PATH_KEYS = ("model.path", "model.tokenizer_path", "data.train_files", "data.val_files", "trainer.default_local_dir")
CHECKPOINT_KEY = "trainer.default_local_dir"
# Folders our scripts and verl write run outputs to, below the directory they run in (also in .gitignore): never
# uploaded with a job. quickstart/: scripts/quickstart.sh; runs/: reproduce_table.sh; results/: eval.sh's examples;
# checkpoints/: verl's default trainer.default_local_dir; outputs/: Hydra's; wandb/, tensorboard_log/: the trackers'.
RUN_OUTPUTS = ("checkpoints", "quickstart", "runs", "results", "outputs", "wandb", "tensorboard_log", ".venv")
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]


def _is_relative_local(value: str, must_exist: bool) -> bool:
    """A relative file-system path (not a URL; a hub id ``org/name`` only when no such local path exists)."""
    if not value or "://" in value or os.path.isabs(os.path.expanduser(value)):
        return False
    return os.path.exists(value) or not must_exist


def _absolute(value: str, cwd: str, must_exist: bool) -> str:
    items = value[1:-1].split(",") if value.startswith("[") and value.endswith("]") else [value]
    fixed = [os.path.join(cwd, item.strip()) if _is_relative_local(item.strip(), must_exist) else item.strip()
             for item in items]
    return f"[{','.join(fixed)}]" if value.startswith("[") else fixed[0]


def resolve_overrides(argv: list[str], cwd: str) -> list[str]:
    """``argv`` with relative paths made absolute (model paths only when they exist here: else a hub id)."""
    resolved, seen = [], set()
    for arg in argv:
        key, sep, value = arg.partition("=")
        bare = key.lstrip("+")
        if sep and bare in PATH_KEYS:
            seen.add(bare)
            arg = f"{key}={_absolute(value, cwd, must_exist=bare.startswith('model.'))}"
        resolved.append(arg)
    if CHECKPOINT_KEY not in seen:
        resolved.append(f"{CHECKPOINT_KEY}={os.path.join(cwd, default_checkpoint_dir(argv))}")
    return resolved


def default_checkpoint_dir(argv: list[str]) -> str:
    """verl's default ``trainer.default_local_dir`` for these overrides (relative)."""
    from ranktuner_verl.integration.sft import trainer

    return str(trainer.compose_config(argv).trainer.default_local_dir)


def refuse_relative_paths(config: DictConfig, nodes: int) -> None:
    """On a cluster of ``nodes`` > 1: every local path in ``PATH_KEYS`` must be absolute."""
    if nodes <= 1:
        return
    relative = []
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = config[section].get(name, None)
        values = [] if value is None else [value] if isinstance(value, str) else list(value)
        relative += [f"{key}={v}" for v in values if _is_relative_local(str(v), must_exist=key.startswith("model."))]
    if relative:
        raise ValueError(
            f"this Ray cluster has {nodes} nodes and {', '.join(relative)} is relative: each node would read and "
            f"write its own temporary copy of the job's working directory ({_working_directory()}), and checkpoints would be "
            "lost. Give absolute paths on storage every node shares; scripts/train_ray.sh with RAY_ADDRESS makes "
            "relative paths absolute against the directory you submit from.")


def _working_directory() -> str:
    """The current directory, for a message: Ray may already have removed a job's temporary copy of it."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        return "a temporary folder Ray has already removed"


def upload_excludes(resolved: list[str], cwd: str) -> list[str]:
    """Ray ``runtime_env`` excludes (gitignore patterns, relative to ``cwd``): ``RUN_OUTPUTS`` and the run's
    checkpoint folder when it lies below ``cwd``."""
    excludes = [f"/{name}/" for name in RUN_OUTPUTS]
    for arg in resolved:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == CHECKPOINT_KEY and os.path.isabs(value):
            inside = os.path.relpath(value, cwd)
            if inside != "." and inside.split(os.sep)[0] != "..":
                excludes.append(f"/{inside}/")
    return excludes


def job_interpreter(job_python: str, cwd: str) -> str:
    """The interpreter the job runs on: a path with a folder in it made absolute against ``cwd`` (not resolved: a
    venv's python is a link, and only its own path finds the venv); a bare name is looked up on each node's PATH."""
    return os.path.abspath(os.path.join(cwd, job_python)) if os.sep in job_python else job_python


def submit_command(overrides: list[str], address: str, job_python: str, cwd: str, submission_id: str) -> list[str]:
    """``ray job submit`` of the Ray trainer: overrides resolved, interpreter absolute, run outputs not uploaded."""
    resolved = resolve_overrides(overrides, cwd)
    runtime_env = {"working_dir": cwd, "excludes": upload_excludes(resolved, cwd)}
    return [*RAY_CLI, "job", "submit", f"--address={address}", f"--submission-id={submission_id}",
            f"--runtime-env-json={json.dumps(runtime_env)}", "--", job_interpreter(job_python, cwd), "-m",
            RAY_TRAINER, *resolved]  # Ray quotes each argument of the entrypoint


def submit(overrides: list[str], address: str, job_python: str, cwd: str) -> int:
    """Submit the job and follow its log (``submit_command``); the job's exit code, or 130 after Ctrl-C, which
    leaves the job running: say so, and how to stop it."""
    submission_id = f"ranktuner-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    command = submit_command(overrides, address, job_python, cwd, submission_id)
    entrypoint = shlex.join(command[command.index("--") + 1:])
    print(f"submitting {submission_id}: {entrypoint}", file=sys.stderr, flush=True)
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.wait()  # the Ctrl-C reached `ray job submit` too: it stops following the log ("Aborted!")
        print(still_running_message(address, submission_id), file=sys.stderr, flush=True)
        return 130


def still_running_message(address: str, submission_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    try:
        status = JobSubmissionClient(address).get_job_status(submission_id).value
    except Exception as error:  # noqa: BLE001  (the message must come out even when the dashboard does not answer)
        status = f"in an unknown state ({error})"
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    ray = ray if os.path.isfile(ray) else "ray"
    if status in ("SUCCEEDED", "FAILED", "STOPPED"):
        return (f"Stopped following job {submission_id}, which has ended ({status}); its log: {ray} job logs "
                f"--address={address} {submission_id}")
    return (f"Stopped following job {submission_id}, which is {status} on the cluster: Ctrl-C does not stop a "
            f"submitted job. Stop it with: {ray} job stop --address={address} {submission_id}  (follow it again: "
            f"{ray} job logs --follow --address={address} {submission_id})")


if __name__ == "__main__":
    run_log.no_notices_here()
    sys.exit(submit(sys.argv[1:], os.environ["RAY_ADDRESS"], os.environ.get("JOB_PYTHON") or "python", os.getcwd()))
