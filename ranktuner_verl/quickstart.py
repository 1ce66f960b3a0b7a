"""Quickstart: token-weighted SFT through the real verl trainer on a laptop CPU, in a few minutes.

    python -m ranktuner_verl.quickstart [--out quickstart] [--methods sft,ranktuner] [--steps 8]

Builds a tiny random Qwen2, its tokenizer and a small math chain-of-thought dataset locally (nothing is downloaded;
``ranktuner_verl.data.tiny``), trains it once per loss with verl's torchrun SFT trainer and our plugin, and prints
the per-step losses, the token-weight statistics and where the checkpoints went.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ranktuner_verl.methods import METHODS, S_BAND, method_names

COLUMNS = [("step", "step"), ("train/loss", "loss"), ("train/nll", "nll"), ("train/weight_mean", "w mean"),
           ("train/weight_p10", "w p10"), ("train/weight_p50", "w p50"), ("train/weight_p90", "w p90"),
           ("train/s_near_one", f"|S-1|<{S_BAND:g}")]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--rl" in argv:  # GRPO instead of SFT: its own options (--rl --help)
        from ranktuner_verl.integration.rl.toy_grpo import main as rl_main

        return rl_main([arg for arg in argv if arg != "--rl"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rl", action="store_true",
                        help="run the RL quickstart instead: GRPO on a toy task with the CPU rollout (--rl --help)")
    parser.add_argument("--out", "--out-dir", dest="out", type=Path, default=Path("quickstart"),
                        help="model, data, logs, checkpoints; relative to the current directory (default ./quickstart)")
    parser.add_argument("--methods", "--losses", dest="methods", default="sft,ranktuner",
                        help=f"comma-separated, from: {','.join(METHODS)} (default sft,ranktuner)")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per loss (default 8)")
    parser.add_argument("--examples", type=int, default=64, help="training conversations (default 64)")
    parser.add_argument("--batch", type=int, default=8, help="global batch size (default 8)")
    parser.add_argument("--nproc", type=int, default=1, help="torchrun processes (default 1)")
    args = parser.parse_args(argv)

    try:
        losses = method_names(args.methods)
    except ValueError as error:
        parser.error(f"--methods: {error}")
    if args.steps < 1 or args.batch < 1 or args.examples < args.batch:
        parser.error("need --steps >= 1, --batch >= 1 and --examples >= --batch")

    from ranktuner_verl.data.tiny import build_model, write_sft_parquet
    from ranktuner_verl.integration.sft.runs import run_trainer, tiny_overrides

    out = args.out.resolve()
    print(f"Building a tiny model, tokenizer and {args.examples} math CoT conversations in {out} ...")
    build_model(out / "model")
    train_file = write_sft_parquet(out / "data" / "train.parquet", args.examples, seed=0)

    runs = {}
    for loss in tqdm(losses, desc="training (real verl trainer, CPU)", unit="loss"):
        run_dir = out / "runs" / loss
        overrides = tiny_overrides(out / "model", train_file, run_dir, steps=args.steps, batch=args.batch)
        runs[loss] = run_trainer(overrides + [f"loss={loss}", f"trainer.experiment_name={loss}",
                                              "trainer.total_epochs=1000"], run_dir, nproc=args.nproc)

    for loss, run in runs.items():
        run_dir = out / "runs" / loss
        print(f"\n== loss={loss} ==")
        keys = [(key, title) for key, title in COLUMNS if key == "step" or run.values(key)]
        print("  ".join(f"{title:>10}" for _, title in keys))
        for record in run.records:
            if "train/loss" in record["data"]:
                row = [record["step"]] + [record["data"][key] for key, _ in keys[1:]]
                print("  ".join(f"{v:>10d}" if isinstance(v, int) else f"{v:>10.4f}" for v in row))
        # this run's checkpoint: verl saves at the last step (an --out reused may hold older global_step_* too)
        checkpoint = run_dir / "ckpt" / f"global_step_{args.steps}"
        print(f"checkpoint: {checkpoint if checkpoint.is_dir() else 'none'}   log: {run_dir / 'output.log'}")
    print("\nloss = verl's logged loss (our weighted loss); nll = plain NLL; w = token weights over supervised tokens;"
          f"\n|S-1|<{S_BAND:g} = share of tokens RankTuner leaves at their base weight.")


if __name__ == "__main__":
    main()
