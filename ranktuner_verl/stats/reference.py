"""THE fp64 oracle of every statistic: each one straight from its definition (``STATS``), E[R] by a full sort.

Every implementation of the statistics (the torch reducer, the hidden-state path, a fused kernel plugged in at
``stats.REDUCERS``) and ``python -m ranktuner_verl.bench.gpu_check`` are compared against ``reference_stats``.
Slow on purpose: a few fp64 [rows, V] temporaries and a sort per block of rows.
"""

from __future__ import annotations

import torch

from ranktuner_verl.stats.chunked import STATS

#: Rows of the fp64 reference computed at once (a few [rows, V] fp64 temporaries and a sort).
_REFERENCE_ROWS = 256


def _expected_rank_fp64(p: torch.Tensor) -> torch.Tensor:
    """E[R] = sum_i i * pi_(i), pi sorted descending (Yu et al., arXiv 2602.01745), in fp64."""
    positions = torch.arange(1, p.shape[-1] + 1, dtype=torch.float64, device=p.device)
    return torch.linalg.vecdot(p.sort(dim=-1, descending=True).values, positions)


@torch.no_grad()
def expected_rank_sorted(logits: torch.Tensor) -> torch.Tensor:
    """E[R] by a full sort in fp64, returned in fp32 (10-16x the cost of the NLL itself at V = 152k on a CPU,
    ``python -m ranktuner_verl.bench``)."""
    return _expected_rank_fp64(torch.softmax(logits.double(), dim=-1)).float()


@torch.no_grad()
def reference_stats(logits: torch.Tensor, labels: torch.Tensor, top_k: int = 20) -> dict[str, torch.Tensor]:
    """Every statistic of ``STATS`` of ``logits [N, V]`` at ``labels [N]``, fp64 [N] each, from its definition."""
    parts = []
    for start in range(0, logits.shape[0], _REFERENCE_ROWS):
        z = logits[start : start + _REFERENCE_ROWS].double()
        y = labels[start : start + _REFERENCE_ROWS, None].long()
        log_p = torch.log_softmax(z, 1)
        p = log_p.exp()
        topk = torch.log_softmax(z.topk(min(top_k, z.shape[1]), 1).values, 1)
        parts.append({
            "log_prob": log_p.gather(1, y).squeeze(1),
            "logsumexp": torch.logsumexp(z, 1),
            "entropy": -torch.where(p > 0, p * log_p, 0.0).sum(1),
            "sum_pi_squared": (p * p).sum(1),
            "p_max": p.amax(1),
            "topk_entropy": -torch.where(topk > -torch.inf, topk.exp() * topk, 0.0).sum(1),
            "rank": (z >= z.gather(1, y)).sum(1).double(),  # |{v : pi(v) >= p_y}|
            "expected_rank": _expected_rank_fp64(p),
            "log_vocab": torch.full_like(z[:, 0], float(z.shape[1])).log(),
        })
    if not parts:
        return {name: torch.empty(0, dtype=torch.float64, device=logits.device) for name in STATS}
    assert set(parts[0]) == set(STATS), "reference_stats must define every statistic of STATS"
    return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
