"""NuminaMath-CoT -> the parquet files verl's multi-turn SFT dataset reads.

    python -m ranktuner_verl.data.numina --out data/numina10k                     # the paper's first 10,000 rows
    python -m ranktuner_verl.data.numina --out DIR --sample 10000 --seed 1        # a seeded sample instead
    python -m ranktuner_verl.data.numina --out DIR --source local.parquet|.jsonl  # a local copy, same schema

Each row becomes ``messages`` = [system: the Qwen2.5-Math CoT prompt, user: problem, assistant: solution] (the
paper's setup, docs/methods.md), plus ``source`` (NuminaMath's sub-source) and ``row_index`` (the row in the source).
Training rows are the first N rows of the source (or a seeded sample of it); the validation rows are the next
``--val-size`` rows (or more sampled rows), so they never overlap the training set and the training set is exactly
the paper's. A row whose problem or solution is missing or blank is skipped and reported (on stderr and in
``summary.json``), never silently dropped. Everything is checked before anything is written, and each output file
appears atomically (written aside, then renamed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
from collections import Counter
from pathlib import Path

from ranktuner_verl.data.jsonl import read_jsonl
from ranktuner_verl.data.prompts import COT_SYSTEM_PROMPT, to_messages

DEFAULT_SOURCE = "AI-MO/NuminaMath-CoT"
DEFAULT_NUM_ROWS = 10_000
DEFAULT_VAL_SIZE = 256
REQUIRED_COLUMNS = ("problem", "solution")
OUTPUT_FILES = ("train.parquet", "val.parquet", "summary.json")
LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")


def prepare(out_dir: str | Path, source: str = DEFAULT_SOURCE, num_rows: int | None = DEFAULT_NUM_ROWS,
            sample: int | None = None, seed: int = 0, val_size: int = DEFAULT_VAL_SIZE,
            system_prompt: str = COT_SYSTEM_PROMPT, overwrite: bool = False) -> dict:
    """Write ``train.parquet``, ``val.parquet`` (if ``val_size > 0``) and ``summary.json`` to ``out_dir``.

    Selection: the first ``num_rows`` rows of ``source``, or with ``sample`` a uniform sample of that many rows drawn
    with ``seed``. Returns the summary.
    """
    train_size = sample if sample is not None else num_rows
    if train_size is None or train_size < 1:
        raise ValueError(f"the number of training rows must be positive, got {train_size}")
    if val_size < 0:
        raise ValueError(f"--val-size must be 0 or more, got {val_size}")
    out_dir = Path(out_dir)
    existing = [name for name in OUTPUT_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {', '.join(existing)}; pass --overwrite to replace them "
                              f"or choose another --out")

    sample_seed = seed if sample is not None else None
    wanted = train_size + val_size
    rows = _read_rows(source, wanted, sample_seed)
    if len(rows) < wanted:
        raise ValueError(f"{source} has {len(rows)} rows, fewer than the {train_size} training + {val_size} "
                         f"validation rows asked for; lower --num-rows/--sample or --val-size")
    train_rows, val_rows = rows[:train_size], rows[train_size:]
    train, train_skipped = _to_sft_rows(train_rows, system_prompt)
    val, val_skipped = _to_sft_rows(val_rows, system_prompt)
    if not train:
        raise ValueError(f"every one of the {train_size} selected rows of {source} is malformed "
                         f"(no problem or solution); nothing to write")

    summary = {
        "source": source,
        "selection": "sample" if sample is not None else "first",
        "seed": sample_seed,
        "system_prompt": system_prompt,
        "rows_read": len(rows),
        "train_rows": len(train),
        "val_rows": len(val),
        "skipped": {"train": train_skipped, "val": val_skipped},
        "train_sources": dict(Counter(row["source"] for row in train).most_common()),
        "train_solutions_with_boxed": sum("\\boxed" in row["messages"][-1]["content"] for row in train),
        "files": [name for name in OUTPUT_FILES if name != "val.parquet" or val],
    }
    tables = {"train.parquet": train}
    if val:
        tables["val.parquet"] = val
    _write_atomically(out_dir, tables, summary, overwrite)
    return summary


def _is_local(source: str) -> bool:
    return Path(source).exists() or source.endswith(LOCAL_SUFFIXES) or source.startswith(("/", ".", "~"))


def _read_rows(source: str, count: int, sample_seed: int | None) -> list[dict]:
    """``count`` rows of ``source``, each with its ``row_index``: the first ones, or a seeded uniform sample."""
    if _is_local(source):
        path = Path(source).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "not found"
            raise FileNotFoundError(f"NuminaMath-CoT source {what}: {path}; pass an existing .parquet or .jsonl "
                                    f"file, or a hub id such as {DEFAULT_SOURCE}")
        read = _read_parquet if path.suffix == ".parquet" else _read_jsonl
        rows = read(path, count, sample_seed)
    else:
        rows = _read_hub(source, count, sample_seed)
    if not rows:
        raise ValueError(f"{source} holds no rows")
    missing = [column for column in REQUIRED_COLUMNS if column not in rows[0]]
    if missing:
        raise ValueError(f"{source} lacks the column(s) {', '.join(missing)} (NuminaMath-CoT's schema: source, "
                         f"problem, solution, messages); its columns are {sorted(rows[0])}")
    return rows


def _sample_indices(total: int, count: int, seed: int) -> list[int]:
    return random.Random(seed).sample(range(total), min(count, total))


def _read_parquet(path: Path, count: int, sample_seed: int | None) -> list[dict]:
    import pyarrow.parquet as pq

    if sample_seed is None:
        rows = []
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            rows += batch.to_pylist()
            if len(rows) >= count:
                break
        indices = range(min(count, len(rows)))
        return [{**rows[i], "row_index": i} for i in indices]
    table = pq.read_table(path)
    indices = _sample_indices(table.num_rows, count, sample_seed)
    return [{**row, "row_index": i} for i, row in zip(indices, table.take(indices).to_pylist())]


def _read_jsonl(path: Path, count: int, sample_seed: int | None) -> list[dict]:
    rows = read_jsonl(path, limit=count if sample_seed is None else None)
    indices = range(len(rows)) if sample_seed is None else _sample_indices(len(rows), count, sample_seed)
    return [{**rows[i], "row_index": i} for i in indices]


def _read_hub(hub_id: str, count: int, sample_seed: int | None) -> list[dict]:
    """The first ``count`` rows by streaming (no full download), or a sample of the whole (cached) train split."""
    from datasets import load_dataset

    if sample_seed is None:
        stream = load_dataset(hub_id, split="train", streaming=True)
        return [{**row, "row_index": i} for i, row in enumerate(itertools.islice(stream, count))]
    dataset = load_dataset(hub_id, split="train")
    indices = _sample_indices(len(dataset), count, sample_seed)
    return [{**row, "row_index": i} for i, row in zip(indices, dataset.select(indices))]


def _problem_with_solution(row: dict) -> tuple[str, str] | str:
    """(problem, solution), or the reason the row is malformed."""
    for column in REQUIRED_COLUMNS:
        value = row.get(column)
        if not isinstance(value, str):
            return f"{column} is {'missing' if value is None else type(value).__name__}"
        if not value.strip():
            return f"{column} is blank"
    return row["problem"], row["solution"]


def _to_sft_rows(rows: list[dict], system_prompt: str) -> tuple[list[dict], list[dict]]:
    kept, skipped = [], []
    for row in rows:
        pair = _problem_with_solution(row)
        if isinstance(pair, str):
            skipped.append({"row_index": row["row_index"], "reason": pair})
            continue
        kept.append({"messages": to_messages(*pair, system_prompt=system_prompt),
                     "source": str(row.get("source") or ""), "row_index": row["row_index"]})
    return kept, skipped


def _write_atomically(out_dir: Path, tables: dict[str, list[dict]], summary: dict, overwrite: bool) -> None:
    """Write every file aside first, then rename them into place (a crash leaves no partial file behind)."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, rows in tables.items():
            aside = out_dir / f".{name}.{os.getpid()}.tmp"
            pd.DataFrame(rows).to_parquet(aside, index=False)
            staged.append((aside, out_dir / name))
        aside = out_dir / f".summary.json.{os.getpid()}.tmp"
        aside.write_text(json.dumps(summary, indent=2) + "\n")
        staged.append((aside, out_dir / "summary.json"))
    except BaseException:
        for aside, _ in staged:
            aside.unlink(missing_ok=True)
        raise
    if overwrite and "val.parquet" not in tables:
        (out_dir / "val.parquet").unlink(missing_ok=True)  # a stale val file would not match the new train file
    for aside, final in staged:
        os.replace(aside, final)


def _report(summary: dict, out_dir: Path) -> None:
    skipped = summary["skipped"]["train"] + summary["skipped"]["val"]
    for entry in skipped[:20]:
        print(f"skipped row {entry['row_index']}: {entry['reason']}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"... and {len(skipped) - 20} more skipped rows (all listed in summary.json)", file=sys.stderr)
    print(f"wrote {out_dir}: {summary['train_rows']} train rows, {summary['val_rows']} validation rows "
          f"({summary['selection']} rows of {summary['source']}; {len(skipped)} malformed rows skipped); "
          f"summary in {out_dir / 'summary.json'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ranktuner_verl.data.numina", description=__doc__.split("\n")[0])
    parser.add_argument("--out", "--out", dest="out", required=True, type=Path, help="folder for train.parquet, val.parquet, "
                        "summary.json")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="hub id or a local .parquet/.jsonl file "
                        f"(default {DEFAULT_SOURCE})")
    selection = parser.add_mutually_exclusive_group()
    selection.add_argument("--num-rows", type=int, default=DEFAULT_NUM_ROWS,
                           help=f"train on the first N rows (default {DEFAULT_NUM_ROWS}, the paper's)")
    selection.add_argument("--sample", type=int, help="train on a uniform sample of N rows instead (see --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument("--val-size", type=int, default=DEFAULT_VAL_SIZE,
                        help=f"validation rows, taken after the training rows (default {DEFAULT_VAL_SIZE}; 0: none)")
    parser.add_argument("--system-prompt", default=COT_SYSTEM_PROMPT, help="system turn (default: Qwen2.5-Math CoT)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    args = parser.parse_args(argv)
    try:
        summary = prepare(args.out, source=args.source, num_rows=args.num_rows, sample=args.sample,
                          seed=args.seed, val_size=args.val_size, system_prompt=args.system_prompt,
                          overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        parser.error(str(error))
    _report(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
