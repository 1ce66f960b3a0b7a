"""A run owns its checkpoint folder (``ranktuner_verl.integration.sft.run_guard``): a folder it cannot keep stops it at
start-up (a real read-only bind mount, a real small tmpfs, both in a user+mount namespace), a second run in the same
folder is refused naming the first (two real concurrent runs), and killing the launcher that ``scripts/train.sh``
starts stops its ranks (a real ``kill -9``). Also: a failed save names the folder that is really there."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from ranktuner_verl.integration.sft.checkpoint_guard import INCOMPLETE_SUFFIX, GuardedCheckpoints
from ranktuner_verl.integration.sft.run_guard import LOCK_FILE
from ranktuner_verl.integration.sft.runs import tiny_overrides
from tests.integration.sft.test_startup_checks import REPO, config

needs_unshare = pytest.mark.skipif(subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                                                  capture_output=True).returncode != 0,
                                   reason="needs user+mount namespaces (util-linux unshare)")
READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"'
SMALL_DISK = 'mount -t tmpfs -o size=600k tmpfs "$0"'  # the tiny model's checkpoint takes about 1.2 MiB


@needs_unshare
@pytest.mark.parametrize("mount, said", [
    (READ_ONLY, r"cannot be written \(Read-only file system\): the run would train and then fail to save"),
    (SMALL_DISK, r"its disk has 600.0 KiB free, less than one checkpoint of this model takes \(about 1.1 MiB: "
                 r"99,904 parameters x 12 bytes"),
])
def test_a_checkpoint_folder_the_run_cannot_keep_stops_the_start_up_checks(tiny, tmp_path, mount, said):
    mounted = tmp_path / "mnt"
    mounted.mkdir()
    overrides = tiny_overrides(tiny / "model", tiny / "train.parquet", mounted, steps=1, batch=8)
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c",
                             f'{mount} || exit 99; exec "$@"', str(mounted),
                             sys.executable, "-m", "ranktuner_verl.integration.sft.checks", *overrides],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: trainer.default_local_dir={mounted / 'ckpt'} (to be created in {mounted})"), last
    assert re.search(said, last), last


def test_a_failed_save_names_the_folder_that_is_there_after_every_rank_tried(tmp_path):
    """Two ranks fail to save step 4 (disk full); the first renames the partial folder, the second finds it renamed.
    Both must name global_step_4.incomplete, and it must still be there (the second used to delete it)."""

    class FailingSave:
        default_local_dir = str(tmp_path)

        def save_checkpoint(self, step):
            (tmp_path / f"global_step_{step}").mkdir(exist_ok=True)
            raise OSError(28, "No space left on device")

    (tmp_path / f"global_step_4{INCOMPLETE_SUFFIX}").mkdir()  # an earlier run's failed save of the same step
    (tmp_path / f"global_step_4{INCOMPLETE_SUFFIX}" / "old").write_text("")
    messages = []
    for rank in (0, 1):
        guarded = GuardedCheckpoints(FailingSave(), config("loss=sft"), writes_record=rank == 0)
        with pytest.raises(RuntimeError) as error:
            guarded.save_checkpoint(4)
        messages.append(str(error.value))
    for message in messages:
        assert "no space left on" in message
        named = message.split("the partial folder ")[1].split(". Free space")[0]
        assert Path(named.removeprefix("is now ").split(" is left")[0]).is_dir(), message


# --- two real runs ------------------------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _train_sh(overrides, out: Path, **popen):
    env = {**os.environ, "NPROC": "1", "PYTHON": sys.executable, "RAY_AUTH_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(["bash", str(REPO / "scripts" / "train.sh"), *overrides], cwd=out, env=env, **popen)


@contextmanager
def long_run(tiny, out: Path, *extra):
    """``scripts/train.sh`` training the tiny model for many steps; yields (the launcher's PID, the rank's PID) once
    the rank runs; kills whatever is left at the end."""
    overrides = tiny_overrides(tiny / "model", tiny / "train.parquet", out, steps=5000, batch=8) + [
        "trainer.total_epochs=5000", "loss=sft", *extra]
    with open(out / "first.log", "w") as log:
        launcher = _train_sh(overrides, out, stdout=log, stderr=subprocess.STDOUT)
    ranks = []
    try:
        # train.sh runs the checks, then execs torchrun: the launcher's PID is torchrun's; the rank is its child
        ranks = _wait(lambda: [pid for pid in _children(launcher.pid) if b"integration.sft.trainer" in
                               (Path("/proc") / str(pid) / "cmdline").read_bytes()], 240, "torchrun's rank")
        _wait(lambda: b"Loading weights" in (out / "first.log").read_bytes() or launcher.poll() is not None, 240,
              "the rank to load the model")
        assert launcher.poll() is None, (out / "first.log").read_text()[-3000:]
        yield launcher, ranks[0]
    finally:
        for pid in [launcher.pid, *ranks]:
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        launcher.wait()


@pytest.mark.slow
def test_a_second_run_in_the_same_folder_is_refused_naming_the_first(tiny, tmp_path):
    with long_run(tiny, tmp_path) as (_, rank):
        holder = json.loads((tmp_path / "ckpt" / LOCK_FILE).read_text())
        assert holder["pid"] == rank and holder["loss"] == "sft"
        os.kill(rank, signal.SIGSTOP)  # it keeps its lock, stopped or not; stopped, it cannot finish meanwhile
        second = tiny_overrides(tiny / "model", tiny / "train.parquet", tmp_path, steps=1, batch=8) + ["loss=dft"]
        result = _train_sh(second, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, err = result.communicate(timeout=300)
        assert result.returncode != 0
        last = err.strip().splitlines()[-1]
        assert (f"error: trainer.default_local_dir={tmp_path / 'ckpt'} is in use by another run (PID {rank} on "
                f"{socket.gethostname()}, loss=sft, started ") in last, err[-3000:]
        assert "give this one another trainer.default_local_dir" in last


@pytest.mark.slow
def test_killing_the_launcher_stops_the_ranks_and_frees_the_folder(tiny, tmp_path):
    with long_run(tiny, tmp_path) as (launcher, rank):
        os.kill(launcher.pid, signal.SIGKILL)
        _wait(lambda: not _alive(rank), 30, f"rank {rank} to stop after its launcher was killed")
        _wait(lambda: _lock_is_free(tmp_path / "ckpt" / LOCK_FILE), 30, "the folder's lock to be released")


def _lock_is_free(path: Path) -> bool:
    """The next run could take the folder (the kernel released the lock once the rank's last thread exited)."""
    with open(path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True
