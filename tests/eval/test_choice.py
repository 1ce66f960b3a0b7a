"""Multiple-choice extraction read as a person reads it (issue 17 §2): the stated final answer wins."""

from __future__ import annotations

import pytest

from ranktuner_verl.eval.choice import extract_choice, grade_choice

FORMS = [  # (completion, the letter a person reads), four choices
    # boxed
    ("... so the final answer is $\\boxed{B}$.", "B"),
    ("\\boxed{(C)}", "C"),
    ("\\boxed{\\text{D}}", "D"),
    ("\\boxed{\\textbf{A}}", "A"),
    ("\\boxed{A. 42 apples}", "A"),
    ("Final answer: $\\boxed{C}$", "C"),
    ("The answer is \\(\\boxed{B}\\).", "B"),
    # "the answer is"
    ("Therefore, the answer is B.", "B"),
    ("The answer is $C$.", "C"),
    ("The answer is: B", "B"),
    ("the answer is b", "B"),
    ("So the answer is d.", "D"),
    ("The answer is (A).", "A"),
    ("The answer is [C].", "C"),
    ("The answer is **D**.", "D"),
    ("The answer is \\(A\\)", "A"),
    ("The answer is $\\text{B}$.", "B"),
    ("The answer is $\\mathrm{C}$", "C"),
    ("The answer is option C.", "C"),
    ("The correct answer is (C) because the mass cancels.", "C"),
    ("The correct option is D) 12 N", "D"),
    ("The correct choice is **B**", "B"),
    ("The best answer would be A.", "A"),
    ("The final answer is **A**", "A"),
    ("Final Answer: The final answer is $B$. I hope it is correct.", "B"),
    # "answer:"
    ("Answer: D", "D"),
    ("answer: c", "C"),
    ("ANSWER: B", "B"),
    ("Answer: (B)", "B"),
    ("**Answer:** C", "C"),
    ("**Answer: A**", "A"),
    ("Answer: $D$", "D"),
    ("Answer:B", "B"),
    ("\\boxed{\\mathrm{C}}", "C"),
    ("Weighing both, I'll go with B.", "B"),
    ("I choose option D.", "D"),
    ("Therefore, B is the correct answer.", "B"),
    ("So (C) is correct: the others violate energy conservation.", "C"),
    ("Option A is right here.", "A"),
    # the stated answer wins over later or earlier mentions
    ("The answer is B. Option D is wrong because it ignores friction.", "B"),
    ("First I thought the answer is A, but the answer is C.", "C"),
    ("The answer is B.\n\nNote: (D) would hold only without drag.", "B"),
    ("Option A fails, option D fails. The answer is C.", "C"),
    ("\\boxed{A} was my first guess; on reflection the answer is C.", "C"),
    ("the answer is a number between 1 and 5, namely (B)", "B"),  # a lowercase word is no letter
    # a final line that starts with a choice
    ("The speed follows from v = d / t.\nB. 3.5 m/s", "B"),
    ("Comparing the options:\n(C) 42", "C"),
    ("So:\n**D)** the entropy increases", "D"),
    # a parenthesised letter, or just a letter
    ("I compare (A) and (B). Only (B) survives.", "B"),
    ("B", "B"),
    ("b", "B"),
    ("(D).", "D"),
    ("**C**", "C"),
]

NO_ANSWER = [
    "",
    "I am not sure which one it is.",
    "The answer is (E).",  # not one of four choices
    "\\boxed{42}",
    "A cat sat. A dog sat.",  # a capital A starting a sentence is no answer
    "the answer is a matter of taste",
    "My choice is based on the data.",
    "I choose to start with the energy balance.",
]


@pytest.mark.parametrize("text, letter", FORMS)
def test_every_answer_form_is_read_as_a_person_reads_it(text, letter):
    assert extract_choice(text, 4) == letter


def test_at_least_forty_forms():
    assert len(FORMS) >= 40 and len({text for text, _ in FORMS}) == len(FORMS)


@pytest.mark.parametrize("text", NO_ANSWER)
def test_no_stated_answer_is_none(text):
    assert extract_choice(text, 4) is None


def test_the_problems_letters_only():
    assert extract_choice("The answer is E.", 5) == "E" and extract_choice("The answer is E.", 4) is None
    assert extract_choice("The answer is E. Earlier I wrote the answer is B.", 4) == "B"


def test_the_grader_says_right_wrong_or_none_and_what_it_read():
    assert grade_choice("answer: c", "C", 4).correct
    wrong = grade_choice("so the answer is (C)", "B", 4)
    assert not wrong.correct and wrong.extracted == "C"
    none = grade_choice("no idea", "B", 4)
    assert not none.correct and none.extracted is None
    assert grade_choice("the answer is E", "E", 5).correct and not grade_choice("the answer is E", "E", 4).correct
