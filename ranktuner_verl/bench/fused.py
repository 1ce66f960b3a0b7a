"""Peak memory and time of one training micro-batch, fused kernels vs unfused, per loss, through verl's real trainer.

    python -m ranktuner_verl.bench.fused [--vocabs 151936,248320] [--sequences 16] [--out bench_fused] [--methods ...]

A tiny Qwen2 body (hidden 64, 2 layers) with a realistic vocabulary (Qwen2.5/3's 151,936, Qwen3.5's 248,320), so the
LM head dominates the micro-batch, the worst case for the statistics. Each (vocabulary, kernels, loss) runs in a fresh
process (verl patches the model class for fused kernels): our trainer built in-process (``runs.build_trainer``), one
micro-batch of ``--sequences`` conversations per step, verl's default mixed precision (bf16 autocast), ``--steps``
real ``train_batch`` calls. Memory: the process's peak resident memory minus the resident memory just before the
first step (the model, optimizer and data are already there): what the micro-batch adds. Time: median step after the
first. Targets (``bench.cases.TARGETS``): with fused kernels ranktuner's peak within its "fused_memory" ratio of sft's
and below the unfused run's by at least the logits ([tokens, V] bf16); its step time within its "fused" ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ranktuner_verl.bench.cases import BenchParser, Case, add_methods_argument, chosen_cases

FUSED = ["model.use_fused_kernels=True", "model.fused_kernel_options.impl_backend=torch"]


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(out_file: str, steps: int, overrides: list[str]) -> None:
    """One (vocabulary, kernels, loss): build the trainer, run ``steps`` micro-batches, write the figures as JSON."""
    from ranktuner_verl.integration.sft.runs import build_trainer, step_data

    trainer = build_trainer(overrides)
    batch = next(iter(trainer.train_dataloader))
    data = [step_data(trainer, batch) for _ in range(steps)]
    tokens = int(batch["input_ids"].offsets()[-1])
    before = _resident_bytes()
    seconds = []
    for step in data:
        started = time.perf_counter()
        trainer.training_client.train_batch(step)
        seconds.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    Path(out_file).write_text(json.dumps({"tokens": tokens, "extra_peak": peak - before,
                                          "step_s": statistics.median(seconds[1:])}))


def run_one(out: Path, vocab: int, fused: bool, case: Case, args) -> dict:
    from ranktuner_verl.integration.sft.runs import tiny_overrides

    name = f"{vocab}_{'fused' if fused else 'unfused'}_{case.label.replace(' ', '_')}"
    result = out / f"{name}.json"
    overrides = tiny_overrides(out / f"model_{vocab}", out / "train.parquet", out / name, steps=args.steps,
                               batch=args.sequences, micro_batch=args.sequences, max_length=1024)
    overrides = [o for o in overrides if not o.startswith("+engine.mixed_precision.param_dtype")]  # verl's bf16
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               "-m", "ranktuner_verl.bench.fused",
               "--child", str(result), "--steps", str(args.steps), "--", *overrides, "trainer.logger=[console]",
               *case.overrides, *(FUSED if fused else [])]
    done = subprocess.run(command, cwd=out, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return json.loads(result.read_text())


def main(argv=None) -> None:
    parser = BenchParser(__doc__)
    parser.add_argument("--out", "--out-dir", dest="out", type=Path, default=Path("bench_fused"))
    parser.add_argument("--vocabs", default="151936,248320")
    parser.add_argument("--sequences", type=int, default=16, help="conversations per micro-batch (~117 tokens each)")
    parser.add_argument("--steps", type=int, default=3, help="micro-batches per run; the first is not timed")
    add_methods_argument(parser)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.child:
        return child(args.child, args.steps, [r for r in rest if r != "--"])
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is not timed)")
    losses = chosen_cases(parser, args.methods, always="sft")

    from ranktuner_verl.data.tiny import build_model, write_sft_parquet

    out = args.out.resolve()
    vocabs = [int(v) for v in args.vocabs.split(",")]
    write_sft_parquet(out / "train.parquet", args.sequences, seed=0)
    rows = {}
    for vocab in vocabs:
        build_model(out / f"model_{vocab}", vocab_size=vocab)
        for loss in losses:
            for fused in (False, True):
                rows[vocab, fused, loss] = run_one(out, vocab, fused, losses[loss], args)
                print(f"done: vocab {vocab}, {'fused' if fused else 'unfused'}, {loss}", file=sys.stderr)
    report(rows, vocabs, list(losses))


def report(rows: dict, vocabs: list[int], losses: list[str]) -> None:
    mib = 2.0**20
    for vocab in vocabs:
        tokens = rows[vocab, True, "sft"]["tokens"]
        logits = tokens * vocab * 2  # bf16
        sft_peak, sft_time = rows[vocab, True, "sft"]["extra_peak"], rows[vocab, True, "sft"]["step_s"]
        print(f"\nvocab {vocab}, one micro-batch of {tokens} tokens, bf16 autocast; logits [tokens, V] bf16: "
              f"{logits / mib:.0f} MiB")
        print(f"{'loss':<17}{'unfused MiB':>12}{'fused MiB':>10}{'saved MiB':>10}{'fused/sft':>10}"
              f"{'unfused s':>10}{'fused s':>9}{'time/sft':>9}")
        for loss in losses:
            off, on = rows[vocab, False, loss], rows[vocab, True, loss]
            print(f"{loss:<17}{off['extra_peak'] / mib:>12.0f}{on['extra_peak'] / mib:>10.0f}"
                  f"{(off['extra_peak'] - on['extra_peak']) / mib:>10.0f}{on['extra_peak'] / sft_peak:>10.2f}"
                  f"{off['step_s']:>10.3f}{on['step_s']:>9.3f}{on['step_s'] / sft_time:>9.2f}")
        for loss in losses:
            memory, time_ = Case(loss).target("fused_memory"), Case(loss).target("fused")
            if memory is None or time_ is None:
                continue
            off, on = rows[vocab, False, loss], rows[vocab, True, loss]
            checks = {
                f"fused {loss} peak <= {memory}x fused sft": on["extra_peak"] <= memory * sft_peak,
                f"fused {loss} saves >= the logits": off["extra_peak"] - on["extra_peak"] >= logits,
                f"fused {loss} step <= {time_}x fused sft": on["step_s"] <= time_ * sft_time,
            }
            for what, met in checks.items():
                print(f"  {what}: {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
