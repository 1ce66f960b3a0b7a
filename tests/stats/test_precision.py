"""Statistics and weights in the precisions verl uses: bf16 autocast (verl's default mixed precision; on a GPU the loss
runs inside it), bf16 logits, temperature scaling as verl does it, and log-probabilities far below fp32's normal range.

CPU autocast reproduces the GPU case: ``torch.linalg.vecdot`` is on autocast's low-precision list on both.
"""

import functools
import math

import pytest
import torch

from ranktuner_verl import METHODS, get_method, token_stats, weighted_nll
from ranktuner_verl.stats import reference_stats
from tests.stats.test_chunked import ALL
from tests.test_methods import VARIANTS

#: the bound every statistic and weight meets against fp64 (docs/methods.md, "Precision"): |x - x64| <= RTOL |x64| + ATOL
RTOL, ATOL = 1e-5, 1e-6


def mixed_logits(dtype=torch.float32):
    """64 rows on both sides of H = 2 bits: temperatures from flat to peaked, every fourth row with a dominant token."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 3000, generator=g) * torch.logspace(-1, 1.5, 64)[:, None]
    z[::4, 0] += 12
    return z.to(dtype), torch.randint(0, 3000, (64,), generator=g)


@functools.lru_cache(maxsize=None)
def reference(dtype=torch.float32, top_k=20) -> dict:
    """The fp64 statistics of ``mixed_logits(dtype)`` (the oracle, computed once)."""
    logits, labels = mixed_logits(dtype)
    return reference_stats(logits.double(), labels, top_k=top_k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32 logits", "bf16 logits"])
def test_statistics_under_bf16_autocast_match_fp64(dtype):
    logits, labels = mixed_logits(dtype)
    want = reference(dtype)
    plain = token_stats(logits, labels, ALL)
    with torch.autocast("cpu", torch.bfloat16):
        got = token_stats(logits, labels, ALL)
    for name in ALL:
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], plain[name]), f"autocast changed {name}"
        torch.testing.assert_close(got[name].double(), want[name], rtol=RTOL, atol=ATOL, msg=name)


@pytest.mark.parametrize("name, params", VARIANTS, ids=[f"{n}{p or ''}" for n, p in VARIANTS])
def test_weights_under_bf16_autocast_match_fp64(name, params):
    """Each method's weights from autocast statistics against the same formula evaluated on fp64 statistics."""
    logits, labels = mixed_logits()
    method = get_method(name, **params)
    want = METHODS[name].fn(reference(**method.stat_kwargs), None, **method.params)
    with torch.autocast("cpu", torch.bfloat16):
        got = method.weights(token_stats(logits, labels, method.needs, **method.stat_kwargs))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=RTOL, atol=ATOL)


def test_weighted_loss_is_the_same_under_autocast():
    logits, labels = mixed_logits()
    results = []
    for enabled in (False, True):
        z = logits.clone().requires_grad_()
        with torch.autocast("cpu", torch.bfloat16, enabled=enabled):
            loss = weighted_nll("ranktuner", z, labels)
        loss.backward()
        results.append((loss.detach(), z.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


# ---- temperature, applied as verl applies it -----------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.7, "per-row"])
def test_temperature_matches_verl_scaling(temperature):
    """token_stats(z, temperature=t) == token_stats(verl's z / t): division per chunk, in the logits' dtype."""
    from verl.workers.engine.fsdp.transformer_impl import _scale_logits_by_temperature

    logits, labels = mixed_logits(torch.bfloat16)
    if temperature == "per-row":
        temperature = torch.linspace(0.3, 1.7, len(labels))
    per_row = torch.as_tensor(temperature, dtype=torch.float32).expand(len(labels))
    verl_scaled = _scale_logits_by_temperature(logits, per_row.unsqueeze(-1), is_unit_temperature=False)
    want = token_stats(verl_scaled, labels, ALL)
    got = token_stats(logits, labels, ALL, temperature=temperature, chunk_rows=5)
    for name in ALL:
        assert torch.equal(got[name], want[name]), name
    assert not torch.equal(got["entropy"], token_stats(logits, labels, {"entropy"})["entropy"])


def test_temperature_makes_no_full_size_copy():
    """The largest allocation with a per-row temperature is chunk-sized, not [N, V] (as an up-front division is)."""
    logits, labels = mixed_logits(torch.bfloat16)
    temperature = torch.full((len(labels),), 0.5)

    def largest_alloc(**kwargs):
        with torch.profiler.profile(profile_memory=True) as prof:
            token_stats(logits, labels, {"entropy", "rank"}, chunk_rows=4, **kwargs)
        return max(e.cpu_memory_usage for e in prof.events())

    assert largest_alloc(temperature=temperature) <= largest_alloc() < logits.numel() * logits.element_size()


def test_bad_temperature_shape_is_refused():
    logits, labels = mixed_logits()
    with pytest.raises(ValueError, match=r"temperature must be a number or a tensor \[N\] = \[64\]"):
        token_stats(logits, labels, {"entropy"}, temperature=torch.ones(3))


# ---- log-probabilities below fp32's normal range --------------------------------------------------------------------


@pytest.mark.parametrize("name, params", [("deft", {"gate": "cayley"}), ("deft", {}), ("ranktuner", {"base": "one"}),
                                          ("ranktuner", {"base": "one", "proxy": "massey"})])
def test_small_log_probabilities_are_used_as_they_are(name, params):
    """log p = -100 or -200 (finite) enters the weights unchanged; only log p = -inf is replaced (by log of fp32's
    smallest normal), so its weight stays finite."""
    log_p = torch.tensor([-0.1, -1.0, -100.0, -200.0, -math.inf])
    stats = {"log_prob": log_p, "sum_pi_squared": torch.full((5,), 0.05), "entropy": torch.full((5,), 1.0),
             "p_max": torch.full((5,), 0.9), "rank": torch.tensor([1.0, 2.0, 900.0, 5000.0, 8000.0])}
    method = get_method(name, **params)
    got = method.weights(stats, mask=torch.isfinite(log_p))  # batch statistics (tau, a_f) over the finite ones
    finite = {k: v[:4].double() for k, v in stats.items()}
    want = METHODS[name].fn(finite, None, **method.params)
    torch.testing.assert_close(got[:4].double(), want, rtol=1e-5, atol=0)
    assert torch.isfinite(got[4])


# ---- the bounds at Qwen's vocabulary, on adversarial rows --------------------------------------------------------------

QWEN_V = 151_936


def tied_tail(level: float, rows: int = 2) -> torch.Tensor:
    """A top token at 0 and V - 1 tokens tied at ``level``: their fp32 row total is the worst rounded (2.8e-6 relative
    at -16.4596405); at -14.2301998 the tail also sits on an E[R] histogram bin edge."""
    z = torch.full((rows, QWEN_V), level)
    z[:, 0] = 0.0
    return z


def confident(*tail: float) -> torch.Tensor:
    """One row: the top token at 0, the given logits next, the rest at -100 (1 - p_max = sum of e^tail)."""
    z = torch.full((1, QWEN_V), -100.0)
    z[0, 1 : len(tail) + 1] = torch.tensor(tail)
    z[0, 0] = 0.0
    return z


@pytest.mark.parametrize("z", [tied_tail(-14.2301998), tied_tail(-16.4596405), confident(*[-16.0] * 9),
                               confident(-20.7)],
                         ids=["tail on a bin edge", "worst-rounded tail", "1 - p_max = 1e-6", "1 - p_max = 1e-9"])
def test_every_statistic_meets_its_bound_on_adversarial_rows_at_151936(z):
    """The row total is summed in fp64 (fp32 breaks log_prob's bound 2.1x and E[R]'s by 0.2%), and a confident row's
    entropy keeps the top token's term, ln(1 + m) with m = 1 - p_max tiny: relative error <= 1e-5 however small H."""
    labels = torch.arange(z.shape[0])  # the top token, then a tail token
    got = token_stats(z, labels, ALL)
    want = reference_stats(z.double(), labels)
    for name in ("log_prob", "logsumexp", "entropy", "sum_pi_squared", "p_max", "rank"):
        torch.testing.assert_close(got[name].double(), want[name], rtol=RTOL, atol=ATOL, msg=name)
    torch.testing.assert_close(got["entropy"].double(), want["entropy"], rtol=RTOL, atol=0, msg="entropy, relative")
    from ranktuner_verl.stats import expected_rank_error_bound

    error = (got["expected_rank"].double() - want["expected_rank"]).abs()
    assert (error <= expected_rank_error_bound(want["expected_rank"], QWEN_V)).all(), error


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_eaft_full_entropy_weight_of_a_confident_row_matches_fp64(alpha):
    """EAFT with alpha < 1 magnifies the entropy's relative error near H = 0 only by alpha: the weight is right when
    the entropy keeps its top-token term."""
    z = torch.cat([confident(*[-16.0] * 9), confident(-13.5, -14.0)])
    method = get_method("eaft", entropy="full", alpha=alpha)
    got = method.weights(token_stats(z, torch.zeros(2, dtype=torch.long), method.needs))
    want = METHODS["eaft"].fn(reference_stats(z.double(), torch.zeros(2, dtype=torch.long)), None, **method.params)
    torch.testing.assert_close(got.double(), want, rtol=RTOL, atol=ATOL)
