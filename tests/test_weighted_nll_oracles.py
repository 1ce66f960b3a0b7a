"""Our token-weighted loss against two independent implementations of the same losses.

- verl 0.9.1 ``verl.workers.utils.losses.sft_loss`` (NO_PADDING mode: jagged log-probs, unshifted loss mask that
  verl rolls left by one, global-token normalisation ``/ batch_num_tokens * dp_size``) is the oracle for ``"sft"``.
- TRL's ``SFTTrainer.compute_loss`` (fused LM head, ``loss_type="nll"`` and ``loss_type="dft"``) is the oracle for
  ``"sft"`` and ``"dft"`` on a real (tiny, local) causal LM, its tokenizer and TRL's own collator.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest
import torch

from ranktuner_verl import weighted_nll

V = 50
LENGTHS = (7, 4, 9)


# ---------------------------------------------------------------------------------------------------------------------
# verl
# ---------------------------------------------------------------------------------------------------------------------


def _verl_samples(gen: torch.Generator, lengths=LENGTHS):
    """Per-sequence samples as verl's SFT datasets emit them: token ids and an unshifted loss mask (1 on the tokens
    to be predicted). The first token of each sequence is prompt (mask 0): verl's flattened roll wraps the last
    position of a sequence onto the first token of the next one, which must not be a target."""
    samples = []
    for n in lengths:
        input_ids = torch.randint(0, V, (n,), generator=gen)
        loss_mask = (torch.rand(n, generator=gen) < 0.7).long()
        loss_mask[0] = 0
        loss_mask[-1] = 1  # the last token is a target (predicted from the position before it)
        samples.append({"input_ids": input_ids, "loss_mask": loss_mask})
    return samples


def verl_sft_inputs(samples, gen: torch.Generator, dp_size: int = 1, batch_num_tokens: int | None = None):
    """verl's SFT loss inputs from ``samples``, built with verl's own collator / tensordict helpers:
    (logits leaf [T, V], model_output {"log_probs"}, data, flat labels)."""
    from verl.utils import tensordict_utils as tu
    from verl.utils.dataset.dataset_utils import DatasetPadMode, SFTTensorCollator

    batch = SFTTensorCollator(DatasetPadMode.NO_PADDING)(samples)
    input_ids, loss_mask = batch["input_ids"], batch["loss_mask"]
    assert input_ids.is_nested and input_ids.layout == torch.jagged

    # as verl's FSDP engine: the label of flat position i is the (flattened) input id at i + 1
    flat_ids = input_ids.values()
    labels = torch.roll(flat_ids, shifts=-1, dims=0)
    logits = torch.randn(flat_ids.numel(), V, generator=gen, dtype=torch.float32).mul_(3).requires_grad_(True)
    log_probs_flat = torch.log_softmax(logits, dim=-1).gather(-1, labels[:, None]).squeeze(-1)
    log_probs = torch.nested.nested_tensor_from_jagged(values=log_probs_flat, offsets=input_ids.offsets())

    data = tu.get_tensordict(tensor_dict={"input_ids": input_ids, "loss_mask": loss_mask},
                             non_tensor_dict={"pad_mode": DatasetPadMode.NO_PADDING})
    local_tokens = int(loss_mask.values().sum())
    tu.assign_non_tensor(data, dp_size=dp_size,
                         batch_num_tokens=local_tokens if batch_num_tokens is None else batch_num_tokens)
    assert tu.get_non_tensor_data(data, "pad_mode", None) == DatasetPadMode.NO_PADDING
    return logits, {"log_probs": log_probs}, data, labels


def _verl_case(samples, gen: torch.Generator, dp_size: int, batch_num_tokens: int | None):
    """(logits leaf [T, V], verl's sft_loss, flat labels, flat shifted mask) of ``verl_sft_inputs``."""
    from verl.workers.utils.losses import sft_loss

    logits, model_output, data, labels = verl_sft_inputs(samples, gen, dp_size, batch_num_tokens)
    loss, _ = sft_loss(config=None, model_output=model_output, data=data, dp_group=None)
    shifted_mask = torch.roll(data["loss_mask"].values(), shifts=-1, dims=0).bool()
    return logits, loss, labels, shifted_mask


def test_sft_equals_verl_sft_loss():
    """Oracle: verl's sft_loss (NO_PADDING, dp_size=1). Same value and same gradient w.r.t. the logits."""
    gen = torch.Generator().manual_seed(0)
    logits, verl_loss, labels, mask = _verl_case(_verl_samples(gen), gen, dp_size=1, batch_num_tokens=None)
    assert 0 < int(mask.sum()) < mask.numel()  # a real mask: some positions are dropped
    (verl_grad,) = torch.autograd.grad(verl_loss, logits)

    ours_logits = logits.detach().clone().requires_grad_(True)
    ours = weighted_nll("sft", ours_logits, labels, mask)
    ours.backward()

    torch.testing.assert_close(ours.detach(), verl_loss.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_logits.grad, verl_grad, rtol=1e-6, atol=1e-6)
    assert verl_grad.abs().sum() > 0

    # not vacuous: verl's unshifted mask (no roll) gives a different loss, and so does DFT on the same tokens
    unshifted = torch.roll(mask, shifts=1, dims=0)
    assert not torch.allclose(weighted_nll("sft", logits.detach(), labels, unshifted), verl_loss.detach(), atol=1e-4)
    assert not torch.allclose(weighted_nll("dft", logits.detach(), labels, mask), verl_loss.detach(), atol=1e-4)


def test_sft_verl_global_token_normalisation():
    """Oracle: verl's sft_loss with dp_size=2. verl divides the local masked sum by the global token count and
    multiplies by dp_size, i.e. verl = ours * n_local * dp_size / batch_num_tokens (ours is the local mean). With
    batch_num_tokens = 2 * n_local the factor is exactly 1; with unequal ranks, the mean over ranks of verl's losses
    (what DDP's gradient averaging optimises) is our loss on the concatenated global batch."""
    gen = torch.Generator().manual_seed(1)
    samples0 = _verl_samples(gen, LENGTHS)
    samples1 = _verl_samples(gen, (5, 11))
    n0 = sum(int(s["loss_mask"].sum()) for s in samples0)
    n1 = sum(int(s["loss_mask"].sum()) for s in samples1)
    assert n0 != n1

    # (a) batch_num_tokens = twice the local count: verl's value == our local mean
    logits, verl_loss, labels, mask = _verl_case(samples0, gen, dp_size=2, batch_num_tokens=2 * n0)
    assert int(mask.sum()) == n0
    ours = weighted_nll("sft", logits.detach(), labels, mask)
    torch.testing.assert_close(verl_loss.detach(), ours, rtol=1e-6, atol=1e-6)

    # (b) the general relation, with the other rank holding n1 != n0 tokens
    g0 = torch.Generator().manual_seed(2)
    g1 = torch.Generator().manual_seed(3)
    l0, v0, y0, m0 = _verl_case(samples0, g0, dp_size=2, batch_num_tokens=n0 + n1)
    l1, v1, y1, m1 = _verl_case(samples1, g1, dp_size=2, batch_num_tokens=n0 + n1)
    ours0 = weighted_nll("sft", l0.detach(), y0, m0)
    ours1 = weighted_nll("sft", l1.detach(), y1, m1)
    torch.testing.assert_close(v0.detach(), ours0 * n0 * 2 / (n0 + n1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v1.detach(), ours1 * n1 * 2 / (n0 + n1), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(v0.detach(), ours0, rtol=1e-3)  # the factor is not 1 here

    # (c) averaged over the two ranks, verl's loss (and gradient) is our mean over the global batch
    global_logits = torch.cat([l0.detach(), l1.detach()]).requires_grad_(True)
    ours_global = weighted_nll("sft", global_logits, torch.cat([y0, y1]), torch.cat([m0, m1]))
    ours_global.backward()
    verl_mean = (v0 + v1) / 2
    grads = torch.autograd.grad(verl_mean, [l0, l1])
    torch.testing.assert_close(verl_mean.detach(), ours_global.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(global_logits.grad, torch.cat(grads), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# TRL
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from ranktuner_verl.data.tiny import build_model

    out = tmp_path_factory.mktemp("tiny_trl")
    build_model(out / "model")
    return out / "model"


def _trl_trainer(model_dir, out_dir, loss_type: str):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ranktuner_verl.data.tiny import math_cot_examples

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = math_cot_examples(4, seed=7)
    dataset = Dataset.from_list([{"prompt": r["problem"] + "\n", "completion": r["solution"]} for r in rows])
    args = SFTConfig(
        output_dir=str(out_dir),
        loss_type=loss_type,
        report_to=[],
        per_device_train_batch_size=4,
        bf16=False,
        fp16=False,
        use_cpu=True,
        max_length=256,
        dataloader_num_workers=0,
        seed=0,
        save_strategy="no",
        logging_strategy="no",
    )
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def _param_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("trl_loss_type", "ours_name", "other_name"), [("dft", "dft", "sft"), ("nll", "sft", "dft")])
def test_matches_trl_sft_trainer_compute_loss(tiny_model_dir, tmp_path, trl_loss_type, ours_name, other_name):
    """Oracle: TRL's SFTTrainer.compute_loss (fused LM head; "dft" = -log p * sg(p), "nll" = -log p; summed over
    label tokens / their count). Ours on the full logits, shifted as the fused head shifts (hidden[:, :-1] scores
    labels[:, 1:]), masked by labels != -100: same value, same gradients on every model parameter."""
    trainer = _trl_trainer(tiny_model_dir, tmp_path / "out", trl_loss_type)
    model = trainer.model
    model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    batch = trainer._prepare_inputs(batch)
    labels = batch["labels"]
    assert "attention_mask" in batch and (batch["attention_mask"] == 0).any()  # padded rows
    assert (labels == -100).any() and (labels != -100).any()  # prompt and padding are masked out

    model.zero_grad(set_to_none=True)
    trl_loss = trainer.compute_loss(model, dict(batch))
    trl_loss.backward()
    trl_grads = _param_grads(model)

    model.zero_grad(set_to_none=True)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    flat_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    flat_labels = labels[:, 1:].reshape(-1)
    mask = flat_labels != -100
    safe_labels = flat_labels.clamp(min=0)
    ours = weighted_nll(ours_name, flat_logits, safe_labels, mask)
    ours.backward()
    our_grads = _param_grads(model)

    torch.testing.assert_close(ours.detach(), trl_loss.detach(), rtol=1e-5, atol=1e-7)
    assert trl_grads.keys() == our_grads.keys() and len(trl_grads) > 0
    # DFT gradients are small (~p/N), so the absolute tolerance is relative to the largest gradient entry
    scale = max(g.abs().max().item() for g in trl_grads.values())
    assert scale > 0
    for name in trl_grads:
        torch.testing.assert_close(our_grads[name], trl_grads[name], rtol=1e-4, atol=1e-5 * scale, msg=name)

    # not vacuous: the other method gives a different loss and different gradients on the same batch ...
    model.zero_grad(set_to_none=True)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    other = weighted_nll(other_name, logits[:, :-1].reshape(-1, logits.shape[-1]).float(), safe_labels, mask)
    other.backward()
    other_grads = _param_grads(model)
    assert abs(other.item() - trl_loss.item()) > 0.1 * abs(trl_loss.item())
    assert any(not torch.allclose(other_grads[n], trl_grads[n], rtol=1e-4, atol=1e-5 * scale) for n in trl_grads)
    # ... and so does the unshifted alignment (logit t scoring label t)
    with torch.no_grad():
        unshifted_labels = labels[:, :-1].reshape(-1)
        unshifted = weighted_nll(ours_name, flat_logits, unshifted_labels.clamp(min=0), unshifted_labels != -100)
    assert abs(unshifted.item() - trl_loss.item()) > 0.1 * abs(trl_loss.item())
