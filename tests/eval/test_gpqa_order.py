"""GPQA's choice order: one per problem for all its samples (default) or a new one per sample (issue 17 §5)."""

from __future__ import annotations

import json

import pytest

from ranktuner_verl.eval.backends import SamplingConfig
from ranktuner_verl.eval.benchmarks import as_sampled, load_benchmark
from ranktuner_verl.eval.cli import build_parser, grade_benchmark
from ranktuner_verl.eval.generate import generate_completions, read_problems


def gpqa_file(tmp_path, count: int):
    rows = [{"Record ID": f"rec{i}", "Question": f"Question {i}?\n\nA. is not a choice here", "Correct Answer":
             f"right {i}", "Incorrect Answer 1": "wrong a", "Incorrect Answer 2": "wrong b",
             "Incorrect Answer 3": "wrong c"} for i in range(count)]
    path = tmp_path / "gpqa_diamond.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_one_order_per_problem_is_the_default_and_every_sample_sees_it(tmp_path):
    file = gpqa_file(tmp_path, 5)
    problems = load_benchmark("gpqa", file, seed=2)
    assert load_benchmark("gpqa", file, seed=2, option_order="per-problem") == problems
    assert all(as_sampled(p, s) is p for p in problems for s in range(4))
    with pytest.raises(ValueError, match="unknown option order 'random'; choose one of per-problem, per-sample"):
        load_benchmark("gpqa", file, option_order="random")


def test_a_new_order_per_sample_keeps_the_right_answer_and_is_reproducible(tmp_path):
    file = gpqa_file(tmp_path, 5)
    problems = load_benchmark("gpqa", file, seed=2, option_order="per-sample")
    assert load_benchmark("gpqa", file, seed=2, option_order="per-sample") == problems
    for i, problem in enumerate(problems):
        assert as_sampled(problem, 0) == problem, "the recorded problem is what sample 0 is asked"
        asked = [as_sampled(problem, s) for s in range(16)]
        for sampled in asked:
            assert sampled.extra["choices"]["ABCD".index(sampled.answer)] == f"right {i}"
            assert sampled.question.startswith(f"Question {i}?\n\nA. is not a choice here\n\nA. ")
        assert len({tuple(a.extra["choices"]) for a in asked}) > 4 and len({a.answer for a in asked}) > 1
    arc_like = load_benchmark("gpqa", file, seed=2)[0]
    assert arc_like.extra == {"choices": arc_like.extra["choices"], "shuffle_seed": 2}, "per-problem is unchanged"


class RecordingBackend:
    """Wraps a scripted backend and records the requests it is given."""

    def __init__(self, inner):
        self.inner, self.requests = inner, []
        self.name, self.stop_tokens, self.context_length = inner.name, inner.stop_tokens, inner.context_length
        self.model_path, self.tokenizer = inner.model_path, inner.tokenizer

    def generate(self, requests, sampling):
        self.requests += list(requests)
        return self.inner.generate(self.requests[-len(requests):], sampling)


def test_per_sample_orders_are_sampled_one_request_each_and_graded_against_their_own_letter(
        tiny_model_dir, tmp_path, scripted_backend):
    problems = load_benchmark("gpqa", gpqa_file(tmp_path, 2), option_order="per-sample")
    # every sample states the right answer's letter in its own order: all correct only if graded per sample
    texts = {(p.id, s): f"The answer is {as_sampled(p, s).answer}." for p in problems for s in range(4)}
    backend = RecordingBackend(scripted_backend(tiny_model_dir, texts))
    generate_completions(backend, problems, tmp_path / "gpqa_diamond", SamplingConfig(n=4), progress=False)
    assert sorted(r.samples for r in backend.requests) == sorted([(s,) for s in range(4)] * 2)
    assert len({r.prompt_token_ids for r in backend.requests}) > 2, "the samples were asked in different orders"
    assert read_problems(tmp_path / "gpqa_diamond") == problems
    assert grade_benchmark(tmp_path / "gpqa_diamond")["pass@k"]["1"] == 1.0
    # the same letter for every sample is right only where that sample's order put the right answer there
    texts = {(p.id, s): f"The answer is {p.answer}." for p in problems for s in range(4)}
    generate_completions(scripted_backend(tiny_model_dir, texts), problems, tmp_path / "fixed" / "gpqa_diamond",
                         SamplingConfig(n=4), progress=False)
    expected = sum(as_sampled(p, s).answer == p.answer for p in problems for s in range(4)) / 8
    assert grade_benchmark(tmp_path / "fixed" / "gpqa_diamond")["pass@k"]["1"] == expected < 1.0


def test_the_run_command_offers_both_orders():
    parser = build_parser()
    assert parser.parse_args(["run", "--model", "m", "--out", "o"]).gpqa_order == "per-problem"
    assert parser.parse_args(["run", "--model", "m", "--out", "o", "--gpqa-order", "per-sample"]).gpqa_order == \
        "per-sample"
