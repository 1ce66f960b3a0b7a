"""GPU check: the statistics and weights of every method under bf16 autocast against fp64, then the time and peak
memory of each method at verl's scale, in one run. Needs only torch.

    python -m ranktuner_verl.gpu_check                                  # CUDA, 8192 x 151936 bf16
    python -m ranktuner_verl.gpu_check --device cpu --rows 64 --vocab 4096   # the same code path, small, on a CPU

Accuracy: LM-like logits (bf16, as an lm_head under autocast returns them, and fp32), statistics (``token_stats``) and
weights computed inside ``torch.autocast(device, bfloat16)`` as verl runs its loss, against the same formulas on fp64
statistics (log-softmax and a full sort in fp64). Bound: |x - x64| <= RTOL |x64| + ATOL; E[R] to its documented bound
(``stats.expected_rank_error_bound``), and the weights that use it to half of that relative bound. Exit status 1 if
any check fails.

Cost: per method, the time of its weights alone (``token_stats`` + ``Method.weights``: what the engine hook adds to a
verl step) and of the fused weighted loss forward + backward (``loss.weighted_nll``), each as a ratio to plain NLL
(log-softmax + gather, forward + backward) timed in the same rounds, and the extra peak memory over plain NLL
(``torch.cuda.max_memory_allocated``; on a CPU the resident set's high-water mark, approximate).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ranktuner_verl.bench import make_inputs, peak_extra_mib, plain_nll
from ranktuner_verl.loss import weighted_nll
from ranktuner_verl.methods import METHODS, get_method
from ranktuner_verl.stats import STATS, expected_rank_error_bound, token_stats

#: The bound of every fp32 statistic and weight against fp64 (docs/methods.md, "Precision").
RTOL, ATOL = 1e-5, 1e-6
#: Rows of the fp64 reference computed at once (a few [rows, V] fp64 temporaries and a sort).
_REFERENCE_ROWS = 256


def variants() -> list[tuple[str, dict]]:
    """Every method with its defaults, then with each other value of each of its choice parameters, from the registry."""
    out = []
    for name, spec in METHODS.items():
        out.append((name, {}))
        for key, param in spec.params.items():
            out += [(name, {key: value}) for value in param.choices or () if value != param.default]
    return out


@torch.no_grad()
def reference_stats(logits: torch.Tensor, labels: torch.Tensor, top_k: int = 20) -> dict[str, torch.Tensor]:
    """Every statistic of ``STATS`` from its definition in fp64 (E[R] by a full sort), a block of rows at a time."""
    parts = []
    for start in range(0, logits.shape[0], _REFERENCE_ROWS):
        z = logits[start : start + _REFERENCE_ROWS].double()
        y = labels[start : start + _REFERENCE_ROWS, None]
        log_p = torch.log_softmax(z, 1)
        p = log_p.exp()
        topk = torch.log_softmax(z.topk(min(top_k, z.shape[1]), 1).values, 1)
        positions = torch.arange(1, z.shape[1] + 1, dtype=torch.float64, device=z.device)
        parts.append({
            "log_prob": log_p.gather(1, y).squeeze(1),
            "logsumexp": torch.logsumexp(z, 1),
            "entropy": -torch.where(p > 0, p * log_p, 0.0).sum(1),
            "sum_pi_squared": (p * p).sum(1),
            "p_max": p.amax(1),
            "topk_entropy": -torch.where(topk > -torch.inf, topk.exp() * topk, 0.0).sum(1),
            "rank": (z >= z.gather(1, y)).sum(1).double(),
            "expected_rank": (p.sort(1, descending=True).values * positions).sum(1),
            "log_vocab": torch.full_like(z[:, 0], float(z.shape[1])).log(),
        })
    assert set(parts[0]) == set(STATS), "reference_stats must define every statistic of stats.STATS"
    return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}


def _worst(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float | torch.Tensor) -> float:
    """max |got - want| / (rtol |want| + atol): <= 1 within the bound."""
    return ((got.double() - want).abs() / (rtol * want.abs() + atol)).max().item() if len(want) else 0.0


def check_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[str, float]]:
    """(what, worst error / its bound) for every statistic and every method's weights under bf16 autocast."""
    device, vocab = logits.device, logits.shape[1]
    results = []
    with torch.autocast(device.type, torch.bfloat16):
        stats = token_stats(logits, labels, STATS)
    want = reference_stats(logits, labels)
    for name in STATS:
        atol = expected_rank_error_bound(want[name], vocab) if name == "expected_rank" else ATOL
        results.append((f"statistic {name}", _worst(stats[name], want[name], RTOL if name != "expected_rank" else 0,
                                                    atol)))
    references = {(): want}  # by the statistics' settings (EAFT's top_k): each fp64 reference computed once
    for name, params in variants():
        method = get_method(name, **params)
        settings = tuple(sorted(method.stat_kwargs.items()))
        if settings not in references:
            references[settings] = reference_stats(logits, labels, **method.stat_kwargs)
        ref = references[settings]
        with torch.autocast(device.type, torch.bfloat16):
            got = method.weights(token_stats(logits, labels, method.needs, **method.stat_kwargs))
        # S_t errs by at most half of E[R]'s relative error (docs/methods.md); E[R] >= 1
        rtol = RTOL + expected_rank_error_bound(torch.tensor(1.0), vocab).item() / 2 * ("expected_rank" in method.needs)
        label = f"weights {name}" + "".join(f" {k}={v}" for k, v in params.items())
        results.append((label, _worst(got, METHODS[name].fn(ref, None, **method.params), rtol, ATOL)))
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


def _cost_cases(logits, labels) -> dict:
    def backward(loss_fn):
        z = logits.detach().requires_grad_()
        loss_fn(z, labels).backward()
        return z.grad

    cases = {"plain NLL (forward + backward)": lambda: backward(plain_nll)}
    for name, params in variants():
        method = get_method(name, **params)
        label = name + "".join(f" {k}={v}" for k, v in params.items())
        cases[label + ": weights"] = lambda m=method: m.weights(token_stats(logits, labels, m.needs, **m.stat_kwargs))
        cases[label + ": weighted loss"] = lambda n=name, p=params: backward(
            lambda z, y: weighted_nll(n, z, y, **p))
    return cases


def measure_cost(logits, labels, repeats: int) -> dict[str, tuple[float, float]]:
    """label -> (seconds, extra peak MiB) per case; the minimum over ``repeats`` interleaved rounds after a warm-up."""
    device, cases = logits.device, _cost_cases(logits, labels)
    times = {label: [] for label in cases}
    for _ in range(repeats + 1):
        for label, fn in cases.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[label].append(time.perf_counter() - start)
    return {label: (min(times[label][1:]), _peak_extra_mib(fn, device)) for label, fn in cases.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--rows", type=int, default=8192, help="tokens N (default 8192)")
    parser.add_argument("--vocab", type=int, default=151_936, help="vocabulary V (default 151936, Qwen's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3); the minimum is reported")
    parser.add_argument("--no-cost", action="store_true", help="the accuracy checks only")
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
        for what, ratio in check_accuracy(logits.to(device), labels.to(device)):
            failed += ratio > 1
            print(f"| {what} | {str(dtype)[6:]} | {ratio:.3f}{'  FAIL' if ratio > 1 else ''} |", flush=True)
    print(f"\naccuracy: {'FAILED' if failed else 'all within bound'} ({failed} failing)\n")

    if not args.no_cost:
        logits, labels = make_inputs(args.rows, args.vocab, torch.bfloat16)
        cost = measure_cost(logits.to(device), labels.to(device), args.repeats)
        (base_s, base_mib), *_ = cost.values()
        print(f"plain NLL (forward + backward): {base_s:.4f} s, peak +{base_mib:.0f} MiB over the logits\n")
        print("| case | time / plain NLL | extra peak MiB over plain NLL |\n|---|---|---|")
        for label, (seconds, mib) in list(cost.items())[1:]:
            print(f"| {label} | {seconds / base_s:.2f} | {mib - base_mib:+.0f} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
