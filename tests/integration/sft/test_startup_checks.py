"""The start-up checks (``ranktuner_verl.integration.sft.checks``): real Hydra config, real tokenizer, verl's real
``MultiTurnSFTDataset``, on tiny local files; nothing trains here, so each check takes seconds at most."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from ranktuner_verl.data.tiny import math_cot_examples, to_messages
from ranktuner_verl.integration.sft import checks, trainer
from ranktuner_verl.integration.sft.checkpoint_guard import LOSS_RECORD, TRACKER

CONFIG_DIR = Path(trainer.__file__).parent / trainer.CONFIG_DIR
REPO = Path(trainer.__file__).parents[3]
StartupError = checks.StartupError

# Qwen3's template in miniature: the last assistant turn gets an empty <think></think> block only when rendered after
# other turns, so the turn tokenised alone (verl's dataset) differs from the whole conversation.
QWEN3_LIKE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' and loop.last and loop.index0 > 0 %}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=trainer.CONFIG_NAME, overrides=list(overrides))


def base(tiny, *extra, train=None):
    return [f"model.path={tiny / 'model'}", f"data.train_files={train or tiny / 'train.parquet'}",
            "data.train_batch_size=8", "trainer.resume_mode=disable", *extra]


def write_rows(path: Path, conversations) -> Path:
    pd.DataFrame({"messages": list(conversations)}).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny / "model")


def prompt_length(tokenizer, turns):
    text = tokenizer.apply_chat_template(turns[:-1], tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_the_tiny_data_passes_every_check(tiny):
    trainer.prepare(config(*base(tiny, "loss=ranktuner")))


# --- item 2: prompts that fill max_length under right truncation ------------------------------------------------------

def test_right_truncation_leaving_no_response_anywhere_stops(tiny, tokenizer):
    rows = [to_messages(r["problem"], r["solution"]) for r in math_cot_examples(8)]
    shortest = min(prompt_length(tokenizer, turns) for turns in rows)
    with pytest.raises(StartupError, match=rf"8 of 8 examples keep no response token .*max_length={shortest}"
                                           r".*nothing to train on\. Raise data.max_length above"):
        trainer.prepare(config(*base(tiny, f"data.max_length={shortest}", "data.truncation=right")))


def test_right_truncation_leaving_some_examples_empty_is_counted(tiny, tokenizer, tmp_path, capsys):
    rows = [to_messages(r["problem"], r["solution"]) for r in math_cot_examples(8)]
    for turns in rows[5:]:
        turns[1]["content"] = " ".join([turns[1]["content"]] * 12)  # a long question fills the context
    max_length = max(prompt_length(tokenizer, turns) for turns in rows[:5]) + 8
    assert min(prompt_length(tokenizer, turns) for turns in rows[5:]) >= max_length
    path = write_rows(tmp_path / "train.parquet", rows)
    trainer.prepare(config(*base(tiny, f"data.max_length={max_length}", "data.truncation=right", train=path)))
    assert f"3 of 8 examples keep no response token after right truncation to data.max_length={max_length}" in (
        capsys.readouterr().err)


def test_a_conversation_longer_than_max_length_names_file_row_and_fix(tiny):
    with pytest.raises(StartupError, match=r"8 of 8 conversations are longer than data.max_length=20 tokens, the "
                                           r"first .*train.parquet row 0 .*Raise data.max_length to at least \d+"):
        trainer.prepare(config(*base(tiny, "data.max_length=20", "data.truncation=error")))


# --- item 4: row counts against the batch size ------------------------------------------------------------------------

def test_a_train_file_smaller_than_the_batch_names_the_setting(tiny):
    with pytest.raises(StartupError, match=r"data.train_files has 8 rows, fewer than one batch "
                                           r"\(data.train_batch_size=16\).*data.train_batch_size=8"):
        trainer.prepare(config(*base(tiny), "data.train_batch_size=16"))


def test_a_validation_file_smaller_than_the_batch_is_refused(tiny, tmp_path):
    val = write_rows(tmp_path / "val.parquet", [to_messages(r["problem"], r["solution"]) for r in math_cot_examples(3)])
    with pytest.raises(StartupError, match=r"data.val_files has 3 rows, fewer than one batch .*val/loss would be nan"):
        trainer.prepare(config(*base(tiny, f"data.val_files={val}")))


# --- item 9: readable errors ------------------------------------------------------------------------------------------

def test_a_corrupt_parquet_file_is_named(tiny, tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes((tiny / "train.parquet").read_bytes()[:200])
    with pytest.raises(StartupError, match=rf"data.train_files: {path} is not a readable parquet file"):
        trainer.prepare(config(*base(tiny, train=path)))


@pytest.mark.parametrize("value", ["/nowhere/model", "./models/tiny", "tests/no-such-model"])
def test_a_model_path_that_does_not_exist_is_said_so(tiny, value):
    overrides = [o for o in base(tiny) if not o.startswith("model.path=")] + [f"model.path={value}"]
    with pytest.raises(StartupError, match=r"does not exist \(and it is not a Hugging Face hub id"):
        trainer.prepare(config(*overrides))


def test_a_loss_option_of_another_loss_names_the_loss_that_takes_it():
    with pytest.raises(StartupError, match=r"loss=sft has no option 'top_k' \(top_k is an option of loss=eaft\)"):
        checks.check_loss_overrides(["loss=sft", "loss.top_k=5"])
    with pytest.raises(StartupError, match=r"no loss has an option gamma.*Options of loss=ranktuner: form, base"):
        checks.check_loss_overrides(["loss=ranktuner", "loss.gamma=1"])
    checks.check_loss_overrides(["loss=eaft", "loss.top_k=5", "+loss.chunk_rows=64"])


@pytest.mark.slow
def test_train_sh_checks_once_before_the_ranks_and_prints_the_problem_last(tiny, tmp_path):
    """scripts/train.sh runs the checks in one process before torchrun: one message, on the last line."""
    result = subprocess.run(["bash", str(REPO / "scripts" / "train.sh"), *base(tiny), "data.train_batch_size=16"],
                            cwd=tmp_path, env={**os.environ, "NPROC": "2"}, capture_output=True, text=True,
                            timeout=300)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output[-3000:]
    assert output.splitlines()[-1].startswith("error: data.train_files has 8 rows, fewer than one batch")
    assert output.count("fewer than one batch") == 1 and "ChildFailedError" not in output


# --- issue 8 §5: fused kernels, Qwen3-style templates -----------------------------------------------------------------

@pytest.mark.parametrize("loss, refused", [("ranktuner", True), ("eaft", True), ("deft", True), ("dft", True),
                                           ("sft", False)])
def test_fused_kernels_run_every_loss_but_a_backend_the_statistics_cannot_share_stops_first(tiny, loss, refused):
    """Fused kernels (torch backend, verl's default; liger) run every loss (integration/fused_stats.py); the triton
    backend computes the log-probs in a kernel the statistics cannot share: refused before the model loads for every
    loss with weights (even dft's p_t comes from the statistics), not for sft."""
    trainer.prepare(config(*base(tiny, f"loss={loss}", "model.use_fused_kernels=True")))
    trainer.prepare(config(*base(tiny, f"loss={loss}", "model.use_fused_kernels=True",
                                 "model.fused_kernel_options.impl_backend=liger")))
    cfg = config(*base(tiny, f"loss={loss}", "model.use_fused_kernels=True",
                       "model.fused_kernel_options.impl_backend=triton"))
    if refused:
        with pytest.raises(StartupError, match=rf"model.use_fused_kernels=True with loss={loss}.*impl_backend='triton'"
                                               r".*use impl_backend=torch or liger"):
            trainer.prepare(cfg)
    else:
        trainer.prepare(cfg)


def test_a_qwen3_style_template_stops_in_the_checks_naming_ignore_input_ids_mismatch(tiny, tmp_path):
    from transformers import AutoTokenizer

    model = tmp_path / "qwen3_like"
    shutil.copytree(tiny / "model", model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = QWEN3_LIKE_TEMPLATE
    tok.save_pretrained(model)
    overrides = [o for o in base(tiny) if not o.startswith("model.path=")] + [f"model.path={model}"]
    with pytest.raises(StartupError, match=r"row 0: the chat template renders a turn differently alone .*"
                                           r"data.ignore_input_ids_mismatch=True"):
        trainer.prepare(config(*overrides))
    trainer.prepare(config(*overrides, "data.ignore_input_ids_mismatch=True"))


def test_the_qwen3_example_sets_ignore_input_ids_mismatch():
    script = (REPO / "examples" / "qwen3_8b_numina10k.sh").read_text()
    assert "data.ignore_input_ids_mismatch=True" in script


# --- item 3: resume under another loss configuration ------------------------------------------------------------------

def fake_checkpoint(root: Path, step: int, loss: dict) -> Path:
    folder = root / f"global_step_{step}"
    folder.mkdir(parents=True)
    (folder / LOSS_RECORD).write_text(json.dumps({"loss": loss}))
    (root / TRACKER).write_text(str(step))
    return folder


def test_resume_under_another_loss_or_options_names_each_difference(tiny, tmp_path):
    from ranktuner_verl.integration.sft.checkpoint_guard import loss_record

    fake_checkpoint(tmp_path / "ckpt", 2, loss_record(config("loss=ranktuner"))["loss"])
    ckpt = [f"trainer.default_local_dir={tmp_path / 'ckpt'}", "trainer.resume_mode=auto"]
    trainer.prepare(config(*base(tiny), "loss=ranktuner", *ckpt))  # the same configuration resumes
    with pytest.raises(StartupError, match=r"loss.name: checkpoint 'ranktuner', this run 'dft'"):
        trainer.prepare(config(*base(tiny), "loss=dft", *ckpt))
    with pytest.raises(StartupError, match=r"loss.base: checkpoint 'p', this run 'one'\)"):
        trainer.prepare(config(*base(tiny), "loss=ranktuner", "loss.base=one", *ckpt))


def test_a_default_spelled_out_resumes_like_one_left_out(tiny, tmp_path):
    """Defaults live in code (the loss YAMLs name the method, their values null): the checkpoint records the built
    method's parameters, so a run that spells out a default resumes a run that left it out, and the reverse."""
    from ranktuner_verl.integration.sft.checkpoint_guard import loss_record
    from ranktuner_verl.methods import METHODS

    assert all(v is None for k, v in config("loss=ranktuner").loss.items() if k != "name")
    spelled = [f"loss.{k}={p.default}" for k, p in METHODS["ranktuner"].params.items()]
    assert loss_record(config("loss=ranktuner")) == loss_record(config("loss=ranktuner", *spelled))
    assert loss_record(config("loss=ranktuner"))["loss"]["form"] == "practical"
    for saved, resumed in ((["loss=ranktuner"], spelled), (spelled, [])):
        root = tmp_path / str(len(saved))
        fake_checkpoint(root, 2, loss_record(config("loss=ranktuner", *saved))["loss"])
        trainer.prepare(config(*base(tiny), "loss=ranktuner", *resumed, f"trainer.default_local_dir={root}",
                               "trainer.resume_mode=auto"))


def test_resume_from_an_incomplete_checkpoint_is_refused(tiny, tmp_path):
    folder = tmp_path / "global_step_3.incomplete"
    folder.mkdir()
    with pytest.raises(StartupError, match="save failed"):
        trainer.prepare(config(*base(tiny), "trainer.resume_mode=resume_path", f"trainer.resume_from_path={folder}"))


# --- issue 20: messages that keep their meaning -----------------------------------------------------------------------

@pytest.mark.parametrize("option, valid", [
    ("data.train_batch_size=-8", "a whole number of at least 1"),
    ("data.max_length=abc", "a whole number of at least 1"),
    ("data.micro_batch_size_per_gpu=1.5", "a whole number of at least 1"),
    ("optim.lr=nan", "a finite number of at least 0"),
    ("optim.lr=-0.5", "a finite number of at least 0"),
    ("trainer.total_training_steps=-5", "a whole number of at least 1 or null"),
    ("data.train_max_samples=0", "a whole number of at least 1 or -1"),
])
def test_verl_numeric_options_out_of_range_are_refused_before_the_model_loads(tiny, option, valid):
    key, value = option.split("=")
    with pytest.raises(StartupError, match=rf"^{re.escape(option)}: it must be {valid}\. Set {re.escape(key)} to"):
        trainer.prepare(config(*base(tiny), option))
    trainer.prepare(config(*base(tiny), "trainer.total_training_steps=null", "data.train_max_samples=-1"))


def test_an_unknown_truncation_is_named_with_the_valid_ones(tiny):
    with pytest.raises(StartupError, match=r"data.truncation=middle: .* only with error, left or right\. Set"):
        trainer.prepare(config(*base(tiny), "data.truncation=middle"))


def test_messages_stored_as_json_text_are_named_with_the_conversion(tiny, tmp_path):
    rows = [json.dumps(to_messages(r["problem"], r["solution"])) for r in math_cot_examples(8)]
    path = write_rows(tmp_path / "json.parquet", rows)
    with pytest.raises(StartupError, match=rf"{path} row 0: the 'messages' column holds str values \(JSON text\?\), "
                                           r"not lists of turns.*map\(json.loads\)"):
        trainer.prepare(config(*base(tiny, train=path)))


def test_an_empty_parquet_file_is_said_to_have_no_rows(tiny, tmp_path):
    path = write_rows(tmp_path / "empty.parquet", [])
    with pytest.raises(StartupError, match=rf"data.train_files: {path} has no rows\. Point data.train_files at"):
        trainer.prepare(config(*base(tiny, train=path)))


def test_a_broken_loss_record_names_its_file_and_the_record_to_write(tiny, tmp_path):
    folder = fake_checkpoint(tmp_path / "ckpt", 2, {})
    (folder / LOSS_RECORD).write_text('{"loss": {"name": "ranktuner"')  # cut short
    ckpt = [f"trainer.default_local_dir={tmp_path / 'ckpt'}", "trainer.resume_mode=auto"]
    with pytest.raises(StartupError, match=rf"^{folder / LOSS_RECORD}, the record of the loss .* is unreadable .*"
                                           r"write it back: \{\"loss\": \{\"name\": \"dft\""):
        trainer.prepare(config(*base(tiny), "loss=dft", *ckpt))


def save_dataloader_state(folder: Path, num_workers: int) -> None:
    """What verl's checkpoint handler saves as data_0.pt: a torchdata StatefulDataLoader's state, mid-epoch."""
    import torch
    from torchdata.stateful_dataloader import StatefulDataLoader

    loader = StatefulDataLoader(list(range(16)), batch_size=4, num_workers=num_workers)
    batches = iter(loader)
    next(batches)
    torch.save(loader.state_dict(), folder / "data_0.pt")


@pytest.mark.parametrize("saved, resumed", [(0, 8), (2, 0)])
def test_resume_with_another_num_workers_is_refused_before_the_model_loads(tiny, tmp_path, saved, resumed):
    """The quickstart saves with data.num_workers=0, verl's default is 8: torchdata's state loads only into the same
    number of workers and failed after the model loaded ("State doesn't contain key '_snapshot' ...")."""
    from ranktuner_verl.integration.sft.checkpoint_guard import loss_record

    folder = fake_checkpoint(tmp_path / "ckpt", 2, loss_record(config("loss=sft"))["loss"])
    save_dataloader_state(folder, saved)
    ckpt = [f"trainer.default_local_dir={tmp_path / 'ckpt'}", "trainer.resume_mode=auto", "loss=sft"]
    with pytest.raises(StartupError, match=rf"{folder} was saved with data.num_workers={saved} and this run has "
                                           rf"data.num_workers={resumed}: .* Add data.num_workers={saved} to resume"):
        trainer.prepare(config(*base(tiny), *ckpt, f"data.num_workers={resumed}"))
    trainer.prepare(config(*base(tiny), *ckpt, f"data.num_workers={saved}"))


def test_a_rejected_input_prints_its_error_alone(tiny, tmp_path):
    """The checks' process (scripts/train.sh runs it first) prints no per-process notice before the error."""
    result = subprocess.run([sys.executable, "-m", "ranktuner_verl.integration.sft.checks", *base(tiny),
                             "data.train_batch_size=-8"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert (result.stdout + result.stderr).strip().splitlines() == [
        "error: data.train_batch_size=-8: it must be a whole number of at least 1. Set data.train_batch_size to such "
        "a value (or leave it out: verl's default)."]


def test_a_tracker_naming_a_step_that_is_gone_is_refused_naming_the_steps_there_are(tiny, tmp_path):
    """Not "This run is finished" (total_training_steps=9), not verl's silent restart from step 1."""
    root = tmp_path / "ckpt"
    fake_checkpoint(root, 2, {"name": "sft"})
    (root / "global_step_4.incomplete").mkdir()
    (root / TRACKER).write_text("9")
    ckpt = [f"trainer.default_local_dir={root}", "trainer.resume_mode=auto", "trainer.total_training_steps=9"]
    with pytest.raises(StartupError, match=rf"{root / TRACKER} names global_step_9, which does not exist; {root} "
                                           r"holds global_step_2\. Resume from one of them"):
        trainer.prepare(config(*base(tiny), "loss=sft", *ckpt))
    gone = root / "global_step_7"
    with pytest.raises(StartupError, match=rf"trainer.resume_from_path={gone}, which does not exist; {root} holds "
                                           "global_step_2"):
        trainer.prepare(config(*base(tiny), "trainer.resume_mode=resume_path", f"trainer.resume_from_path={gone}"))
