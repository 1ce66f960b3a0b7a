"""Grading of math completions: extract the final answer, compare it with the gold answer using math-verify.

``extract_answer`` takes the content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), with the usual
fall-backs when there is none, in the spirit of the Qwen2.5-Math evaluation harness: "final answer is X" /
"final answer: X", then "the answer is X" / "answer: X", then the last number in the text.

``grade`` compares the extracted answer with the gold one with ``grader`` "math-verify" (default: both answers read
by ``answer_forms`` (scientific notation, units, percent, degrees, thousands separators), lists of answers in any
order, plain numbers by ``answer_forms.numbers_equal`` (exact, or a relative 1e-4 for decimals), the rest by
math-verify's ``parse`` + ``verify``, https://github.com/huggingface/Math-Verify, symbolically and numerically) or
"qwen" (the Qwen2.5-Math harness's rules, ``ranktuner_verl.eval.qwen_grader``). Each comparison runs in a worker
process that is killed past a per-answer wall-clock limit (``compare_pool``). An error or a timeout is reported in the
returned ``Grade`` (counted as wrong), never raised, so one pathological answer cannot stop a run.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Sequence

from ranktuner_verl.eval.answer_forms import (
    answer_list, numbers_equal, read_number, same_items, scientific_to_latex, strip_dressing,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
GRADERS = ("math-verify", "qwen")  # --grader: math-verify, or the Qwen2.5-Math harness's rules (qwen_grader.py)
#: The rules' edition, recorded in every metrics.json: raise it whenever a change can turn a verdict (math, choice
#: or code), so that a table refuses to compare results graded under different rules. 2: answer forms, the last
#: stated letter, and code passing only on the sentinel (issue 17).
GRADING_VERSION = 2


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


def boxed_contents(text: str) -> list[tuple[int, str]]:
    """(position, content) of each complete ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``), in order; an
    unclosed or empty one is skipped."""
    found = []
    for match in _BOX_COMMAND.finditer(text):
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
            found.append((match.start(), content.strip()))
    return found


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``); an unclosed one is skipped."""
    found = boxed_contents(text)
    return found[-1][1] if found else None


def _answer_after(anchor: re.Pattern, text: str) -> str | None:
    """The answer stated after the last ``anchor``: a ``$...$`` group if it starts with one, else up to the sentence end."""
    matches = list(anchor.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].lstrip()
    rest = rest.lstrip("*").lstrip()  # "**Answer:** $42$"
    for opener, closer in _MATH_DELIMITERS:
        if rest.startswith(opener):
            end = re.search(r"(?<!\\)" + re.escape(closer), rest[len(opener) :])  # "$\$58,500$": \$ is no closer
            if end:
                return rest[len(opener) : len(opener) + end.start()].strip() or None
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

_WHOLE_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\{(.*)\}$", re.DOTALL)
_WORDS = re.compile(r"^[A-Za-z][A-Za-z ]*$")


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
    """math-verify warns when its own timeout is off; ours (a killed worker process) replaces it: noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledNotice())


def _parse(answer: str):
    """math-verify's parse of one bare answer (as if boxed); the worker's time limit bounds it, so its own is off.

    A LaTeX answer is parsed as LaTeX only: math-verify's plain-expression fall-back reads the last number of one it
    cannot parse (``\\hbar \\omega(v+1 / 2)-...`` became 2). A parse that lost the answer's symbols is no parse
    (latex2sympy reads ``\\frac{1}{3} E_{1}+\\frac{2}{3} E_{2}`` as 2/3).
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig()] + ([] if "\\" in answer else [ExprExtractionConfig()])
    parsed = parse("\\boxed{" + answer + "}", extraction_config=configs, parsing_timeout=None, raise_on_error=True)
    if parsed and getattr(parsed[0], "is_number", False) and _symbols(answer):
        return []
    return parsed


def _symbols(answer: str) -> set[str]:
    """The letters an answer uses as symbols (not commands, text, the constants e and i, or a left-hand side)."""
    value = answer.split("=")[-1] if answer.count("=") == 1 else answer
    value = re.sub(r"\\(?:text|mathrm|mbox)\{[^{}]*\}|\\[A-Za-z]+", "", value)
    return set(re.findall(r"[A-Za-z]", value)) - {"e", "i"}


def _read(answer: str) -> str:
    return strip_dressing(scientific_to_latex(_tidy(answer)))


def _equivalent(gold: str, predicted: str) -> bool:
    """The default grader: ``answer_forms``' reading of both answers, lists in any order, plain numbers compared by
    ``numbers_equal``, the rest by math-verify's ``parse`` + ``verify``."""
    gold, predicted = _read(gold), _read(predicted)
    if _compact(gold) == _compact(predicted):
        return True
    gold_items, predicted_items = answer_list(gold), answer_list(predicted)
    if len(gold_items) > 1 or len(predicted_items) > 1:
        return same_items(gold_items, predicted_items, _one_equivalent)
    return _one_equivalent(gold, predicted)


def _one_equivalent(gold: str, predicted: str) -> bool:
    """One answer against one: equal strings, words in any case, plain numbers, else math-verify."""
    from math_verify import verify

    gold, predicted = _read(gold), _read(predicted)
    if _compact(gold) == _compact(predicted):
        return True
    if _WORDS.match(gold) and _WORDS.match(predicted):  # \text{east} = \text{East}
        return gold.lower() == predicted.lower()
    gold_number, predicted_number = read_number(gold), read_number(predicted)
    if gold_number is not None and predicted_number is not None:
        return numbers_equal(gold_number, predicted_number)
    gold_parsed = _parse(gold)
    if not gold_parsed:
        raise ValueError(f"math-verify could not parse the gold answer {gold!r}")
    return bool(verify(gold_parsed, _parse(predicted), timeout_seconds=None))


def _compact(answer: str) -> str:
    return re.sub(r"\s+", "", answer)


def compare(gold: str, predicted: str, grader: str) -> bool:
    """Whether the extracted answer ``predicted`` equals ``gold`` under ``grader`` (no time limit: see ``grade``)."""
    if grader == "qwen":
        from ranktuner_verl.eval.qwen_grader import qwen_equal

        return qwen_equal(_tidy(predicted), _tidy(gold))
    return _equivalent(gold, predicted)


_WARM_UP = [("1", "1", grader) for grader in GRADERS] + [("x^2", "x \\cdot x", grader) for grader in GRADERS]
_pool = None
_pool_lock = threading.Lock()


def _comparisons(workers: int):
    """The process's pool of comparison workers (``compare_pool``), grown to ``workers``."""
    global _pool
    from ranktuner_verl.eval.compare_pool import ComparisonPool

    with _pool_lock:
        if _pool is None:
            _pool = ComparisonPool(compare, workers, warm_up=_WARM_UP)
        _pool.resize(workers)
        return _pool


def _check_grader(grader: str) -> None:
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; choose one of {', '.join(GRADERS)}")


def grade(completion: str, gold: str, timeout: float | None = DEFAULT_TIMEOUT_S, grader: str = "math-verify") -> Grade:
    """Grade one completion against the gold answer with ``grader`` (``GRADERS``); never raises (errors and
    timeouts land in ``Grade.error``)."""
    return grade_many([completion], [gold], timeout, grader=grader, progress=False)[0]


def grade_many(completions: Sequence[str], golds: Sequence[str], timeout: float | None = DEFAULT_TIMEOUT_S,
               workers: int = 1, desc: str = "grading", grader: str = "math-verify",
               progress: bool = True) -> list[Grade]:
    """Grade ``completions[i]`` against ``golds[i]`` for all i, in order, with a progress bar counting failures.

    Each comparison runs in one of the process's persistent worker processes (``workers`` of them, or as many as an
    earlier call asked for), killed and replaced when it runs past ``timeout`` seconds (``compare_pool``); the
    answers are extracted here.
    """
    from tqdm.auto import tqdm

    if len(completions) != len(golds):
        raise ValueError(f"grade_many needs one gold answer per completion: got {len(completions)} completions "
                         f"and {len(golds)} gold answers")
    _check_grader(grader)
    extracted = [extract_answer(completion) for completion in completions]
    grades: list[Grade | None] = [None if answer is not None else Grade(False, None) for answer in extracted]
    todo = [i for i, answer in enumerate(extracted) if answer is not None]
    correct = errors = timeouts = 0
    with tqdm(total=len(completions), desc=desc, unit="answer", disable=not progress) as bar:
        bar.update(len(completions) - len(todo))
        if todo:
            tasks = [(str(golds[i]), extracted[i], grader) for i in todo]
            for k, is_correct, error in _comparisons(max(1, workers)).run(tasks, timeout):
                result = grades[todo[k]] = Grade(is_correct and error is None, extracted[todo[k]], error)
                correct += result.correct
                timeouts += result.timed_out
                errors += result.error is not None and not result.timed_out
                bar.set_postfix(correct=correct, errors=errors, timeouts=timeouts, refresh=False)
                bar.update()
    if errors or timeouts:
        logger.warning("grading: %d of %d answers failed to grade (%d errors, %d timeouts); counted as wrong",
                       errors + timeouts, len(grades), errors, timeouts)
    return grades
