"""NuminaMath-CoT preparation on small local files in the dataset's real schema; the output read by verl's dataset."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from ranktuner_verl.data.numina import main, prepare
from ranktuner_verl.data.prompts import COT_SYSTEM_PROMPT


def _messages(path) -> list[list[dict]]:
    return [list(m) for m in pd.read_parquet(path)["messages"]]


def test_first_rows_with_malformed_ones_reported_and_read_by_verl(tmp_path, numina_rows, write_rows, tiny_tokenizer):
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    rows = numina_rows(40)
    rows[3]["solution"] = "   "
    rows[7]["problem"] = None
    rows[25]["solution"] = None  # in the validation part
    source = write_rows(tmp_path / "numina.parquet", rows)

    summary = prepare(tmp_path / "out", source=str(source), num_rows=20, val_size=8)

    assert summary["skipped"] == {"train": [{"row_index": 3, "reason": "solution is blank"},
                                            {"row_index": 7, "reason": "problem is missing"}],
                                  "val": [{"row_index": 25, "reason": "solution is missing"}]}
    train = pd.read_parquet(tmp_path / "out" / "train.parquet")
    val = pd.read_parquet(tmp_path / "out" / "val.parquet")
    assert list(train["row_index"]) == [i for i in range(20) if i not in (3, 7)]
    assert list(val["row_index"]) == [i for i in range(20, 28) if i != 25]
    assert summary["train_rows"] == 18 and summary["val_rows"] == 7
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    first = list(train["messages"][0])
    assert first == [{"role": "system", "content": COT_SYSTEM_PROMPT},
                     {"role": "user", "content": rows[0]["problem"]},
                     {"role": "assistant", "content": rows[0]["solution"]}]
    assert list(train["source"][:2]) == [rows[0]["source"], rows[1]["source"]]

    dataset = MultiTurnSFTDataset(str(tmp_path / "out" / "train.parquet"), tiny_tokenizer,
                                  config={"max_length": 512, "truncation": "error"})
    assert len(dataset) == 18
    item = dataset[1]
    trained_on = tiny_tokenizer.decode(item["input_ids"][item["loss_mask"].bool()])
    assert trained_on.startswith(rows[1]["solution"])  # the assistant turn (then its end-of-turn token)
    assert rows[1]["problem"] not in trained_on


def test_cli_seeded_sample_from_jsonl(tmp_path, numina_rows, write_rows):
    source = write_rows(tmp_path / "numina.jsonl", numina_rows(60))
    command = [sys.executable, "-m", "ranktuner_verl.data.numina", "--source", str(source), "--sample", "12",
               "--seed", "3", "--val-size", "5"]
    done = subprocess.run(command + ["--out", str(tmp_path / "a")], capture_output=True, text=True, check=True)
    assert "12 train rows, 5 validation rows" in done.stdout
    assert main(["--source", str(source), "--sample", "12", "--seed", "3", "--val-size", "5",
                 "--out", str(tmp_path / "b")]) == 0
    assert main(["--source", str(source), "--sample", "12", "--seed", "4", "--val-size", "5",
                 "--out", str(tmp_path / "c")]) == 0

    def picked(name):
        return [list(pd.read_parquet(tmp_path / name / f"{split}.parquet")["row_index"]) for split in ("train", "val")]

    (train_a, val_a), (train_b, val_b), (train_c, _) = picked("a"), picked("b"), picked("c")
    assert (train_a, val_a) == (train_b, val_b)  # the seed fixes the sample
    assert train_a != train_c
    assert not set(train_a) & set(val_a) and len(set(train_a)) == 12
    assert train_a != list(range(12))  # a sample, not the first rows


def _outputs(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize("case", ["missing file", "wrong column", "empty file", "too few rows", "all malformed"])
def test_bad_input_is_refused_with_a_clear_message_and_nothing_written(case, tmp_path, numina_rows, write_rows,
                                                                      capsys):
    rows = numina_rows(10)
    source = tmp_path / "numina.jsonl"
    expected = {
        "missing file": "source not found: ",
        "wrong column": "lacks the column(s) problem",
        "empty file": "holds no rows",
        "too few rows": "has 10 rows, fewer than the 20 training + 5 validation rows",
        "all malformed": "every one of the 5 selected rows",
    }[case]
    if case == "wrong column":
        write_rows(source, [{"question" if k == "problem" else k: v for k, v in row.items()} for row in rows])
    elif case == "empty file":
        source.write_text("")
    elif case == "all malformed":
        write_rows(source, [{**row, "solution": ""} for row in rows])
    elif case != "missing file":
        write_rows(source, rows)
    num_rows = 20 if case == "too few rows" else 5

    with pytest.raises(SystemExit) as exit_info:
        main(["--source", str(source), "--num-rows", str(num_rows), "--val-size", "5", "--out",
              str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err
    assert _outputs(tmp_path / "out") == []


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, numina_rows, write_rows):
    source = str(write_rows(tmp_path / "numina.jsonl", numina_rows(30)))
    prepare(tmp_path / "out", source=source, num_rows=10, val_size=5)
    before = _messages(tmp_path / "out" / "train.parquet")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare(tmp_path / "out", source=source, num_rows=20, val_size=5)
    assert _messages(tmp_path / "out" / "train.parquet") == before

    prepare(tmp_path / "out", source=source, num_rows=20, val_size=0, overwrite=True)
    assert len(_messages(tmp_path / "out" / "train.parquet")) == 20
    assert _outputs(tmp_path / "out") == ["summary.json", "train.parquet"]  # the stale val file went too


def test_a_failure_while_writing_leaves_nothing_behind(tmp_path, numina_rows, write_rows, monkeypatch):
    source = str(write_rows(tmp_path / "numina.jsonl", numina_rows(30)))
    real_to_parquet = pd.DataFrame.to_parquet
    calls = []

    def to_parquet_then_fail(self, *args, **kwargs):  # the disk fills up while the second file is written
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real_to_parquet(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet_then_fail)
    with pytest.raises(OSError, match="No space"):
        prepare(tmp_path / "out", source=source, num_rows=10, val_size=5)
    assert _outputs(tmp_path / "out") == []
