"""Every benchmark's ``--help``: its module docstring whole (no description cut mid-sentence) and each option's
default (issue 20: bench_rl's description stopped mid-sentence; no option showed its default)."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import ranktuner_verl.bench as bench

BENCHES = [name for _, name, _ in pkgutil.iter_modules(bench.__path__)  # __main__ runs core's main on import
           if name != "__main__" and hasattr(importlib.import_module(f"ranktuner_verl.bench.{name}"), "main")]


def test_every_benchmark_is_listed():
    assert {"core", "trainer", "fused", "rl", "gpu_check"} <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES)
def test_help_shows_the_whole_description_and_every_default(name, capsys):
    module = importlib.import_module(f"ranktuner_verl.bench.{name}")
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert module.__doc__.strip() in text  # the docstring as written: whole sentences
    options = re.split(r"\n  (?=-)", text.split("\noptions:\n", 1)[1])
    for option in options:
        head = option.split()[0].rstrip(",")
        flag = not re.match(r"^-\S+(, -\S+)* [A-Z{]", option.strip())
        if head not in ("-h", "--help") and not flag:
            assert "default" in option or "required" in option, f"{name}: {option!r}"  # a required one has none
