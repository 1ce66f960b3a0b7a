"""The cases every benchmark and ``gpu_check`` runs, derived from the registry (``methods.METHODS``), and the targets
each case must meet, as data beside it.

A case is a method with some of its parameters set. ``cases()``: every method at its defaults, plus each case that
has a target (the slow benchmarks run these); ``cases(every_choice=True)``: also each other value of each choice
parameter (the cheap checks run these). A new method registered in ``methods.py`` appears in every benchmark.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from ranktuner_verl.methods import METHODS, method_names


@dataclass(frozen=True)
class Case:
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``name`` then ``key=value`` per set parameter: ``ranktuner form=exact``."""
        return " ".join([self.method, *(f"{k}={v}" for k, v in self.params.items())])

    @property
    def overrides(self) -> list[str]:
        """The Hydra overrides of the SFT trainer that select this case."""
        return [f"loss={self.method}", *(f"loss.{k}={v}" for k, v in self.params.items())]

    @property
    def policy_loss(self) -> dict[str, Any]:
        """The ``actor.policy_loss`` options of the RL trainer that select this case."""
        return {"loss_mode": self.method, **({"token_weight": dict(self.params)} if self.params else {})}

    def target(self, bench: str) -> float | None:
        """The most this case may cost in ``bench``, as a ratio to the bench's baseline; None: no target."""
        return TARGETS.get(self.label, {}).get(bench)


#: case label -> {bench: the most its time may be, as a ratio to that bench's baseline}: "core" (plain NLL,
#: ``bench.core``), "trainer" (sft's step), "rl" (verl's vanilla update), "fused" (fused sft's step) and
#: "fused_memory" (fused sft's peak; the fused run must also save at least the logits against the unfused one).
TARGETS: dict[str, dict[str, float]] = {
    "sft": {"core": 1.3}, "dft": {"core": 1.3}, "talr": {"core": 1.3}, "deft": {"core": 1.3}, "eaft": {"core": 1.5},
    "ranktuner": {"core": 1.5, "trainer": 1.25, "rl": 1.15, "fused": 1.3, "fused_memory": 1.10},
    "ranktuner form=exact": {"core": 3.0, "trainer": 2.0, "rl": 1.4},
}


def cases(every_choice: bool = False) -> list[Case]:
    """Every method at its defaults, then (``every_choice``) each other value of each of its choice parameters, and
    every case of ``TARGETS``; in the registry's order, each once."""
    out = []
    for name, spec in METHODS.items():
        out.append(Case(name))
        for key, param in spec.params.items():
            others = [Case(name, {key: value}) for value in param.choices or () if value != param.default]
            out += [case for case in others if every_choice or case.label in TARGETS]
    return out


def select(all_cases: list[Case], methods: str | None, always: str | None = None) -> list[Case]:
    """The cases whose method is in the comma-separated ``methods`` (None: all), plus the baseline method ``always``.
    ValueError naming the valid methods for an unknown one."""
    if methods is None:
        return all_cases
    wanted = set(method_names(methods))
    return [case for case in all_cases if case.method in wanted or case.method == always]


class BenchParser(argparse.ArgumentParser):
    """A benchmark's command line: ``--help`` shows its module docstring as written (whole sentences) and each
    option's default (unless its help already says it; not for flags)."""

    def __init__(self, doc: str):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        text = action.help or ""
        if action.option_strings and action.help != argparse.SUPPRESS and "default" not in text \
                and action.default not in (None, argparse.SUPPRESS) and not isinstance(action.default, bool):
            action.help = f"{text} (default: %(default)s)".lstrip()
        return action


def add_methods_argument(parser: argparse.ArgumentParser) -> None:
    """``--methods``, the flag every benchmark chooses its methods with."""
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of: " + ", ".join(METHODS) + " (default: all)")


def chosen_cases(parser: argparse.ArgumentParser, methods: str | None, always: str | None = None) -> dict[str, Case]:
    """label -> case of ``select(cases(), methods, always)``; an unknown method is the parser's error."""
    try:
        return {case.label: case for case in select(cases(), methods, always)}
    except ValueError as error:
        parser.error(f"--methods: {error}")
