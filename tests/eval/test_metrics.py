"""Pass@k: the unbiased estimator against brute-force enumeration of k-subsets; Pass@1 is the mean accuracy."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranktuner_verl.eval.metrics import benchmark_metrics, default_ks, mean_accuracy, mean_pass_at_k, pass_at_k


def brute_force_pass_at_k(outcomes: list[bool], k: int) -> float:
    """Share of all k-subsets of the samples that hold at least one correct sample."""
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration_of_subsets(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(outcomes, k), abs=1e-12), (n, c, k)


def test_pass_at_k_is_exact_for_large_n():
    # 1 - C(999, 500) / C(1000, 500) = 1 - 500/1000; float formulas via factorials overflow here.
    assert pass_at_k(1000, 1, 500) == 0.5
    assert pass_at_k(1000, 0, 1000) == 0.0
    assert pass_at_k(1000, 501, 500) == 1.0
    assert 0.0 < pass_at_k(4096, 1, 1) == 1 / 4096


outcome_lists = st.lists(st.booleans(), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(outcome_lists, min_size=1, max_size=6).flatmap(
    lambda rows: st.just({str(i): r[:min(map(len, rows))] for i, r in enumerate(rows)})))
def test_pass_at_1_is_mean_accuracy_and_pass_at_n_is_share_solved(samples):
    n = len(next(iter(samples.values())))
    metrics = benchmark_metrics(samples)
    flat = [x for v in samples.values() for x in v]
    assert metrics["pass@k"]["1"] == pytest.approx(sum(flat) / len(flat))
    assert mean_pass_at_k(samples, 1) == pytest.approx(mean_accuracy(samples))
    assert metrics["pass@k"][str(n)] == pytest.approx(sum(any(v) for v in samples.values()) / len(samples))
    values = [metrics["pass@k"][str(k)] for k in default_ks(n)]
    assert values == sorted(values), "pass@k must not decrease with k"
    for k in default_ks(n):
        brute = sum(brute_force_pass_at_k(list(v), k) for v in samples.values()) / len(samples)
        assert metrics["pass@k"][str(k)] == pytest.approx(brute)


def test_benchmark_metrics_counts():
    samples = {"a": [True, False, False, False], "b": [False] * 4, "c": [True, True, False, True]}
    metrics = benchmark_metrics(samples, ks=[1, 2, 4])
    assert metrics["num_problems"] == 3 and metrics["samples_per_problem"] == 4
    assert metrics["correct_per_problem"] == {"a": 1, "b": 0, "c": 3}
    assert metrics["pass@k"]["1"] == pytest.approx(4 / 12)
    assert metrics["pass@k"]["2"] == pytest.approx(((1 - math.comb(3, 2) / 6) + 0 + 1) / 3)
    assert metrics["pass@k"]["4"] == pytest.approx(2 / 3)


def test_default_ks():
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(5) == [1, 2, 4, 5]
    assert default_ks(1) == [1]


@pytest.mark.parametrize("call, message", [
    (lambda: pass_at_k(4, 5, 1), "0 <= c <= n"),
    (lambda: pass_at_k(4, 1, 5), "1 <= k <= n"),
    (lambda: pass_at_k(4, 1, 0), "1 <= k <= n"),
    (lambda: benchmark_metrics({}), "no graded samples"),
    (lambda: benchmark_metrics({"a": []}), "no graded samples"),
    (lambda: benchmark_metrics({"a": [True], "b": [True, False]}), "different numbers of samples"),
    (lambda: benchmark_metrics({"a": [True, False]}, ks=[4]), "1 <= k <= n"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
