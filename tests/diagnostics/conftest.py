"""Shared fixtures for the diagnostics tests: a tiny random Qwen2 model dir and small SFT data files, built locally."""

import json

import pytest

from ranktuner_verl.data.tiny import build_model, build_tokenizer, math_cot_examples, write_sft_parquet


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_model")
    build_model(out, seed=0)
    return out


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def sft_parquet(tmp_path_factory):
    return write_sft_parquet(tmp_path_factory.mktemp("data") / "train.parquet", n=12, seed=3)


@pytest.fixture(scope="session")
def prompt_response_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"prompt": r["problem"], "response": r["solution"]} for r in math_cot_examples(6, seed=5)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def confident_model_dir(tmp_path_factory, eval_data_dir):
    """The confident-regime model (ranktuner_verl.diagnostics.confident), reduced build: MATH500 solutions, ~30 s."""
    from ranktuner_verl.diagnostics.confident import QUICK, build_confident_model

    return build_confident_model(tmp_path_factory.mktemp("confident"), QUICK, eval_data_dir / "math_oai.jsonl",
                                 progress=False)
