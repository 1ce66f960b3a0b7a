"""The confident-regime model: built locally from real MATH500 solutions, deterministically, and confident on them."""

import hashlib
import json

import numpy as np
import pytest

from ranktuner_verl.diagnostics.confident import ConfidentSettings, build_confident_model, main
from ranktuner_verl.diagnostics.forward import build_methods
from ranktuner_verl.diagnostics.noise import top_share_metrics
from ranktuner_verl.diagnostics.table import table_from_model


def _table(model_dir, noise=None):
    return table_from_model(model_dir, model_dir / "sft.jsonl", build_methods(["sft", "dft"]), noise=noise,
                            progress=False)


def test_the_model_is_confident_on_its_clean_tokens(confident_model_dir):
    """The regime of the paper's Tab. 1 on its SFT data: most tokens p > 0.5 and H < 2 bits (bounds for the
    reduced build); a random token injected into it gets a tiny probability; on those tokens the practical form
    stays near 1 (the noise region) while the exact form ranks them high."""
    clean = _table(confident_model_dir)
    assert clean["p"].median() > 0.6 and (clean["p"] > 0.5).mean() > 0.75
    assert clean["entropy_bits"].median() < 2.0 and (clean["entropy_bits"] < 2).mean() > 0.6
    noisy = _table(confident_model_dir, {"kind": "random", "rate": 0.05, "seed": 0})
    injected = noisy[noisy["is_noise"]]
    assert injected["p"].median() < 1e-3

    # The noise region belongs to the practical form (docs/methods.md): far down the ranking its S_t lies in
    # [1, 10^(6 / log2(R + 1)^2)]; the exact form's S_t instead grows with R_t, highest on the injected tokens.
    bound = 10 ** (6 / np.log2(injected["rank"] + 1) ** 2)
    assert (injected["S"] >= 1 - 1e-6).all() and (injected["S"] <= bound * (1 + 1e-5)).all()
    clean_noisy = noisy[~noisy["is_noise"]]
    assert injected["S_exact"].median() > max(clean_noisy["S_exact"].quantile(0.75), injected["S"].median())
    recall = {form: top_share_metrics(noisy[column], noisy["is_noise"], noisy["example"])["token_recall"]
              for form, column in (("practical", "S"), ("exact", "S_exact"))}
    assert recall["exact"] > 2 * recall["practical"]  # share of injected tokens in the top 10% by S_t
    rows = [json.loads(line) for line in (confident_model_dir / "sft.jsonl").open()]
    assert len(rows) == 16 and clean["example"].nunique() == 16
    assert rows[0]["messages"][-1]["role"] == "assistant" and "\\boxed" in "".join(
        r["messages"][-1]["content"] for r in rows)


def test_the_build_is_deterministic(tmp_path, eval_data_dir):
    settings = ConfidentSettings(n_examples=3, max_tokens=96, vocab_size=300, hidden_size=32, num_layers=1,
                                 epochs=2, batch_size=2)
    digests = []
    for name in ("a", "b"):
        out = build_confident_model(tmp_path / name, settings, eval_data_dir / "math_oai.jsonl", progress=False)
        digests.append({f: hashlib.sha256((out / f).read_bytes()).hexdigest()
                        for f in ("model.safetensors", "tokenizer.json", "sft.jsonl")})
    assert digests[0] == digests[1]
    history = json.loads((tmp_path / "a" / "build.json").read_text())["epoch_nll"]
    assert len(history) == 2 and np.isfinite(history).all()


def test_bad_source_is_named(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        main(["--out", str(tmp_path / "m"), "--source", str(tmp_path / "missing.jsonl")])
    (tmp_path / "one.jsonl").write_text('{"problem": "1+1?", "solution": "It is $\\\\boxed{2}$."}\n')
    with pytest.raises(ValueError, match="only 1 solutions of at most 160 tokens"):
        main(["--out", str(tmp_path / "m"), "--source", str(tmp_path / "one.jsonl")])
