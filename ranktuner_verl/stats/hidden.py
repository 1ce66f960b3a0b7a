"""The token statistics from the hidden states and the LM head, never holding the [N, V] logits.

    z_t = h_t W^T / T        (h_t the last hidden state [H], W the LM head [V, H], T the sampling temperature)

This is the second backend of ``ranktuner_verl.stats.token_stats``, for models trained with fused kernels (verl's
``model.use_fused_kernels=True``), where the logits never exist: the rows are taken a chunk at a time, the chunk's
logits are computed exactly as verl's fused kernel computes them (``verl.utils.experimental.torch_functional``:
``(h @ W^T) / T`` in the ambient dtype and autocast state), and ``token_stats`` turns them into the statistics. So the
statistics are those of the distribution verl's log-probs come from, and at most one chunk of logits is alive.

Pure PyTorch: no verl import here.
"""

from __future__ import annotations

from typing import Iterable

import torch

from ranktuner_verl.stats import checked_needs, rows_per_chunk, token_stats

#: Logits per chunk (rows * V), (CPU, accelerator): 64 MiB / 256 MiB of fp32. Fewer rows than verl's fused kernel
#: (512 rows per chunk, several fp32 [rows, V] temporaries each), so the statistics never raise the peak above the
#: one verl's own fused forward reaches. Large enough that W is read once per ~100 rows on a CPU
#: (``python -m ranktuner_verl.bench.fused``).
_HIDDEN_CHUNK_ELEMENTS = (1 << 24, 1 << 26)


def default_hidden_chunk_rows(vocab_size: int, device: torch.device | str | None = None) -> int:
    """Rows of hidden states per chunk: the chunk's logits [rows, V] are the only large temporary."""
    return rows_per_chunk(_HIDDEN_CHUNK_ELEMENTS, vocab_size, device)


@torch.no_grad()
def token_stats_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    needs: Iterable[str],
    *,
    temperature: float = 1.0,
    top_k: int = 20,
    chunk_rows: int | None = None,
) -> dict[str, torch.Tensor]:
    """``token_stats`` of the logits ``hidden [N, H] @ weight[V, H]^T / temperature`` at ``labels [N]``: fp32 [N] each.

    ``hidden`` may have leading batch dims ([B, S, H] with labels [B, S]); outputs then have the labels' shape.
    ``chunk_rows``: rows of logits per chunk (default ``default_hidden_chunk_rows``).
    """
    needs = checked_needs(needs)
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1] or labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"expected hidden [..., H], weight [V, H] and labels [...] with the hidden's leading shape, got "
            f"{tuple(hidden.shape)}, {tuple(weight.shape)} and {tuple(labels.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out_shape = labels.shape
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    n = hidden.shape[0]
    out = {name: torch.empty(n, dtype=torch.float32, device=hidden.device) for name in needs}
    if not needs:
        return out
    rows = chunk_rows or default_hidden_chunk_rows(weight.shape[0], hidden.device)
    for start in range(0, n, rows):
        logits = hidden[start : start + rows] @ weight.t()
        if temperature != 1.0:
            logits = logits.div_(temperature)  # in the logits' dtype, as verl's fused kernel applies it
        chunk = token_stats(logits, labels[start : start + rows], needs, top_k=top_k)
        del logits
        for name, value in chunk.items():
            out[name][start : start + rows] = value
    return {name: value.view(out_shape) for name, value in out.items()}
