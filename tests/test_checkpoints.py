"""``resolve_model_dir``: every model form -> one HF dir; a LoRA run trained by the real verl trainer is evaluated with
its adapter merged in, not as the base model (issue 11, item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ranktuner_verl.checkpoints import SOURCE_FILE, latest_step, main, resolve_model_dir

PROMPT = "What is 12 + 30? The answer is"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A 2-step LoRA (rank 8) run of the tiny model with the real trainer; returns (base model dir, checkpoint root)."""
    from ranktuner_verl.data.tiny import build_model, write_sft_parquet
    from ranktuner_verl.integration.sft.runs import run_trainer, tiny_overrides

    root = tmp_path_factory.mktemp("lora")
    build_model(root / "base")
    write_sft_parquet(root / "train.parquet", 8)
    overrides = tiny_overrides(root / "base", root / "train.parquet", root / "run", steps=2, batch=8)
    run_trainer(overrides + ["model.lora_rank=8", "model.lora_alpha=16", "optim.lr=1e-2", "trainer.save_freq=2"],
                root / "run")
    return root / "base", root / "run" / "ckpt"


def _logprobs(model_dir: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits.float(), dim=-1)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


@pytest.mark.slow
def test_a_lora_checkpoint_root_resolves_to_the_base_plus_its_adapter(lora_run, tmp_path):
    base, ckpt = lora_run
    resolved = resolve_model_dir(ckpt)
    step = latest_step(ckpt)
    merged_hf = step / "merged_hf"
    assert resolved == merged_hf.parent / "merged_hf_lora_merged"
    assert (merged_hf / "lora_adapter" / "adapter_config.json").is_file()
    assert not (resolved / "lora_adapter").exists()
    assert json.loads((resolved / SOURCE_FILE).read_text())["source"] == str(merged_hf)

    # The trap: verl's merged_hf holds the base weights (bf16-rounded), bit for bit.
    base_weights, plain = _weights(base), _weights(merged_hf)
    assert all(torch.equal(plain[k], base_weights[k].to(plain[k].dtype)) for k in plain)
    # The resolved model carries the adapter: different weights and log-probs from the base...
    merged = _weights(resolved)
    assert any(not torch.equal(merged[k], plain[k]) for k in plain)
    assert (_logprobs(resolved) - _logprobs(merged_hf)).abs().max() > 1e-3
    # ... equal to peft's own forward with the adapter applied, up to the bf16 storage of the merged weights.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(merged_hf, dtype=torch.float32),
                                             merged_hf / "lora_adapter").eval()
    ids = AutoTokenizer.from_pretrained(merged_hf)(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = torch.log_softmax(with_adapter(ids).logits, dim=-1)
    assert (_logprobs(resolved) - expected).abs().max() < 0.05  # bf16 weights: ~2^-8 relative each

    # Resolving again reuses every merge; a step dir and the merged_hf dir resolve to the same model.
    stamp = (resolved / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_dir(ckpt) == resolve_model_dir(step) == resolve_model_dir(merged_hf) == resolved
    assert (resolved / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_eval_run_on_a_lora_checkpoint_generates_with_the_merged_model(lora_run, eval_data_dir, tmp_path):
    from ranktuner_verl.eval.cli import main as eval_main

    _, ckpt = lora_run
    out = tmp_path / "results"
    eval_main(["run", "--model", str(ckpt), "--out", str(out), "--backend", "hf", "--benchmarks", "amc23",
               "--data-dir", str(eval_data_dir), "--limit", "1", "--n", "1", "--max-new-tokens", "2"])
    settings = json.loads((out / "amc23" / "generation.json").read_text())
    assert settings["model"] == str(resolve_model_dir(ckpt))
    assert settings["model"].endswith("merged_hf_lora_merged")


def test_a_hf_dir_is_returned_as_is_and_bad_forms_are_refused_by_name(tmp_path, capsys):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_model_dir(hf) == hf.resolve()

    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_dir(tmp_path / "nope")
    with pytest.raises(ValueError, match="neither a Hugging Face model dir"):
        resolve_model_dir(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / "latest_checkpointed_iteration.txt").write_text("7\n")
    with pytest.raises(FileNotFoundError, match="names step 7, but .*global_step_7 is not a complete checkpoint"):
        resolve_model_dir(root)
    (root / "latest_checkpointed_iteration.txt").write_text("seven")
    with pytest.raises(ValueError, match="should hold a step number"):
        resolve_model_dir(root)

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
    main([str(hf)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(hf.resolve())


def test_a_work_dir_holding_another_sources_merge_is_refused(lora_run, tmp_path):
    _, ckpt = lora_run
    work = tmp_path / "work"
    (work / "merged_hf").mkdir(parents=True)
    (work / "merged_hf" / "config.json").write_text("{}")
    (work / "merged_hf" / SOURCE_FILE).write_text(json.dumps({"source": "/elsewhere/global_step_1"}))
    with pytest.raises(ValueError, match="already holds a model made from /elsewhere/global_step_1"):
        resolve_model_dir(ckpt, work_dir=work)


def test_evaluating_the_root_of_an_unfinished_run_warns_that_it_is_half_trained(tmp_path, capsys):
    """A root our trainer wrote (ranktuner_loss.json in its step) without ranktuner_finished.json: its run was
    interrupted or still trains. The step's merge is already there (claimed from it), so nothing is merged here."""
    from ranktuner_verl.checkpoints import FINISHED_FILE, FSDP_CONFIG, LATEST_FILE, LOSS_RECORD, MERGED_HF

    step = tmp_path / "global_step_2"
    (step / MERGED_HF).mkdir(parents=True)
    for name, text in ((FSDP_CONFIG, "{}"), (LOSS_RECORD, '{"loss": {"name": "sft"}}')):
        (step / name).write_text(text)
    (step / MERGED_HF / "config.json").write_text("{}")
    (step / MERGED_HF / SOURCE_FILE).write_text(json.dumps({"source": str(step)}))
    (tmp_path / LATEST_FILE).write_text("2")
    assert resolve_model_dir(tmp_path) == step / MERGED_HF
    assert f"{tmp_path} holds no {FINISHED_FILE}: its run has not finished" in capsys.readouterr().err
    (tmp_path / FINISHED_FILE).write_text(json.dumps({"step": 2}))
    assert resolve_model_dir(tmp_path) == step / MERGED_HF
    assert "has not finished" not in capsys.readouterr().err
