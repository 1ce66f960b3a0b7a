"""The six methods: closed forms on hand-built distributions, the paper's properties, validation, robustness."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ranktuner_verl import METHODS, get_method, relative_scale, token_stats, token_weights, weighted_nll
from ranktuner_verl.methods import expected_rank_proxy, guessing_entropy_bound, rank_exponent

LN2 = math.log(2)

#: every method with every option value (docs/methods.md)
VARIANTS = [
    ("sft", {}),
    ("dft", {}),
    ("talr", {}),
    ("talr", {"normalize": "simplex", "w_min": 0.1}),
    ("eaft", {}),
    ("eaft", {"entropy": "full", "alpha": 2.0}),
    ("eaft", {"top_k": 3}),
    ("deft", {}),
    ("deft", {"gate": "cayley"}),
    ("ranktuner", {}),
    ("ranktuner", {"base": "one"}),
    ("ranktuner", {"proxy": "massey"}),
    ("ranktuner", {"form": "exact"}),
    ("ranktuner", {"form": "exact", "base": "one"}),
]


def test_registry_holds_the_six_methods():
    assert list(METHODS) == ["sft", "dft", "talr", "eaft", "deft", "ranktuner"]
    for name, spec in METHODS.items():
        assert spec.source and spec.fn.__doc__, name


# ---- closed forms on a uniform distribution over V tokens ---------------------------------------------------------

V = 64


def uniform(name, **params):
    return token_weights(name, torch.zeros(3, V), torch.tensor([0, 5, 9]), **params)


@pytest.mark.parametrize(
    "name, params, expected",
    [
        ("sft", {}, 1.0),
        ("dft", {}, 1 / V),
        ("talr", {}, math.exp(-1)),  # tau = median NLL = ln V; p^(1/tau) = e^-1
        ("talr", {"w_min": 0.5}, 0.5),
        ("talr", {"normalize": "simplex"}, 1.0),  # equal weights, mean 1
        ("eaft", {}, 1.0),  # top-20 entropy = ln 20
        ("eaft", {"entropy": "full", "alpha": 3.0}, 1.0),
        ("deft", {}, (1 / V) ** (1 / V)),  # alpha = sum pi^2 = 1/V
        ("deft", {"gate": "cayley"}, (1 / V) ** (0.5 / V + (1 - 0.5 / V) * (1 / V) / (2 - 1 / V))),
        # exact: R = V (all tie), E[R] = (V+1)/2; S = 2^(f(E) - f(R)), f(x) = 1/log2(x+1)
        ("ranktuner", {"form": "exact", "base": "one"}, 2 ** (1 / math.log2((V + 3) / 2) - 1 / math.log2(V + 1))),
        # practical: H = log2 V bits, s = V/4 + 1, xi = max(V, s) = V, K = log2(V+1)^-2, S = (p s)^-K
        ("ranktuner", {"base": "one"}, ((V / 4 + 1) / V) ** (-(math.log2(V + 1) ** -2))),
        ("ranktuner", {}, (1 / V) * ((V / 4 + 1) / V) ** (-(math.log2(V + 1) ** -2))),
    ],
)
def test_uniform_closed_forms(name, params, expected):
    torch.testing.assert_close(uniform(name, **params), torch.full((3,), expected), rtol=1e-5, atol=1e-7)


def test_one_hot_prediction():
    """The label is certain: p = 1, H = 0, R = E[R] = 1."""
    logits = torch.full((2, 10), float("-inf"))
    logits[:, 4] = 3.0
    labels = torch.tensor([4, 4])
    assert token_weights("dft", logits, labels).tolist() == [1, 1]
    assert token_weights("eaft", logits, labels).tolist() == [0, 0]  # certain tokens carry no entropy weight
    assert token_weights("deft", logits, labels).tolist() == [1, 1]
    assert token_weights("ranktuner", logits, labels, form="exact").tolist() == [1, 1]  # I = 1 when R = E[R]
    # piecewise: s = 1 + (1 - p_max) = 1 = xi, K = 1, S = (1 * 1)^-1 = 1
    assert token_weights("ranktuner", logits, labels).tolist() == [1, 1]
    k = math.log2(2.25) ** -2  # massey: s(0) = 1.25 = xi
    assert token_weights("ranktuner", logits, labels, proxy="massey").tolist() == pytest.approx([1.25 ** -k] * 2)


def test_two_token_distribution():
    a, b = 0.75, 0.25
    logits = torch.tensor([[math.log(a), math.log(b)]] * 2)
    labels = torch.tensor([0, 1])
    assert token_weights("dft", logits, labels).tolist() == pytest.approx([a, b])
    assert token_weights("deft", logits, labels).tolist() == pytest.approx([a ** (a * a + b * b), b ** (a * a + b * b)])
    # exact RankTuner: E[R] = 1 + b; the likely label is ahead of expectation (S < 1), the unlikely one behind (S > 1)
    f = lambda x: 1 / math.log2(x + 1)  # noqa: E731
    want = [2 ** (f(1 + b) - f(1)), 2 ** (f(1 + b) - f(2))]
    assert token_weights("ranktuner", logits, labels, form="exact", base="one").tolist() == pytest.approx(want)
    assert want[0] < 1 < want[1]


def test_talr_median_temperature_and_floor():
    log_p = torch.log(torch.tensor([0.9, 0.5, 0.1, 1e-6]))
    stats = {"log_prob": log_p}
    tau = (-log_p).median().item()  # lower median of 4 values, as torch.median
    w = get_method("talr").weights(stats)
    torch.testing.assert_close(w, torch.clamp(torch.exp(log_p / tau), min=0.01))
    assert w[-1].item() == pytest.approx(0.01)
    # the median only over masked tokens
    mask = torch.tensor([True, True, False, False])
    tau_m = (-log_p[:2]).median().item()
    torch.testing.assert_close(get_method("talr").weights(stats, mask), torch.clamp(torch.exp(log_p / tau_m), min=0.01))


def test_deft_cayley_gate_uses_the_batch_mean():
    p = torch.tensor([0.9, 0.5, 0.2])
    a_f = 0.5 * p.mean()
    alpha = (a_f + (1 - a_f) * p / (2 - p)).clamp(1e-3, 1)
    torch.testing.assert_close(get_method("deft", gate="cayley").weights({"log_prob": p.log()}), p**alpha)


@pytest.mark.parametrize("gate", ["renyi2", "cayley"])
def test_deft_gives_a_label_of_probability_zero_weight_zero(gate):
    """p^alpha at p = 0 is 0 for every alpha > 0 (the definition), from real statistics of a masked vocabulary: a
    small gate alpha must not turn the finite stand-in for log 0 into a weight of 0.58 (renyi2) or 0.044 (cayley)."""
    z = torch.zeros(3, 200)
    z[:, 100:] = -math.inf  # a masked vocabulary: the label 150 has probability 0
    z[2, 0] = 30.0  # a confident row: p = 1 - 1e-11
    labels = torch.tensor([150, 3, 0])
    w = token_weights("deft", z, labels, gate=gate)
    assert w[0].item() == 0.0
    assert 0 < w[1].item() < 1 and w[2].item() == pytest.approx(1.0)


#: docs/methods.md's worked table, practical form: (p, H bits, p_max, R) -> S and p*S for proxy=piecewise (the
#: default) and proxy=massey. Below 2 bits the two differ; from 2 bits on they agree; the third row hits the 1e-6 floor.
WORKED = [
    ((0.9, 0.5, 0.9, 1), (1.0088, 0.9079), (0.8786, 0.7907)),
    ((0.05, 0.5, 0.93, 3), (2.0793, 0.1040), (1.9606, 0.0980)),
    ((1e-7, 1.0, 0.8, 5000), (1.0958, 1.096e-7), (1.0958, 1.096e-7)),
    ((0.3, 1.99, 0.5, 2), (1.3742, 0.4123), (1.2272, 0.3682)),
    ((0.3, 2.0, 0.5, 2), (1.2255, 0.3676), (1.2255, 0.3676)),
    ((0.5, 3.0, 0.5, 2), (0.9036, 0.4518), (0.9036, 0.4518)),
    ((0.01, 6.0, 0.05, 40), (1.0637, 0.01064), (1.0637, 0.01064)),
]


@pytest.mark.parametrize("row", WORKED, ids=lambda r: "p={},H={},p_max={},R={}".format(*r[0]))
def test_worked_values_of_the_practical_form(row):
    (p, h, p_max, r), piecewise, massey = row
    stats = {"log_prob": torch.tensor([math.log(p)]), "entropy": torch.tensor([h * LN2]),
             "p_max": torch.tensor([p_max]), "rank": torch.tensor([float(r)])}
    for proxy, (s_want, w_want) in (("piecewise", piecewise), ("massey", massey)):
        assert relative_scale(stats, proxy=proxy).item() == pytest.approx(s_want, abs=1e-4), proxy
        method = get_method("ranktuner", proxy=proxy)
        assert method.weights(stats).item() == pytest.approx(w_want, rel=1e-3), proxy
        assert get_method("ranktuner", proxy=proxy, base="one").weights(stats).item() == pytest.approx(s_want, abs=1e-4)
        # the logged S_t takes the method's params as they are
        assert relative_scale(stats, **method.params).item() == pytest.approx(s_want, abs=1e-4)
    assert relative_scale(stats).item() == pytest.approx(piecewise[0], abs=1e-4)  # piecewise is the default


def test_expected_rank_proxy_is_a_lower_bound_of_the_expected_rank():
    """s(H) <= E[R] on random distributions on both sides of H = 2 bits (piecewise: 1 + (1 - p_max) below 2 bits)."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(400, 50, generator=g) * torch.logspace(-1, 1.5, 400)[:, None]
    stats = token_stats(logits, torch.zeros(400, dtype=torch.long), {"entropy", "p_max", "expected_rank"})
    bits = stats["entropy"] / LN2
    s = expected_rank_proxy(bits, stats["p_max"], "piecewise")
    assert (bits < 2).sum() > 50 and (bits >= 2).sum() > 50
    assert (s <= stats["expected_rank"] * (1 + 1e-5)).all()
    massey = expected_rank_proxy(bits, None, "massey")
    assert (massey[bits < 2] > stats["expected_rank"][bits < 2]).any()  # why Massey's bound is not used below 2 bits


# ---- the paper's properties --------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.floats(1.0, 1e6))
def test_k_in_unit_interval(xi):
    """K(xi) = log2(xi + 1)^-2 lies in (0, 1] for xi >= 1 (xi = max(R, s(H)) >= 1.25)."""
    k = rank_exponent(torch.tensor([xi], dtype=torch.float64)).item()
    assert 0 < k <= 1


@settings(max_examples=200, deadline=None)
@given(st.floats(1.0, 1e5), st.floats(1.0, 1e5))
def test_indicator_is_one_iff_rank_equals_expectation(r, e):
    """I_t = 1 when R = E[R]; I_t < 1 (S_t > 1) when the guess is worse than expected, R > E[R]."""
    stats = {"rank": torch.tensor([r], dtype=torch.float64), "expected_rank": torch.tensor([e], dtype=torch.float64)}
    s = relative_scale(stats, "exact").item()
    same = relative_scale(dict(stats, expected_rank=stats["rank"]), "exact").item()
    assert same == 1.0
    if r > e * (1 + 1e-9):
        assert s > 1
    elif r < e * (1 - 1e-9):
        assert s < 1


@settings(max_examples=200, deadline=None)
@given(st.floats(1.0, 1e5), st.floats(1.0, 1e5))
def test_mean_value_form_of_the_indicator(r, e):
    """I = (E/R)^K'(xi) for some xi between R and E, K'(x) = x/(x+1) log2(x+1)^-2 (Cauchy mean value theorem)."""
    if abs(math.log(r / e)) < 1e-6:
        return
    log_s = math.log(relative_scale({"rank": torch.tensor([r], dtype=torch.float64),
                                     "expected_rank": torch.tensor([e], dtype=torch.float64)}, "exact").item())
    k_eff = log_s / math.log(r / e)  # S = 1/I = (R/E)^K'
    k_prime = lambda x: x / (x + 1) / math.log2(x + 1) ** 2  # noqa: E731  decreasing for x >= 1
    lo, hi = sorted((r, e))
    assert k_prime(hi) * (1 - 1e-6) <= k_eff <= k_prime(lo) * (1 + 1e-6)


def test_noise_region_weights_tend_to_the_base():
    """S_t -> 1 as R_t and E[R_t] (or s(H_t)) grow: flat, low-probability tokens keep about the base weight."""
    gaps = []
    for vocab in (10, 1_000, 100_000):
        logits = torch.randn(8, vocab, generator=torch.Generator().manual_seed(0)) * 0.1
        labels = torch.arange(8) * 7 % vocab
        s_exact = token_weights("ranktuner", logits, labels, form="exact", base="one")
        s_practical = token_weights("ranktuner", logits, labels, base="one")
        gaps.append(((s_exact - 1).abs().max().item(), (s_practical - 1).abs().max().item()))
    assert gaps[0][0] > gaps[1][0] > gaps[2][0] and gaps[2][0] < 0.05
    assert gaps[0][1] > gaps[1][1] > gaps[2][1] and gaps[2][1] < 0.05


def test_guessing_entropy_bound_values():
    assert guessing_entropy_bound(torch.tensor([2.0, 4.0, 0.0])).tolist() == [2.0, 5.0, 1.25]


# ---- validation --------------------------------------------------------------------------------------------------


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown loss 'rank_tuner'; valid: sft, dft, talr, eaft, deft, ranktuner"):
        get_method("rank_tuner")


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("talr", {"w_min": 1.5}, r"w_min=1.5 is out of range; use a number >= 0.0 and <= 1.0"),
        ("talr", {"normalize": "l1"}, r"normalize='l1' is not valid; use one of 'none', 'simplex'"),
        ("eaft", {"top_k": 0}, r"top_k=0 is out of range"),
        ("eaft", {"top_k": 2.5}, r"top_k=2.5 is not valid; use an integer"),
        ("eaft", {"alpha": 0}, r"alpha=0 is out of range; use a number > 0.0"),
        ("eaft", {"alpha": "big"}, r"alpha='big' is not valid"),
        ("eaft", {"top_k": float("inf")}, r"top_k=inf is not valid; use an integer"),
        ("talr", {"w_min": float("nan")}, r"w_min=nan is not valid; use a number"),
        ("deft", {"gate": "renyi"}, r"gate='renyi' is not valid; use one of 'renyi2', 'cayley'"),
        ("ranktuner", {"form": "approx"}, r"form='approx' is not valid; use one of 'practical', 'exact'"),
        ("ranktuner", {"proxy": "entropy"}, r"proxy='entropy' is not valid; use one of 'piecewise', 'massey'"),
        ("ranktuner", {"bse": "p"}, r"unknown parameter\(s\) \['bse'\]; valid: form .*, base .*, proxy "),
        ("sft", {"alpha": 1}, r"unknown parameter\(s\) \['alpha'\]; valid: none"),
    ],
)
def test_bad_parameters_fail_with_what_is_valid(name, params, message):
    with pytest.raises(ValueError, match=message):
        get_method(name, **params)


def test_needs_follow_the_options():
    assert get_method("sft").needs == {"log_prob"}
    assert get_method("eaft").needs == {"log_prob", "topk_entropy"}
    assert get_method("eaft", entropy="full").needs == {"log_prob", "entropy", "log_vocab"}
    assert get_method("eaft", top_k=5).stat_kwargs == {"top_k": 5}
    assert get_method("deft").needs == {"log_prob", "sum_pi_squared"}
    assert get_method("deft", gate="cayley").needs == {"log_prob"}
    assert get_method("ranktuner").needs == {"log_prob", "rank", "entropy", "p_max"}
    assert get_method("ranktuner", proxy="massey").needs == {"log_prob", "rank", "entropy"}
    assert get_method("ranktuner", form="exact").needs == {"log_prob", "rank", "expected_rank"}


def test_missing_statistic_is_named():
    with pytest.raises(KeyError, match=r"needs statistics \['entropy', 'p_max', 'rank'\]"):
        get_method("ranktuner").weights({"log_prob": torch.zeros(3)})
    with pytest.raises(KeyError, match=r"needs statistics \['p_max'\]"):  # the logged S_t too
        relative_scale({"log_prob": torch.zeros(3), "entropy": torch.zeros(3), "rank": torch.ones(3)})
    with pytest.raises(ValueError, match=r"proxy='bits' is not valid; use one of 'piecewise', 'massey'"):
        relative_scale({}, proxy="bits")


# ---- robustness: weights finite and non-negative everywhere -------------------------------------------------------


def awkward_inputs():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 500, generator=g) * 3
    labels = torch.randint(0, 500, (6,), generator=g)
    yield "bf16", base.bfloat16(), labels
    yield "fp16", base.half(), labels
    masked = base.clone()
    masked[:, ::3] = float("-inf")
    masked[0, labels[0]] = float("-inf")  # even the label masked out
    yield "-inf entries", masked, labels
    yield "magnitude 1e4", base * 3e3, labels
    yield "V = 1", torch.randn(4, 1, generator=g), torch.zeros(4, dtype=torch.long)
    yield "V = 151936", torch.randn(3, 151_936, generator=g) * 4, torch.tensor([0, 77, 151_935])
    yield "N = 0", torch.randn(0, 50), torch.zeros(0, dtype=torch.long)


@pytest.mark.parametrize("case", list(awkward_inputs()), ids=lambda c: c[0])
@pytest.mark.parametrize("name, params", VARIANTS, ids=[f"{n}{p or ''}" for n, p in VARIANTS])
def test_weights_finite_and_non_negative(case, name, params):
    _, logits, labels = case
    w = token_weights(name, logits, labels, **params)
    assert w.shape == labels.shape and w.dtype == torch.float32
    assert torch.isfinite(w).all() and (w >= 0).all()
    # the loss too, wherever the label itself is possible (an impossible label has NLL = inf by definition)
    possible = torch.isfinite(logits.float().gather(1, labels[:, None]).squeeze(1)) if len(labels) else labels.bool()
    z = logits.float().requires_grad_()
    loss = weighted_nll(name, z, labels, mask=possible, **params)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
