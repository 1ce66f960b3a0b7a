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


@pytest.fixture(scope="session")
def runs(tiny, tmp_path_factory):
    """``runs(name, module, extra_overrides, **kw)``: a 3-step run of the tiny model (batch = the whole dataset,
    lr 1e-2), once per name for the whole session, so the test modules share their reference runs; returns the ``Run``.
    """
    from ranktuner_verl.integration.sft.runs import TRAINER, run_trainer, tiny_overrides

    cache = {}

    def run(name, module=TRAINER, extra=(), **kwargs):
        if name not in cache:
            out = tmp_path_factory.mktemp(name)
            overrides = tiny_overrides(tiny / "model", tiny / "train.parquet", out, steps=3, batch=N_EXAMPLES)
            cache[name] = run_trainer(overrides + ["trainer.total_epochs=3", "optim.lr=1e-2", *extra], out,
                                      module=module, **kwargs)
        return cache[name]

    return run
