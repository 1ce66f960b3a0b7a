"""``on_import.when_imported``: a function runs once a module is imported, or at once if it already is."""

from __future__ import annotations

import importlib
import logging
import sys
from importlib.machinery import SourceFileLoader

import pytest

from ranktuner_verl.integration.on_import import when_imported


@pytest.fixture
def make_module(tmp_path, monkeypatch):
    """``make_module(name)``: a fresh package ``name`` with a submodule ``name.sub`` whose last line sets DONE."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made = []

    def make(name: str) -> str:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
        (tmp_path / name / "sub.py").write_text("VALUE = 41\nDONE = True\n")
        made.append(name)
        return f"{name}.sub"

    yield make
    for name in made:
        for key in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
            del sys.modules[key]


def test_runs_after_the_module_has_executed_once_and_leaves_its_loader_alone(make_module):
    name = make_module("watched_a")
    seen = []
    when_imported(name, lambda module: seen.append((module.__name__, module.VALUE, module.DONE)))
    when_imported(name, lambda module: seen.append("second"))
    assert seen == [] and name not in sys.modules
    module = importlib.import_module(name)
    assert seen == [(name, 41, True), "second"]
    assert type(module.__loader__) is SourceFileLoader and module.__spec__.loader is module.__loader__
    importlib.reload(module)
    assert len(seen) == 2  # once per registration, not once per (re)load


def test_runs_at_once_when_the_module_is_already_imported(make_module):
    module = importlib.import_module(make_module("watched_b"))
    seen = []
    when_imported(module.__name__, seen.append)
    assert seen == [module]


def test_a_failing_function_is_logged_and_the_import_goes_on(make_module, caplog):
    name = make_module("watched_c")
    seen = []

    def broken(module):
        raise ValueError("boom")

    when_imported(name, broken)
    when_imported(name, seen.append)
    with caplog.at_level(logging.ERROR, logger="ranktuner_verl.integration.on_import"):
        module = importlib.import_module(name)
    assert seen == [module]
    assert "broken failed after importing watched_c.sub" in caplog.text and "boom" in caplog.text


def test_a_missing_module_stays_missing(make_module):
    seen = []
    when_imported("watched_d_does_not_exist", seen.append)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("watched_d_does_not_exist")
    assert seen == []


def test_registering_from_inside_the_module_being_imported_says_why_it_cannot(make_module, tmp_path):
    name = make_module("watched_e")
    (tmp_path / "watched_e" / "sub.py").write_text(
        "from ranktuner_verl.integration.on_import import when_imported\nwhen_imported(__name__, print)\n")
    with pytest.raises(RuntimeError, match="circular import"):
        importlib.import_module(name)
