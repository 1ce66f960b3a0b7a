"""The command ``python -m ranktuner_verl.diagnostics`` end to end on the tiny model, and its answers to bad input."""

import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from ranktuner_verl.diagnostics.__main__ import main
from ranktuner_verl.diagnostics.noise import top_share_metrics

FIGURES = ["heatmap.png", "rank_probability.png", "expected_rank_entropy.png", "weight_histograms.png"]


@pytest.mark.slow
def test_noise_command_end_to_end(tiny_model_dir, sft_parquet, tmp_path):
    out = tmp_path / "noise"
    command = [sys.executable, "-m", "ranktuner_verl.diagnostics", "noise", "--model", str(tiny_model_dir),
               "--data", str(sft_parquet), "--out", str(out), "--rate", "0.1", "--count", "2", "--quiet",
               "--methods", "sft", "dft", "ranktuner", "ranktuner:base=one"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "| ranktuner:base=one |" in result.stdout
    table = pd.read_csv(out / "noise_table.csv")
    assert table["method"].tolist() == ["sft", "dft", "ranktuner", "ranktuner:base=one"]
    tokens = pd.read_json(out / "tokens.jsonl", lines=True, dtype={"token": str})
    assert tokens["example"].nunique() == 12 and tokens["is_noise"].any()
    for row in table.itertuples():  # the table is what the metrics give on the per-token records
        expected = top_share_metrics(tokens[f"w:{row.method}"], tokens["is_noise"], tokens["example"], 0.1)
        assert row.token_recall == pytest.approx(100 * expected["token_recall"])
        assert row.sequence_hit_rate == pytest.approx(100 * expected["sequence_hit_rate"])
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
    expected = top_share_metrics(tokens["w:dft"], tokens["is_noise"], tokens["example"], 0.2)
    precision = rerun.loc[rerun["method"] == "dft", "token_precision"].item()
    assert precision == pytest.approx(100 * expected["token_precision"])


@pytest.mark.parametrize("extra, message", [
    (["--methods", "sft", "fancy"], "unknown loss 'fancy'; valid: sft, dft, talr, eaft, deft, ranktuner"),
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


def test_report_from_a_checkpoint_folder(tiny_model_dir, sft_parquet, tmp_path):
    step = tmp_path / "ckpt" / "global_step_2"
    shutil.copytree(tiny_model_dir, step / "huggingface")
    out = tmp_path / "report"
    assert main(["report", "--model", str(step), "--data", str(sft_parquet), "--out", str(out), "--quiet",
                 "--max-examples", "4"]) == 0
    text = (out / "report.md").read_text()
    assert "examples: 4" in text and "| ranktuner |" in text and "noise region |S_t - 1| < 0.05" in text
    assert Image.open(out / "relative_scale.png").format == "PNG"
