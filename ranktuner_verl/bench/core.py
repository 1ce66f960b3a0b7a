"""Benchmark: each method's weights + weighted loss (forward and backward) against plain NLL, in the same run.

    python -m ranktuner_verl.bench                      # 1024 x 151936 and 256 x 32768, fp32 and bf16
    python -m ranktuner_verl.bench --shapes 256x32768 --dtypes fp32 --repeats 3

Prints, per shape and dtype, the time of each method as a ratio to plain NLL (log-softmax + gather, forward and
backward: the baseline, timed in the same rounds, interleaved), and the extra peak memory over that baseline (peak
resident memory, with glibc told to return freed blocks so that the peak is measurable on a CPU). Machines are noisy:
read the ratios, not the absolute times.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import time

import torch

from ranktuner_verl.bench.cases import BenchParser, cases
from ranktuner_verl.stats import expected_rank_sorted
from ranktuner_verl.weighted_nll import weighted_nll

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
BASELINE = "plain NLL"
SORT = "(E[R] by full sort, statistics only)"


def _release_freed_memory_to_os() -> None:
    """Make glibc serve every block over 64 KiB by mmap, so a freed block leaves the resident set at once."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD (also disables the dynamic threshold)
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    except OSError:
        pass


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_extra_mib(fn) -> float:
    """Peak resident memory during ``fn()`` above the resident memory before it, in MiB (Linux)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current VmRSS
        f.write("5")
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def plain_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The baseline: mean of -log_softmax(z)[y]."""
    return -torch.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).mean()


def make_inputs(n: int, vocab: int, dtype: torch.dtype, seed: int = 0):
    """LM-like logits: a heavy-tailed spread (Gumbel) plus a few confident positions; labels mostly plausible."""
    g = torch.Generator().manual_seed(seed)
    logits = -torch.log(-torch.log(torch.rand(n, vocab, generator=g).clamp_(1e-12, 1 - 1e-7))) * 1.5
    top = torch.randint(0, vocab, (n,), generator=g)
    logits[torch.arange(n), top] += torch.rand(n, generator=g) * 20
    labels = torch.where(torch.rand(n, generator=g) < 0.6, top, torch.randint(0, vocab, (n,), generator=g))
    return logits.to(dtype), labels


def _step(loss_fn, logits, labels):
    z = logits.detach().requires_grad_()
    loss_fn(z, labels).backward()
    return z.grad


def bench_times(n: int, vocab: int, dtype: torch.dtype, repeats: int, with_sort: bool) -> dict[str, float]:
    """Seconds per forward + backward of each case (min over rounds; rounds interleave the cases)."""
    logits, labels = make_inputs(n, vocab, dtype)
    fns = _cases()
    times = {k: [] for k in fns}
    t0 = time.perf_counter()
    _step(plain_nll, logits, labels)
    rounds = max(repeats, min(30, int(1.0 / (time.perf_counter() - t0)) + 1))  # at least ~1 s of baseline per case
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        for label, fn in fns.items():
            t0 = time.perf_counter()
            _step(fn, logits, labels)
            times[label].append(time.perf_counter() - t0)
    best = {label: min(t[1:]) for label, t in times.items()}
    if with_sort:  # context: what a full sort for E[R] would cost
        t0 = time.perf_counter()
        expected_rank_sorted(logits)
        best[SORT] = time.perf_counter() - t0
    return best


def bench_memory(n: int, vocab: int, dtype_name: str) -> dict[str, float]:
    """Peak extra resident MiB of each case. Run in a fresh process: ``_release_freed_memory_to_os`` would slow the
    timings (every block over 64 KiB mmapped and unmapped again)."""
    _release_freed_memory_to_os()
    logits, labels = make_inputs(n, vocab, DTYPES[dtype_name])
    return {label: peak_extra_mib(lambda fn=fn: _step(fn, logits, labels)) for label, fn in _cases().items()}


def _cases() -> dict:
    fns = {BASELINE: plain_nll}
    for case in cases():
        fns[case.label] = lambda z, y, c=case: weighted_nll(c.method, z, y, **c.params)
    return fns


def main(argv=None) -> None:
    parser = BenchParser(__doc__)
    parser.add_argument("--shapes", default="1024x151936,256x32768", help="comma-separated NxV")
    parser.add_argument("--dtypes", default="fp32,bf16", help=f"comma-separated, from {sorted(DTYPES)}")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds per case, at least (small shapes get more, ~1 s of baseline); min is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-sort", action="store_true", help="skip the full-sort reference (slow)")
    args = parser.parse_args(argv)
    shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes.split(",")]
    dtypes = args.dtypes.split(",")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or any(len(s) != 2 for s in shapes):
        parser.error(f"bad --dtypes {bad} (valid: {sorted(DTYPES)}) or --shapes {args.shapes!r} (use NxV)")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    spawn = multiprocessing.get_context("spawn")
    for n, vocab in shapes:
        for dt in dtypes:
            times = bench_times(n, vocab, DTYPES[dt], args.repeats, not args.no_sort)
            with spawn.Pool(1) as pool:
                memory = pool.apply(bench_memory, (n, vocab, dt))
            base_t, base_mem = times[BASELINE], memory[BASELINE]
            print(f"\n### N x V = {n} x {vocab}, {dt}: plain NLL {base_t:.3f} s, peak {base_mem:.0f} MiB\n")
            print("| method | time / plain NLL | extra peak MiB over plain NLL | target |\n|---|---|---|---|")
            targets = {case.label: case.target("core") for case in cases()}
            for label, seconds in times.items():
                extra = f"{memory[label] - base_mem:+.0f}" if label in memory else "-"
                target = f"<= {targets[label]}" if targets.get(label) else ""
                print(f"| {label} | {seconds / base_t:.2f} | {extra} | {target} |", flush=True)


if __name__ == "__main__":
    main()
