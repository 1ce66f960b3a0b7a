"""Reading JSON-lines files with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    """The JSON objects of ``path``, one per non-blank line (the first ``limit`` if given).

    A line that is not a JSON object raises ValueError naming ``path:line``.
    """
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number} is not valid JSON ({error.msg}); the file must hold one "
                                 f"JSON object per line") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_number} is a JSON {type(row).__name__}, expected an object")
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows
