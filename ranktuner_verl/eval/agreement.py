"""How the two math graders agree: gold solutions (should grade correct) and perturbed answers (should grade wrong).

``python -m ranktuner_verl.eval agreement --data-dir DIR [--limit N] [--out FILE.md]`` grades, for each math
benchmark file in DIR,

- the gold reference of every problem: its ``solution`` when that has a ``\\boxed{}`` (MATH500, Minerva, AIME24),
  else its gold answer boxed (OlympiadBench, AMC23, one AIME24 problem);
- the gold answer with its first number increased by one (problems whose answer has a number),

with both graders (math-verify and ``--grader qwen``), and writes a Markdown table of the rates and the list of
problems where the graders disagree (the table in docs/data_and_grading.md comes from this command).

``python -m ranktuner_verl.eval truth-set tests/eval/answer_forms.txt [--out FILE.md]`` grades a truth set (answer
forms labelled by what a careful human grader says) with both graders: agreement, false accepts and misses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ranktuner_verl.data.jsonl import read_jsonl
from ranktuner_verl.eval.benchmarks import DEFAULT_BENCHMARKS, REGISTRY, load_benchmark
from ranktuner_verl.eval.grading import DEFAULT_TIMEOUT_S, GRADERS, extract_answer, grade_many


def references(name: str, data_dir: str | Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(reference completion, gold answer) of each problem: the boxed solution, else the gold answer boxed."""
    problems = load_benchmark(name, data_dir, limit)
    rows = read_jsonl(Path(data_dir) / f"{REGISTRY[name].file_stem}.jsonl", limit)
    completions = [row["solution"] if isinstance(row.get("solution"), str) and "\\boxed" in row["solution"]
                   else f"The final answer is $\\boxed{{{problem.answer}}}$." for problem, row in zip(problems, rows)]
    return completions, [p.answer for p in problems]


def perturbed(answer: str) -> str | None:
    """The answer with its first number increased by one (None if it has no number)."""
    number = re.search(r"\d+", answer)
    if number is None:
        return None
    return answer[: number.start()] + str(int(number.group()) + 1) + answer[number.end():]


def measure(data_dir: str | Path, benchmarks=DEFAULT_BENCHMARKS, limit: int | None = None,
            workers: int = 1, timeout: float | None = DEFAULT_TIMEOUT_S) -> dict[str, dict]:
    """benchmark -> {"gold": {grader: [bool]}, "wrong": {grader: [bool]}, "gold_cases", "wrong_cases"}."""
    results = {}
    for name in benchmarks:
        completions, golds = references(name, data_dir, limit)
        wrong = [(f"So the answer is $\\boxed{{{perturbed(g)}}}$.", g) for g in golds if perturbed(g) is not None]
        result = {"gold_cases": list(zip(completions, golds)), "wrong_cases": wrong, "gold": {}, "wrong": {}}
        for grader in GRADERS:
            result["gold"][grader] = [g.correct for g in grade_many(completions, golds, timeout, workers,
                                                                    f"{name} gold, {grader}", grader)]
            result["wrong"][grader] = [not g.correct for g in grade_many(
                [c for c, _ in wrong], [g for _, g in wrong], timeout, workers, f"{name} perturbed, {grader}", grader)]
        results[name] = result
    return results


def _rate(values: list[bool]) -> str:
    return f"{100 * sum(values) / len(values):.2f}%" if values else "-"


def to_markdown(results: dict[str, dict]) -> str:
    """The agreement table, then every disagreement (benchmark, case, gold, which grader says correct)."""
    a, b = GRADERS
    lines = [f"| benchmark | gold n | {a} correct | {b} correct | perturbed n | {a} wrong | {b} wrong | "
             "graders agree |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    disagreements = []
    for name, r in results.items():
        agree = [x == y for kind in ("gold", "wrong") for x, y in zip(r[kind][a], r[kind][b])]
        lines.append(f"| {REGISTRY[name].display} | {len(r['gold'][a])} | {_rate(r['gold'][a])} | "
                     f"{_rate(r['gold'][b])} | {len(r['wrong'][a])} | {_rate(r['wrong'][a])} | "
                     f"{_rate(r['wrong'][b])} | {_rate(agree)} |")
        for kind, says in (("gold", "correct"), ("wrong", "wrong")):
            for (completion, gold), x, y in zip(r[f"{kind}_cases"], r[kind][a], r[kind][b]):
                if x != y:
                    verdict = f"{a if x else b} says {says}"
                    answer = extract_answer(completion)
                    disagreements.append(f"- {REGISTRY[name].display}, {'gold' if kind == 'gold' else 'perturbed'}"
                                         f": answer `{answer}` vs gold `{gold}`: {verdict}")
    text = "\n".join(lines) + "\n"
    if disagreements:
        text += "\nDisagreements:\n\n" + "\n".join(disagreements) + "\n"
    return text


# ---------------------------------------------------------------------------------------------------------------
# The truth set: answer forms labelled by what a careful human grader says (tests/eval/answer_forms.txt)
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    right: bool  # the truth: the completion answers the gold
    category: str
    gold: str
    completion: str


FIELD_SEPARATOR, NEWLINE = " ‖ ", "⏎"


def read_truth_set(path: str | Path) -> list[Case]:
    """The cases of a truth-set file: ``right|wrong ‖ category ‖ gold ‖ completion`` a line (``⏎`` = newline,
    ``#`` starts a comment line)."""
    cases = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [field.strip() for field in line.split(FIELD_SEPARATOR)]
        if len(fields) != 4 or fields[0] not in ("right", "wrong") or not all(fields):
            raise ValueError(f"{path}:{number}: expected 'right|wrong ‖ category ‖ gold ‖ completion', "
                             f"got {line!r}")
        cases.append(Case(fields[0] == "right", fields[1], fields[2], fields[3].replace(NEWLINE, "\n")))
    if not cases:
        raise ValueError(f"{path} holds no cases")
    return cases


def grade_truth_set(cases: list[Case], workers: int = 1,
                    timeout: float | None = DEFAULT_TIMEOUT_S) -> dict[str, list[bool]]:
    """grader -> whether it accepts each case's completion."""
    return {grader: [g.correct for g in grade_many([c.completion for c in cases], [c.gold for c in cases], timeout,
                                                   workers, f"truth set, {grader}", grader)]
            for grader in GRADERS}


def truth_set_markdown(cases: list[Case], accepted: dict[str, list[bool]]) -> str:
    """Per grader: agreement with the truth, false accepts, misses; then every case a grader gets wrong."""
    rights = sum(c.right for c in cases)
    lines = [f"| grader | cases | agrees with the truth | false accepts (of {len(cases) - rights} wrong) | "
             f"misses (of {rights} right) |", "|---|---:|---:|---:|---:|"]
    errors = []
    for grader, verdicts in accepted.items():
        false_accepts = [c for c, v in zip(cases, verdicts) if v and not c.right]
        misses = [c for c, v in zip(cases, verdicts) if c.right and not v]
        agree = 1 - (len(false_accepts) + len(misses)) / len(cases)
        lines.append(f"| {grader} | {len(cases)} | {100 * agree:.1f}% | {len(false_accepts)} | {len(misses)} |")
        errors += [f"- {grader} accepts ({c.category}): `{extract_answer(c.completion)}` for gold `{c.gold}`"
                   for c in false_accepts]
        errors += [f"- {grader} rejects ({c.category}): `{extract_answer(c.completion)}` for gold `{c.gold}`"
                   for c in misses]
    return "\n".join(lines) + "\n" + ("\nWhere a grader differs from the truth:\n\n" + "\n".join(errors) + "\n"
                                      if errors else "")
