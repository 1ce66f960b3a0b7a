"""The five math benchmarks of the paper, normalised to ``Problem(id, question, answer)``.

Sources: a local JSON-lines file (or a folder holding ``<file stem>.jsonl``, e.g. the Qwen2.5-Math evaluation
harness's ``data/<name>/test.jsonl`` copies), or the Hugging Face hub. One normaliser reads every schema seen in
those copies:

- question: the ``problem`` field, else ``question``;
- gold answer: ``answer``, else ``final_answer`` (OlympiadBench: a list, joined with ", "), else the last
  ``\\boxed{}`` of ``solution`` (Minerva Math); ``$`` delimiters are dropped, a float like ``27.0`` becomes ``27``;
- id: ``id``, ``unique_id`` or ``idx``, else the row number.

A row without a question or a gold answer is an error (never skipped: it would change the denominator).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ranktuner_verl.data.jsonl import read_jsonl


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str


@dataclass(frozen=True)
class BenchmarkSource:
    file_stem: str  # local file name without ".jsonl"
    hub_id: str
    hub_split: str
    hub_config: str | None = None


# Hub copies chosen for their public, stable test splits; the local copies are the Qwen2.5-Math harness's.
SOURCES: dict[str, BenchmarkSource] = {
    "math500": BenchmarkSource("math_oai", "HuggingFaceH4/MATH-500", "test"),
    "minerva_math": BenchmarkSource("minerva_math", "svc-huggingface/minerva-math", "test"),
    "olympiadbench": BenchmarkSource("olympiadbench", "Hothan/OlympiadBench", "train", "OE_TO_maths_en_COMP"),
    "aime24": BenchmarkSource("aime24", "HuggingFaceH4/aime_2024", "train"),
    "amc23": BenchmarkSource("amc23", "math-ai/amc23", "test"),
}
BENCHMARKS: tuple[str, ...] = tuple(SOURCES)
ALIASES = {"math_oai": "math500", "math": "math500", "minerva": "minerva_math", "olympiad": "olympiadbench",
           "olympiad_bench": "olympiadbench"}

QUESTION_FIELDS = ("problem", "question")
ANSWER_FIELDS = ("answer", "final_answer")
ID_FIELDS = ("id", "unique_id", "idx")


def canonical_name(name: str) -> str:
    """The benchmark's name in ``BENCHMARKS`` (accepts the aliases ``math_oai``, ``minerva``, ``olympiad``...)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in SOURCES:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)} "
                         f"(aliases: {', '.join(sorted(ALIASES))})")
    return key


def load_benchmark(name: str, path: str | Path | None = None, limit: int | None = None, *,
                   hub_id: str | None = None) -> list[Problem]:
    """The problems of benchmark ``name``, in file order (the first ``limit`` if given).

    ``path``: a ``.jsonl`` file, or a folder holding ``<stem>.jsonl`` (stems: math_oai, minerva_math, olympiadbench,
    aime24, amc23). Without ``path`` the benchmark comes from the hub (``hub_id`` overrides the default in
    ``SOURCES``).
    """
    key = canonical_name(name)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of problems, got {limit}")
    source = SOURCES[key]
    if path is not None:
        file = _local_file(Path(path), source.file_stem)
        rows, origin = read_jsonl(file, limit), str(file)
    else:
        rows, origin = _read_hub(hub_id or source.hub_id, source, limit), f"hub:{hub_id or source.hub_id}"
    if not rows:
        raise ValueError(f"benchmark {key} from {origin} has no problems; check the file (one JSON object per line)")
    return [_normalise(row, number, origin) for number, row in enumerate(rows)]


def _local_file(path: Path, stem: str) -> Path:
    file = path / f"{stem}.jsonl" if path.is_dir() else path
    if not file.is_file():
        hint = f" (a folder must hold {stem}.jsonl)" if path.is_dir() else ""
        raise FileNotFoundError(f"benchmark file not found: {file}{hint}; pass an existing .jsonl file or folder, "
                                f"or no path to load it from the Hugging Face hub")
    return file


def _read_hub(hub_id: str, source: BenchmarkSource, limit: int | None) -> list[dict]:
    from datasets import load_dataset

    split = source.hub_split if limit is None else f"{source.hub_split}[:{limit}]"
    return list(load_dataset(hub_id, source.hub_config, split=split))


def _first_present(row: dict, fields: tuple[str, ...]):
    for field in fields:
        value = row.get(field)
        if value is not None and value != "" and value != []:
            return value
    return None


def _answer_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_answer_text(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return re.sub(r"(?<!\\)\$", "", str(value)).strip()  # unescaped $ delimiters only


def _normalise(row: dict, number: int, origin: str) -> Problem:
    from ranktuner_verl.eval.grading import last_boxed

    question = _first_present(row, QUESTION_FIELDS)
    answer = _first_present(row, ANSWER_FIELDS)
    if answer is None and isinstance(row.get("solution"), str) and "\\boxed" in row["solution"]:
        answer = last_boxed(row["solution"])
    answer = None if answer is None else _answer_text(answer)
    if question is None or not answer:
        missing = "a question (field problem or question)" if question is None else (
            "a gold answer (field answer, final_answer, or a \\boxed{} in solution)")
        raise ValueError(f"{origin}: row {number} lacks {missing}; its fields are {sorted(row)}")
    row_id = _first_present(row, ID_FIELDS)
    return Problem(id=str(number if row_id is None else row_id), question=str(question), answer=answer)
