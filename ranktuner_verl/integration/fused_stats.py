"""The engine hook's fused branch: the token statistics with ``model.use_fused_kernels=True``.

With fused kernels verl never builds the logits: its patched model forward (``verl/models/transformers/*.py``,
``forward_with_torch_backend``) hands the last hidden states, the LM head weight, the labels (already rolled, and
sliced for Ulysses) and the temperature to ``FusedLinearForPPO.forward`` (``verl/utils/experimental/
torch_functional.py``; its "torch" and "liger" backends), which returns the log-probs. While one of our losses runs
a micro-batch (``collecting``), that call is intercepted: the statistics the loss declares are computed first, without
gradient, from exactly those arguments by ``ranktuner_verl.stats.hidden.token_stats_from_hidden`` (one chunk of
logits at a time), then verl's kernel runs unchanged. The engine hook (``engine_hook``) then lays them out like the
log-probs (``take``). Computing them inside the forward matters: FSDP may free the gathered weight once the forward
returns.

As verl's fused forwards do: a DTensor LM head (tensor parallel, or an FSDP2-sharded untied head) is gathered with
``full_tensor()``; a tied head is the embedding matrix, which verl passes here like any other. verl's "triton"
backend calls another kernel (``linear_cross_entropy``) and is refused at start-up (``unsupported_backend``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Iterable, Mapping

import torch

#: The ``model.fused_kernel_options.impl_backend`` values whose kernel goes through ``FusedLinearForPPO``.
SUPPORTED_BACKENDS = ("torch", "liger")
_ORIGINAL_ATTR = "_ranktuner_original_forward"
_CURRENT: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("ranktuner_fused_request", default=None)


class _Request:
    """The statistics one micro-batch needs, and, once the fused kernel has been called, their values."""

    def __init__(self, names: frozenset[str], stat_kwargs: Mapping):
        self.names, self.stat_kwargs = names, dict(stat_kwargs)
        self.stats: dict[str, torch.Tensor] | None = None

    def compute(self, hidden_states, vocab_weights, input_ids, temperature) -> None:
        from ranktuner_verl.stats.hidden import token_stats_from_hidden

        if self.stats is not None:
            raise RuntimeError("the fused LM head ran twice in one forward; ranktuner_verl cannot tell which "
                               "call gives the log-probs. Set model.use_fused_kernels=False.")
        self.stats = token_stats_from_hidden(full_tensor(hidden_states).detach(), full_tensor(vocab_weights).detach(),
                                             input_ids, self.names, temperature=float(temperature), **self.stat_kwargs)


def unsupported_backend(use_fused_kernels: bool, fused_kernel_options: Mapping | None) -> str | None:
    """Why the statistics cannot be computed under these ``model.*`` settings (None when they can)."""
    if not use_fused_kernels:
        return None
    backend = (fused_kernel_options or {}).get("impl_backend", "torch")
    if backend in SUPPORTED_BACKENDS:
        return None
    return (f"model.fused_kernel_options.impl_backend={backend!r} computes the log-probs in a kernel that the "
            f"token statistics cannot share; use impl_backend={' or '.join(SUPPORTED_BACKENDS)} "
            "(or model.use_fused_kernels=False)")


@contextlib.contextmanager
def collecting(names: Iterable[str], stat_kwargs: Mapping):
    """Within this block, the fused LM head computes the statistics ``names`` too (read them with ``take``)."""
    _install()
    token = _CURRENT.set(_Request(frozenset(names), stat_kwargs))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def take(micro_batch, use_remove_padding: bool, names) -> dict[str, torch.Tensor]:
    """The statistics of this micro-batch, flat in the layout of verl's fused log-probs before their Ulysses gather:
    this rank's packed shard with its pad (remove-padding), or the valid tokens of each row in order (padded)."""
    request = _CURRENT.get()
    if request is None or request.stats is None:
        raise RuntimeError(
            f"this loss needs the token statistics {sorted(names)}, but the model's fused forward did not go through "
            "verl's FusedLinearForPPO (a model verl's fused kernels do not patch, or another backend). "
            "Set model.use_fused_kernels=False."
        )
    stats, request.stats = request.stats, None
    if use_remove_padding:
        return {name: value.squeeze(0) for name, value in stats.items()}  # (1, total_nnz / sp + pad)
    # (bsz, max_len): keep each row's valid tokens, as verl does with output.log_probs
    lengths = micro_batch["input_ids"].offsets().diff()
    some = next(iter(stats.values()))
    valid = torch.arange(some.shape[1], device=some.device) < lengths.to(some.device).unsqueeze(1)
    return {name: value[valid] for name, value in stats.items()}


def _install() -> None:
    """Wrap ``FusedLinearForPPO.forward`` (idempotent): a pass-through outside ``collecting``."""
    from verl.utils.experimental.torch_functional import FusedLinearForPPO

    if hasattr(FusedLinearForPPO, _ORIGINAL_ATTR):
        return
    original = FusedLinearForPPO.forward

    @functools.wraps(original)
    def forward(self, hidden_states, vocab_weights, input_ids, temperature=1.0):
        request = _CURRENT.get()
        if request is not None:
            request.compute(hidden_states, vocab_weights, input_ids.to(torch.int64), temperature)
        return original(self, hidden_states, vocab_weights, input_ids, temperature)

    setattr(FusedLinearForPPO, _ORIGINAL_ATTR, original)
    FusedLinearForPPO.forward = forward


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor (sharded over the vocabulary by tensor parallelism, or by FSDP2) gathered whole, as verl does with
    the logits and, in its fused forwards, with the LM head weight."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
