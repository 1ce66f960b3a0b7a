"""End to end on CPU: the real verl trainers (torchrun and Ray) with our plugin and losses, on a tiny local model.

Every run is a real subprocess (torchrun or the Ray driver) of the real verl trainer, on CPU, in fp32; its per-step
metrics come back from verl's own file logger. A run is a few seconds of training and ~10 s of imports, so runs are
shared between tests (the session fixture ``runs``, conftest).
"""

from __future__ import annotations

import math
import pytest

from ranktuner_verl.integration.sft.runs import RAY_TRAINER, run_trainer, tiny_overrides
from ranktuner_verl.methods import METHODS

pytestmark = pytest.mark.slow

STOCK_TRAINER = "verl.trainer.sft_trainer"
LOSSES = list(METHODS)
FP32_TOL = 1e-6
BATCH = 8  # = the tiny dataset's size (conftest): every step sees the same batch


# What the stock verl trainer needs on CPU (our trainers apply these themselves, see trainer.apply_cpu_defaults).
STOCK_CPU_OVERRIDES = ["trainer.device=cpu", "engine.strategy=fsdp2", "+model.override_config.attn_implementation=sdpa"]


def reference_ranktuner(runs):
    return runs("ranktuner", extra=["loss=ranktuner"])


def assert_close(a, b, tol=FP32_TOL):
    assert len(a) == len(b) and len(a) > 0, (a, b)
    assert max(abs(x - y) for x, y in zip(a, b)) <= tol, (a, b)


def test_stock_verl_run_is_unchanged_by_the_plugin(runs):
    """A stock verl SFT run with our plugin (engine hook installed) vs with only the CPU layer (no hook)."""
    with_plugin = runs("stock_plugin", STOCK_TRAINER, STOCK_CPU_OVERRIDES)
    without_hook = runs("stock_cpu_only", STOCK_TRAINER, STOCK_CPU_OVERRIDES, env={
        "VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_USE_EXTERNAL_MODULES": "ranktuner_verl.integration.cpu_only"})
    assert with_plugin.values("train/loss") == without_hook.values("train/loss")
    assert len(with_plugin.values("train/loss")) == 3


def test_sft_equals_stock_verl_step_for_step(runs):
    stock = runs("stock_plugin", STOCK_TRAINER, STOCK_CPU_OVERRIDES).values("train/loss")
    ours = runs("sft", extra=["loss=sft"])
    assert_close(ours.values("train/loss"), stock)
    assert_close(ours.values("train/nll"), stock)
    assert ours.values("train/weight_mean") == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains_and_the_nll_falls_on_a_repeated_batch(runs, loss):
    run = reference_ranktuner(runs) if loss == "ranktuner" else runs(loss, extra=[f"loss={loss}"])
    weighted, nll = run.values("train/weighted_loss"), run.values("train/nll")
    assert len(weighted) == 3 and all(math.isfinite(x) for x in weighted + nll)
    assert_close(run.values("train/loss"), weighted, tol=1e-5)  # verl's loss is our weighted loss
    assert nll[-1] < nll[0] - 0.05, nll
    for record in run.records:
        d = record["data"]
        if "train/weight_mean" in d:
            assert 0 <= d["train/weight_p10"] <= d["train/weight_p50"] <= d["train/weight_p90"]
            assert (d["train/weight_mean"] > 0) and math.isfinite(d["train/weight_mean"])
            assert (loss == "ranktuner") == ("train/s_near_one" in d)


def test_two_processes_match_one(runs):
    one = reference_ranktuner(runs)
    two = runs("ranktuner_2proc", extra=["loss=ranktuner"], nproc=2)
    for key in ("train/loss", "train/nll", "train/weight_mean"):
        assert_close(two.values(key), one.values(key))


def test_remove_padding_off_matches_on(runs):
    on = reference_ranktuner(runs)
    off = runs("ranktuner_padded", extra=["loss=ranktuner", "model.use_remove_padding=False"])
    for key in ("train/loss", "train/nll", "train/weight_mean"):
        assert_close(off.values(key), on.values(key))


def test_ray_trainer_with_two_workers_matches_torchrun(runs):
    torchrun = reference_ranktuner(runs)
    ray = runs("ranktuner_ray", RAY_TRAINER, ["loss=ranktuner", "trainer.n_gpus_per_node=2"], ray=True)
    for key in ("train/loss", "train/nll", "train/weight_p50"):
        assert_close(ray.values(key), torchrun.values(key))


def test_resume_from_checkpoint_continues_like_an_uninterrupted_run(tiny, tmp_path):
    """Two batches per epoch, checkpoint after step 1 (mid-epoch), resume: steps 2 and 3 as in the full run.

    (A checkpoint at an epoch boundary is not used: verl 0.9.1's resumed dataloader then yields nothing for the
    next epoch, a verl behaviour, not ours.)
    """
    from ranktuner_verl.data.tiny import write_sft_parquet

    train_file = write_sft_parquet(tmp_path / "train16.parquet", 2 * BATCH, seed=1)

    def run(name, extra):
        out = tmp_path / name
        overrides = tiny_overrides(tiny / "model", train_file, out, steps=3, batch=BATCH)
        return run_trainer(overrides + ["loss=ranktuner", "trainer.total_epochs=2", "optim.lr=1e-2", *extra], out)

    reference = run("full", ["trainer.save_freq=1"])
    checkpoint = tmp_path / "full" / "ckpt" / "global_step_1"
    resumed = run("resumed", ["trainer.resume_mode=resume_path", f"trainer.resume_from_path={checkpoint}"])
    assert resumed.trained_steps() == [2, 3]
    for key in ("train/loss", "train/nll", "train/weight_mean"):
        assert_close(resumed.values(key), reference.values(key)[1:])


def test_the_cli_stops_before_training_on_a_bad_parameter(runs):
    result = runs("ranktuner_bad_form", extra=["loss=ranktuner", "loss.form=bogus"], check=False)
    output = result.output
    assert result.returncode != 0
    assert "form='bogus' is not valid" in output and "'practical', 'exact'" in output
    assert "Loading weights" not in output and "step:1" not in output


def test_the_log_says_each_notice_once_and_keeps_the_config_in_a_file(runs):
    """Two ranks: the CPU platform's notice and verl's five "engine is not available" warnings come once (rank 0),
    not per process; verl's one-line config (6,000+ characters) goes to Hydra's output folder, its path printed."""
    run = runs("ranktuner_2proc", extra=["loss=ranktuner"], nproc=2)
    assert run.output.count("no accelerator in reach of this process") == 1
    assert run.output.count("UserWarning: megatron engine is not available") == 1
    config = [line.split(": ", 1)[1] for line in run.output.splitlines() if line.startswith("verl's full config: ")]
    assert len(config) == 1 and "loss:\n  name: ranktuner" in open(config[0]).read()
    assert max(len(line) for line in run.output.splitlines()) < 1000
