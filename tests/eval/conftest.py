"""Fixtures for the evaluation tests: the real benchmark files, a tiny local model, scripted result folders."""

from __future__ import annotations

from pathlib import Path

import pytest

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random tiny Qwen2 with a ChatML tokenizer, saved as a complete HF model directory."""
    from ranktuner_verl.data.tiny import build_model

    out = tmp_path_factory.mktemp("tiny_model")
    build_model(out)
    return out


class ScriptedBackend:
    """A generation backend that answers with given texts: for result folders with known grades.

    It stands in for the model only; prompts still go through the real tokenizer and chat template, and the
    completions through the real resumable writer, grader, metrics and tables.
    """

    name = "scripted"
    stop_tokens = {"<|im_end|>": 2}
    context_length = None

    def __init__(self, model_dir: Path, texts: dict[tuple[str, int], str]):
        from transformers import AutoTokenizer

        self.model_path = str(Path(model_dir).resolve())
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.texts = texts

    def generate(self, requests, sampling):
        for request in requests:
            texts = [self.texts[(request.problem_id, sample)] for sample in request.samples]
            yield request, [{"completion": text, "num_tokens": len(text.split()), "finish_reason": "stop"}
                            for text in texts]


@pytest.fixture
def scripted_backend():
    """The ``ScriptedBackend`` class: ``scripted_backend(model_dir, {(problem id, sample): text})``."""
    return ScriptedBackend


def boxed(answer: str) -> str:
    return f"Working through the problem step by step. The final answer is $\\boxed{{{answer}}}$."


def perturbed(answer: str) -> str:
    """A wrong answer: the integer gold answer plus one."""
    return str(int(answer) + 1)


@pytest.fixture
def write_reference_results(tiny_model_dir):
    """``write(out_dir, problems, correct, n, seed=0)``: a graded result folder where problem i has ``correct[i]`` of
    ``n`` samples right (its gold answer boxed) and the rest wrong (a changed number). Returns the metrics."""
    from ranktuner_verl.eval.cli import grade_benchmark
    from ranktuner_verl.eval.backends import SamplingConfig
    from ranktuner_verl.eval.generate import generate_completions

    def write(out_dir: Path, problems, correct: list[int], n: int, seed: int = 0) -> dict:
        texts = {(p.id, s): boxed(p.answer if s < c else perturbed(p.answer))
                 for p, c in zip(problems, correct) for s in range(n)}
        backend = ScriptedBackend(tiny_model_dir, texts)
        generate_completions(backend, problems, out_dir, SamplingConfig(n=n, seed=seed), progress=False)
        return grade_benchmark(out_dir)

    return write
