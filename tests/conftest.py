"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI (CI=true) replays the same property-test examples every run; a developer's runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")

#: The real benchmark copies beside the checkout (../shared/data/eval): read in place, never copied into the repo.
EVAL_DATA = Path(__file__).parents[1] / ".." / "shared" / "data" / "eval"
EVAL_FILES = ("math_oai", "minerva_math", "olympiadbench", "aime24", "amc23")


@pytest.fixture(scope="session")
def eval_data_dir() -> Path:
    """The folder of the five benchmark files (../shared/data/eval)."""
    missing = [name for name in EVAL_FILES if not (EVAL_DATA / f"{name}.jsonl").is_file()]
    assert not missing, f"benchmark files {missing} missing under {EVAL_DATA.resolve()}: is ../shared beside the repo?"
    return EVAL_DATA
