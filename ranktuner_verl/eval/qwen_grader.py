"""The Qwen2.5-Math evaluation harness's answer comparison, re-implemented from its documented rules (``--grader qwen``).

The paper's numbers (RankTuner, arXiv 2602.01745, tables 1-2) come from that harness, whose ``math_equal`` differs
from math-verify: it is more lenient with percentages (50 = 0.5 = 5000 within rel 1e-4), units and ``\\text{}``,
choice letters, a leading "x =", and stricter where sympy cannot prove an equality. This module writes its rules
anew (no code of the harness is copied); docs/data_and_grading.md measures where the two graders disagree.

``normalize(answer)`` (the harness's answer clean-up, with the project's readings of e-notation and of a unit in
``\\mathrm{}``, ``answer_forms``): drop line breaks, spacing commands (a matrix's row separator ``\\\\`` stays;
``bmatrix`` becomes ``pmatrix``), ``\\left``/``\\right``, ``$``, degree signs, ``\\%``/``%``, ``\\text{}``/``\\mbox{}``
wrappers and trailing unit words; ``dfrac``/``tfrac`` -> ``frac``; ``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt2`` ->
``\\sqrt{2}``, ``a/b`` of integers -> ``\\frac{a}{b}``; a short left-hand side "x =", "f(x) =" or "x \\in" dropped;
thousands separators and ``.0`` of integers dropped; "infinity" -> ``\\infty``; spaces removed.

``qwen_equal(prediction, reference)`` on normalised answers, in order:

1. equal strings (case-insensitive) -> equal;
2. a reference choice letter A-E equals the prediction's letter ("(B)", "B.", "B: text");
3. several answers (``answer_forms.answer_list``: "3, 5, 7", "1 \\pm \\sqrt{19}", OlympiadBench's multi-answer
   golds): the same answers in any order;
4. both numbers: equal iff the prediction is within rel 1e-4 of reference, reference/100 or reference*100
   (``math.isclose``), decided here (no symbolic fall-back);
5. equal after dropping brackets and braces where both answers have the same round and square brackets (or one has
   none): ``(0,9] \\cup (9,36)`` is not ``(0,9) \\cup (9,36)``; tuples/intervals of the same length and the same
   brackets equal element by element;
6. equations: ``a = b`` vs ``c = d`` equal iff a - b = ±(c - d); "x = v" vs a bare value compares v;
7. symbolic: both parsed (LaTeX, via latex2sympy2_extended, math-verify's parser) and equal when sympy finds
   ``a == b``, ``simplify(a - b) == 0``, or equal numeric values (rel 1e-4).
"""

from __future__ import annotations

import math
import re

from ranktuner_verl.eval.answer_forms import (
    answer_list, read_number, same_items, scientific_to_latex, split_top_level, strip_unit,
)

_UNITS = ("degrees", "degree", "cm", "centimeters", "meters", "metres", "m", "km", "kilometers", "inches", "inch",
          "feet", "foot", "ft", "units", "unit", "square", "sq", "dollars", "dollar", "cents", "cent", "hours",
          "hour", "minutes", "minute", "seconds", "second", "mph", "miles", "mile", "days", "day", "years", "year",
          "people", "students", "ways", "points", "pounds", "kg", "grams", "g", "liters", "ml", "percent")
_UNIT_TAIL = re.compile(r"(?:\\,|\\ |\s)*(?:\\(?:text|mbox|mathrm)\{\s*)?(?:" + "|".join(_UNITS)
                        + r")(?:\^?\{?[23]\}?)?\s*\}?$")
_SPACING = re.compile(r"\\[!,;:> ]|\\quad|\\qquad")
_WRAPPER = re.compile(r"\\(?:text|mbox|textbf|mathrm|mathbf|boldsymbol)\{([^{}]*)\}")
_NUMBER = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?%?$", re.IGNORECASE)
_SHORT_LEFT_SIDE = re.compile(r"^(?:[A-Za-z]\w?|[A-Za-z]\([A-Za-z]\))=")
_CHOICE = re.compile(r"^\(?([A-E])\)?(?:[.:)\s].*)?$", re.DOTALL)


def normalize(answer: str) -> str:
    """The harness-style clean-up of one answer (see the module doc)."""
    s = scientific_to_latex(strip_unit(str(answer).strip().replace("\n", "").rstrip(".")))
    s = "\\\\".join(_SPACING.sub("", part) for part in s.split("\\\\"))  # keep a matrix's row separator \\
    s = re.sub(r"\\begin\{[bBvV]?matrix\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{[bBvV]?matrix\}", r"\\end{pmatrix}", s)
    s = re.sub(r"^[A-Za-z]\s*\\in\s*", "", s)  # "x \in [-2,7]"
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("°", "").replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    for _ in range(2):
        s = _UNIT_TAIL.sub("", s).strip()
    s = _WRAPPER.sub(r"\1", s)
    s = re.sub(r"\binfinity\b|\binf\b", r"\\infty", s)
    s = s.replace(" and ", ",").replace(" ", "")
    if s.count("=") == 1 and _SHORT_LEFT_SIDE.match(s):  # "x=5", "k=3", "f(x)=2x" -> the value
        s = s.split("=")[1]
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    s = re.sub(r"^(-?\d+)/(\d+)$", r"\\frac{\1}{\2}", s)
    s = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", s)
    s = re.sub(r"(?<=\d)\.(?=/|$)", "", s)  # Minerva's "-1./3"
    s = re.sub(r"(\d+)\.0+(?=\D|$)", r"\1", s)
    s = re.sub(r"(^|[^\d])\.(\d)", r"\g<1>0.\2", s)
    return s


def _number(text: str) -> float | None:
    if not _NUMBER.match(text):
        written = read_number(text)  # 4.5\times10^{33}, \frac{1}{2}
        return None if written is None else float(written.value)
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


def _parse(text: str):
    from latex2sympy2_extended import latex2sympy

    return latex2sympy(text)


def _symbolic_equal(a: str, b: str) -> bool:
    import sympy

    try:
        x, y = _parse(a), _parse(b)
    except Exception:  # noqa: BLE001 - unparseable: not provably equal
        return False
    try:
        if x == y or str(x) == str(y) or sympy.simplify(x - y) == 0:
            return True
    except Exception:  # noqa: BLE001
        pass
    try:
        return math.isclose(float(sympy.N(x)), float(sympy.N(y)), rel_tol=1e-4)
    except Exception:  # noqa: BLE001
        return False


def _brackets(text: str) -> str:
    """The round and square brackets (those that make intervals open or closed), in order; "" if there are none."""
    return "".join(re.findall(r"[\[\]()]", text))


def qwen_equal(prediction: str | None, reference: str | None) -> bool:
    """Whether ``prediction`` equals ``reference`` under the harness's rules (see the module doc)."""
    if prediction is None or reference is None:
        return False
    pred, ref = normalize(prediction), normalize(reference)
    if pred.lower() == ref.lower():
        return True
    if ref in ("A", "B", "C", "D", "E"):
        choice = _CHOICE.match(str(prediction).strip().strip("$")) or _CHOICE.match(pred)
        return bool(choice) and choice.group(1) == ref
    pred_items, ref_items = answer_list(pred), answer_list(ref)
    if len(ref_items) > 1 or len(pred_items) > 1:  # several answers (OlympiadBench): the same ones, in any order
        return same_items(ref_items, pred_items, lambda r, p: qwen_equal(p, r))
    pred_number, ref_number = _number(pred), _number(ref)
    if pred_number is not None and ref_number is not None:
        return any(math.isclose(pred_number, r, rel_tol=1e-4) for r in (ref_number / 100, ref_number,
                                                                          ref_number * 100))
    if not pred:
        return False
    if "" in (_brackets(pred), _brackets(ref)) or _brackets(pred) == _brackets(ref):
        if re.sub(r"[\[\](){}]", "", pred).lower() == re.sub(r"[\[\](){}]", "", ref).lower():
            return True  # brackets do not matter, unless they make an interval open or closed: (0,9] is not (0,9)
    bracketed = re.compile(r"^[(\[].+[)\]]$")
    if bracketed.match(pred) and bracketed.match(ref):
        pred_items, ref_items = split_top_level(pred[1:-1]), split_top_level(ref[1:-1])
        if len(pred_items) == len(ref_items) > 1 and pred[0] == ref[0] and pred[-1] == ref[-1]:
            return all(qwen_equal(p, r) for p, r in zip(pred_items, ref_items))
    if pred.count("=") == 1 and ref.count("=") == 1:
        left, right = pred.split("=")
        ref_left, ref_right = ref.split("=")
        difference = f"({left})-({right})"
        reference_difference = f"({ref_left})-({ref_right})"
        return (_symbolic_equal(difference, reference_difference)
                or _symbolic_equal(f"-({difference})", reference_difference))
    if pred.count("=") == 1 and "=" not in ref and len(pred.split("=")[0]) <= 2:
        return qwen_equal(pred.split("=")[1], ref)
    if ref.count("=") == 1 and "=" not in pred and len(ref.split("=")[0]) <= 2:
        return qwen_equal(pred, ref.split("=")[1])
    return _symbolic_equal(pred, ref)
