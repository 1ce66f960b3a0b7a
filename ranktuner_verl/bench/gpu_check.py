"""GPU check: the statistics and weights of every method under bf16 autocast against fp64, then the time and peak
memory of each method at verl's scale, in one run. Needs only torch.

    python -m ranktuner_verl.bench.gpu_check                                  # CUDA, 8192 x 151936 bf16
    python -m ranktuner_verl.bench.gpu_check --device cpu --rows 64 --vocab 4096   # the same code path, small, on a CPU

Accuracy: LM-like logits (bf16, as an lm_head under autocast returns them, and fp32), statistics (``token_stats``) and
weights computed inside ``torch.autocast(device, bfloat16)`` as verl runs its loss, against the same formulas on fp64
statistics (log-softmax and a full sort in fp64). Bound: |x - x64| <= RTOL |x64| + ATOL; E[R] to its documented bound
(``stats.expected_rank_error_bound``), and the weights that use it to half of that relative bound; the fp64 side is
``stats.reference_stats``, the one oracle. ``--reducer NAME`` checks another implementation of the statistics
plugged in at ``stats.REDUCERS``. Exit status 1 if any check fails.

Cost: per method, the time of its weights alone (``token_stats`` + ``Method.weights``: what the engine hook adds to a
verl step) and of the fused weighted loss forward + backward (``loss.weighted_nll``), each as a ratio to plain NLL
(log-softmax + gather, forward + backward) timed in the same rounds, and the extra peak memory over plain NLL
(``torch.cuda.max_memory_allocated``; on a CPU the resident set's high-water mark, approximate).
"""

from __future__ import annotations

import sys
import time

import torch

from ranktuner_verl.bench.cases import BenchParser, cases
from ranktuner_verl.bench.core import make_inputs, peak_extra_mib, plain_nll
from ranktuner_verl.methods import METHODS, get_method
from ranktuner_verl.stats import (DEFAULT_REDUCER, REDUCERS, STATS, expected_rank_error_bound, reference_stats,
                                  token_stats)
from ranktuner_verl.weighted_nll import weighted_nll

#: The bound of every fp32 statistic and weight against fp64 (docs/methods.md, "Precision").
RTOL, ATOL = 1e-5, 1e-6
def _worst(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float | torch.Tensor) -> float:
    """max |got - want| / (rtol |want| + atol): <= 1 within the bound."""
    return ((got.double() - want).abs() / (rtol * want.abs() + atol)).max().item() if len(want) else 0.0


def check_accuracy(logits: torch.Tensor, labels: torch.Tensor,
                   reducer: str = DEFAULT_REDUCER) -> list[tuple[str, float]]:
    """(what, worst error / its bound) for every statistic and every method's weights under bf16 autocast, the
    statistics reduced by ``stats.REDUCERS[reducer]``."""
    device, vocab = logits.device, logits.shape[1]
    results = []
    with torch.autocast(device.type, torch.bfloat16):
        stats = token_stats(logits, labels, STATS, reducer=reducer)
    want = reference_stats(logits, labels)
    for name in STATS:
        atol = expected_rank_error_bound(want[name], vocab) if name == "expected_rank" else ATOL
        results.append((f"statistic {name}", _worst(stats[name], want[name], RTOL if name != "expected_rank" else 0,
                                                    atol)))
    references = {(): want}  # by the statistics' settings (EAFT's top_k): each fp64 reference computed once
    for case in cases(every_choice=True):
        name, params = case.method, case.params
        method = get_method(name, **params)
        settings = tuple(sorted(method.stat_kwargs.items()))
        if settings not in references:
            references[settings] = reference_stats(logits, labels, **method.stat_kwargs)
        ref = references[settings]
        with torch.autocast(device.type, torch.bfloat16):
            got = method.weights(token_stats(logits, labels, method.needs, reducer=reducer, **method.stat_kwargs))
        # S_t errs by at most half of E[R]'s relative error (docs/methods.md); E[R] >= 1
        rtol = RTOL + expected_rank_error_bound(torch.tensor(1.0), vocab).item() / 2 * ("expected_rank" in method.needs)
        results.append((f"weights {case.label}", _worst(got, METHODS[name].fn(ref, None, **method.params), rtol, ATOL)))
    return results


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_extra_mib(fn, device: torch.device) -> float:
    if device.type != "cuda":
        return peak_extra_mib(fn)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _cost_cases(logits, labels, reducer: str) -> dict:
    def backward(loss_fn):
        z = logits.detach().requires_grad_()
        loss_fn(z, labels).backward()
        return z.grad

    runs = {"plain NLL (forward + backward)": lambda: backward(plain_nll)}
    for case in cases(every_choice=True):
        method = get_method(case.method, **case.params)
        runs[case.label + ": weights"] = lambda m=method: m.weights(
            token_stats(logits, labels, m.needs, reducer=reducer, **m.stat_kwargs))
        runs[case.label + ": weighted loss"] = lambda c=case: backward(
            lambda z, y: weighted_nll(c.method, z, y, **c.params))
    return runs


def measure_cost(logits, labels, repeats: int, reducer: str = DEFAULT_REDUCER) -> dict[str, tuple[float, float]]:
    """label -> (seconds, extra peak MiB) per case; the minimum over ``repeats`` interleaved rounds after a warm-up."""
    device, runs = logits.device, _cost_cases(logits, labels, reducer)
    times = {label: [] for label in runs}
    for _ in range(repeats + 1):
        for label, fn in runs.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[label].append(time.perf_counter() - start)
    return {label: (min(times[label][1:]), _peak_extra_mib(fn, device)) for label, fn in runs.items()}


def main(argv=None) -> int:
    parser = BenchParser(__doc__)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--rows", type=int, default=8192, help="tokens N (default 8192)")
    parser.add_argument("--vocab", type=int, default=151_936, help="vocabulary V (default 151936, Qwen's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3); the minimum is reported")
    parser.add_argument("--no-cost", action="store_true", help="the accuracy checks only")
    parser.add_argument("--reducer", default=DEFAULT_REDUCER, choices=sorted(REDUCERS),
                        help="the statistics' per-chunk implementation checked (stats.REDUCERS; default "
                             f"{DEFAULT_REDUCER})")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU; use --device cpu (with small --rows/--vocab) to try it")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}, N x V = {args.rows} x {args.vocab}\n")

    print("| check (bf16 autocast vs fp64) | logits | worst error / bound |\n|---|---|---|")
    failed = 0
    for dtype in (torch.bfloat16, torch.float32):
        logits, labels = make_inputs(args.rows, args.vocab, dtype)
        for what, ratio in check_accuracy(logits.to(device), labels.to(device), args.reducer):
            failed += ratio > 1
            print(f"| {what} | {str(dtype)[6:]} | {ratio:.3f}{'  FAIL' if ratio > 1 else ''} |", flush=True)
    print(f"\naccuracy: {'FAILED' if failed else 'all within bound'} ({failed} failing)\n")

    if not args.no_cost:
        logits, labels = make_inputs(args.rows, args.vocab, torch.bfloat16)
        cost = measure_cost(logits.to(device), labels.to(device), args.repeats, args.reducer)
        (base_s, base_mib), *_ = cost.values()
        print(f"plain NLL (forward + backward): {base_s:.4f} s, peak +{base_mib:.0f} MiB over the logits\n")
        print("| case | time / plain NLL | extra peak MiB over plain NLL |\n|---|---|---|")
        for label, (seconds, mib) in list(cost.items())[1:]:
            print(f"| {label} | {seconds / base_s:.2f} | {mib - base_mib:+.0f} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
