"""The README's main job as a user runs it: ``bash scripts/quickstart.sh`` (real verl trainer, one run per loss)."""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import pytest

from ranktuner_verl.methods import S_BAND

REPO = Path(__file__).parents[1]
STEPS = 2
BASE_COLUMNS = ["step", "loss", "nll", "w mean", "w p10", "w p50", "w p90"]
RANKTUNER_COLUMN = f"|S-1|<{S_BAND:g}"


def parse_tables(stdout: str) -> dict[str, dict]:
    """loss -> {"columns": [...], "rows": [[...], ...], "checkpoint": str} from the quickstart's printed summary."""
    tables = {}
    for block in re.split(r"^== loss=", stdout, flags=re.M)[1:]:
        lines = block.splitlines()
        name = lines[0].rstrip(" =")
        columns = re.split(r"\s{2,}", lines[1].strip())
        rows = [[float(v) for v in line.split()] for line in lines[2:] if re.match(r"^\s*\d+\s", line)]
        checkpoint = next(line for line in lines if line.startswith("checkpoint: "))
        tables[name] = {"columns": columns, "rows": rows,
                        "checkpoint": checkpoint.removeprefix("checkpoint: ").split("   log: ")[0]}
    return tables


@pytest.mark.slow
def test_quickstart_prints_a_table_per_loss_with_finite_losses_and_a_checkpoint(tmp_path):
    """Run from another directory with a relative --out: it resolves against the caller's directory."""
    out = tmp_path / "quickstart"
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "quickstart.sh"), "--out", "quickstart", "--steps", str(STEPS),
         "--examples", "8", "--batch", "8"],
        cwd=tmp_path, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    tables = parse_tables(result.stdout)
    assert list(tables) == ["sft", "ranktuner"]
    for loss, table in tables.items():
        expected_columns = BASE_COLUMNS + ([RANKTUNER_COLUMN] if loss == "ranktuner" else [])
        assert table["columns"] == expected_columns, table["columns"]
        assert [int(row[0]) for row in table["rows"]] == list(range(1, STEPS + 1))
        for row in table["rows"]:
            assert len(row) == len(expected_columns) and all(math.isfinite(v) for v in row)
            values = dict(zip(expected_columns, row))
            assert values["loss"] > 0 and values["nll"] > 0
            assert 0 <= values["w p10"] <= values["w p50"] <= values["w p90"]
            if loss == "sft":
                assert values["w mean"] == 1.0 and values["loss"] == pytest.approx(values["nll"], abs=1e-4)
            else:
                assert 0 <= values[RANKTUNER_COLUMN] <= 1
        checkpoint = Path(table["checkpoint"])
        assert checkpoint == out.resolve() / "runs" / loss / "ckpt" / f"global_step_{STEPS}"
        assert checkpoint.is_dir() and (checkpoint / "fsdp_config.json").is_file()
