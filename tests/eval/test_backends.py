"""Sampling as the Qwen2.5-Math harness does it: stop tokens, n samples per request, the token budget (issue 10 §1)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from ranktuner_verl.eval.backends import (
    Request, SamplingConfig, make_backend, problem_seed, stop_tokens, vllm_sampling_kwargs,
)
from ranktuner_verl.eval.benchmarks import Problem
from ranktuner_verl.eval.generate import chat_prompt_ids, generate_completions, token_budget

PROBLEM = Problem("p1", "What is 1 + 1?", "2")


@pytest.fixture(scope="module")
def im_end_model(tiny_model_dir, tmp_path_factory):
    """The tiny model rewired to answer ``<|im_end|>`` at once, while its tokenizer's eos and its generation config
    name only ``<|endoftext|>`` (a base model's files after ChatML fine-tuning)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("im_end_model")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    im_end, end_of_text = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():  # hidden dim 0 carries a large constant, the final norm keeps only it, the head maps it
        model.model.embed_tokens.weight[:, 0] = 1000.0  # to <|im_end|>: logit ~80 against 0 for every other token
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight = torch.nn.Parameter(torch.zeros_like(model.lm_head.weight))
        model.lm_head.weight[im_end, 0] = 10.0
    model.config.tie_word_embeddings = False
    model.config.eos_token_id = end_of_text
    model.generation_config.eos_token_id = end_of_text
    model.save_pretrained(out)
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.save_pretrained(out)
    return out


def test_hf_backend_stops_at_the_chat_end_of_turn_when_only_endoftext_is_named(im_end_model, tmp_path):
    backend = make_backend("hf", im_end_model)
    assert backend.tokenizer.eos_token == "<|endoftext|>"
    assert json.loads((im_end_model / "generation_config.json").read_text())["eos_token_id"] == 0
    assert backend.stop_tokens == {"<|endoftext|>": 0, "<|im_end|>": 2}

    records = generate_completions(backend, [PROBLEM], tmp_path / "r", SamplingConfig(n=3, max_new_tokens=8),
                                   progress=False)
    assert [(r["num_tokens"], r["finish_reason"], r["completion"]) for r in records] == [(1, "stop", "")] * 3
    settings = json.loads((tmp_path / "r" / "generation.json").read_text())
    assert settings["stop_tokens"] == {"<|endoftext|>": 0, "<|im_end|>": 2}
    assert settings["context_length"] == 2048
    assert settings["effective_max_new_tokens"] == {"min": 8, "max": 8, "capped_prompts": 0}


def test_stop_tokens_come_from_template_tokenizer_and_generation_config(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert stop_tokens(tokenizer) == {"<|endoftext|>": 0, "<|im_end|>": 2}
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 2]}))
    assert stop_tokens(tokenizer, tmp_path) == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}


def test_the_context_caps_the_new_tokens_is_recorded_and_warned(tiny_model_dir, tmp_path, caplog):
    model_dir = tmp_path / "short_context"
    shutil.copytree(tiny_model_dir, model_dir)
    backend = make_backend("hf", tiny_model_dir)
    prompt_length = len(chat_prompt_ids(backend.tokenizer, PROBLEM.question))
    config = json.loads((model_dir / "config.json").read_text())
    config["max_position_embeddings"] = prompt_length + 3
    (model_dir / "config.json").write_text(json.dumps(config))

    short = make_backend("hf", model_dir)
    with caplog.at_level(logging.WARNING):
        records = generate_completions(short, [PROBLEM], tmp_path / "r", SamplingConfig(n=2, max_new_tokens=8),
                                       progress=False)
    assert all(r["num_tokens"] <= 3 for r in records)
    settings = json.loads((tmp_path / "r" / "generation.json").read_text())
    assert settings["context_length"] == prompt_length + 3
    assert settings["effective_max_new_tokens"] == {"min": 3, "max": 3, "capped_prompts": 1}
    assert f"context leaves 1 of 1 prompts fewer than max_new_tokens=8 new tokens (as few as 3)" in caplog.text


def test_token_budget():
    assert token_budget(4096, 4096, [100, 500]) == {"min": 3596, "max": 3996, "capped_prompts": 2}
    assert token_budget(16, 4096, [100]) == {"min": 16, "max": 16, "capped_prompts": 0}
    assert token_budget(16, None, [10**6]) == {"min": 16, "max": 16, "capped_prompts": 0}
    with pytest.raises(ValueError, match="a prompt of 4096 tokens leaves no room in the model's 4096-token context"):
        token_budget(16, 4096, [10, 4096])


def test_vllm_gets_one_request_per_problem_with_n_samples_one_seed_and_the_stop_tokens():
    request = Request("p1", (4, 5, 6), (1, 2, 3), problem_seed(0, "p1", 4), 100)
    kwargs = vllm_sampling_kwargs(request, SamplingConfig(n=7, temperature=0.6, top_p=0.95), [2, 0])
    assert kwargs == dict(n=3, temperature=0.6, top_p=0.95, max_tokens=100, seed=problem_seed(0, "p1", 4),
                          stop_token_ids=[0, 2], skip_special_tokens=True)


def test_greedy_sampling_gives_n_equal_samples(tiny_model_dir, tmp_path):
    backend = make_backend("hf", tiny_model_dir)
    records = generate_completions(backend, [PROBLEM], tmp_path / "r", SamplingConfig(n=3, temperature=0,
                                                                                      max_new_tokens=6),
                                   progress=False)
    assert len({r["completion"] for r in records}) == 1 and len(records) == 3
