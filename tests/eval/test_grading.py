"""Answer extraction and math-verify grading: unit cases, timeouts, and agreement on the real benchmark files."""

from __future__ import annotations

import json
import random
import re
import threading
import time

import pytest

from ranktuner_verl.eval.benchmarks import DEFAULT_BENCHMARKS, REGISTRY, load_benchmark
from ranktuner_verl.eval.grading import GRADERS, Grade, extract_answer, grade, grade_many


@pytest.mark.parametrize("text, answer", [
    ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("first \\boxed{1}, then \\boxed{2}", "2"),
    ("\\boxed{\\left\\{ 1, \\sqrt{\\frac{a}{b}} \\right\\}}", "\\left\\{ 1, \\sqrt{\\frac{a}{b}} \\right\\}"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces neither open nor close
    ("\\boxed{\\left\\{ x \\mid x > 0 \\right.}", "\\left\\{ x \\mid x > 0 \\right."),  # an unmatched escaped brace
    ("the result is \\fbox{7}", "7"),
    ("hence \\boxed 5 and done", "5"),
    ("\\boxed{3} was a guess; the truth is \\boxed{4", "3"),  # an unclosed (truncated) box is skipped
    ("The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
    ("Final Answer: 12 apples\nmore text", "12 apples"),
    ("So the answer is 3.5.", "3.5"),
    ("Answer: \\(x+1\\)", "x+1"),
    ("we get 10, then 1,250 in total", "1250"),  # the last number, thousands separators dropped
    ("no numbers here", None),
    ("", None),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize("gold, predicted", [
    ("\\frac{1}{2}", "0.5"), ("\\dfrac{3}{4}", "\\frac34"), ("\\left( 1, 2 \\right)", "(1,2)"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("5", "x = 5"), ("\\{1,2\\}", "\\{2,1\\}"), ("\\frac{3\\pi}{2}", "3\\pi/2"),
    ("073", "\\textbf{(073)}"), ("104", "104."), ("27", "27.0"),
])
def test_equivalent_answers_are_correct(gold, predicted):
    assert grade(f"Thus the answer is $\\boxed{{{predicted}}}$.", gold) == Grade(True, predicted, None)


@pytest.mark.parametrize("gold, predicted", [("\\frac{1}{2}", "\\frac{1}{3}"), ("(1,2)", "(2,1)"),
                                             ("2\\sqrt{2}", "2\\sqrt{3}"), ("x^2+1", "x^2-1")])
def test_different_answers_are_wrong(gold, predicted):
    assert grade(f"\\boxed{{{predicted}}}", gold) == Grade(False, predicted, None)


def test_no_answer_and_bad_gold_are_reported_not_raised():
    assert grade("I do not know.", "3") == Grade(False, None, None)
    failed = grade("\\boxed{3}", "")
    assert not failed.correct and failed.extracted == "3" and "could not parse the gold answer" in failed.error


def test_a_comparison_past_its_limit_is_killed_and_the_next_one_runs():
    # sympy inside C code ignores an alarm (the old limit ran 29-51 s over a 5 s one); a killed worker cannot
    for grader in GRADERS:
        assert grade("\\boxed{0.5}", "\\frac12", grader=grader).correct  # a started worker (after a kill: a new one)
        started = time.monotonic()
        slow = grade("\\boxed{(10^{10^{10}})!}", "3", timeout=0.5, grader=grader)
        assert time.monotonic() - started < 2.0, grader
        assert slow == Grade(False, "(10^{10^{10}})!", "timeout after 0.5s") and slow.timed_out


def test_grading_off_the_main_thread_keeps_its_time_limit():
    grades = []
    worker = threading.Thread(target=lambda: grades.extend([grade("\\boxed{0.5}", "\\frac12"),
                                                             grade("\\boxed{(10^{10^{10}})!}", "3", timeout=0.5)]))
    worker.start()
    worker.join()
    assert grades == [Grade(True, "0.5", None), Grade(False, "(10^{10^{10}})!", "timeout after 0.5s")]


def test_grade_many_in_processes_matches_grade_and_counts_failures(caplog):
    # an expression of its own: sympy caches, and another test grades (x+1)^{400}-(x-1)^{400} in this process
    completions = ["\\boxed{0.5}", "\\boxed{2}", "nothing", "\\boxed{(x+2)^{900}-(x-2)^{900}}", "\\boxed{1}"]
    golds = ["\\frac12", "3", "1", "3", ""]
    sequential = [grade(c, g, timeout=0.3) for c, g in zip(completions, golds)]
    parallel = grade_many(completions, golds, timeout=0.3, workers=2)
    assert parallel == sequential
    assert [g.correct for g in parallel] == [True, False, False, False, False]
    assert "2 of 5 answers failed to grade (1 errors, 1 timeouts)" in caplog.text
    with pytest.raises(ValueError, match="one gold answer per completion"):
        grade_many(completions, golds[:2])


# --- agreement on the real benchmark files ---------------------------------------------------------------------

FLOOR = {"math500": 0.99, "aime24": 0.99, "amc23": 0.99, "minerva_math": 0.95, "olympiadbench": 0.95}


def _references(name: str, eval_data_dir) -> tuple[list[str], list[str], str]:
    """Each problem's reference completion (its solution when that has a \\boxed{}, else the gold answer boxed)."""
    problems = load_benchmark(name, eval_data_dir)
    rows = [json.loads(line) for line in open(eval_data_dir / f"{REGISTRY[name].file_stem}.jsonl")]
    completions, from_solution = [], 0
    for problem, row in zip(problems, rows):
        solution = row.get("solution")
        if isinstance(solution, str) and "\\boxed" in solution:
            completions.append(solution)
            from_solution += 1
        else:
            completions.append(f"The final answer is $\\boxed{{{problem.answer}}}$.")
    what = f"{from_solution} reference solutions, {len(problems) - from_solution} gold answers boxed"
    return completions, [p.answer for p in problems], what


@pytest.mark.parametrize("name", DEFAULT_BENCHMARKS)
def test_reference_solutions_grade_correct(name, eval_data_dir):
    completions, golds, what = _references(name, eval_data_dir)
    grades = grade_many(completions, golds, desc=name)
    rate = sum(g.correct for g in grades) / len(grades)
    print(f"\n{name}: reference graded correct {rate:.2%} of {len(grades)} ({what}); "
          f"{sum(g.error is not None for g in grades)} grader errors/timeouts")
    assert rate >= FLOOR[name]


def _perturbed(answer: str) -> str | None:
    """The answer with its first number increased by one (None if it has no number)."""
    number = re.search(r"\d+", answer)
    if number is None:
        return None
    return answer[: number.start()] + str(int(number.group()) + 1) + answer[number.end():]


# Wrong answers go through math-verify's symbolic comparison (seconds per hundred on 2 cores): all of MATH500, AIME24
# and AMC23, a fixed seeded subset of the two large ones.
PERTURBED_SUBSET = {"minerva_math": 150, "olympiadbench": 150}


@pytest.mark.parametrize("name", DEFAULT_BENCHMARKS)
def test_perturbed_answers_grade_wrong(name, eval_data_dir):
    pairs = [(f"So the answer is $\\boxed{{{_perturbed(p.answer)}}}$.", p.answer)
             for p in load_benchmark(name, eval_data_dir) if _perturbed(p.answer) is not None]
    if name in PERTURBED_SUBSET:
        pairs = random.Random(0).sample(pairs, PERTURBED_SUBSET[name])
    grades = grade_many([c for c, _ in pairs], [g for _, g in pairs], desc=f"{name} perturbed")
    rate = sum(not g.correct for g in grades) / len(grades)
    print(f"\n{name}: perturbed answers graded wrong {rate:.2%} of {len(grades)}")
    # Minerva's physics answers used to meet math-verify misparses ("\frac{1}{3} E_{1}+\frac{2}{3} E_{2}" read as 2/3):
    # a parse that loses the answer's symbols is now no parse (grading._parse), so the perturbed ones grade wrong
    assert rate >= 0.99
