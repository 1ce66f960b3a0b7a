"""Run the real trainers as subprocesses and read back their per-step metrics (quickstart, benchmark, tests).

The metrics come from verl's own file logger (``trainer.logger=[console,file]``, ``VERL_FILE_LOGGER_PATH``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TRAINER = "ranktuner_verl.integration.sft.trainer"
RAY_TRAINER = "ranktuner_verl.integration.sft.trainer_ray"


@dataclass
class Run:
    returncode: int
    output: str  # stdout + stderr
    records: list[dict]  # one {"step", "data"} per logged step

    def values(self, key: str) -> list[float]:
        """The value of metric ``key`` at every step that logged it."""
        return [r["data"][key] for r in self.records if key in r["data"]]

    def trained_steps(self) -> list[int]:
        """The steps that trained (logged verl's ``train/loss``)."""
        return [r["step"] for r in self.records if "train/loss" in r["data"]]


def run_trainer(overrides: list[str], out_dir: str | Path, *, module: str = TRAINER, nproc: int = 1,
                ray: bool = False, env: dict | None = None, check: bool = True, timeout: int = 1800,
                prefix: tuple[str, ...] = ()) -> Run:
    """Run ``module`` with torchrun on ``nproc`` local ranks (or as the Ray driver) in ``out_dir``; ``prefix``: a
    command that runs the trainer's command line given as its arguments (e.g. in a namespace)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "metrics.jsonl"
    log_path.unlink(missing_ok=True)
    run_env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(log_path), "RAY_AUTH_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    if ray:
        command = [sys.executable, "-m", module]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", module]
    result = subprocess.run([*prefix, *command, "trainer.logger=[console,file]", *overrides], cwd=out_dir, env=run_env,
                            capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    (out_dir / "output.log").write_text(output)
    records = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    if check and result.returncode != 0:
        raise RuntimeError(f"{module} failed with exit code {result.returncode}; last output:\n{output[-6000:]}")
    return Run(result.returncode, output, records)


def tiny_overrides(model_dir: Path, train_file: Path, out_dir: Path, *, steps: int, batch: int,
                   micro_batch: int = 2, max_length: int = 256) -> list[str]:
    """verl overrides for a short fp32 run of a tiny model on CPU (checkpoints in ``out_dir/ckpt``)."""
    return [
        f"model.path={model_dir}",
        f"data.train_files={train_file}",
        f"data.train_batch_size={batch}",
        f"data.micro_batch_size_per_gpu={micro_batch}",
        "data.use_dynamic_bsz=False",
        f"data.max_length={max_length}",
        "data.num_workers=0",
        f"trainer.total_training_steps={steps}",
        f"trainer.default_local_dir={Path(out_dir) / 'ckpt'}",
        "trainer.resume_mode=disable",
        "+engine.mixed_precision.param_dtype=fp32",
    ]


def build_trainer(overrides: list[str]):
    """Our trainer (``RankTunerSFTTrainer``: verl's dataset, FSDP engine and training worker) built in this process from
    our Hydra config with ``overrides``, after the start-up checks. Needs a torchrun environment (one rank is enough)."""
    from ranktuner_verl.integration.sft import trainer

    config = trainer.compose_config(overrides)
    trainer.prepare(config)
    return trainer.build(config)


def step_data(trainer, batch: dict, **meta):
    """``batch`` (from ``trainer.train_dataloader``) as verl's ``SFTTrainer.fit`` hands it to ``train_batch``; ``meta``
    overrides fit's per-batch settings (e.g. ``temperature``, ``use_remove_padding``)."""
    import copy

    from verl.utils import tensordict_utils as tu

    config = trainer.config
    meta_info = {  # as verl 0.9.1 SFTTrainer.fit builds it
        "use_remove_padding": config.model.use_remove_padding, "use_dynamic_bsz": config.data.use_dynamic_bsz,
        "max_token_len_per_gpu": config.data.max_token_len_per_gpu,
        "micro_batch_size_per_gpu": config.data.micro_batch_size_per_gpu, "temperature": 1.0,
        "global_batch_size": trainer.global_batch_size, "pad_mode": config.data.pad_mode,
        "pad_token_id": trainer.model_config.tokenizer.pad_token_id, **meta,
    }
    data = tu.get_tensordict(tensor_dict=copy.deepcopy(batch), non_tensor_dict=meta_info)
    tu.assign_non_tensor(data, global_token_num=tu.NonTensorData(trainer._get_batch_seqlens(data)))
    return data
