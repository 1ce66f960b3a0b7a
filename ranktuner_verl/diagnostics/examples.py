"""SFT examples for the diagnostics: read them (parquet or jsonl) and tokenise them with the model's chat template.

Accepted rows, in this order of preference:
- ``messages``: chat turns (system/user/assistant); the last assistant turn is the response, the turns before it
  the prompt (verl's multi-turn SFT schema, what ``ranktuner_verl.data.tiny.write_sft_parquet`` writes);
- ``prompt`` and ``response``: plain strings; the prompt becomes one user turn;
- ``problem`` and ``solution``: math benchmark rows, read the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..data.jsonl import read_jsonl

ROW_SCHEMAS = "'messages' (chat turns ending with an assistant turn), 'prompt' + 'response', or 'problem' + 'solution'"


@dataclass
class Example:
    """One conversation: the turns before the response, and the response text (the last assistant turn)."""

    prompt_messages: list[dict]
    response: str


@dataclass
class TokenizedExample:
    """Token ids of one example. ``response_ids`` are the tokens of the assistant turn as the chat template writes
    it (text plus the template's end-of-turn tokens); ``content`` is the slice of ``response_ids`` that holds the
    assistant's own text, the only part noise may be put into. ``is_noise`` flags injected tokens."""

    index: int
    prompt_ids: list[int]
    response_ids: list[int]
    content: slice
    is_noise: list[bool] = field(default_factory=list)

    def __post_init__(self):
        if not self.is_noise:
            self.is_noise = [False] * len(self.response_ids)


def _row_to_example(row: dict, where: str) -> Example:
    messages = row.get("messages")
    if messages is not None:
        messages = [dict(m) for m in messages]  # parquet gives numpy arrays of dicts
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            raise ValueError(f"{where}: 'messages' has no assistant turn; the last assistant turn is the response.")
        return Example(messages[:last], str(messages[last]["content"]))
    for prompt_key, response_key in (("prompt", "response"), ("problem", "solution")):
        if row.get(prompt_key) is not None and row.get(response_key) is not None:
            return Example([{"role": "user", "content": str(row[prompt_key])}], str(row[response_key]))
    raise ValueError(f"{where}: columns {sorted(row)} match no known schema; expected {ROW_SCHEMAS}.")


def load_examples(path: str | Path, max_examples: int | None = None) -> list[Example]:
    """Read SFT examples from a ``.parquet`` or ``.jsonl`` file (see the module docstring for the row schemas)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Data file {path} does not exist; pass a .parquet or .jsonl file of SFT examples.")
    if path.suffix == ".parquet":
        rows = pd.read_parquet(path).to_dict(orient="records")
    elif path.suffix in (".jsonl", ".json"):
        rows = read_jsonl(path, max_examples)
    else:
        raise ValueError(f"Data file {path} has suffix {path.suffix!r}; use .parquet or .jsonl.")
    rows = rows[:max_examples] if max_examples is not None else rows
    if not rows:
        raise ValueError(f"Data file {path} holds no examples; the diagnostics need at least one "
                         f"(schema: {ROW_SCHEMAS}).")
    return [_row_to_example(row, f"{path}, row {i}") for i, row in enumerate(rows)]


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` alone (no BOS/EOS added)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def tokenize_example(tokenizer, example: Example, index: int = 0) -> TokenizedExample:
    """Prompt ids = the chat template of the prompt turns with the generation prompt; response ids = what the full
    conversation adds after that, tokenised as (text before the content, the content, text after it)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("The tokenizer has no chat template; the diagnostics tokenise examples with it. "
                         "Use a chat/instruct model dir or set tokenizer.chat_template.")
    messages = example.prompt_messages + [{"role": "assistant", "content": example.response}]
    prompt_text = tokenizer.apply_chat_template(example.prompt_messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError(f"Example {index}: the chat template does not render the prompt as a prefix of the "
                         "conversation, so the response tokens cannot be told apart.")
    response_text = full_text[len(prompt_text):]
    start = response_text.find(example.response)
    if start < 0:  # the template rewrites the content: treat the whole turn as content
        before, content, after = "", response_text, ""
    else:
        before, content = response_text[:start], example.response
        after = response_text[start + len(content):]
    before_ids, content_ids, after_ids = (encode_text(tokenizer, text) for text in (before, content, after))
    return TokenizedExample(
        index=index,
        prompt_ids=encode_text(tokenizer, prompt_text),
        response_ids=before_ids + content_ids + after_ids,
        content=slice(len(before_ids), len(before_ids) + len(content_ids)),
    )


def tokenize_examples(tokenizer, examples: list[Example]) -> list[TokenizedExample]:
    return [tokenize_example(tokenizer, example, i) for i, example in enumerate(examples)]
