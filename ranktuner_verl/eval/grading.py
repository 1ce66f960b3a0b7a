"""Grading of math completions: extract the final answer, compare it with the gold answer using math-verify.

``extract_answer`` takes the content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), with the usual
fall-backs when there is none, in the spirit of the Qwen2.5-Math evaluation harness: "final answer is X" /
"final answer: X", then "the answer is X" / "answer: X", then the last number in the text.

``grade`` compares the extracted answer with the gold one with ``grader`` "math-verify" (default: equal strings are
correct at once; otherwise both are parsed by math-verify, ``parse`` + ``verify``,
https://github.com/huggingface/Math-Verify, and compared symbolically and numerically) or "qwen" (the Qwen2.5-Math
harness's rules, ``ranktuner_verl.eval.qwen_grader``). The whole comparison runs under a per-answer wall-clock limit (SIGALRM, main thread). An error or a
timeout is reported in the returned ``Grade`` (counted as wrong), never raised, so one pathological answer cannot stop
a run.
"""

from __future__ import annotations

import functools
import logging
import re
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
GRADERS = ("math-verify", "qwen")  # --grader: math-verify, or the Qwen2.5-Math harness's rules (qwen_grader.py)


@dataclass(frozen=True)
class Grade:
    """The verdict on one completion. ``error`` is set (and ``correct`` is False) when grading failed or timed out."""

    correct: bool
    extracted: str | None
    error: str | None = None

    @property
    def timed_out(self) -> bool:
        return self.error is not None and self.error.startswith("timeout")


# ---------------------------------------------------------------------------------------------------------------
# Answer extraction
# ---------------------------------------------------------------------------------------------------------------

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_FINAL_ANSWER = re.compile(r"final answer\s*(?:is|:)\s*:?", re.IGNORECASE)
_THE_ANSWER = re.compile(r"(?:the answer is|answer\s*:)\s*:?", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d*\.?\d+")
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _braced_content(text: str, open_at: int) -> str | None:
    """The text inside the brace group opening at ``text[open_at] == "{"``, or None if it is never closed."""
    depth = 0
    i = open_at
    while i < len(text):
        char = text[i]
        if char == "\\":  # an escaped character (\{, \}, \\) never opens or closes a group
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``); an unclosed one is skipped."""
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        rest = match.end()
        while rest < len(text) and text[rest] == " ":
            rest += 1
        if rest < len(text) and text[rest] == "{":
            content = _braced_content(text, rest)
        elif rest > match.end():  # "\boxed 5": up to the next space or math delimiter
            content = re.match(r"[^\s$]*", text[rest:]).group(0)
        else:
            content = None
        if content is not None and content.strip():
            return content.strip()
    return None


def _answer_after(anchor: re.Pattern, text: str) -> str | None:
    """The answer stated after the last ``anchor``: a ``$...$`` group if it starts with one, else up to the sentence end."""
    matches = list(anchor.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].lstrip()
    for opener, closer in _MATH_DELIMITERS:
        if rest.startswith(opener):
            end = rest.find(closer, len(opener))
            if end > 0:
                return rest[len(opener) : end].strip() or None
    sentence = re.split(r"\n|\.\s|\.$", rest, maxsplit=1)[0]
    return sentence.strip().strip("$").strip() or None


def extract_answer(text: str) -> str | None:
    """The final answer of a completion, or None if it states none.

    Order: the last complete ``\\boxed{}``/``\\fbox{}`` (nested braces allowed); "final answer is X" / "final answer:
    X"; "the answer is X" / "answer: X"; the last number in the text (as the Qwen2.5-Math harness does).
    """
    if not text:
        return None
    for extract in (last_boxed, lambda t: _answer_after(_FINAL_ANSWER, t), lambda t: _answer_after(_THE_ANSWER, t)):
        answer = extract(text)
        if answer is not None:
            return answer
    numbers = _NUMBER.findall(text.replace(",", ""))
    return numbers[-1] if numbers else None


# ---------------------------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------------------------


class _GradingTimeout(BaseException):
    """Raised by the alarm; a BaseException so that library ``except Exception`` blocks cannot swallow it."""


_ALARM_REPEAT_S = 0.05  # once due, the alarm fires again at this interval until the block ends


@contextmanager
def _time_limit(seconds: float | None):
    """Interrupt the block after ``seconds`` of wall time (SIGALRM; main thread only, elsewhere no limit).

    Yields a list that holds ``True`` once the limit has passed. Python drops an exception raised inside a
    ``__del__`` or weakref callback (sympy runs many), so the alarm repeats every ``_ALARM_REPEAT_S`` until one
    lands, and a caller whose block ended anyway reads the flag. An alarm already armed by the caller (e.g.
    pytest-timeout) is re-armed afterwards with its remaining time.
    """
    expired: list[bool] = []
    if not seconds or seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield expired
        return

    def on_alarm(signum, frame):
        expired[:] = [True]
        raise _GradingTimeout()

    started = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds, _ALARM_REPEAT_S)
    try:
        yield expired
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:  # even if the alarm fired just before it was disarmed
            signal.signal(signal.SIGALRM, previous_handler)
            if previous_delay > 0:
                remaining = max(previous_delay - (time.monotonic() - started), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)


_WHOLE_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\{(.*)\}$", re.DOTALL)


def _tidy(answer: str) -> str:
    """Drop what only dresses an answer: ``$``/``\\(``/``\\[`` delimiters, a trailing full stop, a ``\\text{}`` around
    the whole answer (AoPS writes ``\\boxed{\\textbf{(073)}}``)."""
    answer = answer.strip()
    for opener, closer in _MATH_DELIMITERS:
        if answer.startswith(opener) and answer.endswith(closer) and len(answer) > len(opener) + len(closer):
            answer = answer[len(opener) : -len(closer)].strip()
            break
    answer = answer.rstrip(". ").strip()
    wrapped = _WHOLE_TEXT_WRAPPER.match(answer)
    if wrapped and _braced_content(answer, answer.index("{")) == wrapped.group(1):
        answer = wrapped.group(1).strip()
    return answer


class _DropTimeoutDisabledNotice(logging.Filter):
    """math-verify warns when its own timeout is off; ours (``_time_limit``) replaces it, so the notice is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledNotice())


def _parse(answer: str):
    """math-verify's parse of one bare answer (as if boxed); our own alarm bounds its time, so its own is off."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(
        "\\boxed{" + answer + "}",
        extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
        parsing_timeout=None,
        raise_on_error=True,
    )


@functools.cache
def _warm_up(grader: str) -> None:
    """Import the grader's parsers once, outside any time limit (a fresh process needs seconds)."""
    if grader == "qwen":
        from ranktuner_verl.eval.qwen_grader import qwen_equal

        qwen_equal("x^2", "x \\cdot x")
        return
    from math_verify import verify

    verify(_parse("1"), _parse("1"), timeout_seconds=None)


def _equivalent(gold: str, predicted: str) -> bool:
    from math_verify import verify

    if _compact(gold) == _compact(predicted):
        return True
    gold_parsed = _parse(gold)
    if not gold_parsed:
        raise ValueError(f"math-verify could not parse the gold answer {gold!r}")
    return bool(verify(gold_parsed, _parse(predicted), timeout_seconds=None))


def _compact(answer: str) -> str:
    return re.sub(r"\s+", "", answer)


def grade(completion: str, gold: str, timeout: float | None = DEFAULT_TIMEOUT_S, grader: str = "math-verify") -> Grade:
    """Grade one completion against the gold answer with ``grader`` (``GRADERS``); never raises (errors and
    timeouts land in ``Grade.error``)."""
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; choose one of {', '.join(GRADERS)}")
    extracted = extract_answer(completion)
    if extracted is None:
        return Grade(correct=False, extracted=None)
    _warm_up(grader)
    timed_out = Grade(correct=False, extracted=extracted, error=f"timeout after {timeout or 0:g}s")
    try:
        with _time_limit(timeout) as expired:
            if grader == "qwen":
                from ranktuner_verl.eval.qwen_grader import qwen_equal

                correct = qwen_equal(_tidy(extracted), _tidy(str(gold)))
            else:
                correct = _equivalent(_tidy(str(gold)), _tidy(extracted))
    except _GradingTimeout:
        return timed_out
    except Exception as error:  # noqa: BLE001 - a grader failure is a counted outcome, not a crash
        return timed_out if expired else Grade(False, extracted, f"{type(error).__name__}: {error}"[:500])
    return timed_out if expired else Grade(correct=correct, extracted=extracted)


def _grade_pair(pair: tuple[str, str, float | None, str]) -> Grade:
    return grade(*pair)


def grade_many(completions: Sequence[str], golds: Sequence[str], timeout: float | None = DEFAULT_TIMEOUT_S,
               workers: int = 1, desc: str = "grading", grader: str = "math-verify") -> list[Grade]:
    """Grade ``completions[i]`` against ``golds[i]`` for all i, in order, with a progress bar counting failures.

    ``workers > 1`` grades in that many worker processes (each enforces the timeout in its own main thread).
    """
    from tqdm.auto import tqdm

    if len(completions) != len(golds):
        raise ValueError(f"grade_many needs one gold answer per completion: got {len(completions)} completions "
                         f"and {len(golds)} gold answers")
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; choose one of {', '.join(GRADERS)}")
    pairs = [(completion, gold, timeout, grader) for completion, gold in zip(completions, golds)]
    grades: list[Grade] = []
    correct = errors = timeouts = 0
    with tqdm(total=len(pairs), desc=desc, unit="answer") as bar:
        if workers > 1:
            import multiprocessing

            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            results = pool.map(_grade_pair, pairs, chunksize=max(1, min(64, len(pairs) // (4 * workers))))
        else:
            pool, results = None, map(_grade_pair, pairs)
        try:
            for result in results:
                grades.append(result)
                correct += result.correct
                timeouts += result.timed_out
                errors += result.error is not None and not result.timed_out
                bar.set_postfix(correct=correct, errors=errors, timeouts=timeouts, refresh=False)
                bar.update()
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    if errors or timeouts:
        logger.warning("grading: %d of %d answers failed to grade (%d errors, %d timeouts); counted as wrong",
                       errors + timeouts, len(grades), errors, timeouts)
    return grades
