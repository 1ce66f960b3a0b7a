"""``scripts/eval.sh`` as a user runs it (transformers backend, tiny local model, real benchmark files), then the
``table`` command over its result folder. Every step is a real subprocess."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ranktuner_verl.data.jsonl import read_jsonl

REPO = Path(__file__).parents[2]
EVAL_SH = REPO / "scripts" / "eval.sh"
BENCHMARK = "amc23"
PROBLEMS, SAMPLES = 2, 2


def run_eval_sh(*args, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    run_env = {**os.environ, "PYTHON": sys.executable, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
               **(env or {})}
    return subprocess.run(["bash", str(EVAL_SH), *map(str, args)], cwd=REPO, env=run_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_eval_sh_with_the_hf_backend_writes_completions_grades_metrics_and_a_table(tiny_model_dir, eval_data_dir,
                                                                                   tmp_path):
    from ranktuner_verl.eval.benchmarks import load_benchmark

    out = tmp_path / "results" / "tiny"
    env = {"BACKEND": "hf", "N": str(SAMPLES), "MAX_NEW_TOKENS": "8", "BENCHMARKS": BENCHMARK,
           "LIMIT": str(PROBLEMS), "DATA_DIR": str(eval_data_dir)}
    result = run_eval_sh(tiny_model_dir, out, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"{BENCHMARK}: {PROBLEMS} problems x {SAMPLES} samples" in result.stdout

    bench_dir = out / BENCHMARK
    assert sorted(p.name for p in bench_dir.iterdir()) == [
        "completions.jsonl", "generation.json", "grades.jsonl", "metrics.json", "problems.jsonl"]
    expected_ids = [p.id for p in load_benchmark(BENCHMARK, path=eval_data_dir, limit=PROBLEMS)]
    expected_keys = sorted((pid, s) for pid in expected_ids for s in range(SAMPLES))
    completions = read_jsonl(bench_dir / "completions.jsonl")
    assert sorted((c["id"], c["sample"]) for c in completions) == expected_keys
    assert all(isinstance(c["completion"], str) and 0 <= c["num_tokens"] <= 8 for c in completions)
    grades = read_jsonl(bench_dir / "grades.jsonl")
    assert sorted((g["id"], g["sample"]) for g in grades) == expected_keys
    assert all(isinstance(g["correct"], bool) for g in grades)

    metrics = json.loads((bench_dir / "metrics.json").read_text())
    assert metrics["benchmark"] == BENCHMARK
    assert metrics["num_problems"] == PROBLEMS and metrics["samples_per_problem"] == SAMPLES
    assert metrics["pass@k"]["1"] == pytest.approx(sum(g["correct"] for g in grades) / len(grades))
    assert metrics["generation"]["n"] == SAMPLES and metrics["generation"]["max_new_tokens"] == 8
    assert metrics["generation"]["backend"] == "hf"

    prefix = tmp_path / "tables" / "main"
    table = subprocess.run([sys.executable, "-m", "ranktuner_verl.eval", "table", str(out), "--out", str(prefix),
                            "--k", "1", "2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr[-3000:]
    files = {suffix: prefix.with_name(prefix.name + suffix) for suffix in (".md", ".csv", ".tex")}
    assert all(path.is_file() for path in files.values())
    assert "AMC23 Pass@1" in files[".md"].read_text() and "AMC23 Pass@1" in table.stdout
    assert "AMC23" in files[".tex"].read_text()
    rows = list(csv.DictReader(files[".csv"].open()))
    assert [row["run"] for row in rows] == ["tiny", "best"]
    assert float(rows[0][f"{BENCHMARK} pass@1"]) == pytest.approx(100 * metrics["pass@k"]["1"], abs=1e-4)
    assert float(rows[0][f"{BENCHMARK} pass@2"]) == pytest.approx(100 * metrics["pass@k"]["2"], abs=1e-4)


def test_eval_sh_without_arguments_prints_its_usage_and_exits_2():
    result = run_eval_sh()
    assert result.returncode == 2
    assert "Usage: bash scripts/eval.sh MODEL OUT" in result.stderr


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_eval_sh_help_lists_its_variables_with_defaults_and_does_nothing(flag, tmp_path):
    result = run_eval_sh(flag, tmp_path / "out", env={"PYTHON": "/nonexistent/python"})
    assert result.returncode == 0, result.stderr
    assert "Usage: bash scripts/eval.sh MODEL OUT" in result.stdout
    for variable, default in [("BACKEND", "vllm"), ("N", "16"), ("MAX_NEW_TOKENS", "4096"), ("SEED", "0"),
                              ("TP", "1"), ("DATA_DIR", "(empty)"), ("WORK_DIR", "(empty)")]:
        assert re.search(rf"^  {variable} +{re.escape(default)} ", result.stdout, re.MULTILINE), variable
    assert not (tmp_path / "out").exists()


def test_eval_sh_refuses_a_folder_that_is_not_a_model(tmp_path):
    result = run_eval_sh(tmp_path, tmp_path / "out", env={"BACKEND": "hf"})
    assert result.returncode == 2
    assert "is neither a Hugging Face model dir (config.json), a verl FSDP checkpoint" in result.stderr
    assert not (tmp_path / "out").exists()
