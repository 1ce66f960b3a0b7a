"""Token statistics against closed forms, the fp64 oracle, and the paper's properties (Yu et al., arXiv 2602.01745).

Every reducer registered at the dispatch point (``stats.REDUCERS``) runs the oracle and closed-form tests."""

import functools
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ranktuner_verl.methods import guessing_entropy_bound
from ranktuner_verl.stats import (EXPECTED_RANK_BIN_WIDTH, REDUCERS, STATS, expected_rank_binned,
                                  expected_rank_error_bound, expected_rank_sorted, reference_stats, token_stats)

ALL = tuple(STATS)


def reference(logits, labels, needs=ALL, top_k=20, **_):
    """The oracle with ``token_stats``'s call: the statistics ``needs`` of ``stats.reference_stats``."""
    return {name: value for name, value in reference_stats(logits, labels, top_k=top_k).items() if name in needs}


#: every implementation of the statistics: each reducer at the dispatch point, and the oracle itself (which the
#: closed-form tests below check as well).
IMPLEMENTATIONS = {**{f"reducer {name}": functools.partial(token_stats, reducer=name) for name in REDUCERS},
                   "fp64 oracle": reference}
each_reducer = pytest.mark.parametrize("reducer", sorted(REDUCERS))
each_implementation = pytest.mark.parametrize("stats_of", IMPLEMENTATIONS.values(), ids=IMPLEMENTATIONS.keys())


def random_logits(n, vocab, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=g) * scale, torch.randint(0, vocab, (n,), generator=g)


@pytest.mark.parametrize("vocab", [257, 256])  # an even vocabulary takes the top k of each half-row (_top_values)
@pytest.mark.parametrize("chunk_rows", [1, 3, None])
@each_reducer
def test_matches_the_oracle(chunk_rows, vocab, reducer):
    logits, labels = random_logits(11, vocab, 4.0, 0)
    got = token_stats(logits, labels, ALL, top_k=7, chunk_rows=chunk_rows, reducer=reducer)
    want = reference_stats(logits, labels, top_k=7)
    for name in ALL:
        torch.testing.assert_close(got[name].double(), want[name], rtol=2e-5, atol=2e-5, msg=name)


def test_only_requested_statistics_are_computed():
    logits, labels = random_logits(4, 30, 1.0, 1)
    assert set(token_stats(logits, labels, {"rank"})) == {"rank"}
    with pytest.raises(ValueError, match="valid:"):
        token_stats(logits, labels, {"rank", "perplexity"})


@each_implementation
def test_one_hot_distribution(stats_of):
    logits = torch.full((1, 6), float("-inf"))
    logits[0, 2] = 0.0
    s = stats_of(logits, torch.tensor([2]), ALL)
    assert s["log_prob"].item() == 0 and s["entropy"].item() == 0 and s["sum_pi_squared"].item() == 1
    assert s["p_max"].item() == 1
    assert s["rank"].item() == 1 and s["expected_rank"].item() == pytest.approx(1.0)


@each_implementation
def test_uniform_distribution(stats_of):
    vocab = 40
    s = stats_of(torch.zeros(1, vocab), torch.tensor([7]), ALL, top_k=20)
    assert s["log_prob"].item() == pytest.approx(-math.log(vocab))
    assert s["entropy"].item() == pytest.approx(math.log(vocab))
    assert s["sum_pi_squared"].item() == pytest.approx(1 / vocab)
    assert s["topk_entropy"].item() == pytest.approx(math.log(20))
    assert s["rank"].item() == vocab  # every token ties with the label: all have probability >= p
    assert s["expected_rank"].item() == pytest.approx((vocab + 1) / 2)  # sum_i i / V


@each_implementation
def test_two_tokens(stats_of):
    a, b = 0.8, 0.2
    logits = torch.tensor([[math.log(a), math.log(b)]] * 2)
    s = stats_of(logits, torch.tensor([0, 1]), ALL)
    assert s["rank"].tolist() == [1, 2]
    assert s["expected_rank"].tolist() == pytest.approx([1 + b, 1 + b])
    assert s["entropy"][0].item() == pytest.approx(-a * math.log(a) - b * math.log(b))
    assert s["sum_pi_squared"][0].item() == pytest.approx(a * a + b * b)
    assert s["p_max"].tolist() == pytest.approx([a, a])


@each_implementation
def test_ties_count_every_token_at_least_as_likely(stats_of):
    logits = torch.tensor([[1.0, 1.0, 0.0]] * 3)
    s = stats_of(logits, torch.tensor([0, 1, 2]), ALL)
    assert s["rank"].tolist() == [2, 2, 3]
    q, r = math.e / (2 * math.e + 1), 1 / (2 * math.e + 1)
    assert s["expected_rank"][0].item() == pytest.approx(1 * q + 2 * q + 3 * r)


def test_rank_counts_signed_zeros_and_infinities_as_the_comparison_does():
    # the rank counts the comparison z < z_label written as floats: -0.0 == 0.0, and a -inf label has none below it
    logits = torch.tensor([[0.0, -0.0, -1.0, float("-inf"), 2.0]] * 5)
    labels = torch.tensor([0, 1, 2, 3, 4])
    s = token_stats(logits, labels, {"rank", "log_prob"})
    assert s["rank"].tolist() == [(logits[0] >= logits[0, y]).sum().item() for y in labels.tolist()] == [3, 3, 4, 5, 1]
    assert s["log_prob"][3].item() == float("-inf")


@pytest.mark.parametrize("rows", [[2, 3, 4, 5], [0, 2, 3, 7, 8, 10], [9]])
def test_selected_rows_equal_the_statistics_of_those_rows(rows):
    logits, labels = random_logits(11, 257, 4.0, 3)
    temperature = torch.rand(11, generator=torch.Generator().manual_seed(4)) + 0.5
    index = torch.tensor(rows)
    got = token_stats(logits, labels[index], ALL, rows=index, temperature=temperature[index], chunk_rows=2)
    want = token_stats(logits[index], labels[index], ALL, temperature=temperature[index])
    for name in ALL:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


# ---- the paper's properties, over random logits ------------------------------------------------------------------

logit_batches = st.builds(
    random_logits,
    n=st.integers(1, 6),
    vocab=st.integers(1, 400),
    scale=st.floats(0.05, 30.0),
    seed=st.integers(0, 2**31 - 1),
)


@settings(max_examples=60, deadline=None)
@given(logit_batches)
def test_rank_at_most_inverse_probability(batch):
    """R_t <= 1/p_t: every token ranked at or above y_t has probability >= p_t."""
    s = token_stats(*batch, {"rank", "log_prob"})
    assert (s["rank"] <= torch.exp(-s["log_prob"]) * (1 + 1e-4)).all()
    assert (s["rank"] >= 1).all()


@settings(max_examples=60, deadline=None)
@given(logit_batches)
def test_expected_rank_above_massey_bound(batch):
    """E[R_t] >= 2^(H_t - 2) + 1 for H_t >= 2 bits (Massey 1994)."""
    s = token_stats(*batch, {"entropy", "expected_rank"})
    bits = s["entropy"] / math.log(2)
    big = bits >= 2
    assert (s["expected_rank"][big] >= guessing_entropy_bound(bits[big]) * (1 - 1e-4)).all()


@settings(max_examples=60, deadline=None)
@given(logit_batches)
def test_expected_rank_from_counts_equals_sort(batch):
    """The histogram of token counts (used above V = 8192) at any vocabulary, within its documented bound."""
    logits, _ = batch
    shifted = logits - logits.amax(1, keepdim=True)
    got = expected_rank_binned(shifted, shifted.exp().sum(1))
    want = expected_rank_sorted(logits.double()).double()
    bound = expected_rank_error_bound(want, 151_936)  # the histogram's bound (the vocabulary picks sort or histogram)
    assert ((got.double() - want).abs() <= bound).all()
    assert (got >= 1).all()


# ---- E[R] accuracy where the histogram is weakest ----------------------------------------------------------------


def hard_cases():
    """Distributions that put many tokens, and much mass, inside single histogram bins."""
    g = torch.Generator().manual_seed(3)
    vocab = 151_936
    yield "lm-like", torch.randn(4, vocab, generator=g) * 2.5
    yield "flat", torch.randn(4, vocab, generator=g) * 1e-3  # everything inside a handful of bins
    yield "near-ties", torch.linspace(0, 0.01, vocab).repeat(2, 1)  # monotone spread across ~17 bins
    yield "bf16 ties", (torch.randn(4, vocab, generator=g) * 3).bfloat16().float()
    peaked = torch.randn(4, vocab, generator=g)
    peaked[:, 0] += 15
    yield "peaked", peaked
    yield "masked", torch.where(torch.rand(4, vocab, generator=g) < 0.9, float("-inf"), 1.0)


@pytest.mark.parametrize("case", list(hard_cases()), ids=lambda c: c[0])
def test_relative_scale_error_within_1e_4(case):
    """The binned E[R] keeps RankTuner's S_t within 1e-4 (relative) of the sort (docs/methods.md target)."""
    from ranktuner_verl.methods import relative_scale

    _, logits = case
    labels = torch.arange(logits.shape[0]) * 997 % logits.shape[1]
    stats = token_stats(logits, labels, {"rank", "expected_rank"})
    exact = dict(stats, expected_rank=expected_rank_sorted(logits.double()).float())
    s_binned, s_exact = relative_scale(stats, "exact").double(), relative_scale(exact, "exact").double()
    assert ((s_binned - s_exact).abs() / s_exact).max() <= 1e-4


def flat_tail(*top):
    """One row at V = 151,936: the given logits first, then a flat tail of zeros."""
    z = torch.zeros(1, 151_936, dtype=torch.float64)
    z[0, : len(top)] = torch.tensor(top, dtype=torch.float64)
    return z


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("logits", [flat_tail(), flat_tail(12.0, 11.0, 10.0), flat_tail(12.0, 12.0),
                                    flat_tail(14.0, 14.0 - 3e-4)],
                         ids=["uniform", "three large + flat tail", "two share + flat tail", "near tie + flat tail"])
def test_expected_rank_within_its_bound_at_151936(logits, autocast):
    """E[R] by the histogram of token counts against the fp64 sort, at Qwen's vocabulary size."""
    exact = (torch.softmax(logits, 1).sort(descending=True).values * torch.arange(1, 151_937)).sum(1)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        got = token_stats(logits.float(), torch.zeros(1, dtype=torch.long), {"expected_rank"})["expected_rank"]
    assert (got.double() - exact).abs().item() <= expected_rank_error_bound(exact, 151_936).item()


def test_expected_rank_uses_no_operation_that_deterministic_cuda_rejects():
    """verl's full-determinism mode (torch.use_deterministic_algorithms(True)) throws on CUDA for a float cumsum, a
    weighted bincount, histc and float scatter/index accumulation; on this CPU those ops run, so every op E[R] calls is
    recorded and checked against that list. The result is also the same bit for bit with the mode on."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.append((func.overloadpacket.__name__, args, kwargs or {}))
            return func(*args, **(kwargs or {}))

    logits, labels = random_logits(6, 20_000, 3.0, 5)
    with Record():
        fast = token_stats(logits, labels, {"expected_rank"}, chunk_rows=6)["expected_rank"]
    names = {name for name, _, _ in calls}
    assert "bincount" in names and ("cumsum" in names or "cumsum_" in names)
    for name, args, kwargs in calls:
        assert name not in {"histc", "scatter_add", "scatter_add_", "index_add", "index_add_", "index_put_"}, name
        if name in ("cumsum", "cumsum_"):
            assert not (kwargs.get("dtype") or args[0].dtype).is_floating_point, "float cumsum"
        if name == "bincount":
            assert kwargs.get("weights") is None and (len(args) < 2 or args[1] is None), "weighted bincount"
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        deterministic = token_stats(logits, labels, {"expected_rank"}, chunk_rows=6)["expected_rank"]
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    assert torch.equal(deterministic, fast)


def test_rows_sharing_one_histogram_give_what_each_row_gives_alone(monkeypatch):
    """Several rows in one bincount (each row's keys offset by its row's bins; one group per chunk, as on an
    accelerator) give what each row gives alone, to the fp32 rounding of the chunk's sum of e."""
    import ranktuner_verl.stats.chunked as stats_module

    logits, labels = random_logits(6, 20_000, 3.0, 5)
    logits[2, :5000] = float("-inf")  # a masked vocabulary: its tokens fall in the last bin
    alone = token_stats(logits, labels, {"expected_rank"}, chunk_rows=1)["expected_rank"]
    monkeypatch.setattr(stats_module, "_HISTOGRAM_ELEMENTS", (1 << 25, 1 << 25))  # all 6 rows in one group
    together = token_stats(logits, labels, {"expected_rank"}, chunk_rows=6)["expected_rank"]
    torch.testing.assert_close(together, alone, rtol=1e-6, atol=0)
    want = expected_rank_sorted(logits.double()).double()
    assert ((together.double() - want).abs() <= expected_rank_error_bound(want, 20_000)).all()


def test_memory_is_bounded_by_the_chunk_not_by_n():
    """The statistics allocate per chunk: with 8x the tokens, the largest single allocation is the same size."""
    vocab = 10_000  # above the exact-sort threshold: the histogram path

    def largest_alloc(n):
        logits, labels = random_logits(n, vocab, 2.0, 0)
        with torch.profiler.profile(profile_memory=True) as prof:
            token_stats(logits, labels, ALL, chunk_rows=4)
        return max(e.cpu_memory_usage for e in prof.events())

    sizes = [largest_alloc(n) for n in (16, 128)]
    assert sizes[1] <= sizes[0]
    n_bins = (2 * math.log(vocab) + 10) / EXPECTED_RANK_BIN_WIDTH + 1
    assert sizes[0] <= 4 * max(vocab, n_bins) * 8  # one [chunk, max(V, bins)] tensor of 8-byte elements


def test_one_finite_logit_reaches_the_last_bin_term_of_the_bound():
    """E[R] = 1 exactly, and the histogram's whole error is the last bin's, which holds the V - 1 tokens at -inf:
    V^2 g_(n-1)/4 = 1.0002 e^-10/4 at V = 151,936 (so "g_(n-1) <= e^-10/V^2" was false), within the bound's
    e^delta e^-10/4 and reaching it to fp32 rounding."""
    vocab = 151_936
    z = torch.full((1, vocab), -math.inf)
    z[0, 7] = 3.0
    got = token_stats(z, torch.tensor([7]), {"expected_rank"})["expected_rank"].double()
    exact = torch.ones(1, dtype=torch.float64)
    bound = expected_rank_error_bound(exact, vocab)
    last_bin_term = expected_rank_error_bound(torch.zeros(1, dtype=torch.float64), vocab)  # the bound's constant
    assert (got - exact).abs().item() <= bound.item()
    assert (got - exact).item() >= 0.99 * last_bin_term.item()


def test_the_documented_bound_implies_its_second_form():
    """docs/methods.md states the E[R] bound in two forms; the second (a * E[R] + b) must follow from the first for
    every E[R] up to V = 248,320, with the constants the docs print."""
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "methods.md").read_text()
    match = re.search(r"\|E_binned - E\[R\]\| < .*<= ([\d.e-]+) \* E\[R\] \+ ([\d.e-]+)", docs)
    a, b = float(match.group(1)), float(match.group(2))
    expected = torch.logspace(0, math.log10(248_320), 2000, dtype=torch.float64)
    first = expected_rank_error_bound(expected, 248_320) - 1e-6 * expected  # the docs' first form, p_max dropped
    assert (first <= a * expected + b).all()
