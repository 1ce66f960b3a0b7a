"""Step time of each loss through the real verl trainer on CPU, as a ratio to ``loss=sft`` in the same run.

    python -m ranktuner_verl.bench.trainer [--vocab 151936] [--steps 6] [--out bench_trainer] [--methods sft,ranktuner]

The model is a tiny Qwen2 body (hidden 64, 2 layers) with a realistic vocabulary (Qwen's 151,936 by default), so
the loss head and our token statistics dominate the step, the worst case for their overhead. Each loss trains the
same batches; the step time is verl's train step as logged by our trainer (``perf/step_time_s``), the median over
the steps after the first. Cases and targets: ``bench.cases``.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path

from tqdm import tqdm

from ranktuner_verl.bench.cases import BenchParser, add_methods_argument, chosen_cases


def main(argv=None) -> None:
    parser = BenchParser(__doc__)
    parser.add_argument("--out", "--out-dir", dest="out", type=Path, default=Path("bench_trainer"))
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--steps", type=int, default=6, help="steps per loss; the first is not timed")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=4)
    add_methods_argument(parser)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is not timed)")
    variants = chosen_cases(parser, args.methods, always="sft")

    from ranktuner_verl.data.tiny import build_model, write_sft_parquet
    from ranktuner_verl.integration.sft.runs import run_trainer, tiny_overrides

    out = args.out.resolve()
    build_model(out / "model", vocab_size=args.vocab)
    train_file = write_sft_parquet(out / "train.parquet", args.batch * args.steps, seed=0)
    seconds = {}
    for name, case in tqdm(variants.items(), desc=f"losses (vocab {args.vocab})", unit="run"):
        run_dir = out / name.replace(" ", "_")
        overrides = tiny_overrides(out / "model", train_file, run_dir, steps=args.steps, batch=args.batch,
                                   micro_batch=args.micro_batch)
        run = run_trainer(overrides + case.overrides + ["trainer.save_freq=-1", "trainer.total_epochs=1"], run_dir)
        seconds[name] = statistics.median(run.values("perf/step_time_s")[1:])
        # no checkpoint is needed: remove the one saved at the last step (152k-vocab embeddings are large)
        shutil.rmtree(run_dir / "ckpt", ignore_errors=True)

    print(f"\nverl SFT step time on CPU, vocab {args.vocab}, batch {args.batch}, fp32 "
          f"(median of {args.steps - 1} steps):")
    print(f"{'loss':<22}{'step (s)':>10}{'x sft':>8}  target")
    for name, value in seconds.items():
        ratio = value / seconds["sft"]
        target = variants[name].target("trainer")
        verdict = "" if target is None else f"<= {target}x  {'met' if ratio <= target else 'MISSED'}"
        print(f"{name:<22}{value:>10.3f}{ratio:>8.2f}  {verdict}")


if __name__ == "__main__":
    main()
