"""Fixtures for the data tests: small files in NuminaMath-CoT's real schema (the benchmark folder: tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

def numina_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows in AI-MO/NuminaMath-CoT's schema: source, problem, solution, messages (user + assistant turns)."""
    from ranktuner_verl.data.tiny import math_cot_examples

    sources = ("synthetic_math", "cn_k12", "olympiads", "orca_math")
    return [{"source": sources[i % len(sources)], "problem": row["problem"], "solution": row["solution"],
             "messages": [{"role": "user", "content": row["problem"]},
                          {"role": "assistant", "content": row["solution"]}]}
            for i, row in enumerate(math_cot_examples(n, seed))]


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as .jsonl or .parquet, by the suffix of ``path``."""
    if path.suffix == ".parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from ranktuner_verl.data.tiny import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(name="numina_rows")
def numina_rows_fixture():
    """The ``numina_rows(n, seed)`` builder."""
    return numina_rows


@pytest.fixture(name="write_rows")
def write_rows_fixture():
    """The ``write_rows(path, rows)`` writer."""
    return write_rows
