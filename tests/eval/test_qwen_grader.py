"""``--grader qwen``: the Qwen2.5-Math harness's comparison rules, and the agreement command (issue 10 §2)."""

from __future__ import annotations

import pytest

from ranktuner_verl.eval.grading import grade, grade_many
from ranktuner_verl.eval.qwen_grader import normalize, qwen_equal


@pytest.mark.parametrize("prediction, reference", [
    ("27", "27.0"),
    ("50\\%", "50"),  # percentages: the sign dropped
    ("0.5", "50"),  # ... and the value read as a fraction of 100
    ("5000", "50"),
    ("10001", "10000"),  # within rel 1e-4, as the harness's numeric_equal
    ("1,000,000", "1000000"),
    ("12 \\text{ cm}", "12"),  # units
    ("45^\\circ", "45"),
    ("\\$18.90", "18.90"),
    ("x = 5", "5"),  # a short left-hand side
    ("(B)", "B"),  # choice letters
    ("B. 12", "B"),
    ("\\dfrac{1}{2}", "\\frac12"),
    ("0.5", "\\frac{1}{2}"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("[1, 2)", "[1,2)"),
    ("(1, 0.5)", "(1, \\frac{1}{2})"),  # tuples element by element
    ("y = 2x + 1", "y = 1 + 2x"),
    ("2x + y = 1", "1 - y = 2x"),  # equations, sides swapped
    ("2\\sqrt{2}", "\\sqrt{8}"),  # symbolic
    ("\\text{infinity}", "\\infty"),
])
def test_qwen_rules_accept(prediction, reference):
    assert qwen_equal(prediction, reference)


@pytest.mark.parametrize("prediction, reference", [
    ("28", "27"),
    ("10002", "10000"),  # beyond rel 1e-4
    ("C", "B"),
    ("(1, 2)", "[1, 2]"),  # an open interval is not a closed one
    ("(1, 2]", "(1, 2)"),
    ("(1, 2, 3)", "(1, 2)"),
    ("\\frac{1}{3}", "0.33"),
    ("x^2", "x^3"),
    ("", "1"),
    (None, "1"),
])
def test_qwen_rules_reject(prediction, reference):
    assert not qwen_equal(prediction, reference)


def test_normalize():
    assert normalize("\\left( 1, 2 \\right).") == "(1,2)"
    assert normalize("\\text{(B)}") == "(B)"
    assert normalize("3\\,000 \\text{ dollars}") == "3000"
    assert normalize("k = \\tfrac{3}{4}") == "\\frac{3}{4}"


def test_grade_with_either_grader_and_where_they_differ():
    completion = "So the percentage is $\\boxed{50\\%}$."
    assert grade(completion, "50", grader="qwen").correct
    assert grade("The answer is \\boxed{0.5}", "50", grader="qwen").correct
    assert not grade("The answer is \\boxed{0.5}", "50", grader="math-verify").correct
    assert [g.correct for g in grade_many(["\\boxed{2}", "\\boxed{3}"], ["2", "2"], grader="qwen")] == [True, False]
    with pytest.raises(ValueError, match="unknown grader 'sympy'; choose one of math-verify, qwen"):
        grade("\\boxed{1}", "1", grader="sympy")


def test_agreement_command_writes_the_table(eval_data_dir, tmp_path, capsys):
    from ranktuner_verl.eval.cli import main

    out = tmp_path / "agreement.md"
    main(["agreement", "--data-dir", str(eval_data_dir), "--limit", "12", "--out", str(out)])
    text = out.read_text()
    assert text == capsys.readouterr().out.rstrip("\n") + "\n"
    lines = text.splitlines()
    assert lines[0].startswith("| benchmark | gold n | math-verify correct | qwen correct | perturbed n")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in lines[2:7]}
    assert list(rows) == ["MATH500", "Minerva", "OlympiadBench", "AIME24", "AMC23"]
    for name, cells in rows.items():
        assert cells[1] == "12" and cells[2] == "100.00%" and cells[3] == "100.00%", name


def test_the_docs_hold_the_commands_table_for_the_whole_files():
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "data_and_grading.md").read_text()
    header = "| benchmark | gold n | math-verify correct | qwen correct | perturbed n | math-verify wrong | qwen wrong |"
    assert header in docs and "python -m ranktuner_verl.eval agreement --data-dir" in docs
    for display, size in [("MATH500", 500), ("Minerva", 272), ("OlympiadBench", 675), ("AIME24", 30), ("AMC23", 40)]:
        assert f"| {display} | {size} | 100.00% | 100.00% |" in docs, display
