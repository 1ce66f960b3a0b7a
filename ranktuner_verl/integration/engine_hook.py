"""The engine hook: token statistics computed where the logits exist, inside verl's FSDP actor forward pass.

verl 0.9.1 hands the loss function to ``FSDPEngineWithLMHead.prepare_model_outputs`` as ``logits_processor_func``.
``install()`` wraps that method so that it is an exact pass-through unless that argument is one of our
``WeightedSFTLoss`` objects; only then are the statistics the method declares (``ranktuner_verl.stats.token_stats``,
no grad, in chunks) computed from the same logits and labels verl's ``log_probs`` come from, gathered over the
Ulysses group and unpadded by verl's own ``_gather_and_unpad_packed``, and put next to ``log_probs`` in the model
output as jagged tensors. A stock verl run never reaches our code past one ``isinstance`` check.
"""

from __future__ import annotations

import functools

import torch

from ranktuner_verl.integration import fused_stats
from ranktuner_verl.integration.fused_stats import full_tensor

_ORIGINAL_ATTR = "_ranktuner_original_prepare_model_outputs"
_ORIGINAL_STEP_ATTR = "_ranktuner_original_forward_step"
STAT_KEY_PREFIX = "token_stat_"  # model_output keys; verl's own "entropy"/"sum_pi_squared" stay untouched


def stat_key(name: str) -> str:
    return STAT_KEY_PREFIX + name


def _engine_class():
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    return FSDPEngineWithLMHead


def is_installed() -> bool:
    return hasattr(_engine_class(), _ORIGINAL_ATTR)


def install() -> None:
    """Wrap ``FSDPEngineWithLMHead.prepare_model_outputs`` (idempotent)."""
    engine_cls = _engine_class()
    if hasattr(engine_cls, _ORIGINAL_ATTR):
        return
    original = engine_cls.prepare_model_outputs

    @functools.wraps(original)
    def prepare_model_outputs(self, output, output_args, micro_batch, logits_processor_func):
        model_output = original(self, output, output_args, micro_batch, logits_processor_func)
        # the getattr is the cheap filter for verl's own loss functions; the isinstance makes sure the loss is ours
        if getattr(logits_processor_func, "engine_stat_names", None) and _is_our_loss(logits_processor_func):
            model_output.update(_token_stats_as_jagged(self, output, output_args, micro_batch, logits_processor_func))
        return model_output

    original_step = engine_cls.forward_step

    @functools.wraps(original_step)
    def forward_step(self, micro_batch, loss_function, forward_only):
        # with fused kernels the statistics are computed inside the model's forward (fused_stats)
        if getattr(loss_function, "engine_stat_names", None) and _is_our_loss(loss_function) and _fused(micro_batch):
            with fused_stats.collecting(loss_function.engine_stat_names, loss_function.stat_kwargs):
                return original_step(self, micro_batch, loss_function, forward_only)
        return original_step(self, micro_batch, loss_function, forward_only)

    setattr(engine_cls, _ORIGINAL_ATTR, original)
    setattr(engine_cls, _ORIGINAL_STEP_ATTR, original_step)
    engine_cls.prepare_model_outputs = prepare_model_outputs
    engine_cls.forward_step = forward_step


def _is_our_loss(func) -> bool:
    from ranktuner_verl.integration.loss import WeightedSFTLoss

    return isinstance(func, WeightedSFTLoss)


@torch.no_grad()
def _token_stats_as_jagged(engine, output, output_args, micro_batch, loss) -> dict[str, torch.Tensor]:
    """The statistics ``loss.engine_stat_names`` per token, laid out exactly like verl's ``log_probs`` (jagged)."""
    from verl.utils import tensordict_utils as tu

    use_remove_padding = tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True)
    if _fused(micro_batch):
        stats = fused_stats.take(micro_batch, use_remove_padding, loss.method.name)
    else:
        stats = _stats_from_logits(output, output_args, micro_batch, loss, use_remove_padding)
    cu_seqlens = micro_batch["input_ids"].offsets()
    jagged = {}
    # sorted: the gather is a collective, so every Ulysses rank must gather the statistics in the same order (set
    # order follows the per-process hash seed)
    for name in sorted(loss.engine_stat_names):
        values = stats[name]
        if use_remove_padding:
            values = engine._gather_and_unpad_packed(values, output_args["pad_size"])
        jagged[stat_key(name)] = torch.nested.nested_tensor_from_jagged(values, cu_seqlens)
    return jagged


def _stats_from_logits(output, output_args, micro_batch, loss, use_remove_padding) -> dict[str, torch.Tensor]:
    """The statistics from the logits of an unfused forward: this rank's packed shard, or the valid tokens in order."""
    from ranktuner_verl.stats import token_stats

    if use_remove_padding:
        logits = full_tensor(output.logits.squeeze(0))  # (total_nnz / sp + pad, V): this rank's Ulysses shard
        if not output_args.get("temperature_is_one", False):
            logits = logits / output_args["temperature_rmpad"].unsqueeze(-1)
    else:
        logits = full_tensor(output.logits)  # (bsz, max_len, V), right-padded
        if not output_args.get("temperature_is_one", False):
            logits = logits / output_args["temperature"].view(-1, 1, 1)
        lengths = micro_batch["input_ids"].offsets().diff().tolist()
        logits = torch.cat([row[:length] for row, length in zip(logits, lengths)])
    return token_stats(logits.detach(), output_args["input_ids_rmpad_rolled"], loss.engine_stat_names,
                       **loss.stat_kwargs)


def _fused(micro_batch) -> bool:
    from verl.utils import tensordict_utils as tu

    return bool(tu.get_non_tensor_data(data=micro_batch, key="use_fused_kernels", default=False))
