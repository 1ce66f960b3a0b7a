"""GRPO on the copy3 task (``ranktuner_verl.data.copy3``) through verl's real PPO trainer on a CPU: the overrides,
a run with a progress bar, and the per-step table (quickstart ``--rl``, ``rl_curves``, the end-to-end test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ranktuner_verl.data import copy3

TRAINER = "ranktuner_verl.integration.rl.trainer"
MODE = "actor_rollout_ref.actor.policy_loss.loss_mode"
# per-step metrics worth a column: verl's names -> column titles
COLUMNS = [("critic/score/mean", "reward"), ("actor/weight_mean", "w mean"), ("actor/pg_clipfrac", "clipfrac"),
           ("training/rollout_probs_diff_max", "|p_roll-p_act|"), ("timing_s/step", "step s")]


def build_task(out: Path, prompts: int = 16, seed: int = 0) -> dict[str, Path]:
    """The tiny model and the copy3 train/validation parquets in ``out`` (nothing downloaded)."""
    copy3.build_model(out / "model", seed=seed)
    return {"model": out / "model", "train": copy3.write_parquet(out / "train.parquet", prompts, seed=seed),
            "val": copy3.write_parquet(out / "val.parquet", 16, seed=seed + 1000)}


def overrides(task: dict[str, Path], run_dir: Path, *, steps: int, loss_mode: str = "vanilla", prompts: int = 16,
              samples: int = 8, lr: float = 1e-3, seed: int = 0, extra: tuple[str, ...] = ()) -> list[str]:
    """verl ``main_ppo`` overrides for GRPO of the tiny model on copy3 on one CPU worker, fp32 (so the rollout's
    log-probs equal the actor's), with the ``hf`` rollout."""
    return [
        "algorithm.adv_estimator=grpo",
        f"data.train_files={task['train']}", f"data.val_files={task['val']}",
        f"data.train_batch_size={prompts}", "data.max_prompt_length=8", "data.max_response_length=4",
        "data.dataloader_num_workers=0", f"data.seed={seed}",
        f"actor_rollout_ref.model.path={task['model']}",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.actor.strategy=fsdp2", f"actor_rollout_ref.actor.optim.lr={lr}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={prompts}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={prompts * samples}",
        "actor_rollout_ref.actor.use_kl_loss=False", "actor_rollout_ref.actor.entropy_coeff=0",
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32",
        f"actor_rollout_ref.actor.data_loader_seed={seed}",
        f"{MODE}={loss_mode}",
        "actor_rollout_ref.rollout.name=hf", f"actor_rollout_ref.rollout.n={samples}",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1", "actor_rollout_ref.rollout.dtype=float32",
        "actor_rollout_ref.rollout.calculate_log_probs=True", f"actor_rollout_ref.rollout.seed={seed}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={prompts * samples}",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        f"reward.custom_reward_function.path={copy3.__file__}", "reward.custom_reward_function.name=compute_score",
        "reward.num_workers=1",
        # a Ray cluster of its own (never another job's on this machine), with logical CPUs enough for verl's
        # actors (TransferQueue asks one CPU per storage unit); they take turns on the real cores
        "+ray_kwargs.ray_init.address=local", "ray_kwargs.ray_init.num_cpus=16",
        "+ray_kwargs.ray_init.include_dashboard=False",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        "trainer.device=cpu", "trainer.n_gpus_per_node=1", "trainer.nnodes=1", "trainer.val_before_train=False",
        f"trainer.total_training_steps={steps}", "trainer.test_freq=-1", "trainer.save_freq=-1",
        f"trainer.default_local_dir={run_dir / 'ckpt'}", "trainer.resume_mode=disable",
        "trainer.project_name=copy3", f"trainer.experiment_name={loss_mode}", "trainer.logger=[console,file]",
        *extra,
    ]


@dataclass
class GrpoRun:
    returncode: int
    records: list[dict]  # verl's file logger: one {"step", "data"} per step
    seconds: float
    log: Path

    def values(self, key: str) -> list[float]:
        return [r["data"][key] for r in self.records if key in r["data"]]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run(run_dir: Path, args: list[str], *, steps: int, progress=None, timeout: float = 3600,
        env: dict | None = None) -> GrpoRun:
    """Run ``TRAINER`` (verl's ``main_ppo`` after our checks) with ``args`` in ``run_dir`` (its output in ``run_dir/output.log``), advancing the tqdm bar
    ``progress`` as verl logs steps; raises with the end of the log if it fails."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics, log = run_dir / "metrics.jsonl", run_dir / "output.log"
    metrics.unlink(missing_ok=True)
    run_env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(metrics), "RAY_AUTH_MODE": "disabled",
               "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0", **(env or {})}
    start, done = time.monotonic(), 0
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", TRAINER, *args], cwd=run_dir, env=run_env, stdout=out,
                                   stderr=subprocess.STDOUT)
        while process.poll() is None:
            time.sleep(1)
            if time.monotonic() - start > timeout:
                process.kill()
                break
            logged = len(records(metrics))
            if progress is not None and logged > done:
                progress.update(logged - done)
                done = logged
    result = GrpoRun(process.wait(), records(metrics), time.monotonic() - start, log)
    if progress is not None and len(result.records) > done:
        progress.update(len(result.records) - done)
    if result.returncode != 0 or len(result.records) < steps:
        raise RuntimeError(f"{TRAINER} failed (exit code {result.returncode}, {len(result.records)} of {steps} steps "
                           f"logged); end of {log}:\n{log.read_text()[-6000:]}")
    return result


def table(result: GrpoRun) -> str:
    """The per-step table: reward, token-weight mean, clip fraction, rollout/actor probability gap, step time."""
    keys = [(key, title) for key, title in COLUMNS if result.values(key)]
    lines = ["  ".join(f"{title:>14}" for title in ["step", *(t for _, t in keys)])]
    for record in result.records:
        cells = [f"{record['step']:>14d}"] + [
            f"{record['data'][key]:>14.4g}" if key in record["data"] else f"{'-':>14}" for key, _ in keys]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def plot(results: list[dict], variants: list[str], path: Path) -> None:
    """Reward per step of each variant: the mean over its runs, a band from their min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in variants:
        curves = [r["reward"] for r in results if r["variant"] == variant]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        data = np.array([c[:length] for c in curves])
        steps = np.arange(1, length + 1)
        mean = data.mean(0)
        ax.plot(steps, mean, label=f"{variant} (n={len(curves)})")
        ax.fill_between(steps, data.min(0), data.max(0), alpha=0.15)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward (share of digits copied)")
    ax.set_title("copy3, tiny Qwen2, verl GRPO on CPU: mean over n seeds, band = min-max")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    """``bash scripts/quickstart.sh --rl``: GRPO on copy3 with loss_mode=vanilla and loss_mode=ranktuner."""
    import argparse

    from tqdm import tqdm

    from ranktuner_verl.integration.rl.policy_loss import loss_modes

    parser = argparse.ArgumentParser(
        prog="quickstart.sh --rl",
        description="GRPO through verl's real PPO trainer on a CPU (the plugin's hf rollout): a tiny random Qwen2 "
                    "learns copy3 (prompt '407=', answer '407', reward = share of the digits copied), once per loss "
                    "mode. Prints a per-step table and writes a reward-curve PNG. Each run spends 2-3 minutes "
                    "starting verl (Ray, TransferQueue, workers), then 5-15 s per step on 2 cores.")
    parser.add_argument("--out", "--out-dir", dest="out", type=Path, default=Path("quickstart_rl"),
                        help="model, data, logs; relative to the current directory (default ./quickstart_rl)")
    parser.add_argument("--modes", default="vanilla,ranktuner",
                        help=f"comma-separated policy_loss.loss_mode values: vanilla or {', '.join(loss_modes())}")
    parser.add_argument("--steps", type=int, default=10, help="GRPO steps per mode (default 10)")
    parser.add_argument("--lr", type=float, default=5e-3, help="actor learning rate (default 5e-3)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in ("vanilla", *loss_modes())]
    if unknown or not modes:
        parser.error(f"unknown mode(s) {unknown}; choose from vanilla, {', '.join(loss_modes())}")
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    out = args.out.resolve()
    print(f"Building a tiny model and 16 copy3 prompts in {out} ...")
    task = build_task(out, seed=args.seed)
    results = {}
    with tqdm(total=args.steps * len(modes), desc="GRPO steps (real verl trainer, CPU)", unit="step") as bar:
        for mode in modes:
            bar.set_postfix_str(mode)
            run_dir = out / "runs" / mode
            results[mode] = run(run_dir, overrides(task, run_dir, steps=args.steps, loss_mode=mode, lr=args.lr,
                                                   seed=args.seed), steps=args.steps, progress=bar)
    for mode, result in results.items():
        print(f"\n== loss_mode={mode} ({result.seconds:.0f} s, log {result.log}) ==\n{table(result)}")
    plot([{"variant": mode, "reward": r.values("critic/score/mean")} for mode, r in results.items()], modes,
         out / "reward_curves.png")
    print(f"\nreward = mean share of the three digits copied (a random policy: ~0.06); w mean = mean token weight "
          f"(absent for vanilla); clipfrac = PPO clip fraction (0 here: one on-policy update per step); "
          f"|p_roll-p_act| = max gap between the rollout's and the actor's token probabilities.\n"
          f"reward curves: {out / 'reward_curves.png'}")
