"""Ulysses sequence parallelism on CPU: our token statistics stay aligned with verl's log-probs.

With ``engine.ulysses_sequence_parallel_size=2`` each of the two torchrun ranks holds half of the packed sequence;
the engine hook computes the statistics on that half and gathers them with verl's ``_gather_and_unpad_packed``, like
the log-probs. Attention runs through the CPU layer's Ulysses SDPA (``platform_cpu._ulysses_sdpa``). Same batches as
the one-process run, so every step metric must match it to fp32 precision.
"""

from __future__ import annotations

import pytest

from test_trainer_on_cpu import assert_close, reference_ranktuner

pytestmark = pytest.mark.slow


def test_ulysses_sequence_parallel_matches_one_process(runs):
    one = reference_ranktuner(runs)
    sp = runs("ranktuner_ulysses2", extra=["loss=ranktuner", "engine.ulysses_sequence_parallel_size=2"], nproc=2)
    assert "Monkey patch _flash_attention_forward" in sp.output  # verl really set up Ulysses
    for key in ("train/loss", "train/nll", "train/weight_mean", "train/weight_p50", "train/s_near_one"):
        assert_close(sp.values(key), one.values(key))
