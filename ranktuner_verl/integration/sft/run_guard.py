"""A run owns its checkpoint folder (``trainer.default_local_dir``), from before the model loads to its end.

- The folder can be created and written, and its disk has room for one checkpoint (``check_checkpoint_folder``):
  checked with the start-up checks, and on every node of a Ray cluster (``check_on_every_node``), so a read-only
  mount or a small disk stops the run in seconds instead of failing at the final save (with ``save_freq=-1``, verl's
  default, that loses every step).
- One run at a time: the run holds an exclusive ``flock`` on ``<folder>/ranktuner_run.lock`` for its lifetime (rank 0
  under torchrun, the driver under Ray) and writes who it is into the file; a second run is refused, naming the first.
  The kernel releases the lock when the holder exits, however it dies, so a killed run never leaves the folder locked.
  Across nodes the lock holds where the shared file system supports locks: NFS (Linux maps ``flock`` to NFS byte-range
  locks; v3 needs the lock daemon, v4 has it built in), Lustre mounted with ``-o flock``, GPFS/Spectrum Scale. It does
  not hold across nodes on Lustre with ``localflock`` or on object-store FUSE mounts (s3fs, gcsfuse); where the file
  system refuses locks outright the run goes on with a warning.
- The ranks end with their launcher (``stop_with_launcher``): torchrun starts each rank in its own session, so a
  ``kill -9`` of torchrun alone would leave them training and writing checkpoints; each rank asks the kernel for
  SIGTERM when its parent dies (``PR_SET_PDEATHSIG``, Linux).
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import fcntl
import glob
import json
import math
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile

from omegaconf import DictConfig, OmegaConf

from ranktuner_verl.integration.sft.checkpoint_guard import existing_parent

LOCK_FILE = "ranktuner_run.lock"
# bytes per parameter of one checkpoint, by checkpoint.save_contents: FSDP's fp32 weights, Adam's two fp32 moments
# (Kingma & Ba 2015, arXiv 1412.6980, Algorithm 1: m_t and v_t), the HF copy in 16 bits; "extra" (RNG, scheduler) is
# small. A LoRA run's optimizer state is the adapter's only, left out.
BYTES_PER_PARAMETER = {"model": 4, "optimizer": 8, "hf_model": 2}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_held = None  # the open lock file of this process's run: kept open (locked) until the process exits


def checkpoint_folder(config: DictConfig) -> str:
    return os.path.abspath(os.path.expanduser(str(config.trainer.default_local_dir)))


# ----------------------------------------------------------------------------------------------------------------
# Writable, with room for one checkpoint
# ----------------------------------------------------------------------------------------------------------------


def model_parameters(model_path: str) -> int | None:
    """The parameter count of a local Hugging Face model directory, from its safetensors headers (or its .bin files'
    size and ``torch_dtype``); None for a hub id or an unknown layout."""
    folder = os.path.expanduser(str(model_path))
    if not os.path.isdir(folder):
        return None
    shards = glob.glob(os.path.join(folder, "*.safetensors"))
    if shards:
        count = 0
        for shard in shards:
            with open(shard, "rb") as f:
                header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
            for name, tensor in header.items():
                if name != "__metadata__":
                    count += math.prod(tensor["shape"])
        return count
    bins = glob.glob(os.path.join(folder, "*.bin"))
    config_path = os.path.join(folder, "config.json")
    if not bins or not os.path.isfile(config_path):
        return None
    model_config = json.load(open(config_path))
    dtype = str(model_config.get("torch_dtype") or model_config.get("dtype") or "float32")
    return sum(os.path.getsize(path) for path in bins) // DTYPE_BYTES.get(dtype, 4)


def checkpoint_bytes(config: DictConfig) -> tuple[int, str] | None:
    """About how many bytes one checkpoint of this run takes, and how that was estimated; None when unknown."""
    parameters = model_parameters(config.model.path)
    if not parameters:
        return None
    contents = list(config.get("checkpoint", {}).get("save_contents", ["model", "optimizer", "extra"]))
    if int(config.model.get("lora_rank", 0) or 0) > 0 and "optimizer" in contents:
        contents.remove("optimizer")
    per_parameter = sum(BYTES_PER_PARAMETER.get(part, 0) for part in contents)
    return parameters * per_parameter, (f"{parameters:,} parameters x {per_parameter} bytes for "
                                        f"checkpoint.save_contents {contents}")


def check_checkpoint_folder(folder: str, need: tuple[int, str] | None) -> str | None:
    """The problem with ``folder`` as a checkpoint folder (it, or the folder it would be created in, cannot be
    written; less free space than ``need``), naming the fix; None when it is fine. Creates nothing: a probe file is
    written and removed in the nearest folder that exists."""
    existing = existing_parent(folder)
    what = f"trainer.default_local_dir={folder}" + ("" if existing == folder else f" (to be created in {existing})")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".ranktuner_write_probe."):
            pass
    except OSError as error:
        return (f"{what} cannot be written ({error.strerror}): the run would train and then fail to save. Point "
                "trainer.default_local_dir at a writable folder, or make this one writable.")
    if need is not None:
        free = shutil.disk_usage(existing).free
        if free < need[0]:
            return (f"{what}: its disk has {_size(free)} free, less than one checkpoint of this model takes (about "
                    f"{_size(need[0])}: {need[1]}); the run would train and then fail to save. Free space there or "
                    "point trainer.default_local_dir at a larger disk.")
    return None


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def check_on_every_node(config: DictConfig) -> None:
    """``check_checkpoint_folder`` on every alive node of the connected Ray cluster (each worker writes its shards
    from its own node); raises ``ValueError`` naming each node that fails."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_node_problem)
    folder, need = checkpoint_folder(config), checkpoint_bytes(config)
    futures = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
               .remote(folder, need) for node in ray.nodes() if node["Alive"]]
    problems = [problem for problem in ray.get(futures) if problem]
    if problems:
        raise ValueError(" ".join(problems))


def _node_problem(folder: str, need: tuple[int, str] | None) -> str | None:
    problem = check_checkpoint_folder(folder, need)
    return f"on node {socket.gethostname()}: {problem}" if problem else None


# ----------------------------------------------------------------------------------------------------------------
# One run per folder
# ----------------------------------------------------------------------------------------------------------------


def _try_lock(path: str):
    """The lock file, open and exclusively locked; None when another process holds it; ``False`` when the file
    system refuses locks."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        print(f"WARNING: {path}: the file system refuses locks ({error.strerror}); a second run started in this "
              "checkpoint folder would not be refused.", file=sys.stderr, flush=True)
        return False
    return handle


def _in_use_message(folder: str, path: str) -> str:
    try:
        holder = json.load(open(path))
        who = (f"PID {holder['pid']} on {holder['host']}, loss={holder['loss']}, started {holder['started']}; "
               f"stop it with `kill {holder['pid']}` on {holder['host']}")
    except (OSError, ValueError, KeyError):
        who = "it has not written its name yet"
    return (f"trainer.default_local_dir={folder} is in use by another run ({who}). Two runs in one folder overwrite "
            "each other's checkpoints: wait for that run to end, or give this one another trainer.default_local_dir.")


def check_folder(config: DictConfig) -> None:
    """The start-up check (``checks.run_checks``): ``check_checkpoint_folder`` here, and no other run holds the
    folder's lock (nothing is taken); ``ValueError`` otherwise."""
    folder = checkpoint_folder(config)
    problem = check_checkpoint_folder(folder, checkpoint_bytes(config))
    if problem:
        raise ValueError(problem)
    path = os.path.join(folder, LOCK_FILE)
    if not os.path.isfile(path):
        return
    handle = _try_lock(path)
    if handle is None:
        raise ValueError(_in_use_message(folder, path))
    if handle:
        handle.close()  # releases it


def lock_folder(config: DictConfig) -> None:
    """Take the folder's lock for the rest of this process's life and record who holds it; refuse
    (``ValueError``) when another run holds it."""
    global _held
    folder = checkpoint_folder(config)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    handle = _try_lock(path)
    if handle is None:
        raise ValueError(_in_use_message(folder, path))
    if handle:
        loss = " ".join([str(config.loss.name)] + [f"loss.{key}={value}" for key, value in
                                                   OmegaConf.to_container(config.loss, resolve=True).items()
                                                   if key != "name"])
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        handle.truncate(0)
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "loss": loss,
                                 "started": started}) + "\n")
        handle.flush()
        _held = handle


# ----------------------------------------------------------------------------------------------------------------
# The ranks end with their launcher
# ----------------------------------------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def stop_with_launcher() -> None:
    """In a torchrun rank (``TORCHELASTIC_RUN_ID`` set): SIGTERM when the launcher dies. Linux only; elsewhere (and
    outside torchrun) nothing."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return
    if os.getppid() == 1:  # the launcher died before the request: nobody would send it
        sys.exit("the launcher (torchrun) exited before this rank started; stopping")
