"""Answer forms a careful human grader reads as the same answer (issue 17 §1), shared by both math graders.

The default grader (``grading``, math-verify underneath) and ``--grader qwen`` read answers through these rules;
docs/data_and_grading.md lists the decisions and measures them on tests/eval/answer_forms.txt.

- ``scientific_to_latex``: e-notation (``4.5e33``, ``1e-5``: Minerva writes 58 golds so) becomes
  ``4.5\\times10^{33}``; sympy and math-verify would read ``1e-5`` as Euler's e minus 5.
- ``strip_dressing``: what does not change an answer's value: ``\\$``, percent signs (``25`` = ``25\\%``: the
  number asked for; ``0.25`` is not ``25\\%``), degree signs, a trailing unit in ``\\text{}``/``\\mathrm{}``/
  ``\\mbox{}`` (Minerva's ``1.57 \\mathrm{~cm}``), thousands separators (``10,\\!080``), Minerva's ``-1./3``.
- ``read_number``: a plain number (integer, decimal, fraction, mixed number, scientific notation) with how it is
  written; ``numbers_equal`` compares two of them: exact values must be equal (``10001`` is not ``10000``), a
  decimal may differ from the other value by a relative 1e-4 (the Qwen2.5-Math harness's ``numeric_equal``,
  ``math.isclose(rel_tol=1e-4)``), unless both are decimals written to the same number of digits (then a different
  last digit is a different answer).
- ``answer_list``: the items of an answer that lists several (``3, 5, 7``; ``1 \\pm \\sqrt{19}``; ``69 \\text{ and
  } 84``); OlympiadBench's multi-answer golds are compared as lists in any order (``same_items``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

REL_TOL = 1e-4  # the Qwen2.5-Math harness's numeric_equal

_E_NOTATION = re.compile(r"(?<![\w.\\])(\d+(?:\.\d*)?|\.\d+)\s*[eE]\s*([-+]?\d+)(?![\w.])")
_PERCENT = re.compile(r"\\?%|\\text\{\s*percent\s*\}|\s+percent$")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\text\{\s*°\s*\}"
                      r"|\\(?:text|mbox)\{\s*degrees?\s*\}")
# a unit after a value: \text{ cm}, \mathrm{~km}, \mathrm{~erg} / \mathrm{s}, \mbox{ inches}^2, \text{km/h}
_UNIT_GROUP = r"\\(?:text|mathrm|mbox|textrm)\s*\{\s*~?\s*[A-Za-z][A-Za-z/ .]*\}(?:\s*\^\s*\{?-?\d\}?)?"
_TRAILING_UNIT = re.compile(r"(?<=\S)(?:\s|\\[,;: !]|~)*(?:" + _UNIT_GROUP + r")(?:\s*/\s*(?:" + _UNIT_GROUP
                            + r"))*\s*$")
_SEPARATOR = r"(?:,\\!\s*|\{,\}|\\,|,)"  # 10,\!080  10{,}080  10\,080  10,080 (no space: "1, 234" is a list)
_THOUSANDS = re.compile(rf"(?<=\d){_SEPARATOR}(?=\d{{3}}(?!\d))")
_WHOLE_THOUSANDS = re.compile(rf"^-?\d{{1,3}}(?:{_SEPARATOR}\d{{3}})+(?:\.\d+)?$")
# math-verify reads the i of 2i\sqrt{3} as a real symbol (2\sqrt{3} i it reads right)
_I_BEFORE_ROOT = re.compile(r"(?<![A-Za-z\\])i\s*(\\sqrt(?:\[\d+\])?\{[^{}]*\})")
_LIST_JOINERS = re.compile(r"\\(?:text|mbox)\{\s*(?:and|or)\s*\}|\s+(?:and|or)\s+")


def scientific_to_latex(answer: str) -> str:
    """``4.5e33`` -> ``4.5\\times10^{33}`` (a number in e-notation, not a word or command containing e)."""
    return _E_NOTATION.sub(lambda m: f"{m.group(1)}\\times10^{{{int(m.group(2))}}}", answer)


def strip_unit(answer: str) -> str:
    """The answer without a trailing unit written in ``\\text{}``/``\\mathrm{}``/``\\mbox{}`` (``1.57 \\mathrm{~cm}``,
    ``4.5 \\mathrm{~erg} / \\mathrm{s}``); a letter outside one (``7.6 Z``, ``2.2 \\tau``) is a symbol and stays."""
    for _ in range(2):
        answer = _TRAILING_UNIT.sub("", answer).strip()
    return answer


def strip_dressing(answer: str) -> str:
    """The answer without what does not change its value (see the module doc)."""
    s = answer.strip().replace("\\$", "")
    s = re.sub(r"(?<!\\)\$", "", s)
    s = _PERCENT.sub("", s)
    s = _DEGREES.sub("", s).strip()
    s = strip_unit(s)
    if _WHOLE_THOUSANDS.match(s):
        s = _THOUSANDS.sub("", s)
    s = re.sub(r"(?<=\d)\.(?=\s*(?:/|$))", "", s)  # Minerva's "-1./3"
    s = _I_BEFORE_ROOT.sub(r"\1 i", s)
    return s.strip()


@dataclass(frozen=True)
class Number:
    """A number as written: its exact value, and whether it was a decimal (with how many significant digits)."""

    value: Fraction
    decimal: bool
    digits: int = 0

    @property
    def integer(self) -> bool:
        return not self.decimal and self.value.denominator == 1


_DECIMAL = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_DIGITS_ARGUMENT = r"(?:\{([-+]?\d+)\}|(\d))"  # \frac{12}{5}, \frac45
_NUMBER_FORMS = [  # (pattern, reader of its groups -> (value, decimal mantissa or None))
    (re.compile(rf"({_DECIMAL})"), lambda m: (Fraction(m[1]), m[1])),
    (re.compile(rf"({_DECIMAL})(?:\\times|\\cdot|\*|×|x)10\^\{{?([-+]?\d{{1,3}})\}}?"),
     lambda m: (Fraction(m[1]) * Fraction(10) ** int(m[2]), m[1])),
    (re.compile(r"([-+]?)10\^\{?([-+]?\d{1,3})\}?"), lambda m: (_signed(m[1], Fraction(10) ** int(m[2])), None)),
    (re.compile(rf"([-+]?)\\[dt]?frac{_DIGITS_ARGUMENT}{_DIGITS_ARGUMENT}"),
     lambda m: (_signed(m[1], Fraction(int(m[2] or m[3]), int(m[4] or m[5]))), None)),
    (re.compile(r"([-+]?\d+)/(\d+)"), lambda m: (Fraction(int(m[1]), int(m[2])), None)),
    (re.compile(rf"(-?)(\d+)\\[dt]?frac{_DIGITS_ARGUMENT}{_DIGITS_ARGUMENT}"),  # mixed: 1\frac{4}{5} = 9/5
     lambda m: (_signed(m[1], int(m[2]) + Fraction(int(m[3] or m[4]), int(m[5] or m[6]))), None)),
]


def _signed(sign: str, value: Fraction) -> Fraction:
    return -value if sign == "-" else value


def _significant_digits(mantissa: str) -> int:
    return len(mantissa.lstrip("+-").replace(".", "").lstrip("0")) or 1


def read_number(answer: str) -> Number | None:
    """The plain number ``answer`` writes (after ``scientific_to_latex`` and ``strip_dressing``), else None."""
    text = re.sub(r"\s+|\\[,;:! ]|\\left|\\right", "", answer)
    if text.startswith("(") and text.endswith(")") and "," not in text:
        text = text[1:-1]
    for pattern, read in _NUMBER_FORMS:
        match = pattern.fullmatch(text)
        if match:
            try:
                value, mantissa = read(match)
            except (ZeroDivisionError, ValueError):
                return None
            if mantissa is not None and ("." in mantissa or "\\times" in text or "\\cdot" in text):
                return Number(value, decimal=True, digits=_significant_digits(mantissa))
            return Number(value, decimal=False)
    return None


def numbers_equal(gold: Number, predicted: Number) -> bool:
    """Whether two written numbers are the same answer (see the module doc for the rule and its source)."""
    if gold.value == predicted.value:
        return True
    if gold.integer or not (gold.decimal or predicted.decimal):
        return False  # exact values: 10001 is not 10000, 448/15626 is not 448/15625
    if gold.decimal and predicted.decimal and gold.digits == predicted.digits:
        return False  # .35626 is not .35625
    return math.isclose(predicted.value, gold.value, rel_tol=REL_TOL)


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """``text`` split at each ``separator`` outside brackets and braces (``\\{``, ``\\left(`` count as brackets)."""
    parts, depth, current, i = [], 0, "", 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            depth += 1 if text[i + 1] == "{" else -1
            current += text[i: i + 2]
            i += 2
            continue
        depth += char in "([{"
        depth -= char in ")]}"
        if char == separator and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
        i += 1
    return parts + [current.strip()]


def answer_list(answer: str) -> list[str]:
    """The items of an answer that states several (one item if it states one; see the module doc)."""
    s = _LIST_JOINERS.sub(",", answer.strip())
    s = re.sub(r"^\\left\\\{(.*)\\right\\\}$|^\\\{(.*)\\\}$", lambda m: m.group(1) or m.group(2) or "", s)
    items = [item for item in split_top_level(s) if item]
    if len(items) == 1 and s.count("\\pm") == 1 and "=" not in s:
        left, right = s.split("\\pm")
        return [f"{left}+{right}", f"{left}-{right}"]
    return items


def same_items(gold_items: list[str], predicted_items: list[str], equal: Callable[[str, str], bool]) -> bool:
    """Whether the two lists hold the same answers in any order: each predicted item matches its own gold item."""
    if len(gold_items) != len(predicted_items):
        return False
    unmatched = list(range(len(gold_items)))
    for item in predicted_items:
        match = next((j for j in unmatched if equal(gold_items[j], item)), None)
        if match is None:
            return False
        unmatched.remove(match)
    return True
