"""Checkpoints that say what they are: the loss they were trained with, and never half-written taken for whole.

- Every ``global_step_N`` our trainers save holds ``ranktuner_loss.json``: the built loss (its method's name and
  every parameter, defaults filled in, so a default spelled out and one left out record the same).
  Resuming (``trainer.resume_mode=auto|resume_path``) under another loss or other options, or with another
  ``data.num_workers`` (verl's saved dataloader position needs the same), is refused before the model loads, naming
  each difference (``check_resume``).
- A save that fails (disk full: torch says only ``[enforce fail at inline_container.cc] unexpected pos``) is reported
  as ``no space left on <path>`` and its folder renamed ``global_step_N.incomplete``. verl moves the tracker
  (``latest_checkpointed_iteration.txt``) only after a complete save, so resuming and evaluating a checkpoint root
  use the last complete step; the rename keeps anyone from picking the broken folder by name. A tracker naming a
  step that is gone is refused, naming the steps there are.
- A run that saved its planned last step records it in ``ranktuner_finished.json`` (``mark_finished``); only then is
  the run done (``scripts/reproduce_table.sh`` resumes any other, and evaluating its root warns).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil

from omegaconf import DictConfig

from ranktuner_verl.checkpoints import FINISHED_FILE, LOSS_RECORD, step_list
from ranktuner_verl.checkpoints import LATEST_FILE as TRACKER  # verl's checkpoint tracker

INCOMPLETE_SUFFIX = ".incomplete"
# torch's zip writer reports a failed write with these words, whatever the cause
TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


def loss_record(config: DictConfig) -> dict:
    """What a checkpoint records about its loss: the built method's name and parameters (and chunk_rows if set)."""
    from ranktuner_verl.integration.sft.config import build_loss

    loss = build_loss(config)
    chunk_rows = {"chunk_rows": loss.stat_kwargs["chunk_rows"]} if "chunk_rows" in loss.stat_kwargs else {}
    return {"loss": {"name": loss.method.name, **loss.method.params, **chunk_rows}}


def resume_checkpoint(config: DictConfig) -> str | None:
    """The ``global_step_N`` folder verl will resume from (its ``CheckpointHandler`` rules), or None."""
    mode, path = config.trainer.get("resume_mode", "auto"), config.trainer.get("resume_from_path", None)
    if mode == "disable":
        return None
    if path is not None:
        return str(path)
    if mode != "auto":
        return None  # verl refuses resume_path without a path itself
    root = str(config.trainer.default_local_dir)
    tracker = os.path.join(root, TRACKER)
    if not os.path.isfile(tracker):
        return None
    return os.path.join(root, f"global_step_{open(tracker).read().strip()}")


def check_resume(config: DictConfig) -> None:
    """Refuse to resume from an incomplete checkpoint, or from one trained with another loss or other options."""
    path = resume_checkpoint(config)
    if path is None:
        return
    path = os.path.normpath(os.path.expanduser(path))
    if path.endswith(INCOMPLETE_SUFFIX):
        raise ValueError(f"trainer.resume_from_path={path} is a checkpoint whose save failed (incomplete); resume "
                         "from an earlier global_step_N or from the checkpoint root's latest step")
    if not os.path.isdir(path):
        root = os.path.dirname(path)
        named = (f"{os.path.join(root, TRACKER)} names {os.path.basename(path)}" if config.trainer.get(
            "resume_from_path", None) is None else f"trainer.resume_from_path={path}")
        raise ValueError(
            f"{named}, which does not exist; {root} holds {step_list(root)}. Resume from one of them "
            f"(trainer.resume_mode=resume_path trainer.resume_from_path={root}/global_step_N), or start over "
            "(trainer.resume_mode=disable, or another trainer.default_local_dir)")
    check_dataloader_workers(path, int(config.data.num_workers))
    record_path = os.path.join(path, LOSS_RECORD)
    if not os.path.isfile(record_path):
        return  # saved by stock verl or an older version: nothing recorded to compare
    wanted = loss_record(config)["loss"]
    try:
        saved = json.load(open(record_path))["loss"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{record_path}, the record of the loss {path} was trained with, is unreadable ({error!r}). If that run "
            f"used this run's loss, write it back: {json.dumps({'loss': wanted})}; else resume another checkpoint or "
            "start a new run (trainer.resume_mode=disable, or another trainer.default_local_dir)") from None
    if saved != wanted:
        differences = "; ".join(
            f"loss.{key}: checkpoint {saved.get(key, '(unset)')!r}, this run {wanted.get(key, '(unset)')!r}"
            for key in sorted(saved.keys() | wanted.keys()) if saved.get(key) != wanted.get(key))
        raise ValueError(
            f"resuming {path} would continue a run trained with another loss configuration ({differences}). "
            "Run with the checkpoint's loss options, or start a new run: trainer.resume_mode=disable, or another "
            "trainer.default_local_dir")


def check_dataloader_workers(path: str, num_workers: int) -> None:
    """The checkpoint's dataloader state (verl's ``data_0.pt``, a torchdata ``StatefulDataLoader`` state) loads only
    into a dataloader with the same ``data.num_workers``: torchdata fails after the model loads ("State doesn't contain
    key '_snapshot' expected for multiprocess dataloader"); refuse the change before."""
    state_file = os.path.join(path, "data_0.pt")
    if not os.path.isfile(state_file):
        return
    import torch

    state = torch.load(state_file, map_location="cpu", weights_only=False)  # what verl's resume loads too
    saved = len(state["_snapshot"]["_worker_snapshots"]) if "_snapshot" in state else 0
    if saved != num_workers:
        raise ValueError(
            f"{path} was saved with data.num_workers={saved} and this run has data.num_workers={num_workers}: its "
            "dataloader position loads only with the same number of workers. Add data.num_workers="
            f"{saved} to resume it, or start a new run (trainer.resume_mode=disable, or another "
            "trainer.default_local_dir)")


def finished_message(resume_step: int, total_steps: int, root: str) -> str | None:
    """The line to print instead of training when the checkpoint resumed already reached the last step."""
    if resume_step <= 0 or resume_step < total_steps:
        return None
    return (f"This run is finished: {root} holds global_step_{resume_step} and trainer.total_training_steps is "
            f"{total_steps}; nothing to train. To train longer raise trainer.total_epochs (or total_training_steps); "
            "to start over use another trainer.default_local_dir or trainer.resume_mode=disable.")


def finished_before_loading(config: DictConfig) -> str | None:
    """``finished_message`` from the config alone (when ``trainer.total_training_steps`` is set), so a finished run
    run again stops before loading the model; otherwise the trainer checks after building its dataloader."""
    total, path = config.trainer.get("total_training_steps", None), resume_checkpoint(config)
    step = re.search(r"global_step_(\d+)$", os.path.normpath(path)) if total is not None and path else None
    return finished_message(int(step.group(1)), int(total), str(config.trainer.default_local_dir)) if step else None


def is_disk_full(error: BaseException, path: str) -> bool:
    """ENOSPC anywhere in the exception chain, or torch's opaque write failure on a nearly full file system."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC or "No space left" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    if any(words in str(error) for words in TORCH_WRITE_FAILURES):
        try:
            usage = shutil.disk_usage(existing_parent(path))
        except OSError:
            return False
        return usage.free < max(1 << 30, usage.total // 100)
    return False


def existing_parent(path: str) -> str:
    """``path``, or the nearest folder above it that exists."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    return path or "."


class GuardedCheckpoints:
    """verl's ``CheckpointHandler`` with the loss recorded in each step and failed saves marked and explained;
    ``saved_step``: the last step saved whole (0: none yet)."""

    def __init__(self, handler, config: DictConfig, writes_record: bool):
        self._handler, self._record, self._writes_record = handler, loss_record(config), writes_record
        self.saved_step = 0

    def __getattr__(self, name):
        return getattr(self._handler, name)

    def save_checkpoint(self, step):
        folder = os.path.join(self._handler.default_local_dir, f"global_step_{step}")
        try:
            if self._writes_record:
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, LOSS_RECORD), "w") as f:
                    json.dump(self._record, f, indent=2)
            result = self._handler.save_checkpoint(step)
        except Exception as error:
            where = _mark_incomplete(folder)
            if is_disk_full(error, folder):
                raise RuntimeError(
                    f"no space left on {existing_parent(folder)} while saving checkpoint global_step_{step}{where}. "
                    "Free space there or point trainer.default_local_dir elsewhere, then run again: it resumes from "
                    "the last complete checkpoint.") from error
            raise RuntimeError(f"saving checkpoint global_step_{step} failed{where}: {error}") from error
        self.saved_step = step
        return result


def _mark_incomplete(folder: str) -> str:
    """Rename a half-written step folder to ``<folder>.incomplete``; the words for what is there now. Every rank
    whose save fails tries: the first renames it, the others find it renamed. Nothing is deleted here (it could be
    another rank's fresh rename): older ``.incomplete`` folders go when the next run starts (``remove_incomplete``)."""
    target = folder + INCOMPLETE_SUFFIX
    try:
        os.rename(folder, target)
    except OSError:  # another rank renamed it already, it was never created, or an older one is in the way
        pass
    if os.path.isdir(folder):
        return f"; the partial folder {folder} is left as it is"
    return f"; the partial folder is now {target}" if os.path.isdir(target) else ""


def remove_incomplete(root: str) -> None:
    """Delete the ``global_step_N.incomplete`` folders of earlier failed saves (before this run saves anything)."""
    for folder in sorted(glob.glob(os.path.join(glob.escape(root), f"global_step_*{INCOMPLETE_SUFFIX}"))):
        shutil.rmtree(folder, ignore_errors=True)
        print(f"removed {folder}: a checkpoint whose save failed in an earlier run", flush=True)


def mark_finished(root: str, step: int, config: DictConfig) -> None:
    """Record in ``root`` that the run saved its planned last ``step`` (``checkpoints.run_finished`` reads it)."""
    record = {"step": step, **loss_record(config)}
    temporary = os.path.join(root, f".{FINISHED_FILE}.tmp")
    with open(temporary, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(temporary, os.path.join(root, FINISHED_FILE))


def clear_finished(root: str) -> None:
    """A run that trains on (resumed with more steps) is not finished until it saves its new last step."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(root, FINISHED_FILE))
