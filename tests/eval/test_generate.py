"""Generation through the transformers backend on CPU: prompts, seeding, resuming, the whole run -> table path."""

from __future__ import annotations

import json
import shutil

import pytest

from ranktuner_verl.eval.benchmarks import Problem, load_benchmark
from ranktuner_verl.data.prompts import COT_SYSTEM_PROMPT
from ranktuner_verl.eval.cli import evaluate, grade_benchmark, main
from ranktuner_verl.eval.backends import Request, SamplingConfig, make_backend, problem_seed
from ranktuner_verl.eval.generate import chat_prompt_ids, generate_completions, read_completions
from ranktuner_verl.eval.tables import collect_table, to_markdown

SHORT = SamplingConfig(n=2, max_new_tokens=12)


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return make_backend("hf", tiny_model_dir)


@pytest.fixture(scope="module")
def problems(eval_data_dir):
    return load_benchmark("aime24", path=eval_data_dir, limit=3)


class Interrupted(KeyboardInterrupt):
    pass


class StopAfter:
    """Passes the real backend's completions through and raises KeyboardInterrupt after ``k`` of them."""

    def __init__(self, backend, k: int):
        self.backend, self.k, self.requests = backend, k, []
        self.name, self.model_path, self.tokenizer = backend.name, backend.model_path, backend.tokenizer
        self.stop_tokens, self.context_length = backend.stop_tokens, backend.context_length

    def generate(self, requests, sampling):
        self.requests += list(requests)
        for count, item in enumerate(self.backend.generate(requests, sampling), start=1):
            yield item
            if count == self.k:
                raise Interrupted


def test_prompt_is_the_chat_template_with_the_cot_system_prompt(backend):
    text = backend.tokenizer.decode(chat_prompt_ids(backend.tokenizer, "What is 2 + 3?"))
    assert text == (f"<|im_start|>system\n{COT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_request_seeds_depend_only_on_seed_problem_and_first_sample():
    assert problem_seed(0, "p1", 3) == problem_seed(0, "p1", 3)
    seeds = {problem_seed(s, p, i) for s in range(2) for p in ("p1", "p2") for i in range(8)}
    assert len(seeds) == 32 and all(0 <= s < 2**31 for s in seeds)


def test_hf_backend_samples_by_seed_and_ignores_the_models_generation_config(tiny_model_dir, tmp_path, problems):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    config_path = model_dir / "generation_config.json"
    config = json.loads(config_path.read_text())
    config.update(top_k=1, do_sample=False)  # greedy if it leaked into sampling
    config_path.write_text(json.dumps(config))
    backend = make_backend("hf", model_dir)
    sampling = SamplingConfig(n=4, max_new_tokens=16)
    fresh = generate_completions(backend, problems[:1], tmp_path / "a", sampling, progress=False)
    texts = [r["completion"] for r in fresh]
    assert len(set(texts)) == 4, "the samples of one request must differ (top_k=1 must not leak in)"
    assert len({r["seed"] for r in fresh}) == 1, "one seed per problem"
    assert all(1 <= r["num_tokens"] <= 16 for r in fresh)
    assert all(r["finish_reason"] == ("length" if r["num_tokens"] == 16 else "stop") for r in fresh)
    ids = tuple(chat_prompt_ids(backend.tokenizer, problems[0].question))
    (_, again), = backend.generate([Request(problems[0].id, (0, 1, 2, 3), ids, fresh[0]["seed"], 16)], sampling)
    assert [r["completion"] for r in again] == texts


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_completions_and_table(tiny_model_dir, backend, problems, tmp_path,
                                                                   eval_data_dir, write_reference_results):
    straight = generate_completions(backend, problems, tmp_path / "straight" / "aime24", SHORT, progress=False)

    resumed_dir = tmp_path / "resumed" / "aime24"
    stopper = StopAfter(backend, k=1)
    with pytest.raises(Interrupted):
        generate_completions(stopper, problems, resumed_dir, SHORT, progress=False)
    assert len(read_completions(resumed_dir / "completions.jsonl")) == 2
    with open(resumed_dir / "completions.jsonl", "a") as sink:  # a writer killed in the middle of a line
        sink.write('{"id": "61", "sample": 1, "comp')
    with pytest.raises(ValueError, match="partial line"):
        grade_benchmark(resumed_dir)

    counter = StopAfter(backend, k=-1)
    resumed = generate_completions(counter, problems, resumed_dir, SHORT, progress=False)
    assert [(r.problem_id, r.samples) for r in counter.requests] == [(problems[1].id, (0, 1)),
                                                                     (problems[2].id, (0, 1))]
    assert resumed == straight
    assert generate_completions(counter, problems, resumed_dir, SHORT, progress=False) == straight
    assert len(counter.requests) == 2, "a finished folder generates nothing"

    grade_benchmark(tmp_path / "straight" / "aime24")
    grade_benchmark(resumed_dir)
    write_reference_results(tmp_path / "reference" / "aime24", problems, [2, 1, 0], n=2)
    table = collect_table([tmp_path / d for d in ("straight", "resumed", "reference")], ks=(1, 2),
                          allow_mixed=True)  # the reference was written with the default max_new_tokens
    assert table.values["straight"] == table.values["resumed"]
    assert table.values["reference"][("aime24", 1)] == pytest.approx(50.0)
    assert table.values["reference"][("aime24", 2)] == pytest.approx(200 / 3)
    rows = to_markdown(table).splitlines()
    assert rows[2].replace("straight", "resumed") == rows[3]


@pytest.mark.slow
def test_data_parallel_replicas_give_the_same_completions(tiny_model_dir, backend, problems, tmp_path):
    single = generate_completions(backend, problems[:2], tmp_path / "single", SHORT, progress=False)
    replicated = make_backend("hf", tiny_model_dir, data_parallel_size=2)
    parallel = generate_completions(replicated, problems[:2], tmp_path / "parallel", SHORT, progress=False)
    assert parallel == single
    assert replicated._model is None, "the replicas, not the parent process, must have generated"


def test_more_samples_extend_a_finished_folder(backend, problems, tmp_path):
    two = generate_completions(backend, problems[:1], tmp_path / "r", SamplingConfig(n=2, max_new_tokens=8),
                               progress=False)
    three = generate_completions(backend, problems[:1], tmp_path / "r", SamplingConfig(n=3, max_new_tokens=8),
                                 progress=False)
    assert three[:2] == two and three[2]["sample"] == 2
    assert json.loads((tmp_path / "r" / "generation.json").read_text())["n"] == 3


def test_a_folder_with_other_settings_or_problems_is_refused(backend, problems, tmp_path):
    out = tmp_path / "r"
    generate_completions(backend, problems[:1], out, SamplingConfig(n=1, max_new_tokens=8), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match=r"other settings \(temperature: 1.0 -> 0.5\)"):
        generate_completions(backend, problems[:1], out, SamplingConfig(n=1, max_new_tokens=8, temperature=0.5))
    with pytest.raises(ValueError, match="other problems"):
        generate_completions(backend, problems[:2], out, SamplingConfig(n=1, max_new_tokens=8))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_run_command_end_to_end(tiny_model_dir, eval_data_dir, tmp_path, capsys):
    out = tmp_path / "results"
    main(["run", "--model", str(tiny_model_dir), "--out", str(out), "--backend", "hf", "--benchmarks",
          "amc23,math_oai", "--data-dir", str(eval_data_dir), "--limit", "2", "--n", "2", "--max-new-tokens", "8"])
    printed = capsys.readouterr().out
    assert "amc23: 2 problems x 2 samples  pass@1" in printed and "math500: 2 problems" in printed
    for bench in ("amc23", "math500"):
        files = sorted(p.name for p in (out / bench).iterdir())
        assert files == ["completions.jsonl", "generation.json", "grades.jsonl", "metrics.json", "problems.jsonl"]
        metrics = json.loads((out / bench / "metrics.json").read_text())
        assert metrics["num_problems"] == 2 and metrics["samples_per_problem"] == 2
        assert len((out / bench / "grades.jsonl").read_text().splitlines()) == 4
    main(["grade", str(out)])
    assert "amc23: 2 problems" in capsys.readouterr().out


def test_bad_input_fails_before_anything_is_written(tiny_model_dir, eval_data_dir, tmp_path, backend):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="benchmark file not found"):
        evaluate(tiny_model_dir, out, ["aime24"], data_dir=tmp_path / "nowhere", backend="hf")
    with pytest.raises(ValueError, match="unknown benchmark"):
        evaluate(tiny_model_dir, out, ["aime25"], data_dir=eval_data_dir, backend="hf")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="has no problems"):
        evaluate(tiny_model_dir, out, ["aime24"], data_dir=empty, backend="hf")
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory"):
        evaluate(tmp_path / "no_model", out, ["aime24"], data_dir=eval_data_dir, backend="hf")
    with pytest.raises(ValueError, match="unknown generation backend"):
        make_backend("tgi", tiny_model_dir)
    with pytest.raises(ValueError, match="benchmark is empty"):
        generate_completions(backend, [], out, SHORT)
    with pytest.raises(ValueError, match="not unique"):
        generate_completions(backend, [Problem("1", "q", "1"), Problem("1", "r", "2")], out, SHORT)
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingConfig(top_p=0.0)
    with pytest.raises(FileNotFoundError, match="holds no generation results"):
        grade_benchmark(tmp_path)
    assert not out.exists()


def test_grading_an_unfinished_folder_is_refused(backend, problems, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(Interrupted):
        generate_completions(StopAfter(backend, k=1), problems[:2], out, SHORT, progress=False)
    with pytest.raises(ValueError, match="2 of 4 completions are missing"):
        grade_benchmark(out)
    assert not (out / "metrics.json").exists() and not (out / "grades.jsonl").exists()


def test_a_smaller_n_on_a_folder_with_more_samples_scores_the_first_n_and_says_so(tiny_model_dir, eval_data_dir,
                                                                                   tmp_path, capsys):
    out = tmp_path / "results"
    run = ["run", "--model", str(tiny_model_dir), "--out", str(out), "--backend", "hf", "--benchmarks", "aime24",
           "--data-dir", str(eval_data_dir), "--limit", "1", "--max-new-tokens", "8"]
    main([*run, "--n", "3"])
    capsys.readouterr()
    main([*run, "--n", "2"])
    printed = capsys.readouterr().out
    assert "holds 3 samples per problem; scoring the first 2 as --n 2 asks" in printed
    assert "aime24: 1 problems x 2 samples" in printed
    assert json.loads((out / "aime24" / "metrics.json").read_text())["samples_per_problem"] == 2
    assert [json.loads(line)["sample"] for line in (out / "aime24" / "grades.jsonl").read_text().splitlines()] == [0, 1]
