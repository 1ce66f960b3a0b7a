"""The engine hook: token statistics computed where the logits exist, inside verl's FSDP actor forward pass.

verl 0.9.1 hands the loss function to ``FSDPEngineWithLMHead.prepare_model_outputs`` as ``logits_processor_func``.
``install()`` wraps that method, when verl's engine module gets imported, so that it is an exact pass-through unless
that argument is one of our ``WeightedSFTLoss`` objects; only then are the statistics the method declares
(``ranktuner_verl.stats.token_stats``, no grad, in chunks) computed from the same logits and labels verl's
``log_probs`` come from, gathered over the Ulysses group and unpadded by verl's own ``_gather_and_unpad_packed``, and
put next to ``log_probs`` in the model output as jagged tensors. A stock verl run never reaches our code past one
``isinstance`` check.
"""

from __future__ import annotations

import functools
import importlib

import torch

from ranktuner_verl.integration.on_import import when_imported

_ORIGINAL_ATTR = "_ranktuner_original_prepare_model_outputs"
STAT_KEY_PREFIX = "token_stat_"  # model_output keys; verl's own "entropy"/"sum_pi_squared" stay untouched


def stat_key(name: str) -> str:
    return STAT_KEY_PREFIX + name


ENGINE_MODULE = "verl.workers.engine.fsdp.transformer_impl"  # defines FSDPEngineWithLMHead


def is_installed() -> bool:
    """Whether ``FSDPEngineWithLMHead`` is wrapped; imports verl's engine (our trainers build it anyway)."""
    return hasattr(importlib.import_module(ENGINE_MODULE).FSDPEngineWithLMHead, _ORIGINAL_ATTR)


def install() -> None:
    """Wrap ``FSDPEngineWithLMHead.prepare_model_outputs`` once verl's engine module is imported (or now, if it is):
    ``import verl`` alone does not load the engine."""
    when_imported(ENGINE_MODULE, _wrap_engine)


def _wrap_engine(engine_module) -> None:
    """Idempotent."""
    engine_cls = engine_module.FSDPEngineWithLMHead
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

    setattr(engine_cls, _ORIGINAL_ATTR, original)
    engine_cls.prepare_model_outputs = prepare_model_outputs


def _is_our_loss(func) -> bool:
    from ranktuner_verl.integration.loss import WeightedSFTLoss

    return isinstance(func, WeightedSFTLoss)


@torch.no_grad()
def _token_stats_as_jagged(engine, output, output_args, micro_batch, loss) -> dict[str, torch.Tensor]:
    """The statistics ``loss.engine_stat_names`` per token, laid out exactly like verl's ``log_probs`` (jagged)."""
    from verl.utils import tensordict_utils as tu

    from ranktuner_verl.stats import token_stats

    if tu.get_non_tensor_data(data=micro_batch, key="use_fused_kernels", default=False):
        raise RuntimeError(
            f"loss={loss.method.name} needs the statistics {sorted(loss.engine_stat_names)} from the full logits, "
            "but model.use_fused_kernels=True never materialises them. Set model.use_fused_kernels=False."
        )
    use_remove_padding = tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True)
    cu_seqlens = micro_batch["input_ids"].offsets()
    labels = output_args["input_ids_rmpad_rolled"]

    if use_remove_padding:
        logits = _full(output.logits.squeeze(0))  # (total_nnz / sp + pad, V): this rank's Ulysses shard
        if not output_args.get("temperature_is_one", False):
            logits = logits / output_args["temperature_rmpad"].unsqueeze(-1)
    else:
        logits = _full(output.logits)  # (bsz, max_len, V), right-padded
        if not output_args.get("temperature_is_one", False):
            logits = logits / output_args["temperature"].view(-1, 1, 1)
        lengths = cu_seqlens.diff().tolist()
        logits = torch.cat([row[:length] for row, length in zip(logits, lengths)])

    stats = token_stats(logits.detach(), labels, loss.engine_stat_names, **loss.stat_kwargs)
    jagged = {}
    # sorted: the gather is a collective, so every Ulysses rank must gather the statistics in the same order (set
    # order follows the per-process hash seed)
    for name in sorted(loss.engine_stat_names):
        values = stats[name]
        if use_remove_padding:
            values = engine._gather_and_unpad_packed(values, output_args["pad_size"])
        jagged[stat_key(name)] = torch.nested.nested_tensor_from_jagged(values, cu_seqlens)
    return jagged


def _full(logits: torch.Tensor) -> torch.Tensor:
    """Logits sharded over the vocabulary (tensor parallel DTensor) gathered whole, as verl does for log-probs."""
    from torch.distributed.tensor import DTensor

    return logits.full_tensor() if isinstance(logits, DTensor) else logits
