"""The engine hook: token statistics computed where the logits exist, inside verl's FSDP actor forward pass.

verl 0.9.1 hands the loss function to ``FSDPEngineWithLMHead.prepare_model_outputs`` as ``logits_processor_func``.
``install()`` wraps that method once verl imports its engine module (``on_import``), so that it is an exact
pass-through unless that loss asks for statistics (``stats_request``): our SFT loss object does (``StatsRequest``),
and so does verl's own ``partial(ppo_loss, config=actor_config)`` when ``actor_config.policy_loss.loss_mode`` is one of the modes registered here by
``register_policy_loss_request`` (``integration/rl/policy_loss.py``). Then the statistics (``ranktuner_verl.stats``, no
grad, a chunk of rows at a time) come from the same logits, temperature and labels as verl's ``log_probs``; they are
gathered over the Ulysses group and unpadded by verl's own ``_gather_and_unpad_packed`` and put next to ``log_probs``
in the model output as jagged tensors (keys ``stat_key(name)``). A stock verl run costs one attribute look-up and one
dict look-up per micro-batch.

This module imports neither loss module: each loss declares what it needs, and the hook serves it.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import torch

from ranktuner_verl.integration import fused_stats
from ranktuner_verl.integration.fused_stats import full_tensor
from ranktuner_verl.integration.on_import import when_imported

_ORIGINAL_ATTR = "_ranktuner_original_prepare_model_outputs"
STAT_KEY_PREFIX = "token_stat_"  # model_output keys; verl's own "entropy"/"sum_pi_squared" stay untouched


def stat_key(name: str) -> str:
    return STAT_KEY_PREFIX + name


@runtime_checkable
class StatsRequest(Protocol):
    """What a loss asks the engine for: the statistics (names of ``ranktuner_verl.stats.STATS``) it needs from the
    logits, the keyword arguments of ``token_stats`` (``top_k``, ``chunk_rows``), and whether only the response
    tokens are needed (RL: the policy loss sees nothing else; the statistics of prompt tokens are then NaN).
    ``deliver(model_output, micro_batch)``, if the request has it, is called once the statistics are in the output."""

    engine_stat_names: frozenset[str]
    stat_kwargs: Mapping[str, Any]


#: policy_loss.loss_mode -> (actor config -> StatsRequest), filled by ``register_policy_loss_request``.
_POLICY_LOSS_REQUESTS: dict[str, Callable[[Any], StatsRequest]] = {}


def register_policy_loss_request(loss_mode: str, request_for: Callable[[Any], StatsRequest]) -> None:
    """Make ``partial(ppo_loss, config=c)`` with ``c.policy_loss.loss_mode == loss_mode`` ask for
    ``request_for(c)``'s statistics."""
    _POLICY_LOSS_REQUESTS[loss_mode] = request_for


def stats_request(loss_fn) -> StatsRequest | None:
    """The statistics ``loss_fn`` (the engine's ``logits_processor_func``) asks for, or None (verl's own losses)."""
    if getattr(loss_fn, "engine_stat_names", None):
        return loss_fn if isinstance(loss_fn, StatsRequest) else None
    if _POLICY_LOSS_REQUESTS and isinstance(loss_fn, functools.partial):
        config = loss_fn.keywords.get("config")
        policy_loss = getattr(config, "policy_loss", None)
        request_for = _POLICY_LOSS_REQUESTS.get(getattr(policy_loss, "loss_mode", None))
        if request_for is not None:
            return request_for(config)
    return None


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
        request = stats_request(logits_processor_func) if logits_processor_func is not None else None
        if request is not None:
            model_output.update(compute_stats(self, output, output_args, micro_batch, request))
            deliver = getattr(request, "deliver", None)
            if deliver is not None:
                deliver(model_output, micro_batch)
        return model_output

    original_step = engine_cls.forward_step

    @functools.wraps(original_step)
    def forward_step(self, micro_batch, loss_function, forward_only):
        # with fused kernels there are no logits: the statistics are computed inside the model's forward (fused_stats)
        request = stats_request(loss_function) if loss_function is not None else None
        if request is not None and _fused(micro_batch):
            with fused_stats.collecting(request.engine_stat_names, request.stat_kwargs):
                return original_step(self, micro_batch, loss_function, forward_only)
        return original_step(self, micro_batch, loss_function, forward_only)

    setattr(engine_cls, _ORIGINAL_ATTR, original)
    engine_cls.prepare_model_outputs = prepare_model_outputs
    engine_cls.forward_step = forward_step


@torch.no_grad()
def compute_stats(engine, output, output_args, micro_batch, request: StatsRequest) -> dict[str, torch.Tensor]:
    """The statistics ``request.engine_stat_names`` per token, laid out exactly like verl's ``log_probs`` (jagged).

    Works on views of the model's logits, ``chunk_rows`` rows at a time (no [N, V] copy, with or without
    remove-padding); a temperature other than 1 divides each chunk in the logits' dtype (``token_stats``'s
    ``temperature``) exactly as verl's ``_scale_logits_by_temperature`` divides the whole tensor, so the statistics
    see the logits the log-probs see.
    With fused kernels (no logits) the statistics were computed during the forward (``fused_stats``).
    """
    from verl.utils import tensordict_utils as tu

    from ranktuner_verl.stats import token_stats

    names = sorted(request.engine_stat_names)  # sorted: the Ulysses gather is a collective, same order on each rank
    use_remove_padding = tu.get_non_tensor_data(data=micro_batch, key="use_remove_padding", default=True)
    cu_seqlens = micro_batch["input_ids"].offsets()
    if _fused(micro_batch):  # computed from the hidden states during the forward, every row (fused_stats)
        values = fused_stats.take(micro_batch, use_remove_padding, names)
        return _as_jagged(engine, values, names, output_args, cu_seqlens, use_remove_padding)
    labels = output_args["input_ids_rmpad_rolled"].reshape(-1)
    scaled = not output_args.get("temperature_is_one", False)
    logits = full_tensor(output.logits)
    vocab = logits.shape[-1]
    logits = logits.reshape(-1, vocab)  # a view: (total_nnz / sp + pad) rows, or bsz * max_len (right-padded)
    response_only = getattr(request, "response_only", False)
    # each jagged token's sequence and position: for the response rows, and for the padded layout
    seq_position = (_sequence_and_position(cu_seqlens.to(logits.device))
                    if response_only or not use_remove_padding else None)
    wanted = _wanted_tokens(micro_batch, *seq_position) if response_only else None

    if use_remove_padding:  # this rank's rows of the packed sequence (Ulysses shard + tail padding)
        n_out = logits.shape[0]
        out_rows = torch.arange(n_out, device=logits.device)
        if wanted is not None:
            shards = max(1, engine.ulysses_sequence_parallel_size)
            global_wanted = torch.zeros(n_out * shards, dtype=torch.bool, device=logits.device)
            global_wanted[: wanted.numel()] = wanted
            rank = _ulysses_rank(engine)
            out_rows = out_rows[global_wanted[rank * n_out : (rank + 1) * n_out]]
        logit_rows = out_rows
        temperature = output_args["temperature_rmpad"].reshape(-1) if scaled else None
    else:  # right-padded (bsz, max_len, V); no Ulysses on this path (verl's own rule)
        n_out = labels.numel()
        seq, position = seq_position
        out_rows = torch.arange(n_out, device=logits.device)
        if wanted is not None:
            out_rows = out_rows[wanted]
        logit_rows = seq[out_rows] * output.logits.shape[1] + position[out_rows]
        temperature = output_args["temperature"].reshape(-1)[seq] if scaled else None
    labels = labels[out_rows]
    if temperature is not None:
        temperature = temperature[out_rows]

    values = {name: torch.full((n_out,), float("nan"), device=logits.device) for name in names}
    for name, value in token_stats(logits, labels, names, rows=logit_rows, temperature=temperature,
                                   **request.stat_kwargs).items():  # autocast off, fp32 statistics
        values[name][out_rows] = value

    return _as_jagged(engine, values, names, output_args, cu_seqlens, use_remove_padding)


def _as_jagged(engine, values, names, output_args, cu_seqlens, use_remove_padding) -> dict[str, torch.Tensor]:
    """Flat per-token ``values`` (this rank's packed shard, or the valid tokens in order) gathered over the Ulysses
    group and unpadded like verl's log-probs, as jagged tensors under ``stat_key(name)``."""
    jagged = {}
    for name in names:
        flat = values[name]
        if use_remove_padding:
            flat = engine._gather_and_unpad_packed(flat, output_args["pad_size"])
        jagged[stat_key(name)] = torch.nested.nested_tensor_from_jagged(flat, cu_seqlens)
    return jagged


def _fused(micro_batch) -> bool:
    from verl.utils import tensordict_utils as tu

    return bool(tu.get_non_tensor_data(data=micro_batch, key="use_fused_kernels", default=False))


def _sequence_and_position(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each jagged token: its sequence and its position in that sequence."""
    lengths = cu_seqlens.diff()
    seq = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths)
    return seq, torch.arange(seq.numel(), device=cu_seqlens.device) - cu_seqlens[:-1][seq]


def _wanted_tokens(micro_batch, seq: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Bool [total_nnz] over the jagged tokens (``seq``, ``position``: ``_sequence_and_position``): the positions
    whose log-prob scores a response token (the rows verl's ``no_padding_2_padding`` keeps: prompt_len - 1 up to
    prompt_len + response_len - 1)."""
    prompts = micro_batch["prompts"]
    if prompts.is_nested:
        prompt_lens, response_lens = prompts.offsets().diff(), micro_batch["responses"].offsets().diff()
    else:  # padded prompts/responses: their lengths from the attention mask (as no_padding_2_padding)
        attention_mask = micro_batch["attention_mask"]
        prompt_lens = attention_mask[:, : prompts.shape[1]].sum(1)
        response_lens = attention_mask[:, prompts.shape[1] :].sum(1)
    first = prompt_lens.to(seq.device)[seq] - 1  # log_prob at position i scores token i + 1
    return (position >= first) & (position < first + response_lens.to(seq.device)[seq])


def _ulysses_rank(engine) -> int:
    if not getattr(engine, "use_ulysses_sp", False):
        return 0
    from verl.utils.ulysses import get_ulysses_sequence_parallel_rank

    return get_ulysses_sequence_parallel_rank()
