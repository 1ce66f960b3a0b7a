"""Benchmark loaders on the real benchmark copies, and their refusal of bad input."""

from __future__ import annotations

import json

import pytest

from ranktuner_verl.eval.benchmarks import DEFAULT_BENCHMARKS, REGISTRY, Problem, load_benchmark

SIZES = {"math500": 500, "minerva_math": 272, "olympiadbench": 675, "aime24": 30, "amc23": 40}


@pytest.mark.parametrize("name", DEFAULT_BENCHMARKS)
def test_real_files_load_whole_and_normalised(name, eval_data_dir):
    problems = load_benchmark(name, eval_data_dir)
    assert len(problems) == SIZES[name]
    assert all(isinstance(p, Problem) and p.question.strip() and p.answer.strip() for p in problems)
    assert len({p.id for p in problems}) == len(problems)
    assert not any("$" in p.answer.replace("\\$", "") for p in problems)  # math delimiters dropped


def test_gold_answers_come_from_each_schema(eval_data_dir):
    """One normaliser, five schemas: answer, a float answer, final_answer lists, the \\boxed{} of a solution."""
    first = {name: load_benchmark(name, eval_data_dir, limit=1)[0] for name in DEFAULT_BENCHMARKS}
    assert first["math500"].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"  # the answer field
    assert first["math500"].id == "test/precalculus/807.json"
    assert first["minerva_math"].answer == "1.6"  # last \boxed{} of the solution
    assert first["olympiadbench"].answer == "2"  # final_answer ['2']
    assert first["aime24"].answer == "204"
    assert first["amc23"].answer == "27"  # 27.0 in the file
    olympiad = {p.id: p.answer for p in load_benchmark("olympiadbench", eval_data_dir)}
    raw = {str(r["id"]): r["final_answer"] for r in map(json.loads, open(eval_data_dir / "olympiadbench.jsonl"))}
    multi = next(i for i, answer in raw.items() if answer == ["$69$,$84$"])
    assert olympiad[multi] == "69,84"


def test_aliases_file_paths_and_limit(eval_data_dir):
    assert load_benchmark("math_oai", eval_data_dir) == load_benchmark("MATH500", eval_data_dir)
    assert load_benchmark("aime24", eval_data_dir / "aime24.jsonl", limit=3) == load_benchmark("aime24",
                                                                                              eval_data_dir)[:3]
    assert {REGISTRY[name].file_stem for name in DEFAULT_BENCHMARKS} == {"math_oai", "minerva_math", "olympiadbench",
                                                                 "aime24", "amc23"}


@pytest.mark.parametrize("case, error, message", [
    ("unknown name", ValueError, "unknown benchmark 'gsm8k'; choose one of math500"),
    ("missing file", FileNotFoundError, "benchmark file not found"),
    ("folder without the file", FileNotFoundError, "must hold aime24.jsonl"),
    ("empty benchmark", ValueError, "has no problems"),
    ("wrong column", ValueError, "row 1 lacks a question (field problem or question)"),
    ("no gold answer", ValueError, "row 0 lacks a gold answer"),
    ("unclosed box", ValueError, "row 0 lacks a gold answer"),  # no fall-back to "the answer is ..." text
    ("not json", ValueError, "aime24.jsonl:2 is not valid JSON"),
])
def test_bad_input_gets_a_clear_message(case, error, message, tmp_path):
    file = tmp_path / "aime24.jsonl"
    good = {"id": 1, "problem": "What is 1+1?", "answer": "2"}
    lines = {
        "empty benchmark": ["", "  "],
        "wrong column": [json.dumps(good), json.dumps({"id": 2, "prompt": "What is 2+2?", "answer": "4"})],
        "no gold answer": [json.dumps({"id": 1, "problem": "Prove it.", "solution": "Clear."})],
        "unclosed box": [json.dumps({"id": 1, "problem": "What is 2+2?", "solution": "So the answer is \\boxed{4"})],
        "not json": [json.dumps(good), "{'id': 2}"],
    }.get(case)
    if lines is not None:
        file.write_text("\n".join(lines) + "\n")
    name = "gsm8k" if case == "unknown name" else "aime24"
    path = tmp_path if case == "folder without the file" else file
    with pytest.raises(error) as raised:
        load_benchmark(name, path)
    assert message in str(raised.value)


def test_one_registry_and_data_never_imports_eval():
    import ast
    from pathlib import Path

    from ranktuner_verl.eval.benchmarks import BENCHMARKS, DEFAULT_BENCHMARKS

    assert BENCHMARKS == tuple(REGISTRY) and DEFAULT_BENCHMARKS == ("math500", "minerva_math", "olympiadbench",
                                                                   "aime24", "amc23")
    assert {b.kind for b in REGISTRY.values()} == {"math", "choice", "code"}
    for source in (Path(__file__).parents[2] / "ranktuner_verl" / "data").glob("*.py"):
        imported = [node.module or "" for node in ast.walk(ast.parse(source.read_text()))
                    if isinstance(node, ast.ImportFrom)]
        assert not [m for m in imported if m.startswith("ranktuner_verl.eval")], source
