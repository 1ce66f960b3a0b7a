"""Every form a trained model comes in -> one Hugging Face model directory (evaluation, diagnostics).

``resolve_model_dir(path)`` accepts:

- a Hugging Face model directory (``config.json``): returned as it is;
- a verl FSDP checkpoint ``global_step_N`` (``fsdp_config.json``): merged once with verl's model merger
  (``python -m verl.model_merger merge --backend fsdp``) into ``WORK/merged_hf``;
- a verl checkpoint root (``latest_checkpointed_iteration.txt``): its latest ``global_step_N``, as above;
- a LoRA run: verl's merger writes the *base* weights to ``merged_hf/`` and the trained adapter to
  ``merged_hf/lora_adapter/``. Evaluating ``merged_hf`` alone would score the base model, so the adapter is folded
  into the weights with peft (``W + (alpha / r) B A``, Hu et al. 2021, arXiv 2106.09685, eq. 3) into
  ``WORK/<name>_lora_merged``. The sum is formed in float32 and rounded once to the checkpoint's dtype (bf16: a
  relative error of at most 2^-8 per weight, the same as storing any bf16 checkpoint).

``WORK`` is ``work_dir`` if given, else the checkpoint's step folder (FSDP) or the HF directory's parent (LoRA).
Every merge writes to ``<target>.partial`` and renames it when complete, so a killed merge is redone, never used; a
target made from another source (recorded in ``ranktuner_source.json``) is refused, not reused.

Command line (prints the resolved directory on the last line): ``python -m ranktuner_verl.checkpoints
PATH [--work-dir DIR]``; ``--finished ROOT`` exits 0 when the run that trains into ROOT saved its planned last step
(``ranktuner_finished.json``), 1 otherwise (``scripts/reproduce_table.sh``: a stage is done only then).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

LATEST_FILE = "latest_checkpointed_iteration.txt"
LOSS_RECORD = "ranktuner_loss.json"  # written into every global_step_N by our trainers: the loss it was trained with
FINISHED_FILE = "ranktuner_finished.json"  # written into the root by our trainers once a run saved its last step
FSDP_CONFIG = "fsdp_config.json"
LORA_ADAPTER = "lora_adapter"
SOURCE_FILE = "ranktuner_source.json"  # written into every merged folder: what it was made from
MERGED_HF = "merged_hf"


def resolve_model_dir(path: str | Path, work_dir: str | Path | None = None) -> Path:
    """A Hugging Face model directory holding the trained weights of ``path`` (see the module docstring)."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist; give a Hugging Face model dir, a verl checkpoint "
                                f"global_step_N or a checkpoint root (the folder with {LATEST_FILE})")
    if (path / LATEST_FILE).is_file():
        root, path = path, latest_step(path)
        if (path / LOSS_RECORD).is_file() and not (root / FINISHED_FILE).is_file():
            print(f"WARNING: {root} holds no {FINISHED_FILE}: its run has not finished (interrupted, or still "
                  f"training), so {path.name} is a half-trained model. Run the same training command again to finish "
                  "it first.", file=sys.stderr, flush=True)
    if (path / FSDP_CONFIG).is_file():
        path = _merge_fsdp(path, Path(work_dir).resolve() if work_dir else path)
    elif not (path / "config.json").is_file():
        raise ValueError(f"{path} is neither a Hugging Face model dir (config.json), a verl FSDP checkpoint "
                         f"({FSDP_CONFIG}) nor a checkpoint root ({LATEST_FILE})")
    if (path / LORA_ADAPTER / "adapter_config.json").is_file():
        path = _merge_lora(path, Path(work_dir).resolve() if work_dir else path.parent)
    return path


def latest_step(root: str | Path) -> Path:
    """``root/global_step_N`` for the N that ``root/latest_checkpointed_iteration.txt`` names; it must exist."""
    root = Path(root)
    text = (root / LATEST_FILE).read_text().strip()
    if not text.isdigit():
        raise ValueError(f"{root / LATEST_FILE} should hold a step number, it holds {text!r}")
    step = root / f"global_step_{text}"
    if not (step / FSDP_CONFIG).is_file():
        raise FileNotFoundError(f"{root / LATEST_FILE} names step {text}, but {step} is not a complete checkpoint "
                                f"(no {FSDP_CONFIG}); {root} holds {step_list(root)}: pass one of them instead")
    return step


def step_folders(root: str | Path) -> list[Path]:
    """The ``global_step_N`` folders of a checkpoint root, by step (``.incomplete`` ones left out)."""
    steps = [p for p in Path(root).glob("global_step_*") if p.is_dir() and p.name[len("global_step_"):].isdigit()]
    return sorted(steps, key=lambda p: int(p.name[len("global_step_"):]))


def step_list(root: str | Path) -> str:
    """``step_folders`` in words, for messages."""
    return ", ".join(p.name for p in step_folders(root)) or "no global_step_N folder"


def run_finished(root: str | Path) -> dict | None:
    """What the run that trained into ``root`` recorded when it saved its planned last step, or None."""
    path = Path(root) / FINISHED_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _claim(target: Path, source: Path) -> bool:
    """True if ``target`` is already a complete merge of ``source``; refuse one made from something else."""
    if not (target / "config.json").is_file():
        return False
    recorded = target / SOURCE_FILE
    made_from = json.loads(recorded.read_text())["source"] if recorded.is_file() else None
    if made_from != str(source):
        raise ValueError(f"{target} already holds a model made from {made_from or 'an unknown source'}, not from "
                         f"{source}; give another work dir or remove {target}")
    return True


def _finish(partial: Path, target: Path, source: Path) -> Path:
    (partial / SOURCE_FILE).write_text(json.dumps({"source": str(source)}) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _merge_fsdp(step: Path, work_dir: Path) -> Path:
    """verl's model merger: FSDP shards of ``step`` -> ``work_dir/merged_hf`` (once)."""
    target = work_dir / MERGED_HF
    if _claim(target, step):
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    print(f"merging verl checkpoint {step} -> {target}", file=sys.stderr, flush=True)
    command = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir", str(step),
               "--target_dir", str(partial)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"verl's model merger failed on {step} (exit {result.returncode}):\n"
                           f"{(result.stdout + result.stderr)[-3000:]}")
    return _finish(partial, target, step)


def _merge_lora(hf_dir: Path, work_dir: Path) -> Path:
    """Fold ``hf_dir/lora_adapter`` into ``hf_dir``'s weights with peft -> ``work_dir/<name>_lora_merged`` (once)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = work_dir / f"{hf_dir.name}_lora_merged"
    if _claim(target, hf_dir):
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    print(f"merging LoRA adapter {hf_dir / LORA_ADAPTER} into {hf_dir} -> {target}", file=sys.stderr, flush=True)
    base = AutoModelForCausalLM.from_pretrained(hf_dir, dtype="auto")
    dtype = base.dtype
    merged = PeftModel.from_pretrained(base.float(), hf_dir / LORA_ADAPTER).merge_and_unload().to(dtype)
    merged.save_pretrained(partial)
    AutoTokenizer.from_pretrained(hf_dir).save_pretrained(partial)
    return _finish(partial, target, hf_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ranktuner_verl.checkpoints", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="HF model dir, verl global_step_N, checkpoint root, or a merged LoRA run")
    parser.add_argument("--work-dir", default=None, help="where merged models go (default: beside the checkpoint)")
    parser.add_argument("--finished", action="store_true", help="only say whether the run training into PATH (a "
                        "checkpoint root) finished: exit 0 if so, 1 if not")
    args = parser.parse_args(argv)
    if args.finished:
        record = run_finished(args.path)
        print(f"{args.path}: finished at step {record['step']}" if record else
              f"{args.path}: not finished ({step_list(args.path) if Path(args.path).is_dir() else 'nothing trained'})")
        sys.exit(0 if record else 1)
    try:
        print(resolve_model_dir(args.path, args.work_dir))
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
