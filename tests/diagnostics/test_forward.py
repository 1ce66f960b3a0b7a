import numpy as np
import pandas as pd
import pytest
import torch

from ranktuner_verl.diagnostics.examples import load_examples, tokenize_examples
from ranktuner_verl.diagnostics.forward import build_methods, load_model, load_tokenizer, parse_method, token_table
from ranktuner_verl.diagnostics.noise import inject_noise
from ranktuner_verl.methods import METHODS, relative_scale
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
    stats = token_stats(torch.cat(logits), torch.tensor(labels), {"log_prob", "entropy", "rank", "expected_rank",
                                                                     "sum_pi_squared", "topk_entropy"})
    assert table["token_id"].tolist() == labels
    assert table["is_noise"].tolist() == [f for e in examples for f in e.is_noise]
    np.testing.assert_allclose(table["log_prob"], stats["log_prob"], atol=1e-4)
    np.testing.assert_allclose(table["entropy_bits"], stats["entropy"] / np.log(2), atol=1e-4)
    np.testing.assert_array_equal(table["rank"], stats["rank"])
    np.testing.assert_allclose(table["expected_rank"], stats["expected_rank"], rtol=1e-3)
    np.testing.assert_allclose(table["S"], relative_scale(stats), rtol=1e-4)
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
    assert (method.name, dict(method.params)) == ("ranktuner", {"form": "exact", "base": "one"})
    assert parse_method("eaft:top_k=5").stat_kwargs == {"top_k": 5}
    with pytest.raises(ValueError, match="unknown loss 'ranktuned'.*ranktuner"):
        parse_method("ranktuned")
    with pytest.raises(ValueError, match="not key=value"):
        parse_method("talr:w_min")
    with pytest.raises(ValueError, match="different statistics settings"):
        build_methods(["eaft:top_k=5", "eaft:top_k=20"])


def test_checkpoint_layout_and_missing_weights(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model dir"):
        load_tokenizer(tmp_path)
    hf = tmp_path / "global_step_3" / "huggingface"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="hf_model"):
        load_model(tmp_path / "global_step_3")
