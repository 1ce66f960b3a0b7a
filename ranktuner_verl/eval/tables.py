"""The paper's results table from result folders: configurations x benchmarks, Pass@k with a 95% interval.

Rows. A result folder (what ``python -m ranktuner_verl.eval run --out`` writes: ``<benchmark>/metrics.json``) is
one evaluation with one seed. A row is one configuration with one or more seeds: a folder of result folders
(``results/sft/seed0``, ``results/sft/seed1``, ...) is one row, and so are folders given the same label; any other
folder is its own row, labelled by its name. A row's seeds must hold the same benchmarks, evaluated alike, and no
evaluation twice (same model and seed).

Cells. For seed s and problem i of a benchmark, x_si is the problem's Pass@k from its n samples (Chen et al. 2021,
eq. 1; ``metrics.pass_at_k``). A cell is the mean over seeds and problems, in percent, with the 95% interval
mean +- 1.96 SE, where (m problems, S seeds)

    SE^2 = var_i(xbar_i) / m + var_s(xbar_s) / S

xbar_i is problem i's mean over the seeds, xbar_s seed s's mean over the problems, var the sample variance (0 for a
single value). It is the standard error of a mean over problems and seeds both drawn at random (crossed random
effects x_si = mu + a_i + b_s + e_si; problems as clusters: Miller 2024, "Adding Error Bars to Evals", arXiv
2411.00640): its expectation sigma_a^2/m + sigma_b^2/S + 2 sigma_e^2/(mS) exceeds the mean's variance by
sigma_e^2/(mS), so it errs on the wide side. With one seed it is the problems' standard error, which holds the
sampling noise of the n samples but cannot see how much another seed's whole run would move.

Averages. "Math avg" and "OOD avg" (``Benchmark.group``) are plain means over the group's benchmarks, shown when the
table has two or more of them; a seed's samples of every benchmark come from one run, so the seed term is taken over
the seed's group average A_s: SE^2 = sum_b var_i(xbar^b_i) / m_b / B^2 + var_s(A_s) / S.

Best. A column's best is bold (and named in the CSV's ``best`` row) only where its interval lies wholly above the
next one's; otherwise a note says the top two are within noise. One row has nothing to be compared with.

Comparable rows. Per benchmark, every row must have the same grader, n, problems (ids: the file and --limit) and
sampling settings (``SAMPLING_KEYS``); otherwise ``build_table`` raises an error naming each difference, unless
``allow_mixed`` (then the differences are listed under the table). All three files are written only once the whole
table has been built.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from statistics import NormalDist

import numpy as np

from ranktuner_verl.eval.backends import SamplingConfig
from ranktuner_verl.eval.benchmarks import BENCHMARKS, GROUPS, REGISTRY
from ranktuner_verl.eval.generate import write_text_atomic
from ranktuner_verl.eval.metrics import pass_at_k

METRICS_FILE = "metrics.json"
AVERAGES = {f"{group}_avg": f"{name} avg" for group, name in GROUPS.items()}  # column id -> header
DISPLAY_NAMES = {**{name: bench.display for name, bench in REGISTRY.items()}, **AVERAGES}
Z95 = NormalDist().inv_cdf(0.975)  # 1.96: a 95% normal interval
# The generation.json settings that rows of one table must share (besides n); the seed may differ.
SAMPLING_KEYS = (*(f.name for f in fields(SamplingConfig) if f.name not in ("n", "seed")), "system_prompt",
                 "effective_max_new_tokens")
CAPTION = ("Pass@k in percent: mean over problems and seeds ± half-width of its 95% interval (1.96 standard errors "
           "over problems and seeds). Bold: a column's best, where its interval lies wholly above the next one's.")


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


def seed_folders(folder: str | Path) -> list[Path]:
    """The result folders (seeds) of one row: ``folder`` itself, or its subfolders when it holds result folders."""
    folder = Path(folder)
    if folder.is_dir() and not any(folder.glob(f"*/{METRICS_FILE}")):
        seeds = sorted({path.parent.parent for path in folder.glob(f"*/*/{METRICS_FILE}")})
        if seeds:
            return seeds
    return [folder]


@dataclass(frozen=True)
class Seed:
    """One result folder of a row: its name (in messages) and benchmark -> metrics."""

    name: str
    results: dict[str, dict]


@dataclass(frozen=True)
class Estimate:
    """A cell in percent: the mean and its standard error; the 95% interval is mean +- 1.96 SE, within [0, 100]."""

    mean: float
    se: float

    @property
    def half_width(self) -> float:
        return Z95 * self.se

    @property
    def low(self) -> float:
        return max(0.0, self.mean - self.half_width)

    @property
    def high(self) -> float:
        return min(100.0, self.mean + self.half_width)


def estimate(matrices: list[np.ndarray]) -> Estimate:
    """Mean and standard error of the average over benchmarks of a mean over seeds and problems (module doc).

    ``matrices``: per benchmark, x[s, i] = Pass@k of problem i with seed s, the seeds in the same order in each.
    SE^2 = sum_b var_i(xbar^b_i) / m_b / B^2 + var_s(A_s) / S, A_s the seed's average over the benchmarks.
    """
    seed_scores = np.mean([x.mean(axis=1) for x in matrices], axis=0)
    problem_term = sum(_variance(x.mean(axis=0)) / x.shape[1] for x in matrices) / len(matrices) ** 2
    seed_term = _variance(seed_scores) / len(seed_scores)
    return Estimate(100 * float(seed_scores.mean()), 100 * math.sqrt(problem_term + seed_term))


def _variance(values: np.ndarray) -> float:
    """The sample variance (n - 1 in the denominator); 0 for a single value, whose spread cannot be seen."""
    return float(np.var(values, ddof=1)) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Table:
    """``cells[run][(benchmark or average id, k)]``: an ``Estimate`` in percent, None where there is no value."""

    runs: list[str]
    benchmarks: list[str]
    averages: list[str]  # ids in AVERAGES
    ks: tuple[int, ...]
    cells: dict[str, dict[tuple[str, int], Estimate | None]]
    seeds: dict[str, int]  # run -> how many seeds its row averages
    notes: tuple[str, ...] = ()  # why cells are empty; settings that differ (allow_mixed)

    @property
    def columns(self) -> list[tuple[str, int]]:
        return [(group, k) for group in [*self.benchmarks, *self.averages] for k in self.ks]

    @property
    def values(self) -> dict[str, dict[tuple[str, int], float | None]]:
        """The means alone: ``values[run][column]`` in percent, None where there is no value."""
        return {run: {c: None if e is None else e.mean for c, e in row.items()} for run, row in self.cells.items()}

    def ranked(self, column: tuple[str, int]) -> list[str]:
        """The runs with a value in ``column``, highest mean first."""
        return sorted((run for run in self.runs if self.cells[run][column] is not None),
                      key=lambda run: -self.cells[run][column].mean)

    def best(self, column: tuple[str, int]) -> str | None:
        """The top run when its interval lies wholly above the next one's; None when within noise or alone."""
        ranked = self.ranked(column)
        if len(ranked) < 2:
            return None
        first, second = (self.cells[run][column] for run in ranked[:2])
        return ranked[0] if first.low > second.high else None

    def within_noise(self) -> list[str]:
        """'<column> (<first>, <second>)' for each column whose top two runs' intervals overlap."""
        return [f"{_header(*c)} ({', '.join(self.ranked(c)[:2])})" for c in self.columns
                if len(self.ranked(c)) > 1 and self.best(c) is None]


def build_table(rows: dict[str, list[Seed]], ks: tuple[int, ...] = (1, 16), allow_mixed: bool = False) -> Table:
    """A ``Table`` from label -> the row's seeds (result folders; ``metrics["correct_per_problem"]`` and
    ``metrics["samples_per_problem"]`` give every Pass@k). Rows measured differently are refused unless
    ``allow_mixed``; a row's seeds measured differently always are."""
    if not rows:
        raise ValueError("no runs to tabulate")
    for label, seeds in rows.items():
        _check_seeds(label, seeds)
    mixed = _differences([(label, seeds[0].results) for label, seeds in rows.items()])
    if mixed and not allow_mixed:
        raise ValueError("the rows were not measured alike, so their numbers are not comparable: " + "; ".join(mixed)
                         + ". Evaluate and grade them with the same settings (python -m ranktuner_verl.eval grade "
                         "--grader ... re-grades), or pass --allow-mixed to tabulate them anyway (the differences "
                         "are then listed under the table)")
    present = {b for seeds in rows.values() for b in seeds[0].results}
    benchmarks = [b for b in BENCHMARKS if b in present] + sorted(present - set(BENCHMARKS))
    members = {f"{g}_avg": [b for b in benchmarks if b in REGISTRY and REGISTRY[b].group == g] for g in GROUPS}
    averages = [average for average, names in members.items() if len(names) > 1]
    cells, notes = {}, []
    for run, seeds in rows.items():
        row = {}
        for k in ks:
            matrices = {b: _problem_matrix([s.results.get(b) for s in seeds], k) for b in benchmarks}
            for b in benchmarks:
                row[(b, k)] = None if matrices[b] is None else estimate([matrices[b]])
                if matrices[b] is None:
                    notes.append(_why_empty(run, seeds[0].results.get(b), b, k))
            for average in averages:
                parts = [matrices[b] for b in members[average]]
                row[(average, k)] = None if any(x is None for x in parts) else estimate(parts)
        cells[run] = row
    if all(cell is None for row in cells.values() for cell in row.values()):
        raise ValueError(f"none of the runs has Pass@k for k in {list(ks)}; generate more samples per problem "
                         "or ask for smaller k")
    notes += [f"measured differently (--allow-mixed): {line}" for line in mixed]
    return Table(runs=list(rows), benchmarks=benchmarks, averages=averages, ks=tuple(ks), cells=cells,
                 seeds={run: len(seeds) for run, seeds in rows.items()}, notes=tuple(dict.fromkeys(notes)))


def _problem_matrix(seed_metrics: list[dict | None], k: int) -> np.ndarray | None:
    """x[s, i] = Pass@k of problem i (sorted ids) with seed s; None where missing or n < k."""
    if any(m is None or m.get("correct_per_problem") is None for m in seed_metrics):
        return None
    n = seed_metrics[0].get("samples_per_problem")
    if n is None or n < k:
        return None
    ids = sorted(seed_metrics[0]["correct_per_problem"])
    return np.array([[pass_at_k(n, m["correct_per_problem"][pid], k) for pid in ids] for m in seed_metrics])


def measured_as(metrics: dict) -> dict[str, object]:
    """What must match for results of one benchmark to be compared: grader (and its rules' edition), n, problems,
    sampling settings."""
    generation = metrics.get("generation") or {}
    return {"grader": metrics.get("grader"), "grading version": metrics.get("grading_version"), "n": metrics.get("samples_per_problem"),
            "problems": tuple(sorted(metrics.get("correct_per_problem") or {})),
            **{key: generation.get(key) for key in SAMPLING_KEYS}}


def _differences(entries: list[tuple[str, dict[str, dict]]]) -> list[str]:
    """'<benchmark> <setting>: <value> (<names>) vs <value> (<names>)' for every setting in which the named
    results (name -> benchmark -> metrics) of a benchmark differ."""
    lines = []
    for benchmark in dict.fromkeys(b for _, results in entries for b in results):
        groups: dict[str, dict[str, list[str]]] = {}  # setting -> value (as JSON) -> names
        for name, results in entries:
            if benchmark in results:
                for key, value in measured_as(results[benchmark]).items():
                    groups.setdefault(key, {}).setdefault(json.dumps(value, sort_keys=True), []).append(name)
        for key, values in groups.items():
            if len(values) > 1:
                shown = [f"{_show(key, json.loads(value))} ({', '.join(names)})" for value, names in values.items()]
                lines.append(f"{DISPLAY_NAMES.get(benchmark, benchmark)} {key}: " + " vs ".join(shown))
    return lines


def _show(key: str, value) -> str:
    if key == "problems":
        return f"{len(value)} problems [{', '.join(value[:3])}{', ...' if len(value) > 3 else ''}]"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_seeds(label: str, seeds: list[Seed]) -> None:
    """A row's seeds: the same benchmarks, measured alike, no evaluation twice."""
    names = {seed.name: sorted(seed.results) for seed in seeds}
    if len({tuple(b) for b in names.values()}) > 1:
        raise ValueError(f"row {label}: its seeds hold different benchmarks ({names}); finish evaluating every "
                         "seed on the same benchmarks, or leave the unfinished one out")
    differences = _differences([(seed.name, seed.results) for seed in seeds])
    if differences:
        raise ValueError(f"row {label}: its seeds were not evaluated alike ({'; '.join(differences)}); a row is one "
                         "configuration, so evaluate every seed with the same settings and grader")
    runs: dict[str, str] = {}
    for seed in seeds:
        generation = next(iter(seed.results.values())).get("generation") or {}
        key = json.dumps([generation.get("model"), generation.get("seed")])
        if generation.get("seed") is not None and key in runs:
            raise ValueError(f"row {label}: {runs[key]} and {seed.name} are the same evaluation (model "
                             f"{generation.get('model')}, seed {generation.get('seed')}); give each its own --seed")
        runs[key] = seed.name


def _why_empty(run: str, metrics: dict | None, benchmark: str, k: int) -> str:
    name = DISPLAY_NAMES.get(benchmark, benchmark)
    if metrics is None:
        return f"{run}: no {name} results (an average needs each of its benchmarks)"
    n = metrics.get("samples_per_problem")
    if n is not None and n < k:
        return (f"{run}, {name} Pass@{k}: n = {n} samples per problem < k = {k} (and its average); evaluate with "
                f"--n {k}")
    return f"{run}, {name} Pass@{k}: no per-problem counts in its metrics.json; re-grade it (python -m " \
           "ranktuner_verl.eval grade)"


def collect_table(run_dirs: list[str | Path], labels: list[str] | None = None, ks: tuple[int, ...] = (1, 16),
                  allow_mixed: bool = False) -> Table:
    """Read the result folders and build the table: a folder of result folders is one row of seeds, and so are
    folders given the same label; other rows are labelled by their folder names."""
    if not run_dirs:
        raise ValueError("no result folders given")
    if labels is None:
        labels = [Path(d).name for d in run_dirs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"result folders share names ({labels}); give --labels (one per folder; folders given "
                             "the same label are the seeds of one row)")
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} result folders; give one label per folder")
    rows: dict[str, list[Seed]] = {}
    for label, folder in zip(labels, run_dirs):
        rows.setdefault(label, []).extend(Seed(str(path), load_run(path)) for path in seed_folders(folder))
    return build_table(rows, ks, allow_mixed)


def _header(group: str, k: int) -> str:
    return f"{DISPLAY_NAMES.get(group, group)} Pass@{k}"


def _cell(table: Table, run: str, column: tuple[str, int], plus_minus: str, bold: str) -> str:
    cell = table.cells[run][column]
    if cell is None:
        return "-"
    text = f"{cell.mean:.2f}{plus_minus}{cell.half_width:.2f}"
    return bold.format(text) if table.best(column) == run else text


def _footnotes(table: Table) -> list[str]:
    """The caption, the columns whose best is within noise, and the notes."""
    noise = table.within_noise()
    return [CAPTION, *([f"Within noise (the top two intervals overlap, no best marked): {'; '.join(noise)}."]
                       if noise else []), *table.notes]


def to_markdown(table: Table) -> str:
    """A GitHub Markdown table, a column's best in bold; the caption and notes below it."""
    header = ["Run", "Seeds", *(_header(*c) for c in table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---:"] + ["---:"] * len(table.columns)) + "|"]
    for run in table.runs:
        cells = [_cell(table, run, c, " ± ", "**{}**") for c in table.columns]
        lines.append("| " + " | ".join([run, str(table.seeds[run]), *cells]) + " |")
    footnotes = _footnotes(table)
    return "\n".join(lines + ["", footnotes[0], *(f"- {note}" for note in footnotes[1:])]) + "\n"


def to_csv(table: Table) -> str:
    """One row per run: seeds, then per column the mean and the 95% interval's ends (percent; empty where there is
    no value); then a ``best`` row naming each column's best run, or "within noise"."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "seeds", *(f"{group} pass@{k}{end}" for group, k in table.columns
                                        for end in ("", " ci95 low", " ci95 high"))])
    for run in table.runs:
        values = []
        for c in table.columns:
            cell = table.cells[run][c]
            values += ["", "", ""] if cell is None else [f"{v:.4f}" for v in (cell.mean, cell.low, cell.high)]
        writer.writerow([run, table.seeds[run], *values])
    best = [table.best(c) or ("within noise" if len(table.ranked(c)) > 1 else "") for c in table.columns]
    writer.writerow(["best", "", *(v for name in best for v in (name, "", ""))])
    return buffer.getvalue()


def _latex_escape(text: str) -> str:
    return re.sub(r"[\\&%$#_{}]", lambda m: "\\textbackslash{}" if m.group() == "\\" else "\\" + m.group(), text)


def to_latex(table: Table) -> str:
    """A booktabs ``tabular``: benchmark names over Pass@k sub-columns, mean $\\pm$ half-width, a column's best in
    ``\\textbf``; the caption and notes follow as comments."""
    groups = [*table.benchmarks, *table.averages]
    width = len(table.ks)
    lines = ["\\begin{tabular}{lc" + "c" * len(table.columns) + "}", "\\toprule"]
    lines.append(" & ".join(["Run", "Seeds", *(f"\\multicolumn{{{width}}}{{c}}"
                                                f"{{{_latex_escape(DISPLAY_NAMES.get(g, g))}}}" for g in groups)])
                 + " \\\\")
    lines.append(" ".join(f"\\cmidrule(lr){{{3 + i * width}-{2 + (i + 1) * width}}}" for i in range(len(groups))))
    lines.append(" & ".join(["", "", *(f"Pass@{k}" for _ in groups for k in table.ks)]) + " \\\\")
    lines.append("\\midrule")
    for run in table.runs:
        cells = [_cell(table, run, c, " $\\pm$ ", "\\textbf{{{}}}") for c in table.columns]
        lines.append(" & ".join([_latex_escape(run), str(table.seeds[run]), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", *(f"% {note}" for note in _footnotes(table))]
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
