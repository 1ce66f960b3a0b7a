"""Multiple-choice grading (ARC-Challenge, GPQA): the chosen letter of a chain-of-thought completion.

``extract_choice`` looks, in this order, for the last of:

1. a boxed letter: ``\\boxed{B}``, ``\\boxed{(B)}``, ``\\boxed{\\text{B}}``, ``\\boxed{B. text}``;
2. an answer statement: "the answer is B", "answer: (B)", "final answer is **B**", "the correct choice is B";
3. a parenthesised letter "(B)" on its own (not inside a word);
4. a completion that is just a letter ("B", "B.", "(B)").

Only letters among the problem's choices count (A-D for four choices), so "(E)" in a four-choice problem or a
stray capital in prose is never taken for an answer. A completion with none of these states no answer (wrong).
"""

from __future__ import annotations

import re

from ranktuner_verl.eval.benchmarks import LETTERS
from ranktuner_verl.eval.grading import Grade, last_boxed

_WRAPPED = r"[\s\*\(\[\{]*"  # markdown bold, brackets before the letter
_STATEMENT = re.compile(r"(?:answer|choice|option)\s*(?:is|:|would be|=)?\s*(?:option|choice)?" + _WRAPPED
                        + r"((?-i:[A-J]))(?![A-Za-z])", re.IGNORECASE)  # the letter itself: capitals only
_PAREN = re.compile(r"(?<![A-Za-z])\(([A-J])\)")
_ALONE = re.compile(r"^\W*([A-J])\W*$")
_BOX_LETTER = re.compile(r"^(?:\\text(?:bf)?\{)?\(?([A-J])\)?(?:\})?(?:[.:)\s].*)?$", re.DOTALL)


def extract_choice(text: str, num_choices: int) -> str | None:
    """The letter a completion chooses among the first ``num_choices`` letters, or None (see the module doc)."""
    if not text:
        return None
    valid = LETTERS[:num_choices]
    boxed = last_boxed(text)
    if boxed is not None:
        match = _BOX_LETTER.match(boxed.strip())
        if match and match.group(1) in valid:
            return match.group(1)
    for pattern in (_STATEMENT, _PAREN, _ALONE):
        found = [m.group(1) for m in pattern.finditer(text.strip())]
        found = [letter for letter in found if letter in valid]
        if found:
            return found[-1]
    return None


def grade_choice(completion: str, gold: str, num_choices: int) -> Grade:
    """Correct iff the extracted letter is the gold letter."""
    chosen = extract_choice(completion, num_choices)
    return Grade(correct=chosen == gold, extracted=chosen)
