import numpy as np
import pandas as pd
import pytest
import torch

from ranktuner_verl.diagnostics.examples import load_examples, tokenize_examples
from ranktuner_verl.diagnostics.forward import build_methods, load_model, load_tokenizer, parse_method, split_methods
from ranktuner_verl.diagnostics.noise import inject_noise
from ranktuner_verl.diagnostics.table import read_tokens, token_table, write_tokens
from ranktuner_verl.methods import METHODS, get_method
from ranktuner_verl.stats import token_stats

ALL = list(METHODS) + ["ranktuner:base=one,form=exact", "talr:normalize=simplex"]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, sft_parquet):
    tokenizer = load_tokenizer(tiny_model_dir)
    examples = inject_noise(tokenize_examples(tokenizer, load_examples(sft_parquet)), tokenizer, "random", 0.1, seed=0)
    return load_model(tiny_model_dir), tokenizer, examples


def test_table_matches_an_unbatched_full_forward(setup):
    """Batching, padding and the chunked LM head give the statistics of one plain forward per example."""
    model, tokenizer, examples = setup
    methods = build_methods(ALL)
    table = token_table(model, tokenizer, examples, methods, batch_tokens=200, logit_chunk=7, progress=False)
    assert len(table) == sum(len(e.response_ids) for e in examples)
    logits, labels = [], []
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e.prompt_ids + e.response_ids])
            out = model(input_ids=ids).logits[0]
            logits.append(out[len(e.prompt_ids) - 1:-1])
            labels += e.response_ids
    logits = torch.cat(logits)
    stats = token_stats(logits, torch.tensor(labels), {"log_prob", "entropy", "rank", "expected_rank",
                                                       "sum_pi_squared", "topk_entropy", "p_max"})
    assert table["token_id"].tolist() == labels
    assert table["is_noise"].tolist() == [f for e in examples for f in e.is_noise]
    np.testing.assert_allclose(table["log_prob"], stats["log_prob"], atol=1e-4)
    np.testing.assert_allclose(table["entropy_bits"], stats["entropy"] / np.log(2), atol=1e-4)
    np.testing.assert_array_equal(table["rank"], stats["rank"])
    np.testing.assert_allclose(table["expected_rank"], stats["expected_rank"], rtol=1e-3)
    np.testing.assert_allclose(table["S"], get_method("ranktuner", base="one").weights(stats), rtol=1e-4)
    np.testing.assert_allclose(table["S_exact"], get_method("ranktuner", base="one", form="exact").weights(stats),
                               rtol=1e-4)
    # the logit gradient of the NLL, by autograd in fp64
    z = logits.double().requires_grad_()
    torch.nn.functional.cross_entropy(z, torch.tensor(labels), reduction="sum").backward()
    np.testing.assert_allclose(table["grad_norm"], z.grad.norm(dim=-1), rtol=1e-4, atol=1e-7)
    for label, method in methods.items():
        np.testing.assert_allclose(table[f"w:{label}"], method.weights(stats), rtol=1e-3, atol=1e-6, err_msg=label)


def test_batch_size_does_not_change_the_table(setup):
    model, tokenizer, examples = setup
    methods = build_methods(["talr", "ranktuner"])
    small = token_table(model, tokenizer, examples, methods, batch_tokens=1, progress=False)
    large = token_table(model, tokenizer, examples, methods, batch_tokens=100_000, progress=False)
    pd.testing.assert_frame_equal(small, large, atol=1e-5)


def test_method_specs():
    method = parse_method("ranktuner:base=one,form=exact")
    assert (method.name, dict(method.params)) == ("ranktuner", {"form": "exact", "base": "one", "proxy": "piecewise"})
    assert parse_method("eaft:top_k=5").stat_kwargs == {"top_k": 5}
    with pytest.raises(ValueError, match=f"unknown method 'ranktuned'; valid: {', '.join(METHODS)}"):
        parse_method("ranktuned")
    with pytest.raises(ValueError, match="not key=value"):
        parse_method("talr:w_min")
    with pytest.raises(ValueError, match="different statistics settings"):
        build_methods(["eaft:top_k=5", "eaft:top_k=20"])


def test_config_without_weights_is_refused(tmp_path, tiny_model_dir):
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="has a config but no model weights"):
        load_model(tmp_path)


def test_method_lists_take_commas():
    assert split_methods("sft, dft,ranktuner:base=one,form=exact,eaft:top_k=5") == [
        "sft", "dft", "ranktuner:base=one,form=exact", "eaft:top_k=5"]
    assert split_methods("sft,ranktuner,base=one,form=exact") == ["sft", "ranktuner:base=one,form=exact"]
    with pytest.raises(ValueError, match="before any method name"):
        split_methods("base=one,ranktuner")


def test_tokens_file_round_trip_and_schema_check(setup, tmp_path):
    model, tokenizer, examples = setup
    table = token_table(model, tokenizer, examples[:3], build_methods(["dft", "eaft"]), progress=False)
    again = read_tokens(write_tokens(table, tmp_path / "tokens.jsonl"))
    pd.testing.assert_frame_equal(again, table, check_dtype=False, atol=1e-6)
    write_tokens(table.drop(columns=["grad_norm", "signal:eaft"]), tmp_path / "old.jsonl")
    with pytest.raises(ValueError, match=r"old.jsonl lacks columns \['grad_norm', 'signal:eaft'\].*run the command"):
        read_tokens(tmp_path / "old.jsonl")
