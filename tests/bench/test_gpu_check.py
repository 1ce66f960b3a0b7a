"""The GPU check (python -m ranktuner_verl.bench.gpu_check), run on a CPU at a small size through the same code path."""

import pytest
import torch

from ranktuner_verl import stats
from ranktuner_verl.bench import gpu_check
from ranktuner_verl.bench.cases import cases
from ranktuner_verl.stats.chunked import reduce_chunk

#: above the exact-sort threshold, so E[R] comes from the histogram as at V = 151,936
SMALL = ["--device", "cpu", "--rows", "8", "--vocab", "9000"]


def test_accuracy_checks_pass_on_cpu(capsys):
    assert gpu_check.main(SMALL + ["--no-cost"]) == 0
    out = capsys.readouterr().out
    assert "accuracy: all within bound (0 failing)" in out and "FAIL |" not in out
    assert len(cases(every_choice=True)) == 12  # every method, every choice of each option
    for case in cases(every_choice=True):
        assert f"| weights {case.label} | bfloat16 |" in out and f"| weights {case.label} | float32 |" in out
    assert all(f"| statistic {name} | float32 |" in out for name in stats.STATS)


def test_cost_table_has_every_method(capsys):
    assert gpu_check.main(["--device", "cpu", "--rows", "4", "--vocab", "300", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for case in cases(every_choice=True):
        assert f"| {case.label}: weights |" in out and f"| {case.label}: weighted loss |" in out


def test_a_reducer_that_loses_precision_fails_the_check(capsys, monkeypatch):
    """A second implementation plugged in at the dispatch point is checked against the oracle: one that rounds the
    logits to bf16 on the way (as a bf16 autocast would) leaves the bound."""
    monkeypatch.setitem(stats.REDUCERS, "lossy", lambda logits, *args: reduce_chunk(logits.bfloat16().float(), *args))
    assert gpu_check.main(SMALL + ["--no-cost", "--reducer", "lossy"]) == 1
    out = capsys.readouterr().out
    assert "accuracy: FAILED" in out and "| statistic entropy | float32 |" in out
    assert "time / plain NLL" not in out


def test_cuda_without_a_gpu_says_what_to_do(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--rows", "4", "--vocab", "10"])
    assert exit_info.value.code == 2 and "use --device cpu" in capsys.readouterr().err
