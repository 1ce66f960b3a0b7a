"""copy3: a verifiable task a tiny random model learns with GRPO on a laptop CPU in minutes.

The prompt is three digits and ``=`` (``"407="``); the answer is the same three digits (``"407"``); the reward is
the share of the three digits reproduced in place (0, 1/3, 2/3 or 1). A random policy scores about 1/16 per digit
(16-token vocabulary), so learning shows as the reward climbing from ~0.06 towards 1. Built locally, nothing
downloaded: a byte-level tokenizer of 16 tokens (the three ChatML specials, the ten digits, ``=``, space and
newline, each one token: no merges), a random Qwen2 (``tiny.qwen2_model``) and parquet files in the schema verl's
``RLHFDataset`` and reward loop read (``prompt`` messages, ``reward_model.ground_truth``, ``data_source``).

``compute_score`` is the reward: ``reward.custom_reward_function.path=<this file>`` with ``name=compute_score``.
"""

from __future__ import annotations

import random
from pathlib import Path

DATA_SOURCE = "copy3"
ALPHABET = "0123456789= \n"
RAW_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"  # the prompt as is: "407="


def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float:
    """Share of the three digits of ``ground_truth`` that ``solution_str`` reproduces in place."""
    return sum(a == b for a, b in zip(solution_str[: len(ground_truth)], ground_truth)) / len(ground_truth)


def build_tokenizer(out_dir: str | Path):
    """A byte-level BPE tokenizer over ``ALPHABET`` with no merges (every character one token) and the ChatML
    specials (``<|im_end|>`` ends a response, ``<|endoftext|>`` pads), saved with ``save_pretrained``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ranktuner_verl.data.tiny import SPECIAL_TOKENS

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    symbols = [byte_level.pre_tokenize_str(ch)[0][0] for ch in ALPHABET]  # the byte-level form, "\n" -> "Ċ"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=len(SPECIAL_TOKENS) + len(symbols), special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=symbols, limit_alphabet=len(symbols), show_progress=False)
    tok.train_from_iterator([ALPHABET], trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 bos_token=None, additional_special_tokens=["<|im_start|>"])
    hf.chat_template = RAW_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    return hf


def build_model(out_dir: str | Path, hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """The tokenizer and a random Qwen2 for it in ``out_dir`` (a complete HF model folder)."""
    from ranktuner_verl.data.tiny import qwen2_model

    tokenizer = build_tokenizer(out_dir)
    model = qwen2_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    model.save_pretrained(out_dir)
    return model, tokenizer


def write_parquet(path: str | Path, n: int, seed: int = 0) -> Path:
    """``n`` distinct copy3 prompts (seeded) in verl's RL dataset schema."""
    import pandas as pd

    numbers = random.Random(seed).sample(range(1000), n)
    rows = [{"data_source": DATA_SOURCE, "prompt": [{"role": "user", "content": f"{x:03d}="}],
             "reward_model": {"style": "rule", "ground_truth": f"{x:03d}"}, "extra_info": {"index": i}}
            for i, x in enumerate(numbers)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path
