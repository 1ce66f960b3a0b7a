"""Runs that must not go silently wrong or lose data, through the real torchrun trainer on the tiny model:
a step with no supervised token, val/nll beside val/loss, the loss recorded with each checkpoint and checked on
resume, a finished run re-run, and a disk that fills up while a checkpoint is written (a real size-limited tmpfs in
a user+mount namespace, so the error is the kernel's ENOSPC)."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from ranktuner_verl.data.tiny import math_cot_examples, to_messages
from ranktuner_verl.checkpoints import FINISHED_FILE, run_finished
from ranktuner_verl.integration.sft import checks, trainer
from ranktuner_verl.integration.sft.checkpoint_guard import LOSS_RECORD, TRACKER
from ranktuner_verl.integration.sft.runs import run_trainer, tiny_overrides
from tests.integration.sft.test_startup_checks import CONFIG_DIR, REPO, prompt_length

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_rows(tiny, tmp_path_factory):
    """A train file of two examples, the second with a prompt that fills ``max_length`` (it keeps no response token),
    a one-row validation file, and ``max_length`` itself."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny / "model")
    normal, long = (to_messages(r["problem"], r["solution"]) for r in math_cot_examples(2))
    long[1]["content"] = " ".join([long[1]["content"]] * 12)
    max_length = prompt_length(tokenizer, normal) + 16
    assert prompt_length(tokenizer, long) >= max_length
    root = tmp_path_factory.mktemp("two_rows")
    pd.DataFrame({"messages": [normal, long]}).to_parquet(root / "train.parquet")
    pd.DataFrame({"messages": [normal]}).to_parquet(root / "val.parquet")
    return root, max_length


def overrides(tiny, two_rows, out, *extra):
    root, max_length = two_rows
    return tiny_overrides(tiny / "model", root / "train.parquet", out, steps=2, batch=1, micro_batch=1,
                          max_length=max_length) + [
        f"data.val_files={root / 'val.parquet'}", "data.truncation=right", "trainer.total_epochs=2",
        "trainer.resume_mode=auto", *extra]


@pytest.fixture(scope="module")
def first_run(tiny, two_rows, tmp_path_factory):
    out = tmp_path_factory.mktemp("first")
    return out, run_trainer(overrides(tiny, two_rows, out, "loss=sft"), out)


def test_a_step_without_supervised_tokens_is_counted_and_warned(first_run):
    _, run = first_run
    assert "1 of 2 examples keep no response token after right truncation" in run.output  # start-up checks
    assert sorted(run.values("train/supervised_tokens"))[0] == 0 and max(run.values("train/supervised_tokens")) > 0
    assert run.output.count("a training step had no supervised token") == 1


def test_val_nll_is_logged_beside_val_loss(first_run):
    _, run = first_run
    val_loss, val_nll = run.values("val/loss"), run.values("val/nll")
    assert len(val_nll) == 1 and math.isfinite(val_nll[0])
    assert abs(val_nll[0] - val_loss[0]) < 1e-6  # loss=sft, one validation batch: the weighted objective is the NLL


def test_the_checkpoint_records_its_loss_and_resuming_another_loss_is_refused(first_run, tiny, two_rows):
    out, _ = first_run
    step = out / "ckpt" / "global_step_2"
    assert (out / "ckpt" / TRACKER).read_text().strip() == "2"
    assert json.loads((step / LOSS_RECORD).read_text()) == {"loss": {"name": "sft"}}
    assert run_finished(out / "ckpt") == {"step": 2, "loss": {"name": "sft"}}  # recorded by the run itself
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose(config_name=trainer.CONFIG_NAME,
                         overrides=[o for o in overrides(tiny, two_rows, out) if o != "loss=sft"] + ["loss=dft"])
    with pytest.raises(checks.StartupError, match=r"loss.name: checkpoint 'sft', this run 'dft'"):
        trainer.prepare(config)


def test_a_finished_run_run_again_says_so_and_trains_nothing(first_run, tiny, two_rows):
    out, _ = first_run
    again = run_trainer(overrides(tiny, two_rows, out, "loss=sft"), out)
    assert again.trained_steps() == []
    assert "This run is finished" in again.output and "global_step_2" in again.output
    assert "Loading weights" not in again.output  # said before the model loads (total_training_steps is set)
    assert not (out / "ckpt" / "global_step_3").exists()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_disk_full_while_saving_names_the_place_and_marks_the_step_incomplete(tiny, two_rows, tmp_path):
    """The checkpoint folder is a 1.6 MiB tmpfs: room for one checkpoint (about 1.2 MiB, so the start-up checks pass),
    not for two: the second save fails."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    script = ('mount -t tmpfs -o size=1600k tmpfs "$0" || exit 99; "$@"; rc=$?; '
              '(cd "$0" && find . | sort && cat ' + TRACKER + ') > "$0.listing"; exit $rc')
    prefix = ("unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script, str(ckpt))
    run = run_trainer(overrides(tiny, two_rows, tmp_path, "loss=sft", "trainer.save_freq=1"), tmp_path,
                      check=False, prefix=prefix)
    assert run.returncode not in (0, 99), run.output[-3000:]
    assert (f"no space left on {ckpt} while saving checkpoint global_step_2; the partial folder is now "
            f"{ckpt / 'global_step_2.incomplete'}") in run.output, run.output[-3000:]
    listing = (tmp_path / "ckpt.listing").read_text().split()
    assert "./global_step_2.incomplete" in listing and "./global_step_2" not in listing
    assert "./global_step_1" in listing and listing[-1] == "1"  # the tracker names the last complete step
    assert f"./{FINISHED_FILE}" not in listing


def test_a_finished_run_without_total_training_steps_stops_in_fit(first_run, tiny, two_rows):
    """trainer.total_training_steps unset: the length comes from verl's dataloader (2 rows, batch 1, 1 epoch = 2
    steps), so the trainer says it is finished after building it, instead of training step 3."""
    out, _ = first_run
    again = run_trainer(overrides(tiny, two_rows, out, "loss=sft", "trainer.total_training_steps=null",
                                  "trainer.total_epochs=1"), out)
    assert again.trained_steps() == []
    assert "This run is finished" in again.output and "trainer.total_training_steps is 2" in again.output
    assert not (out / "ckpt" / "global_step_3").exists()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_reproduce_table_resumes_an_interrupted_training_instead_of_evaluating_it(tiny, tmp_path):
    """The first run of the script dies saving step 2 of 2 (its folder is a read-only mount in a user+mount
    namespace), leaving global_step_1 and a tracker; run again, the script must finish the training, then evaluate
    global_step_2, not the half-trained global_step_1."""
    import os
    import subprocess
    import sys

    source = tmp_path / "numina.parquet"
    pd.DataFrame(math_cot_examples(8)).to_parquet(source)
    work = tmp_path / "work"
    ckpt = work / "checkpoints" / "sft"
    env = {**os.environ, "PYTHON": sys.executable, "BASE_MODEL": str(tiny / "model"), "LOSSES": "sft",
           "NUM_GPUS": "1", "WORK": str(work), "NUMINA_SOURCE": str(source), "NUM_ROWS": "8", "VAL_SIZE": "0",
           "BACKEND": "hf", "BENCHMARKS": "aime24", "DATA_DIR": str(REPO.parent / "shared" / "data" / "eval"),
           "LIMIT": "1", "EVAL_N": "1", "MAX_NEW_TOKENS": "4", "TABLE_K": "1", "SEEDS": "0",
           "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    tiny_run = ["data.train_batch_size=4", "data.micro_batch_size_per_gpu=2", "data.max_length=1024",
                "data.num_workers=0", "data.use_dynamic_bsz=False", "+engine.mixed_precision.param_dtype=fp32",
                "trainer.save_freq=1", "trainer.logger=[console]"]
    script = [str(REPO / "scripts" / "reproduce_table.sh"), *tiny_run]
    (ckpt / "global_step_2").mkdir(parents=True)
    interrupted = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c",
         'mount -t tmpfs -o ro tmpfs "$0" || exit 99; exec bash "$@"', str(ckpt / "global_step_2"), *script],
        env=env, capture_output=True, text=True, timeout=900)
    assert interrupted.returncode not in (0, 99), interrupted.stderr[-3000:]
    assert (ckpt / TRACKER).read_text().strip() == "1" and run_finished(ckpt) is None

    again = subprocess.run(["bash", *script], env=env, capture_output=True, text=True, timeout=900)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert f"{ckpt}: not finished (global_step_1, global_step_2)" in output  # then resumed, not evaluated
    assert run_finished(ckpt)["step"] == 2
    generation = json.loads((work / "results" / "sft" / "seed0" / "aime24" / "generation.json").read_text())
    assert generation["model"].startswith(str(ckpt / "global_step_2")), generation["model"]
    assert (work / "table.md").is_file()
