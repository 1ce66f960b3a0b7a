"""Shared fixtures for the verl integration tests: a tiny local model and dataset."""

from __future__ import annotations

import pytest

# 8 conversations, batch 8: every step sees the same batch (a "repeated batch"), so a working loss must fall.
N_EXAMPLES = 8


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny random Qwen2 + tokenizer and a math CoT parquet, built locally."""
    from ranktuner_verl.data.tiny import build_model, write_sft_parquet

    root = tmp_path_factory.mktemp("tiny")
    build_model(root / "model")
    write_sft_parquet(root / "train.parquet", N_EXAMPLES, seed=0)
    return root
