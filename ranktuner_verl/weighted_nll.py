"""The weighted NLL as one chunked autograd function (pure PyTorch).

    L = sum_t m_t * sg(w_t) * (-log p_t) / sum_t m_t        dL/dz_t = c_t * (pi_t - onehot(y_t)),  c_t = m_t w_t / sum m

Forward computes log p_t, the method's statistics and the weights from one pass over each chunk of logits; backward
recomputes pi_t chunk by chunk from the saved log-sum-exp. Nothing of size N x V is kept between the passes (plain
``log_softmax`` keeps its N x V output), so the cost is that of plain NLL plus the statistics the method needs.
"""

from __future__ import annotations

import torch

from ranktuner_verl.methods import S_BAND, Method, get_method
from ranktuner_verl.stats import default_chunk_rows, token_stats


def weighted_nll(name: str, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None, *,
                 chunk_rows: int | None = None, **params) -> torch.Tensor:
    """Mean over the tokens in ``mask`` (default all) of sg(w_t) * -log p_t for method ``name``; differentiable in
    ``logits [N, V]``. ``params`` are the method's (see ``get_method``)."""
    method = get_method(name, **params)
    if mask is None:
        mask = torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
    rows = chunk_rows or default_chunk_rows(logits.shape[-1], logits.device)
    return _WeightedNLL.apply(logits, labels, mask, method, rows)


class _WeightedNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, mask, method: Method, chunk_rows: int):
        stats = token_stats(logits, labels, method.needs | {"logsumexp"}, chunk_rows=chunk_rows, **method.stat_kwargs)
        keep = mask.to(torch.float32)
        coef = method.weights(stats, mask) * keep / keep.sum().clamp(min=1)
        # where coef is 0 (masked out, or zero weight) a -inf log-prob must not make 0 * inf = nan
        loss = -torch.where(coef > 0, coef * stats["log_prob"], torch.zeros_like(coef)).sum()
        ctx.save_for_backward(logits, labels, stats["logsumexp"], coef)
        ctx.chunk_rows = chunk_rows
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, labels, lse, coef = ctx.saved_tensors
        scale = coef * grad_loss
        grad = torch.empty_like(logits)
        rows = ctx.chunk_rows
        for start in range(0, logits.shape[0], rows):
            end = start + rows
            g = torch.sub(logits[start:end].float(), lse[start:end, None]).exp_()
            g.mul_(scale[start:end, None])
            g.scatter_add_(1, labels[start:end, None].long(), -scale[start:end, None])
            grad[start:end] = g
        return grad, None, None, None, None


def weight_metrics(weights: torch.Tensor, scales: torch.Tensor | None = None) -> dict[str, float]:
    """What SFT (``train/``) and RL (``actor/``) log about the weights w_t of the supervised or response tokens, under
    the same names: weight_mean, weight_p10|p50|p90, weight_gt1 (share of w_t > 1); with RankTuner's relative
    scales, s_near_one (share of |S_t - 1| < ``methods.S_BAND``)."""
    w = weights.double()
    if not w.numel():
        return {}
    q = torch.quantile(w, torch.tensor([0.1, 0.5, 0.9], dtype=torch.double)).tolist()
    out = {"weight_mean": w.mean().item(), "weight_p10": q[0], "weight_p50": q[1], "weight_p90": q[2],
           "weight_gt1": (w > 1).double().mean().item()}
    if scales is not None and scales.numel():
        out["s_near_one"] = ((scales.double() - 1).abs() < S_BAND).double().mean().item()
    return out
