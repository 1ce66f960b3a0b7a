"""Pass@k from graded samples.

With ``n`` samples of a problem, ``c`` of them correct, the unbiased estimate of the chance that at least one of
``k`` samples drawn without replacement is correct is (Chen et al. 2021, "Evaluating Large Language Models Trained
on Code", eq. 1)

    pass@k = 1 - C(n - c, k) / C(n, k)

averaged over problems. Pass@1 is then the mean accuracy over all samples, the paper's "Pass@1 = mean accuracy
over the 16 samples" (docs/methods.md, "The paper's setup"); Pass@n is the share of problems solved at least once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021, eq. 1).

    Exact: the binomials are Python integers and their ratio is rounded once, so there is no overflow or
    cancellation for any ``n``.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n (samples per problem), got n={n}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(samples: Mapping[str, Sequence[bool]], k: int) -> float:
    """Pass@k of a benchmark: the mean over problems of ``pass_at_k(n_i, c_i, k)`` (``samples``: id -> outcomes)."""
    if not samples:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return sum(pass_at_k(len(v), sum(map(bool, v)), k) for v in samples.values()) / len(samples)


def mean_accuracy(samples: Mapping[str, Sequence[bool]]) -> float:
    """Pass@1 as the paper defines it: correct samples / all samples (equals ``mean_pass_at_k(..., 1)`` for equal n)."""
    outcomes = [bool(x) for v in samples.values() for x in v]
    if not outcomes:
        raise ValueError("mean_accuracy needs at least one sample")
    return sum(outcomes) / len(outcomes)


def default_ks(n: int) -> list[int]:
    """The k reported for ``n`` samples per problem: 1, the powers of two below ``n``, and ``n`` itself."""
    return sorted({1, n} | {2**i for i in range(1, n.bit_length()) if 2**i < n})


def benchmark_metrics(samples: Mapping[str, Sequence[bool]], ks: Iterable[int] | None = None) -> dict:
    """Pass@1 (mean accuracy) and pass@k for each ``k`` of one benchmark's graded samples (id -> outcomes).

    All problems must have the same number of samples ``n``; ``ks`` defaults to ``default_ks(n)``.
    """
    sizes = {len(v) for v in samples.values()}
    if not samples or 0 in sizes:
        raise ValueError("no graded samples: every problem needs at least one graded completion")
    if len(sizes) != 1:
        raise ValueError(f"problems have different numbers of samples {sorted(sizes)}: finish generation first")
    (n,) = sizes
    ks = default_ks(n) if ks is None else sorted(set(ks))
    pass_at = {str(k): mean_pass_at_k(samples, k) for k in ks}
    pass_at["1"] = mean_accuracy(samples)
    return {
        "num_problems": len(samples),
        "samples_per_problem": n,
        "pass@k": dict(sorted(pass_at.items(), key=lambda kv: int(kv[0]))),
        "correct_per_problem": {pid: sum(map(bool, v)) for pid, v in samples.items()},
    }
