"""Multiple-choice extraction and grading; HumanEval execution of untrusted code (issue 10 §3)."""

from __future__ import annotations

import os
import time

import pytest

from ranktuner_verl.eval.choice import extract_choice, grade_choice
from ranktuner_verl.eval.code import extract_program, grade_code, grade_code_many


@pytest.mark.parametrize("text, letter", [
    ("Reasoning... so the final answer is $\\boxed{B}$.", "B"),
    ("\\boxed{(C)}", "C"),
    ("\\boxed{\\text{D}}", "D"),
    ("\\boxed{A. 42 apples}", "A"),
    ("Therefore, the answer is B.", "B"),
    ("The correct answer is (C) because ...", "C"),
    ("Answer: D", "D"),
    ("The final answer is **A**", "A"),
    ("I compare (A) and (B). Only (B) survives.", "B"),
    ("B", "B"),
    ("(D).", "D"),
    ("First I thought the answer is A, but the answer is C.", "C"),  # the last statement wins
    ("the answer is a number between 1 and 5, namely (B)", "B"),  # a lowercase word is not a letter
])
def test_choice_extractor_reads_every_answer_form(text, letter):
    assert extract_choice(text, 4) == letter


@pytest.mark.parametrize("text", [
    "",
    "I am not sure which one it is.",
    "The answer is (E).",  # not one of four choices
    "\\boxed{42}",
    "A cat sat. A dog sat.",  # capital A starting sentences is no answer
])
def test_choice_extractor_finds_no_answer(text):
    assert extract_choice(text, 4) is None


def test_choice_grader_right_wrong_and_none():
    assert grade_choice("so the answer is (B)", "B", 4).correct
    wrong = grade_choice("so the answer is (C)", "B", 4)
    assert not wrong.correct and wrong.extracted == "C"
    none = grade_choice("no idea", "B", 4)
    assert not none.correct and none.extracted is None
    assert grade_choice("the answer is E", "E", 5).correct and not grade_choice("the answer is E", "E", 4).correct


# --- HumanEval -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def humaneval():
    from ranktuner_verl.eval.benchmarks import load_benchmark

    return {p.id: p for p in load_benchmark("humaneval", limit=3)}


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\nIt works."


def test_humaneval_comes_from_the_package(humaneval):
    first = humaneval["HumanEval/0"]
    assert first.extra["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in first.extra["test"] and first.extra["prompt"] in first.question


def test_humaneval_execution_correct_wrong_hang_crash_and_memory(humaneval, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    problem = humaneval["HumanEval/0"]
    whole = problem.extra["prompt"] + problem.answer  # the canonical solution as a whole function
    cases = {
        "whole function": (fenced(whole), "passed"),
        "body only": (problem.answer, "passed"),
        "wrong": (fenced("def has_close_elements(numbers, threshold):\n    return False"),
                  "failed: AssertionError"),
        "infinite loop": (fenced("def has_close_elements(numbers, threshold):\n    while True:\n        pass"),
                          "timed out"),
        "segfault": (fenced("import ctypes\ndef has_close_elements(numbers, threshold):\n"
                            "    return ctypes.string_at(0)"), "failed: killed by signal 11"),
        "memory": (fenced("def has_close_elements(numbers, threshold):\n    block = bytearray(8 * 2**30)\n"
                          "    return True"), "failed: MemoryError"),
        "writes and exits": (fenced("def has_close_elements(numbers, threshold):\n"
                                    "    open('left_behind.txt', 'w').write('x')\n    raise SystemExit(0)"),
                             "failed: exited before its tests finished"),
        "kills its parent": (fenced(f"import os\ndef has_close_elements(numbers, threshold):\n"
                                    f"    os.kill({os.getpid()}, 9)"), "failed: TypeError: 'NoneType' object is not "
                                                                       "callable"),
    }
    started = time.monotonic()
    grades = grade_code_many([text for text, _ in cases.values()], [problem.extra] * len(cases), timeout=3,
                             workers=2)
    assert {name: g.extracted for name, g in zip(cases, grades)} == {name: want for name, (_, want) in cases.items()}
    assert [g.correct for g in grades] == [want == "passed" for _, want in cases.values()]
    assert time.monotonic() - started < 20, "a hang costs its own time limit only"
    assert not (tmp_path / "left_behind.txt").exists(), "programs run in their own temporary directory"


def test_the_other_problems_pass_with_their_canonical_solutions(humaneval):
    for problem in humaneval.values():
        assert grade_code(problem.answer, problem.extra, timeout=5).correct, problem.id


def test_program_extraction_prefers_the_block_defining_the_entry_point():
    prompt = "def f(x):\n    \"\"\"doc\"\"\"\n"
    text = "```python\ndef f(x):\n    return x\n```\nUsage:\n```python\nprint(f(1))\n```"
    assert extract_program(text, prompt, "f") == prompt + "\ndef f(x):\n    return x\n"
    assert extract_program("    return x\n", prompt, "f") == prompt + "    return x\n"
    assert extract_program("```python\ndef f(x):\n    return x", prompt, "f").endswith("return x")  # unclosed
