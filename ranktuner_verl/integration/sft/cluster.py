"""Paths for a run on a multi-node Ray cluster (``ray job submit``, ``scripts/train_ray.sh`` with ``RAY_ADDRESS``).

A submitted job runs in Ray's temporary copy of the working directory on each node, so a relative path names a
different, temporary folder on each: checkpoints written to verl's default ``checkpoints/...`` end up split across
the nodes' Ray temp folders, where Ray may delete them. A multi-node run needs shared storage (NFS, Lustre, a
mounted bucket) for the model, the data and the checkpoints, given as absolute paths.

- ``resolve_overrides``: what ``scripts/train_ray.sh`` submits: every relative path of ``PATH_KEYS`` made absolute
  against the submitting directory, and ``trainer.default_local_dir`` added (absolute) when it was not given.
      python -m ranktuner_verl.integration.sft.cluster OVERRIDES...   # prints them, NUL-separated
- ``refuse_relative_paths``: the Ray driver on a cluster of more than one node refuses relative paths left.
"""

from __future__ import annotations

import os
import sys

from omegaconf import DictConfig

PATH_KEYS = ("model.path", "model.tokenizer_path", "data.train_files", "data.val_files", "trainer.default_local_dir")
CHECKPOINT_KEY = "trainer.default_local_dir"


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


if __name__ == "__main__":
    sys.stdout.write("\0".join(resolve_overrides(sys.argv[1:], os.getcwd())) + "\0")
