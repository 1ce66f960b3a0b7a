"""The paper's results table from result folders: runs x benchmarks, Pass@1 and Pass@16, an average, best marked.

A result folder is what ``python -m ranktuner_verl.eval run`` writes: one subfolder per benchmark holding a
``metrics.json``. Each folder is one row (its name is the label unless labels are given); each benchmark gets one
column per k, then "Avg" is the plain mean over the benchmarks (left empty for a run missing one of them). Every
empty cell ("-") is explained below the Markdown table (Pass@k needs n >= k samples per problem; a missing benchmark). Values
are percentages with two decimals; the best value of every column is bold in Markdown and LaTeX, and named in the
CSV's last row. All three files are written only once the whole table has been built.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ranktuner_verl.eval.benchmarks import BENCHMARKS, REGISTRY
from ranktuner_verl.eval.generate import write_text_atomic

METRICS_FILE = "metrics.json"
DISPLAY_NAMES = {name: bench.display for name, bench in REGISTRY.items()}
AVERAGE = "Avg"


def load_run(run_dir: str | Path) -> dict[str, dict]:
    """benchmark -> metrics of one result folder (every ``<run_dir>/<benchmark>/metrics.json``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"result folder not found: {run_dir}")
    found = {}
    for path in sorted(run_dir.glob(f"*/{METRICS_FILE}")):
        metrics = json.loads(path.read_text(encoding="utf-8"))
        found[metrics.get("benchmark", path.parent.name)] = metrics
    if not found:
        raise ValueError(f"{run_dir} holds no results (no <benchmark>/{METRICS_FILE}); evaluate into it first "
                         f"with python -m ranktuner_verl.eval run --out {run_dir} ...")
    return found


@dataclass(frozen=True)
class Table:
    """Pass@k values in percent; ``values[run][(benchmark or AVERAGE, k)]`` is None where there is no value."""

    runs: list[str]
    benchmarks: list[str]
    ks: tuple[int, ...]
    values: dict[str, dict[tuple[str, int], float | None]]
    notes: tuple[str, ...] = ()  # why cells are empty

    @property
    def columns(self) -> list[tuple[str, int]]:
        return [(group, k) for group in [*self.benchmarks, AVERAGE] for k in self.ks]

    def best(self, column: tuple[str, int]) -> set[str]:
        """The runs holding the column's best value (as printed, so visible ties are all marked)."""
        shown = {run: round(self.values[run][column], 2) for run in self.runs if self.values[run][column] is not None}
        return {run for run, value in shown.items() if value == max(shown.values())} if shown else set()


def build_table(results: dict[str, dict[str, dict]], ks: tuple[int, ...] = (1, 16)) -> Table:
    """A ``Table`` from label -> benchmark -> metrics (``metrics["pass@k"][str(k)]`` as a fraction)."""
    if not results:
        raise ValueError("no runs to tabulate")
    present = {b for metrics in results.values() for b in metrics}
    benchmarks = [b for b in BENCHMARKS if b in present] + sorted(present - set(BENCHMARKS))
    values, notes = {}, []
    for run, metrics in results.items():
        row = {}
        for k in ks:
            for benchmark in benchmarks:
                value = metrics.get(benchmark, {}).get("pass@k", {}).get(str(k))
                row[(benchmark, k)] = None if value is None else 100.0 * value
                if value is None:
                    notes.append(_why_empty(run, metrics.get(benchmark), benchmark, k))
            column = [row[(b, k)] for b in benchmarks]
            row[(AVERAGE, k)] = None if None in column else sum(column) / len(column)
        values[run] = row
    if all(v is None for row in values.values() for v in row.values()):
        raise ValueError(f"none of the runs has Pass@k for k in {list(ks)}; generate more samples per problem "
                         "or ask for smaller k")
    return Table(runs=list(results), benchmarks=benchmarks, ks=tuple(ks), values=values,
                 notes=tuple(dict.fromkeys(notes)))


def _why_empty(run: str, metrics: dict | None, benchmark: str, k: int) -> str:
    name = DISPLAY_NAMES.get(benchmark, benchmark)
    if metrics is None:
        return f"{run}: no {name} results (Avg needs every benchmark)"
    n = metrics.get("samples_per_problem")
    if n is not None and n < k:
        return f"{run}, {name} Pass@{k}: n = {n} samples per problem < k = {k} (and Avg Pass@{k}); evaluate with --n {k}"
    return f"{run}, {name} Pass@{k}: not in its metrics.json; re-grade it (python -m ranktuner_verl.eval grade)"


def collect_table(run_dirs: list[str | Path], labels: list[str] | None = None,
                  ks: tuple[int, ...] = (1, 16)) -> Table:
    """Read every result folder (each one row, labelled by its folder name or ``labels``) and build the table."""
    if not run_dirs:
        raise ValueError("no result folders given")
    labels = labels or [Path(d).name for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} result folders; give one label per folder")
    if len(set(labels)) != len(labels):
        raise ValueError(f"run labels repeat ({labels}); give distinct labels")
    return build_table({label: load_run(d) for label, d in zip(labels, run_dirs)}, ks)


def _header(group: str, k: int) -> str:
    return f"{DISPLAY_NAMES.get(group, group)} Pass@{k}"


def _cell(table: Table, run: str, column: tuple[str, int], bold: str) -> str:
    value = table.values[run][column]
    if value is None:
        return "-"
    text = f"{value:.2f}"
    return bold.format(text) if run in table.best(column) else text


def to_markdown(table: Table) -> str:
    """A GitHub Markdown table; best per column in bold."""
    header = ["Run", *(_header(*c) for c in table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for run in table.runs:
        lines.append("| " + " | ".join([run, *(_cell(table, run, c, "**{}**") for c in table.columns)]) + " |")
    notes = ["", *(f"`-`: {note}" for note in table.notes)] if table.notes else []
    return "\n".join(lines + notes) + "\n"


def to_csv(table: Table) -> str:
    """One row per run (percent, empty where missing), then a ``best`` row naming each column's best run(s)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", *(f"{group} pass@{k}" for group, k in table.columns)])
    for run in table.runs:
        writer.writerow([run, *("" if table.values[run][c] is None else f"{table.values[run][c]:.4f}"
                                for c in table.columns)])
    writer.writerow(["best", *(" ".join(r for r in table.runs if r in table.best(c)) for c in table.columns)])
    return buffer.getvalue()


def _latex_escape(text: str) -> str:
    return re.sub(r"[\\&%$#_{}]", lambda m: "\\textbackslash{}" if m.group() == "\\" else "\\" + m.group(), text)


def to_latex(table: Table) -> str:
    """A booktabs ``tabular``: benchmark names over Pass@k sub-columns; best per column in ``\\textbf``."""
    groups = [*table.benchmarks, AVERAGE]
    width = len(table.ks)
    lines = ["\\begin{tabular}{l" + "c" * len(table.columns) + "}", "\\toprule"]
    lines.append(" & ".join(["Run", *(f"\\multicolumn{{{width}}}{{c}}{{{_latex_escape(DISPLAY_NAMES.get(g, g))}}}"
                                       for g in groups)]) + " \\\\")
    lines.append(" ".join(f"\\cmidrule(lr){{{2 + i * width}-{1 + (i + 1) * width}}}" for i in range(len(groups))))
    lines.append(" & ".join(["", *(f"Pass@{k}" for _ in groups for k in table.ks)]) + " \\\\")
    lines.append("\\midrule")
    for run in table.runs:
        cells = [_cell(table, run, c, "\\textbf{{{}}}") for c in table.columns]
        lines.append(" & ".join([_latex_escape(run), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(table: Table, out_prefix: str | Path) -> list[Path]:
    """Write ``<out_prefix>.md``, ``.csv`` and ``.tex``; all three are rendered before any is written."""
    out_prefix = Path(out_prefix)
    rendered = {".md": to_markdown(table), ".csv": to_csv(table), ".tex": to_latex(table)}
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, text in rendered.items():
        path = out_prefix.with_name(out_prefix.name + suffix)
        write_text_atomic(path, text)
        paths.append(path)
    return paths
