"""Per-token statistics of the predicted distribution: the inputs of every weighting method.

Notation (docs/methods.md): z_t the logits over the vocabulary V, pi_t = softmax(z_t), y_t the label,
p_t = pi_t(y_t). Everything is computed in fp32, without gradient, a chunk of rows at a time, so the extra memory is
O(chunk_rows * V) whatever the number of tokens N.

Pure PyTorch: no verl import here.
"""

from __future__ import annotations

import math
from typing import Iterable

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

#: Logits are shifted so the row maximum is 0, then clamped here: exp(-1e4) == 0 in fp32, so this is exact, and it
#: turns -inf entries (a masked vocabulary) into finite ones that cannot make 0 * -inf = nan.
_LOGIT_FLOOR = -1.0e4
#: Width, in nats of log-probability, of the histogram bins used for E[R] (see ``expected_rank_binned``).
EXPECTED_RANK_BIN_WIDTH = 6.0e-4
#: Up to this vocabulary size E[R] comes from an exact sort (cheap there, and smaller than the histogram).
_SORT_MAX_VOCAB = 8192
#: Work sizes, (CPU, accelerator). A CPU wants cache-sized pieces; a GPU wants few, large kernels.
#: Histogram bins handled at once (a row has ~50k; on a CPU their tables are accessed at random: keep them in L2).
_HISTOGRAM_ELEMENTS = (1 << 16, 1 << 25)
#: Logits per chunk (rows * V): 1 MiB of fp32 per temporary on a CPU (measured best with
#: ``python -m ranktuner_verl.bench``), 256 MiB on an accelerator. ``chunk_rows`` overrides it.
_CHUNK_ELEMENTS = (1 << 18, 1 << 26)


def _for_device(sizes: tuple[int, int], device: torch.device | str | None) -> int:
    return sizes[0] if device is None or torch.device(device).type == "cpu" else sizes[1]


def nats_to_bits(x: torch.Tensor) -> torch.Tensor:
    return x / LN2


def default_chunk_rows(vocab_size: int, device: torch.device | str | None = None) -> int:
    """Rows of logits per chunk: extra memory is a few [rows, V] fp32 temporaries."""
    return max(1, _for_device(_CHUNK_ELEMENTS, device) // max(vocab_size, 1))


@torch.no_grad()
def token_stats(
    logits: torch.Tensor,
    labels: torch.Tensor,
    needs: Iterable[str],
    *,
    top_k: int = 20,
    chunk_rows: int | None = None,
) -> dict[str, torch.Tensor]:
    """Statistics ``needs`` (names from ``STATS``) of ``logits [N, V]`` at ``labels [N]``, each a fp32 tensor ``[N]``.

    Only the statistics asked for are computed. Logits may be any float dtype; labels must be valid ids.
    """
    needs = frozenset(needs)
    unknown = needs - STATS.keys()
    if unknown:
        raise ValueError(f"unknown statistic(s) {sorted(unknown)}; valid: {sorted(STATS)}")
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [N, V] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    n, vocab = logits.shape
    out = {name: torch.empty(n, dtype=torch.float32, device=logits.device) for name in needs}
    if not needs:
        return out
    rows = chunk_rows or default_chunk_rows(vocab, logits.device)
    labels = labels.long()
    for start in range(0, n, rows):
        chunk = _chunk_stats(logits[start : start + rows], labels[start : start + rows], needs, top_k)
        for name, value in chunk.items():
            out[name][start : start + rows] = value
    return out


def _chunk_stats(logits: torch.Tensor, labels: torch.Tensor, needs: frozenset[str], top_k: int) -> dict:
    z = logits.float()
    z_label = z.gather(1, labels[:, None])
    out = {}
    if "log_vocab" in needs:
        out["log_vocab"] = torch.full_like(z_label.squeeze(1), math.log(z.shape[1]))
    if "rank" in needs:
        # Compared on logits: the same order as on probabilities, without underflow ties.
        out["rank"] = torch.count_nonzero(z >= z_label, dim=1).float()
    if "topk_entropy" in needs:
        out["topk_entropy"] = entropy_of_logits(z.topk(min(top_k, z.shape[1]), dim=1).values)
    if needs & {"log_prob", "logsumexp", "entropy", "sum_pi_squared", "p_max", "expected_rank"}:
        z_max = z.amax(1, keepdim=True)
        z_max = torch.where(torch.isfinite(z_max), z_max, torch.zeros_like(z_max))
        shifted = (z - z_max).clamp_(min=_LOGIT_FLOOR)  # z - max z <= 0
        probs = shifted.exp()
        total = probs.sum(1, keepdim=True)  # in [1, V]
        log_total = total.log()  # = logsumexp(z) - max z
        if "log_prob" in needs:
            out["log_prob"] = (z_label - z_max - log_total).squeeze(1)
        if "logsumexp" in needs:
            out["logsumexp"] = (z_max + log_total).squeeze(1)
        if "p_max" in needs:
            out["p_max"] = total.reciprocal().squeeze(1)  # the top logit's exp(z - max z) is 1
        if "entropy" in needs:
            # H = lse - sum pi z = log_total - sum pi (z - max z): no cancellation for large logits.
            out["entropy"] = (log_total.squeeze(1) - torch.linalg.vecdot(probs, shifted) / total.squeeze(1)).clamp_(min=0)
        probs /= total
        if "sum_pi_squared" in needs:
            out["sum_pi_squared"] = torch.linalg.vecdot(probs, probs)
        if "expected_rank" in needs:
            if z.shape[1] <= _SORT_MAX_VOCAB:
                out["expected_rank"] = _expected_rank_of_sorted(probs)
            else:
                out["expected_rank"] = expected_rank_binned(shifted, probs)
    return out


def entropy_of_logits(z: torch.Tensor) -> torch.Tensor:
    """Exact entropy (nats) of softmax(z) along the last dim; -inf entries allowed."""
    log_p = torch.log_softmax(z.float(), dim=-1)
    p = log_p.exp()
    return -torch.where(p > 0, p * log_p, 0.0).sum(-1)


def expected_rank_binned(shifted_logits: torch.Tensor, probs: torch.Tensor,
                         bin_width: float = EXPECTED_RANK_BIN_WIDTH) -> torch.Tensor:
    """E[R] = sum_i i * pi_(i) (Yu et al., arXiv 2602.01745) without a sort, from a histogram of log-probabilities.

    Tokens are put in bins of width ``delta`` = ``bin_width`` of ``z - max z`` (bin 0 = most likely). A bin of m tokens
    after C tokens of the bins above holds the sorted positions C+1..C+m; its mass is charged the mean position
    C + (m+1)/2. Ties are exact; inside a bin the probabilities differ by at most a factor e^delta, so (Chebyshev's sum
    inequality) the charge errs by at most (e^delta - 1)/8 * m * mass, while E[R] >= sum_bins (m+1)/2 * mass: the
    relative error of E[R] is at most (e^delta - 1)/4 (1.5e-4 for the default), that of RankTuner's S_t at most half
    of that. Tokens more than 2 ln V + 10 nats below the maximum share the last bin (error < e^-10 / 2 absolute).

    ``shifted_logits`` = z - max z (<= 0, finite), ``probs`` = softmax(z); both [rows, V]. Returns fp32 [rows].
    """
    rows, vocab = probs.shape
    n_bins = int((2.0 * math.log(vocab) + 10.0) / bin_width) + 1
    # a few rows at a time, so that the bincount tables (random access) stay in a CPU's L2 cache
    group = max(1, _for_device(_HISTOGRAM_ELEMENTS, probs.device) // n_bins)
    parts = [_expected_rank_of_bins(shifted_logits[i : i + group], probs[i : i + group], bin_width, n_bins)
             for i in range(0, rows, group)]
    return torch.cat(parts) if parts else probs.new_zeros(0)


def _expected_rank_of_bins(shifted_logits, probs, bin_width, n_bins):
    rows = probs.shape[0]
    key = torch.mul(shifted_logits, -1.0 / bin_width).clamp_(max=n_bins - 1).to(torch.int32)
    key += torch.arange(rows, dtype=torch.int32, device=key.device)[:, None] * n_bins
    key = key.view(-1)
    # fp32 is enough: counts are integers < 2^24, and E[R] is needed to 1e-4 (relative), not 1e-7
    count = torch.bincount(key, minlength=rows * n_bins).view(rows, n_bins).float()
    mass = torch.bincount(key, weights=probs.reshape(-1).float(), minlength=rows * n_bins).view(rows, n_bins)
    # sum_b mass_b * (C_b + (m_b + 1)/2), with C_b + m_b = cumsum(count)_b
    position = count.cumsum(1)
    position -= count.sub_(1).mul_(0.5)
    return torch.linalg.vecdot(mass, position)


@torch.no_grad()
def expected_rank_sorted(logits: torch.Tensor) -> torch.Tensor:
    """E[R] = sum_i i * pi_(i) by a full sort: the exact reference (10-16x the cost of the NLL itself at V = 152k on a
    CPU, ``python -m ranktuner_verl.bench``)."""
    return _expected_rank_of_sorted(torch.softmax(logits.double(), dim=-1))


def _expected_rank_of_sorted(probs: torch.Tensor) -> torch.Tensor:
    ordered = probs.sort(dim=-1, descending=True).values.double()
    positions = torch.arange(1, probs.shape[-1] + 1, dtype=torch.float64, device=probs.device)
    return torch.linalg.vecdot(ordered, positions).float()
