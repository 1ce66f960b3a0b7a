"""Every method with verl's fused kernels (``model.use_fused_kernels=True``, the pure-torch backend that runs on CPU):
the same losses and gradients as without them, through verl's real trainer, engine and fused forward.

The statistics then come from the hidden states and the LM head (``integration/fused_stats``), never from logits.
``fused_probe.py`` runs every method and option on one batch through the real training worker and snapshots the
gradients; the Ulysses run trains three steps with the real torchrun trainer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.sft.test_trainer_on_cpu import assert_close, reference_ranktuner

pytestmark = pytest.mark.slow

FUSED = ["model.use_fused_kernels=True", "model.fused_kernel_options.impl_backend=torch"]
PROBE = Path(__file__).with_name("fused_probe.py")
LOSS_TOL, GRAD_TOL = 1e-6, 1e-5  # fp32: relative to the loss, and to the largest gradient entry


def probe(tiny, out_dir: Path, extra: list[str], *args: str) -> dict:
    from ranktuner_verl.integration.sft.runs import tiny_overrides

    out = out_dir / "probe.pt"
    overrides = tiny_overrides(tiny / "model", tiny / "train.parquet", out_dir, steps=1, batch=4)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(PROBE),
               str(out), *args, *overrides, "trainer.logger=[console]", *extra]
    result = subprocess.run(command, cwd=out_dir, capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def probes(tiny, tmp_path_factory):
    unfused = probe(tiny, tmp_path_factory.mktemp("probe_unfused"), [])
    fused = probe(tiny, tmp_path_factory.mktemp("probe_fused"), FUSED, "--padded-too")
    return unfused, fused


def test_every_method_and_option_gives_the_same_loss_and_gradients_fused(probes):
    """All six methods, every choice of their options, temperature 0.7 for those with statistics; fused kernels with
    remove-padding on and off against the unfused run with remove-padding on."""
    from ranktuner_verl.methods import METHODS

    unfused, fused = probes
    assert {label.split()[0] for label in unfused} == set(METHODS)
    assert set(fused) == set(unfused) | {label + " padded" for label in unfused}
    for label, want in unfused.items():
        for got_label in (label, label + " padded"):
            got = fused[got_label]
            assert abs(got["loss"] - want["loss"]) <= LOSS_TOL * max(1.0, abs(want["loss"])), got_label
            assert got["grads"].keys() == want["grads"].keys() and want["grads"]
            scale = max(g.abs().max().item() for g in want["grads"].values())
            assert scale > 0, label
            for name, grad in want["grads"].items():
                assert (got["grads"][name] - grad).abs().max().item() <= GRAD_TOL * scale, (got_label, name)


def test_fused_and_ulysses_sp2_train_like_the_unfused_single_process_run(runs):
    """The real torchrun trainer, 3 steps: fused kernels with Ulysses SP=2 (the statistics computed on each rank's
    half of the hidden states, gathered like the log-probs) against the unfused one-process reference."""
    one = reference_ranktuner(runs)
    fused = runs("ranktuner_fused_ulysses2", extra=["loss=ranktuner", "engine.ulysses_sequence_parallel_size=2",
                                                    *FUSED], nproc=2)
    assert "Using Torch backend for fused kernels" in fused.output  # verl really patched the fused forward
    for key in ("train/loss", "train/nll", "train/grad_norm", "train/weight_mean", "train/weight_p50",
                "train/s_near_one"):
        assert_close(fused.values(key), one.values(key))


def test_rl_policy_loss_with_fused_kernels_equals_unfused(tiny, tmp_path):
    """The RL policy loss (``loss_mode=ranktuner``, T = 0.7) through verl's real actor worker: one SGD update with
    fused kernels (remove-padding on and off) moves the parameters as the unfused update does (so equal gradients),
    with the same metrics. Fused and unfused need their own processes (verl patches the model class)."""
    from tests.integration.rl.test_rl_actor import _run

    case = {"loss_mode": "ranktuner", "temperature": 0.7}
    unfused = _run(tiny, tmp_path, {"off": case})["off"]
    fused = _run(tiny, tmp_path, {"on": {**case, "fused": True},
                                            "on_padded": {**case, "fused": True, "use_remove_padding": False}})
    for result in (unfused, *fused.values()):
        assert "error" not in result, result.get("traceback")
    step = max((want - unfused["initial_params"][name]).abs().max().item() for name, want in unfused["params"].items())
    assert step > 0
    for got in fused.values():
        for name, want in unfused["params"].items():  # relative to the largest step, as the gradients above
            assert (got["params"][name] - want).abs().max().item() <= GRAD_TOL * step, name
        for key in ("actor/pg_loss", "grad_norm", "actor/weight_mean", "actor/token_stat_rank"):
            assert got["metrics"][0][key] == pytest.approx(unfused["metrics"][0][key], rel=1e-5, abs=1e-7), key
