"""Multiple-choice grading (ARC-Challenge, GPQA): the letter a chain-of-thought completion chooses, read as a person
reads it.

The stated final answer wins, as in lm-evaluation-harness (GPQA CoT: "The answer is (X)", then the last "(X)") and
OpenAI simple-evals (``Answer: X``, case-insensitive, ``$X$`` allowed). ``extract_choice`` takes, in this order:

1. the last stated answer, boxed or written: ``\\boxed{B}``, ``\\boxed{(B)}``, ``\\boxed{\\text{B}}``, "The answer is
   $C$.", "The answer is: B", "answer: c", "final answer is **A**", "the correct option is (D)", "Answer: \\(C\\)",
   "I'll go with B", "(C) is the correct answer"; whichever comes last in the text (a later "option D is wrong" is
   no statement and does not win);
2. a last line that starts with a choice: "B. 3.5 m/s", "(C) 42", "**D)** ...";
3. the last parenthesised letter "(B)" on its own (not inside a word);
4. a completion that is just a letter ("B", "b.", "(D)").

Only letters among the problem's choices count (A-D for four choices). A lowercase letter counts where it cannot be
a word: "the answer is b." or "answer: c" does, "the answer is a number" does not. A completion with none of these
states no answer (wrong).
"""

from __future__ import annotations

import re

from ranktuner_verl.eval.benchmarks import LETTERS
from ranktuner_verl.eval.grading import Grade, boxed_contents

# what may wrap a letter: spaces, markdown bold/italics, brackets, $...$, \( \), \text{}, \textbf{}, \mathrm{}
_OPEN = r"(?:[\s*_$(\[{]|\\\(|\\\[|\\(?:text|textbf|mathrm|mathbf)\{)*"
_CLOSE = r"(?=[\s*_$)\]}.,;:!?]|\\\)|\\\]|$)"
_STATEMENT = re.compile(
    r"(?:(?:answer|choice|option)\s*(?:is|would be|should be|will be|:|=)\s*:?"  # "answer is", "answer:", "choice is:"
    r"|\bI(?:'ll| will| would)?\s+(?:choose|select|pick|go with))"  # "I choose B", "I'll go with B"
    r"\s*(?:option|choice|letter)?" + _OPEN + r"([A-Ja-j])" + _CLOSE, re.IGNORECASE)
_IS_CORRECT = re.compile(r"(?<![A-Za-z])(?:option |choice )?" + _OPEN + r"([A-J])" + _CLOSE + r"[\s*_$)\]}]*"
                         r"is (?:the )?(?:correct|right|best)\b")  # "B is correct", "(C) is the correct answer"
_CHOICE_LINE = re.compile(r"^[\s*_]*\(?([A-J])[.):]\**\s+\S")
_PAREN = re.compile(r"(?<![A-Za-z])\(([A-J])\)")
_ALONE = re.compile(r"^\W*([A-Ja-j])\W*$")
_BOX_LETTER = re.compile(r"^(?:\\(?:text|textbf|mathrm|mathbf)\{)?\(?([A-J])\)?(?:\})?(?:[.:)\s].*)?$", re.DOTALL)


def _stated(text: str, match: re.Match) -> bool:
    """A stated letter: a capital, or a lowercase one that is not the start of a word ("the answer is a number")."""
    letter = match.group(1)
    return letter.isupper() or not re.match(r"\s+[a-z]", text[match.end():])


def extract_choice(text: str, num_choices: int) -> str | None:
    """The letter a completion chooses among the first ``num_choices`` letters, or None (see the module doc)."""
    if not text or not text.strip():
        return None
    valid = LETTERS[:num_choices]
    stated = [(position, match.group(1)) for position, content in boxed_contents(text)
              if (match := _BOX_LETTER.match(content))]
    stated += [(m.start(), m.group(1).upper()) for m in _STATEMENT.finditer(text) if _stated(text, m)]
    stated += [(m.start(), m.group(1)) for m in _IS_CORRECT.finditer(text)]
    stated = sorted((position, letter) for position, letter in stated if letter in valid)
    if stated:
        return stated[-1][1]
    last_line = text.strip().splitlines()[-1]
    line = _CHOICE_LINE.match(last_line)
    if line and line.group(1) in valid:
        return line.group(1)
    mentioned = [letter for letter in _PAREN.findall(text) if letter in valid]
    if mentioned:
        return mentioned[-1]
    alone = _ALONE.match(text.strip())
    if alone and alone.group(1).upper() in valid:
        return alone.group(1).upper()
    return None


def grade_choice(completion: str, gold: str, num_choices: int) -> Grade:
    """Correct iff the extracted letter is the gold letter."""
    chosen = extract_choice(completion, num_choices)
    return Grade(correct=chosen == gold, extracted=chosen)
