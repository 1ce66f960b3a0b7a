"""The command ``python -m ranktuner_verl.diagnostics`` end to end on the tiny model, and its answers to bad input."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import pandas as pd
import pytest
from PIL import Image

from ranktuner_verl.diagnostics import table as table_module
from ranktuner_verl.diagnostics.__main__ import main
from ranktuner_verl.diagnostics.rankings import ranking_table
from ranktuner_verl.diagnostics.forward import build_methods
from ranktuner_verl.diagnostics.table import read_tokens, table_from_model
from ranktuner_verl.methods import METHODS

FIGURES = ["heatmap.png", "rank_probability.png", "expected_rank_entropy.png", "weight_histograms.png"]


@pytest.mark.slow
def test_noise_command_end_to_end(tiny_model_dir, sft_parquet, tmp_path):
    out = tmp_path / "noise"
    command = [sys.executable, "-m", "ranktuner_verl.diagnostics", "noise", "--model", str(tiny_model_dir),
               "--data", str(sft_parquet), "--out", str(out), "--rate", "0.1", "--count", "2", "--quiet",
               "--methods", "sft,dft,ranktuner,ranktuner:base=one,form=exact", "--rank-by", "signal,weight,grad-share"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "| ranktuner:base=one,form=exact |" in result.stdout and "**Ranked by grad-share**" in result.stdout
    table = pd.read_csv(out / "noise_table.csv")
    assert table.loc[table["ranking"] == "weight", "row"].tolist()[1:] == ["sft", "dft", "ranktuner",
                                                                          "ranktuner:base=one,form=exact"]
    tokens = read_tokens(out / "tokens.jsonl")
    assert tokens["example"].nunique() == 12 and tokens["is_noise"].any()
    # the tables are what the rankings give on the per-token records
    pd.testing.assert_frame_equal(table, ranking_table(tokens, ["signal", "weight", "grad-share"]), atol=1e-9)
    html = (out / "heatmap.html").read_text()
    shown = [int(e) for e in re.findall(r'data-example="(\d+)"', html)]
    assert len(shown) == 2 and html.count('<span class="tok') == 4 * tokens["example"].isin(shown).sum()
    for name in FIGURES:
        assert Image.open(out / name).format == "PNG"
    assert (out / "plot_data.csv").is_file() and (out / "noise_table.md").read_text().startswith("Noise-injection")

    # The same records, re-ranked with another top share, without the model.
    again = tmp_path / "again"
    assert main(["noise", "--tokens", str(out / "tokens.jsonl"), "--out", str(again), "--top-share", "0.2",
                 "--no-figures"]) == 0
    rerun = pd.read_csv(again / "noise_table.csv")
    pd.testing.assert_frame_equal(rerun, ranking_table(tokens, ["signal"], top_share=0.2), atol=1e-9)


@pytest.mark.parametrize("extra, message", [
    (["--methods", "sft,fancy"], f"unknown method 'fancy'; valid: {', '.join(METHODS)}"),
    (["--methods", "talr:w_min=2"], "w_min=2 is out of range"),
    (["--rate", "0.001"], "too short for random noise"),
    (["--kind", "swap", "--rate", "0.6"], "too short for swap noise"),
    (["--color-by", "loss"], "Cannot colour tokens by 'loss'"),
])
def test_bad_input_is_named_and_nothing_is_written(tiny_model_dir, sft_parquet, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    code = main(["noise", "--model", str(tiny_model_dir), "--data", str(sft_parquet), "--out", str(out), "--quiet",
                 *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_a_broken_jsonl_line_is_named_with_its_file_and_line(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "1+1?", "response": "2"}\n\n{"prompt": "2+2?", "response": 4\n')
    assert main(["heatmap", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert f"{data}:3 is not valid JSON" in capsys.readouterr().err


def test_unknown_ranking_stops_at_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["noise", "--tokens", "x.jsonl", "--out", "o", "--rank-by", "signal,loss"])
    assert "unknown ranking(s) ['loss']; choose from signal, weight, loss-share, grad-share" in capsys.readouterr().err


def test_no_examples(tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["heatmap", "--model", str(tiny_model_dir), "--data", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "holds no examples" in capsys.readouterr().err


def test_inputs_must_be_given_one_way(tmp_path, capsys):
    assert main(["plots", "--out", str(tmp_path / "o")]) == 2
    assert "Give --model and --data" in capsys.readouterr().err
    assert main(["plots", "--tokens", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["noise", "--tokens", "x.jsonl", "--out", "o", "--top-share", "2"])
    assert "outside (0, 1]" in capsys.readouterr().err


def _lora_run(base: Path, out: Path) -> Path:
    """verl's layout of a merged LoRA run: base weights in ``merged_hf/``, the adapter in ``merged_hf/lora_adapter``
    (made with peft, random non-zero B so that it changes the model)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shutil.copytree(base, out / "merged_hf")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(out / "merged_hf" / "lora_adapter")
    return out / "merged_hf"


def test_report_on_a_lora_run_sees_the_adapter(tiny_model_dir, sft_parquet, tmp_path, monkeypatch, capsys):
    """The report runs the chain every command runs: the model forms of evaluation (a LoRA run is merged, not read
    as its base model), --logit-chunk honoured, and with --kind the noise tables."""
    lora = _lora_run(tiny_model_dir, tmp_path / "run")
    chunks = []
    real = table_module.response_stats
    monkeypatch.setattr(table_module, "response_stats", lambda *a: chunks.append(a[5]) or real(*a))
    out = tmp_path / "report"
    assert main(["report", "--model", str(lora), "--data", str(sft_parquet), "--out", str(out), "--quiet",
                 "--max-examples", "4", "--logit-chunk", "5", "--kind", "swap", "--rate", "0.1",
                 "--rank-by", "signal,loss-share"]) == 0
    assert chunks == [5]
    wrote = capsys.readouterr().err.strip().splitlines()[-1]  # every file it writes, not report.md alone
    assert wrote == "wrote: " + ", ".join(str(out / name) for name in [
        "report.md", "weight_histograms.png", "relative_scale.png", "weight_summary.csv", "report.json",
        "noise_table.md", "noise_table.csv"]) and len(list(out.iterdir())) == 7
    text = (out / "report.md").read_text()
    assert "examples: 4" in text and "| ranktuner |" in text and "|S_t - 1| < 0.05" in text
    assert "**Ranked by loss-share**" in text and not re.search(r"\bnan\b", text, re.I)
    assert Image.open(out / "relative_scale.png").format == "PNG"
    assert json.loads((out / "report.json").read_text())["model"] == str(lora)
    methods = build_methods(["dft"])
    base = table_from_model(tiny_model_dir, sft_parquet, methods, max_examples=2, progress=False)
    merged = table_from_model(lora, sft_parquet, methods, max_examples=2, progress=False)
    assert (tmp_path / "run" / "merged_hf_lora_merged").is_dir()
    assert np.abs(merged["log_prob"] - base["log_prob"]).max() > 1e-3
