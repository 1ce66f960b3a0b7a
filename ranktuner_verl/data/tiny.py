"""Tiny local stand-ins for the real model, tokenizer and data: built here, never downloaded.

Used by the tests and the CPU quickstart. Everything is deterministic given the seed:
- a byte-level BPE tokenizer (a few hundred tokens, trained on the tiny corpus) with a ChatML chat template,
  like Qwen's, saved with ``save_pretrained``;
- a random Qwen2 causal LM (hidden 64, 2 layers) sized to that tokenizer;
- a small math chain-of-thought dataset in the ``messages`` schema that verl's ``MultiTurnSFTDataset`` reads,
  with the Qwen2.5-Math CoT system prompt and a final ``\\boxed{}`` answer.
"""

from __future__ import annotations

import random
from pathlib import Path

from ranktuner_verl.data.prompts import COT_SYSTEM_PROMPT, to_messages  # noqa: F401 (re-exported)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def math_cot_examples(n: int, seed: int = 0) -> list[dict]:
    """``n`` arithmetic word problems with step-by-step solutions ending in ``\\boxed{answer}``.

    Returns rows ``{"problem", "solution", "answer"}``.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 9)
        kind = rng.randrange(4)
        if kind == 0:
            problem = f"What is {a} + {b}?"
            solution = f"We add the two numbers: {a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."
            answer = a + b
        elif kind == 1:
            hi, lo = max(a, b), min(a, b)
            problem = f"Tom has {hi} apples and gives away {lo}. How many apples are left?"
            solution = f"He starts with {hi} and gives away {lo}, so {hi} - {lo} = {hi - lo}. The answer is \\boxed{{{hi - lo}}}."
            answer = hi - lo
        elif kind == 2:
            problem = f"A box holds {c} pens. How many pens are in {a} boxes?"
            solution = f"Each box holds {c} pens, so {a} boxes hold {a} * {c} = {a * c} pens. The answer is \\boxed{{{a * c}}}."
            answer = a * c
        else:
            problem = f"Compute {a} + {b} * {c}."
            solution = (
                f"First multiply: {b} * {c} = {b * c}. Then add: {a} + {b * c} = {a + b * c}. "
                f"The answer is \\boxed{{{a + b * c}}}."
            )
            answer = a + b * c
        rows.append({"problem": problem, "solution": solution, "answer": str(answer)})
    return rows


def build_tokenizer(out_dir: str | Path, vocab_size: int = 400, corpus: list[str] | None = None):
    """Train a byte-level BPE tokenizer with a ChatML template on ``corpus`` (default: the tiny math corpus) and save
    it (HF format) to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if corpus is None:
        corpus = [COT_SYSTEM_PROMPT]
        for row in math_cot_examples(400, seed=1234):
            corpus += [row["problem"], row["solution"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    hf.chat_template = CHATML_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    return hf


def qwen2_model(tokenizer, vocab_size: int | None = None, hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """A random Qwen2 causal LM (tied embeddings, 4 heads) for ``tokenizer``, initialised from ``seed``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_model(out_dir: str | Path, vocab_size: int | None = None, hidden_size: int = 64, num_layers: int = 2,
                seed: int = 0, tokenizer_dir: str | Path | None = None):
    """A random Qwen2 causal LM saved to ``out_dir`` (with the tokenizer, so the folder is a complete HF model dir).

    ``vocab_size`` defaults to the tokenizer's size; pass a larger one (e.g. 151936) to make the loss head dominate.
    """
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else build_tokenizer(out_dir)
    model = qwen2_model(tokenizer, vocab_size, hidden_size, num_layers, seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model, tokenizer


def write_sft_parquet(path: str | Path, n: int, seed: int = 0) -> Path:
    """A parquet of ``n`` math CoT conversations in verl's multi-turn SFT schema (column ``messages``)."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": to_messages(r["problem"], r["solution"])} for r in math_cot_examples(n, seed)]
    pd.DataFrame(rows).to_parquet(path)
    return path
