"""The chat format of training and evaluation: the Qwen2.5-Math chain-of-thought prompt.

Used for the SFT data (``numina``), the tiny fixtures (``tiny``) and generation (``ranktuner_verl.eval``), so the
model is trained and evaluated under the same system prompt (the paper's setup, docs/methods.md).
"""

from __future__ import annotations

COT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def to_messages(problem: str, solution: str | None = None, system_prompt: str = COT_SYSTEM_PROMPT) -> list[dict]:
    """The chat turns of one example: system prompt, the problem as the user turn, the solution as the assistant."""
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": problem}]
    if solution is not None:
        messages.append({"role": "assistant", "content": solution})
    return messages
