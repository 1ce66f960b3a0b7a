"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The real benchmark copies beside the checkout (../shared/data/eval): read in place, never copied into the repo.
EVAL_DATA = Path(__file__).parents[1] / ".." / "shared" / "data" / "eval"
EVAL_FILES = ("math_oai", "minerva_math", "olympiadbench", "aime24", "amc23")


@pytest.fixture(scope="session")
def eval_data_dir() -> Path:
    """The folder of the five benchmark files (../shared/data/eval)."""
    missing = [name for name in EVAL_FILES if not (EVAL_DATA / f"{name}.jsonl").is_file()]
    assert not missing, f"benchmark files {missing} missing under {EVAL_DATA.resolve()}: is ../shared beside the repo?"
    return EVAL_DATA
