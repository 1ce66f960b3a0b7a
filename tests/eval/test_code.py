"""HumanEval: the problems as packaged, program extraction, canonical solutions graded as passing (issue 10 §3).

Execution of wrong, crashing, hanging and hostile programs is tested in test_sandbox.py, under each isolation."""

from __future__ import annotations

import pytest

from ranktuner_verl.eval.code import extract_program, grade_code


@pytest.fixture(scope="module")
def humaneval():
    from ranktuner_verl.eval.benchmarks import load_benchmark

    return {p.id: p for p in load_benchmark("humaneval", limit=3)}


def test_humaneval_comes_from_the_package(humaneval):
    first = humaneval["HumanEval/0"]
    assert first.extra["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in first.extra["test"] and first.extra["prompt"] in first.question


def test_every_problem_passes_with_its_canonical_solution_as_a_body(humaneval):
    for problem in humaneval.values():
        assert grade_code(problem.answer, problem.extra, timeout=5).correct, problem.id


def test_program_extraction_prefers_the_block_defining_the_entry_point():
    prompt = "def f(x):\n    \"\"\"doc\"\"\"\n"
    text = "```python\ndef f(x):\n    return x\n```\nUsage:\n```python\nprint(f(1))\n```"
    assert extract_program(text, prompt, "f") == prompt + "\ndef f(x):\n    return x\n"
    assert extract_program("    return x\n", prompt, "f") == prompt + "    return x\n"
    assert extract_program("```python\ndef f(x):\n    return x", prompt, "f").endswith("return x")  # unclosed
