"""Token statistics from logits and labels (log p, entropy, rank, expected rank, ...): pure torch, no verl.

- ``chunked``: the torch reducer, a bounded chunk of rows at a time (``STATS`` defines every statistic).
- ``hidden``: the same statistics from hidden states and the LM head, never materialising [N, V].
- ``reference``: THE fp64 oracle every implementation and ``bench.gpu_check`` are compared against.

``token_stats`` is the one dispatch point: ``REDUCERS`` maps a name to a per-chunk reducer
``reduce(chunk [rows, V], labels [rows], needs, top_k, sums, work)`` that writes the chunk's rows of the per-row sums
``chunked._SUMS_OF`` names. A second implementation (a fused CPU or GPU kernel) registers itself here, may compute
some sums and call ``chunked.reduce_chunk`` for the rest, and is tested against ``reference`` by the statistics'
tests, which run over every entry of ``REDUCERS``.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from ranktuner_verl.stats import chunked
from ranktuner_verl.stats.chunked import (EXPECTED_RANK_BIN_WIDTH, LN2, STATS, autocast_off, checked_needs,
                                          default_chunk_rows, expected_rank_binned, expected_rank_error_bound,
                                          nats_to_bits, rows_per_chunk)
from ranktuner_verl.stats.reference import expected_rank_sorted, reference_stats

#: name -> per-chunk reducer; "torch" is the default, every other one is checked against ``reference_stats``.
REDUCERS: dict[str, Callable] = {"torch": chunked.reduce_chunk}
DEFAULT_REDUCER = "torch"


def token_stats(logits: torch.Tensor, labels: torch.Tensor, needs: Iterable[str], *, reducer: str = DEFAULT_REDUCER,
                **kwargs) -> dict[str, torch.Tensor]:
    """``chunked.token_stats`` (same arguments) with the chunks reduced by ``REDUCERS[reducer]``."""
    if reducer not in REDUCERS:
        raise ValueError(f"unknown statistics reducer {reducer!r}; valid: {sorted(REDUCERS)}")
    return chunked.token_stats(logits, labels, needs, reduce=REDUCERS[reducer], **kwargs)


__all__ = ["DEFAULT_REDUCER", "EXPECTED_RANK_BIN_WIDTH", "LN2", "REDUCERS", "STATS", "autocast_off", "checked_needs",
           "default_chunk_rows", "expected_rank_binned", "expected_rank_error_bound", "expected_rank_sorted",
           "nats_to_bits", "reference_stats", "rows_per_chunk", "token_stats"]
