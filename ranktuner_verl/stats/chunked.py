"""Per-token statistics of the predicted distribution, the torch reducer: the inputs of every weighting method.

Notation (docs/methods.md): z_t the logits over the vocabulary V, pi_t = softmax(z_t), y_t the label,
p_t = pi_t(y_t). Everything is computed from fp32 terms, the sums over the vocabulary accumulated in fp64, with
autocast off (whatever the caller's autocast state: verl runs the loss inside a bf16 autocast on a GPU, where
``linalg.vecdot`` would otherwise run in bf16), without gradient, a chunk of rows at a time, so the extra memory is
O(chunk_rows * V) whatever the number of tokens N.

Pure PyTorch: no verl import here.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Iterable

import torch

LN2 = math.log(2.0)

#: name -> definition, for every statistic ``token_stats`` can compute.
STATS = {
    "log_prob": "log p_t",
    "logsumexp": "log sum_v exp z_t(v), the softmax normaliser (the fused loss recomputes pi_t from it in backward)",
    "entropy": "H_t = -sum_v pi_t(v) ln pi_t(v), in nats (bits = nats / ln 2)",
    "sum_pi_squared": "sum_v pi_t(v)^2, the collision probability exp(-H_2) (DEFT's gate)",
    "p_max": "max_v pi_t(v), the largest probability (RankTuner's proxy of E[R_t] below 2 bits of entropy)",
    "topk_entropy": "entropy (nats) of softmax over the top_k largest logits (EAFT)",
    "rank": "R_t = |{v : pi_t(v) >= p_t}|, the 1-based rank of the label (RankTuner)",
    "expected_rank": "E[R_t] = sum_i i * pi_t,(i) over the probabilities sorted descending (RankTuner, exact form)",
    "log_vocab": "ln V, the largest possible entropy (EAFT's normaliser with entropy='full'); the same for every token",
}

#: Logits are shifted so the row maximum is 0, then, where the entropy multiplies them by their e, clamped here:
#: exp(-1e4) == 0 in fp32, so this is exact, and -inf entries (a masked vocabulary) cannot make 0 * -inf = nan.
_LOGIT_FLOOR = -1.0e4
#: Width, in nats of log-probability, of the histogram bins used for E[R] (see ``expected_rank_binned``).
EXPECTED_RANK_BIN_WIDTH = 6.0e-4
#: Up to this vocabulary size E[R] comes from an exact sort (cheap there, and smaller than the histogram).
_SORT_MAX_VOCAB = 8192
#: Work sizes, (CPU, accelerator). A CPU wants cache-sized pieces; a GPU wants few, large kernels.
#: Histogram bins handled at once (a row has ~56k at V = 151,936; on a CPU the count table is accessed at random:
#: keep it in L2).
_HISTOGRAM_ELEMENTS = (1 << 16, 1 << 25)
#: Logits per chunk (rows * V): 1.5 MiB of fp32 per temporary on a CPU, two rows at Qwen's V = 151,936 (fewer calls
#: per row than one, and the temporaries still fit in L2; ``python -m ranktuner_verl.bench``), 256 MiB on an
#: accelerator. ``chunk_rows`` overrides it.
_CHUNK_ELEMENTS = (3 << 17, 1 << 26)


def rows_per_chunk(sizes: tuple[int, int], width: int, device: torch.device | str | None) -> int:
    """Rows of ``width`` elements in one work piece of ``sizes`` = (CPU, accelerator) elements; at least one."""
    elements = sizes[0] if device is None or torch.device(device).type == "cpu" else sizes[1]
    return max(1, elements // max(width, 1))


def autocast_off(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context with autocast disabled on ``device``'s type: the statistics and weights stay in the dtype they are
    computed in (fp32), as they would be outside autocast."""
    kind = torch.device(device).type
    return torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind) else contextlib.nullcontext()


def nats_to_bits(x: torch.Tensor) -> torch.Tensor:
    return x / LN2


def checked_needs(needs: Iterable[str]) -> frozenset[str]:
    """``needs`` as a frozenset; ValueError naming the unknown statistics and the valid ones."""
    needs = frozenset(needs)
    unknown = needs - STATS.keys()
    if unknown:
        raise ValueError(f"unknown statistic(s) {sorted(unknown)}; valid: {sorted(STATS)}")
    return needs


def default_chunk_rows(vocab_size: int, device: torch.device | str | None = None) -> int:
    """Rows of logits per chunk: extra memory is a few [rows, V] fp32 temporaries."""
    return rows_per_chunk(_CHUNK_ELEMENTS, vocab_size, device)


@torch.no_grad()
def token_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    needs: Iterable[str],
    *,
    top_k: int = 20,
    chunk_rows: int | None = None,
    temperature: float | torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
    reduce: Callable | None = None,
) -> dict[str, torch.Tensor]:
    """Statistics ``needs`` (names from ``STATS``) of ``logits [N, V]`` at ``labels [N]``, each a fp32 tensor ``[N]``.

    Only the statistics asked for are computed. Logits may be any float dtype; labels must be valid ids.
    ``temperature`` (a number, or a tensor [N] of per-row values): the statistics are those of logits / temperature,
    divided chunk by chunk in the logits' dtype after clamping the temperature at 1e-8, as verl 0.9.1 does before its
    log-softmax (``FSDPEngineWithLMHead.prepare_model_outputs``), so no full-size copy of the logits is made.
    ``rows`` (int [M], increasing): the statistics of ``logits[rows]`` only, with ``labels`` and a tensor
    ``temperature`` given per selected row ([M]); each chunk is a view where its rows are consecutive.
    ``reduce``: the per-chunk reducer (default ``reduce_chunk``); ``ranktuner_verl.stats.token_stats`` picks it.
    """
    needs = checked_needs(needs)
    n = logits.shape[0] if rows is None else rows.numel()
    if logits.dim() != 2 or labels.shape != (n,):
        raise ValueError(f"expected logits [N, V] and labels [N] (or [M] with rows [M]), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if isinstance(temperature, torch.Tensor) and temperature.shape not in ((), (n,)):
        raise ValueError(f"temperature must be a number or a tensor [N] = [{n}], got shape {tuple(temperature.shape)}")
    vocab = logits.shape[1]
    if not needs or not n:
        return {name: torch.empty(n, dtype=torch.float32, device=logits.device) for name in needs}
    step = min(chunk_rows or default_chunk_rows(vocab, logits.device), n)
    sums = _RowSums(n, needs, logits.device)
    work = _Workspace(vocab, logits.device)
    labels = labels.long()
    with autocast_off(logits.device):
        for start in range(0, n, step):
            chunk = logits[start : start + step] if rows is None else _take_rows(logits, rows[start : start + step])
            chunk = _scaled(chunk, temperature, start)
            (reduce or reduce_chunk)(chunk, labels[start : start + step], needs, top_k, sums.part(start, start + step), work)
    return sums.finish(needs, vocab)


def _take_rows(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``logits[rows]``: a view when the rows are consecutive (the common case), else a chunk-sized copy."""
    first, last = int(rows[0]), int(rows[-1])
    if last - first + 1 == rows.numel():
        return logits[first : last + 1]
    return logits.index_select(0, rows)


def _scaled(logits: torch.Tensor, temperature: float | torch.Tensor | None, start: int) -> torch.Tensor:
    """logits / temperature in the logits' dtype (verl's ``_scale_logits_by_temperature``); no-op for 1 or None."""
    if temperature is None or (not isinstance(temperature, torch.Tensor) and float(temperature) == 1.0):
        return logits
    t = torch.as_tensor(temperature, dtype=torch.float32, device=logits.device)
    if t.dim() == 1:
        t = t[start : start + logits.shape[0], None]
    return logits / t.clamp(min=1e-8).to(logits.dtype)


class _Workspace:
    """[rows, V] buffers reused by every chunk of one ``token_stats`` call, made on first use: on a CPU a fresh
    chunk-sized tensor per operation costs more than the arithmetic on it (new pages), and on an accelerator the
    caching allocator is spared the churn."""

    def __init__(self, vocab: int, device: torch.device):
        self.vocab, self.device, self._buffers = vocab, device, {}

    def take(self, name: str, rows: int, dtype: torch.dtype = torch.float32, width: int | None = None) -> torch.Tensor:
        """Buffer ``name`` as [rows, width or V] of ``dtype`` (both fixed at its first use); made again only if more
        rows are asked for than it has (chunks come largest first)."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape[0] < rows:
            buffer = self._buffers[name] = torch.empty((rows, width or self.vocab), dtype=dtype, device=self.device)
        return buffer if buffer.shape[0] == rows else buffer[:rows]  # no slice op for a full chunk


#: The per-row sums each statistic is finished from (``_RowSums.finish``), with e = exp(z - max z) (so e <= 1 and
#: the top token's e is 1): z_label, z_max, total = sum e, e_dot_shift = sum e (z - max z), e_dot_e = sum e^2,
#: below = |{v : z(v) < z_label}|, rank_integral = sum_i (2i - 1) e_(i) (fp64; ``expected_rank_binned``);
#: topk_entropy is finished per chunk.
_SUMS_OF = {
    "log_prob": ("z_label", "z_max", "total"), "logsumexp": ("z_max", "total"), "p_max": ("total",),
    "entropy": ("total", "e_dot_shift"), "sum_pi_squared": ("total", "e_dot_e"), "rank": ("below",),
    "expected_rank": ("total", "rank_integral"), "topk_entropy": ("topk_entropy",), "log_vocab": (),
}


#: The sums over the vocabulary, accumulated in fp64 from fp32 terms: an fp32 sum of 151,936 terms errs by up to
#: 2.8e-6 relative, enough to break the documented bounds (docs/methods.md, "Precision").
_FP64_SUMS = frozenset({"total", "e_dot_shift", "e_dot_e", "rank_integral"})


class _RowSums:
    """The [N] per-row sums of one ``token_stats`` call (``_FP64_SUMS`` in fp64, the rest fp32); each chunk writes its
    rows in place."""

    def __init__(self, n: int, needs: frozenset[str], device: torch.device):
        names = {sum_name for stat in needs for sum_name in _SUMS_OF[stat]}
        self.n, self.device = n, device
        self.values = {name: torch.empty(n, dtype=torch.float64 if name in _FP64_SUMS else torch.float32,
                                         device=device) for name in names}

    def part(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        return {name: value[start:stop] for name, value in self.values.items()}

    def finish(self, needs: frozenset[str], vocab: int) -> dict[str, torch.Tensor]:
        v = self.values
        out = {}
        if "total" in v:
            # logsumexp(z) - max z = ln(1 + m), m = total - 1 the non-top mass (exact in fp64): log1p keeps a
            # confident row's ln(1 + m) ~ m, the top token's term of the entropy, which ln(total) in fp32 loses
            log_total = torch.log1p(v["total"] - 1)
        if "log_prob" in needs:
            out["log_prob"] = (v["z_label"].double() - v["z_max"].double() - log_total).float()
        if "logsumexp" in needs:
            out["logsumexp"] = (v["z_max"].double() + log_total).float()
        if "p_max" in needs:
            out["p_max"] = v["total"].reciprocal().float()  # the top token's e is 1
        if "entropy" in needs:
            # H = lse - sum pi z = ln(1 + m) - sum pi (z - max z): two terms >= 0, no cancellation
            out["entropy"] = (log_total - v["e_dot_shift"] / v["total"]).clamp_(min=0).float()
        if "sum_pi_squared" in needs:
            out["sum_pi_squared"] = (v["e_dot_e"] / v["total"].square()).float()
        if "rank" in needs:  # a label at -inf ranks last: no token is below it
            out["rank"] = vocab - v["below"]
        if "expected_rank" in needs:
            out["expected_rank"] = _expected_rank_of(v["rank_integral"], v["total"])
        if "topk_entropy" in needs:
            out["topk_entropy"] = v["topk_entropy"]
        if "log_vocab" in needs:
            out["log_vocab"] = torch.full((self.n,), math.log(vocab), dtype=torch.float32, device=self.device)
        return out


def reduce_chunk(logits: torch.Tensor, labels: torch.Tensor, needs: frozenset[str], top_k: int,
                  sums: dict[str, torch.Tensor], work: _Workspace) -> None:
    """This chunk's rows of ``sums`` (``_SUMS_OF``), in fp32. Every [rows, V] temporary is a ``work`` buffer."""
    rows = logits.shape[0]
    z = logits if logits.dtype == torch.float32 else work.take("z", rows).copy_(logits)
    z_label = z.gather(1, labels[:, None])
    if "z_label" in sums:
        sums["z_label"].copy_(z_label.squeeze(1))
    if "below" in sums:
        # |{v : z(v) < z_label}| as a fp32 sum of the 0/1 comparison written as floats: exact below 2^24 tokens, and
        # vectorised (a bool output is not). Compared on logits: the order of the probabilities, without their
        # underflow ties; a -inf label has none below it.
        torch.sum(torch.gt(z_label, z, out=work.take("scratch", rows)), 1, out=sums["below"])
    if "topk_entropy" in sums:
        sums["topk_entropy"].copy_(entropy_of_logits(_top_values(z, top_k)))
    if "z_max" not in sums and "total" not in sums:
        return
    z_max = z.amax(1, keepdim=True).clamp_(min=torch.finfo(torch.float32).min)  # a row all -inf gives no NaN
    if "z_max" in sums:
        sums["z_max"].copy_(z_max.squeeze(1))
    shifted = torch.sub(z, z_max, out=work.take("shifted", rows))  # z - max z <= 0
    if "e_dot_shift" in sums:  # exp(-1e4) == 0 in fp32, so exact; and a -inf logit cannot make 0 * -inf = nan
        shifted.clamp_(min=_LOGIT_FLOOR)
    e = torch.exp(shifted, out=work.take("e", rows))
    torch.sum(e, 1, dtype=torch.float64, out=sums["total"])  # in [1, V]; fp64 accumulation (_FP64_SUMS)
    for name, other in (("e_dot_shift", shifted), ("e_dot_e", e)):
        if name in sums:  # sum(e * other) through a work buffer: vecdot's own [rows, V] product is a fresh tensor
            torch.sum(torch.mul(e, other, out=work.take("scratch", rows)), 1, dtype=torch.float64, out=sums[name])
    if "rank_integral" in sums:
        if z.shape[1] <= _SORT_MAX_VOCAB:
            torch.linalg.vecdot(e.double().sort(dim=1, descending=True).values, _odd_numbers(z.shape[1], z.device),
                                out=sums["rank_integral"])
        else:
            _rank_integral_binned(shifted, EXPECTED_RANK_BIN_WIDTH, sums["rank_integral"], work)


def _top_values(z: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest values of each row, in any order: the top k of the top k of each half of the row, so that a
    one-row chunk's topk runs on two threads (torch parallelises it over rows)."""
    rows, vocab = z.shape
    k = min(k, vocab)
    if vocab % 2 or vocab < 4 * k:
        return z.topk(k, dim=1).values
    return z.reshape(rows * 2, vocab // 2).topk(k, dim=1).values.reshape(rows, 2 * k).topk(k, dim=1).values


def entropy_of_logits(z: torch.Tensor) -> torch.Tensor:
    """Exact entropy (nats) of softmax(z) along the last dim; -inf entries allowed."""
    log_p = torch.log_softmax(z.float(), dim=-1)
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, 0.0).sum(-1)


def expected_rank_binned(shifted_logits: torch.Tensor, total: torch.Tensor,
                         bin_width: float = EXPECTED_RANK_BIN_WIDTH) -> torch.Tensor:
    """E[R] = sum_i i * pi_(i) (Yu et al., arXiv 2602.01745) without a sort, from token counts alone.

    With e = exp(z - max z) (the top token's e is 1) and N(s) = |{v : e(v) >= s}|,
    E[R] = 1 + sum_{i<j} pi_(j) = 1/2 + 1/2 sum_{u,v} min(pi_u, pi_v) = (1 + I / total) / 2, I = integral_0^1 N(s)^2 ds
    (min(a, b) = integral [a >= s][b >= s] ds). Tokens go in bins of width ``delta`` = ``bin_width`` of z - max z
    (bin b: (-(b+1) delta, -b delta]); in bin b, N lies between D_{b-1} and D_b, the running token counts, and each
    bin's piece of I is charged the mean of the two bounds (in bin 0, N >= 1: the top token). So
    I ~= sum_b D_b^2 kappa_b + (1 - e^-delta)/2, kappa_b = (g_b - g_{b+2})/2, g_b = e^(-b delta) (0 past the last bin).
    |error| < (e^delta - 1)/2 * (E[R] - p_max) + e^delta e^-10/4 <= 3.001e-4 * E[R] + 1.14e-5, the last term from
    the last bin, which takes every token at least 2 ln V + 10 - delta nats below the top; RankTuner's S_t then errs
    by at most 8.6e-5 (docs/methods.md has the proofs; ``expected_rank_error_bound``). The counts are integers (one ``bincount``, no float atomics:
    deterministic on every device), their running sums and squares exact in fp64.

    ``shifted_logits`` = z - max z (<= 0; -inf allowed) [rows, V], ``total`` = sum_v e(v) [rows]. Returns fp32 [rows].
    """
    rows, vocab = shifted_logits.shape
    integral = torch.empty(rows, dtype=torch.float64, device=shifted_logits.device)
    _rank_integral_binned(shifted_logits, bin_width, integral, _Workspace(vocab, shifted_logits.device))
    return _expected_rank_of(integral, total)


def expected_rank_error_bound(exact: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The documented bound on |E[R] from ``token_stats`` - E[R]| (docs/methods.md, "E[R] without a sort"): up to
    ``_SORT_MAX_VOCAB`` (a sort) fp32 rounding alone; above, the histogram's (e^delta - 1)/2 * E[R] +
    e^delta e^-10/4 (the first form of the docs with p_max dropped), plus 1e-6 * E[R] for the fp32 rounding."""
    delta = EXPECTED_RANK_BIN_WIDTH
    histogram = vocab_size > _SORT_MAX_VOCAB
    relative = (math.expm1(delta) / 2 if histogram else 0.0) + 1e-6
    return relative * exact + (math.exp(delta - 10) / 4 if histogram else 0.0)


def _expected_rank_of(rank_integral: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """E[R] = (1 + I / total) / 2 (``expected_rank_binned``), at least 1 (the binned I may fall short); fp32."""
    return rank_integral.div(total).add_(1).mul_(0.5).clamp_(min=1).float()


@functools.lru_cache(maxsize=8)
def _odd_numbers(n: int, device: torch.device) -> torch.Tensor:
    """2i - 1 for i = 1..n (fp64): I = sum_i (2i - 1) e_(i) over e sorted descending, as N(s)^2 steps by 2i - 1."""
    return torch.arange(1, 2 * n, 2, dtype=torch.float64, device=device)


@functools.lru_cache(maxsize=8)
def _bin_weights(n_bins: int, bin_width: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """kappa_b = (g_b - g_{b+2}) / 2, g_b = e^(-b delta) for b < n_bins and 0 beyond: half the widths, in e, of bins
    b and b+1 (D_b^2 bounds N^2 from above in bin b and from below in bin b+1), fp64 [n_bins]; and the top token's
    share of bin 0, (1 - e^-delta) / 2, as a fp64 scalar tensor."""
    g = torch.zeros(n_bins + 2, dtype=torch.float64)
    torch.arange(n_bins, dtype=torch.float64, out=g[:n_bins]).mul_(-bin_width).exp_()
    top_token = torch.tensor(-math.expm1(-bin_width) / 2, dtype=torch.float64)
    return ((g[:-2] - g[2:]) / 2).to(device), top_token.to(device)


def _rank_integral_binned(shifted_logits: torch.Tensor, bin_width: float, out: torch.Tensor, work: _Workspace) -> None:
    """I ~= sum_b D_b^2 kappa_b + (1 - e^-delta)/2 per row into ``out`` (fp64 [rows]), ``expected_rank_binned``."""
    rows, vocab = shifted_logits.shape
    n_bins = int((2.0 * math.log(vocab) + 10.0) / bin_width) + 1
    kappa, top_token = _bin_weights(n_bins, bin_width, shifted_logits.device)
    # a few rows at a time, so that the bincount table (random access) stays in a CPU's L2 cache
    group = min(rows, rows_per_chunk(_HISTOGRAM_ELEMENTS, n_bins, shifted_logits.device))
    for start in range(0, rows, group):
        shifted = shifted_logits[start : start + group]
        n = shifted.shape[0]
        # int32 keys (n * n_bins < 2^31): bincount runs faster on them than on int64 on a CPU; the float key is
        # >= 0 (+inf for a -inf logit, clamped into the last bin), so the conversion's truncation is its floor
        key_float = torch.mul(shifted, -1.0 / bin_width, out=work.take("scratch", n)).clamp_(max=n_bins - 1)
        key = work.take("bin_key", n, torch.int32).copy_(key_float)
        if n > 1:
            key += torch.arange(0, n * n_bins, n_bins, dtype=torch.int32, device=key.device)[:, None]
        count = torch.bincount(key.view(-1), minlength=n * n_bins).view(n, n_bins)
        # running counts summed as int64 (a float cumsum has no deterministic CUDA kernel), then fp64: integers
        # below 2^53, exact, and so are their squares
        running = work.take("bin_running", n, torch.float64, n_bins).copy_(count.cumsum_(1))
        torch.addmv(top_token, running.square_(), kappa, out=out[start : start + group])
