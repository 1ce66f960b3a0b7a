"""One forward pass of a Hugging Face causal LM over (prompt, response) examples, as a per-token table.

Memory stays bounded: examples go through the model in batches of at most ``batch_tokens`` padded tokens, only
the response positions of the last hidden state are kept, and the LM head runs on ``logit_chunk`` of them at a
time, so at most ``logit_chunk x V`` logits exist at once. Token statistics come from
``ranktuner_verl.stats.token_stats`` and every method's weights from ``get_method(...).weights`` over the whole
set at once: batch-level statistics (TALR's median NLL, DEFT-cayley's mean p) are taken over all response tokens
here, not per micro-batch as in training, so the table does not depend on the batch size.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..methods import METHODS, get_method
from ..stats import token_stats
from .examples import TokenizedExample


def split_methods(text: str) -> list[str]:
    """``"sft,dft,ranktuner:base=one,form=exact"`` -> ``["sft", "dft", "ranktuner:base=one,form=exact"]``.

    Commas separate the list, as in every list option; an item ``key=value`` (no method name has ``=``) is one more
    parameter of the method before it.
    """
    specs: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" in item and ":" not in item:
            if not specs:
                raise ValueError(f"Methods {text!r}: parameter {item!r} comes before any method name.")
            separator = ":" if ":" not in specs[-1] else "" if specs[-1].endswith(":") else ","
            specs[-1] += separator + item
        else:
            specs.append(item)
    return specs


def parse_method(spec: str):
    """``"name"`` or ``"name:key=value,key=value"`` -> a method object (ValueError on an unknown name/param)."""
    name, _, param_text = spec.partition(":")
    if name.strip() not in METHODS:
        raise ValueError(f"unknown method {name.strip()!r}; valid: {', '.join(METHODS)}")
    params = {}
    for item in filter(None, param_text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Method spec {spec!r}: parameter {item!r} is not key=value "
                             "(example: 'ranktuner:base=one,form=exact').")
        try:
            params[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            params[key.strip()] = value.strip()
    return get_method(name.strip(), **params)


def build_methods(specs: list[str]) -> dict:
    """Method objects keyed by their spec string (the label used in tables and column names ``w:<label>``)."""
    if not specs:
        raise ValueError("No methods given; name at least one of the registered methods.")
    methods = {spec: parse_method(spec) for spec in specs}
    stat_settings(methods)  # settings that one forward pass cannot serve fail here, before any work
    return methods


def stat_settings(methods: dict) -> dict:
    """The statistics settings (EAFT's top_k) of all methods, which one forward pass must share."""
    merged: dict = {}
    for label, method in methods.items():
        for key, value in method.stat_kwargs.items():
            if merged.setdefault(key, value) != value:
                raise ValueError(f"Methods ask for different statistics settings ({key}={merged[key]} and "
                                 f"{key}={value} for {label}); run them in separate diagnoses.")
    return merged


def load_tokenizer(model_dir: str | Path):
    """The tokenizer of an HF model dir (``resolve_model_dir`` makes one of every other model form)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def load_model(model_dir: str | Path, device: str = "auto", dtype: str = "auto"):
    """A causal LM from an HF model dir, in eval mode; ``auto``: CUDA in bf16 if present, else CPU in fp32."""
    if not any(Path(model_dir).glob("*.safetensors")) and not any(Path(model_dir).glob("pytorch_model*.bin")):
        raise FileNotFoundError(f"{model_dir} has a config but no model weights; pass a folder written by "
                                "save_pretrained, a verl checkpoint global_step_N or a checkpoint root.")
    from transformers import AutoModelForCausalLM

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    return model.to(device).eval()


def _batches(examples: list[TokenizedExample], batch_tokens: int):
    """Longest first; each batch holds as many examples as fit ``batch_tokens`` padded tokens (at least one)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].prompt_ids) - len(examples[i].response_ids))
    batch: list[int] = []
    for i in order:
        width = len(examples[batch[0]].prompt_ids) + len(examples[batch[0]].response_ids) if batch else 0
        if batch and (len(batch) + 1) * width > batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _lm_head(model):
    """The output layer as a function of hidden states (with Gemma-style final logit soft-capping if configured)."""
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return (lambda h: torch.tanh(head(h) / cap) * cap) if cap else head


@torch.inference_mode()
def response_stats(model, examples: list[TokenizedExample], needs, stat_kwargs: dict | None = None,
                   batch_tokens: int = 8192, logit_chunk: int = 1024, progress: bool = True) -> dict[str, torch.Tensor]:
    """Per-token statistics of every response token, examples in the given order, concatenated (fp32, on CPU).

    The logits at position i predict token i + 1, so the response tokens y_t of an example with a prompt of P
    tokens are scored by the hidden states at positions P - 1 ... P + R - 2.
    """
    device = next(model.parameters()).device
    decoder, head = model.get_decoder(), _lm_head(model)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    per_example: dict[int, dict[str, torch.Tensor]] = {}
    for batch in tqdm(list(_batches(examples, batch_tokens)), desc="forward", disable=not progress):
        sequences = [examples[i].prompt_ids + examples[i].response_ids for i in batch]
        width = max(map(len, sequences))
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, :len(seq)] = torch.tensor(seq)
            attention_mask[row, :len(seq)] = 1
        hidden = decoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                         use_cache=False).last_hidden_state
        spans = [(len(examples[i].prompt_ids) - 1, len(examples[i].response_ids)) for i in batch]
        packed = torch.cat([hidden[row, start:start + n] for row, (start, n) in enumerate(spans)])
        labels = torch.tensor([t for i in batch for t in examples[i].response_ids], device=device)
        chunks = [token_stats(head(packed[a:a + logit_chunk]), labels[a:a + logit_chunk], needs, **(stat_kwargs or {}))
                  for a in range(0, len(labels), logit_chunk)]
        stats = {name: torch.cat([c[name] for c in chunks]).float().cpu() for name in chunks[0]}
        sizes = [n for _, n in spans]
        for i, parts in zip(batch, zip(*(torch.split(stats[name], sizes) for name in stats))):
            per_example[i] = dict(zip(stats, parts))
    names = list(per_example[0])
    return {name: torch.cat([per_example[i][name] for i in range(len(examples))]) for name in names}
