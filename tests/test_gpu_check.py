"""The GPU check (python -m ranktuner_verl.gpu_check), run on a CPU at a small size through the same code path."""

import pytest
import torch

import ranktuner_verl.stats
from ranktuner_verl import gpu_check
from ranktuner_verl.bench import make_inputs
from tests.test_stats import ALL, brute_force

#: above the exact-sort threshold, so E[R] comes from the histogram as at V = 151,936
SMALL = ["--device", "cpu", "--rows", "8", "--vocab", "9000"]


def test_accuracy_checks_pass_on_cpu(capsys):
    assert gpu_check.main(SMALL + ["--no-cost"]) == 0
    out = capsys.readouterr().out
    assert "accuracy: all within bound (0 failing)" in out and "FAIL |" not in out
    assert len(gpu_check.variants()) == 12  # every method, every choice of each option
    for name, params in gpu_check.variants():
        label = name + "".join(f" {k}={v}" for k, v in params.items())
        assert f"| weights {label} | bfloat16 |" in out and f"| weights {label} | float32 |" in out
    assert all(f"| statistic {name} | float32 |" in out for name in ALL)


def test_cost_table_has_every_method(capsys):
    assert gpu_check.main(["--device", "cpu", "--rows", "4", "--vocab", "300", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for name, params in gpu_check.variants():
        label = name + "".join(f" {k}={v}" for k, v in params.items())
        assert f"| {label}: weights |" in out and f"| {label}: weighted loss |" in out


def test_fails_when_the_statistics_lose_precision(capsys, monkeypatch):
    """The check sees the error it exists for: statistics computed from logits rounded to bf16 (a downcast on the way,
    as a bf16 autocast would make) leave their bound. (Autocast left on alone no longer does it: no operation of the
    statistics is one that autocast lowers.)"""
    reduce_chunk = ranktuner_verl.stats._reduce_chunk
    monkeypatch.setattr(ranktuner_verl.stats, "_reduce_chunk",
                        lambda logits, *args: reduce_chunk(logits.bfloat16().float(), *args))
    assert gpu_check.main(SMALL + ["--no-cost"]) == 1
    out = capsys.readouterr().out
    assert "accuracy: FAILED" in out and "| statistic entropy | float32 |" in out
    assert "time / plain NLL" not in out


def test_reference_is_the_definition():
    logits, labels = make_inputs(5, 300, torch.float32)
    got = gpu_check.reference_stats(logits, labels, top_k=7)
    want = brute_force(logits, labels, top_k=7)
    for name in ALL:
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12, msg=name)


def test_cuda_without_a_gpu_says_what_to_do(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--rows", "4", "--vocab", "10"])
    assert exit_info.value.code == 2 and "use --device cpu" in capsys.readouterr().err
