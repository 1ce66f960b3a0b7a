"""``python -m ranktuner_verl.eval``: sample, grade and score a model on the math benchmarks; build result tables.

    run    MODEL_DIR -> OUT/<benchmark>/{problems.jsonl, generation.json, completions.jsonl, grades.jsonl,
           metrics.json}; resumes an interrupted run in the same OUT.
    grade  (re)grade the completions of result folders and rewrite their grades and metrics.
    table  result folders -> PREFIX.md, PREFIX.csv, PREFIX.tex (runs x benchmarks, Pass@1 / Pass@16, average).

Examples:
    python -m ranktuner_verl.eval run --model ckpt/hf --out results/sft --backend vllm --tp 1 --dp 4
    python -m ranktuner_verl.eval run --model tiny --out results/tiny --backend hf --benchmarks aime24 --limit 3 --n 2
    python -m ranktuner_verl.eval table results/sft results/ranktuner --out results/table
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from ranktuner_verl.data.benchmarks import BENCHMARKS, canonical_name, load_benchmark
from ranktuner_verl.data.prompts import COT_SYSTEM_PROMPT
from ranktuner_verl.eval.generate import (
    COMPLETIONS_FILE, SETTINGS_FILE, SamplingConfig, generate_completions, make_backend, read_completions,
    read_problems, write_text_atomic,
)
from ranktuner_verl.eval.grading import DEFAULT_TIMEOUT_S, grade_many
from ranktuner_verl.eval.metrics import benchmark_metrics
from ranktuner_verl.eval.tables import METRICS_FILE, collect_table, to_markdown, write_tables

GRADES_FILE = "grades.jsonl"


def grade_benchmark(bench_dir: str | Path, timeout: float | None = DEFAULT_TIMEOUT_S, workers: int = 1) -> dict:
    """Grade a benchmark folder's completions; write ``grades.jsonl`` and ``metrics.json``; return the metrics.

    The benchmark is the folder's name. Every problem must have its ``n`` completions (see ``generation.json``).
    """
    bench_dir = Path(bench_dir)
    problems = read_problems(bench_dir)
    settings = json.loads((bench_dir / SETTINGS_FILE).read_text(encoding="utf-8"))
    n = settings["n"]
    records = read_completions(bench_dir / COMPLETIONS_FILE)
    keys = [(p.id, s) for p in problems for s in range(n)]
    missing = [key for key in keys if key not in records]
    if missing:
        raise ValueError(f"{bench_dir}: {len(missing)} of {len(keys)} completions are missing (first: problem "
                         f"{missing[0][0]!r}, sample {missing[0][1]}); run generation again with the same --out "
                         "to finish it")
    gold = {p.id: p.answer for p in problems}
    grades = grade_many([records[k]["completion"] for k in keys], [gold[pid] for pid, _ in keys], timeout=timeout,
                        workers=workers, desc=f"grading {bench_dir.name}")
    outcomes: dict[str, list[bool]] = {p.id: [] for p in problems}
    for (pid, _), g in zip(keys, grades):
        outcomes[pid].append(g.correct)
    metrics = {
        "benchmark": bench_dir.name,
        **benchmark_metrics(outcomes),
        "grader_errors": sum(g.error is not None and not g.timed_out for g in grades),
        "grader_timeouts": sum(g.timed_out for g in grades),
        "generation": settings,
    }
    write_text_atomic(bench_dir / GRADES_FILE, "".join(
        json.dumps({"id": pid, "sample": s, "correct": g.correct, "extracted": g.extracted, "error": g.error},
                   ensure_ascii=False) + "\n" for (pid, s), g in zip(keys, grades)))
    write_text_atomic(bench_dir / METRICS_FILE, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics


def evaluate(model: str | Path, out_dir: str | Path, benchmarks: Sequence[str] = BENCHMARKS, *,
             data_dir: str | Path | None = None, limit: int | None = None, backend: str = "hf",
             backend_options: dict | None = None, sampling: SamplingConfig = SamplingConfig(),
             system_prompt: str = COT_SYSTEM_PROMPT, grade_timeout: float | None = DEFAULT_TIMEOUT_S,
             grade_workers: int = 1, progress: bool = True) -> dict[str, dict]:
    """Generate, grade and score ``model`` on each benchmark into ``out_dir/<benchmark>``; benchmark -> metrics.

    All benchmarks are loaded (and the model directory checked) before anything is generated or written.
    """
    names = [canonical_name(b) for b in benchmarks]
    if not names:
        raise ValueError(f"no benchmarks given; choose from {', '.join(BENCHMARKS)}")
    problems = {name: load_benchmark(name, path=data_dir, limit=limit) for name in names}
    generator = make_backend(backend, model, **(backend_options or {}))
    results = {}
    for name in names:
        generate_completions(generator, problems[name], Path(out_dir) / name, sampling, system_prompt, progress)
        results[name] = grade_benchmark(Path(out_dir) / name, timeout=grade_timeout, workers=grade_workers)
        print(_summary_line(results[name]), flush=True)
    return results


def _summary_line(metrics: dict) -> str:
    scores = "  ".join(f"pass@{k} {100 * v:.2f}" for k, v in metrics["pass@k"].items())
    failures = metrics["grader_errors"] + metrics["grader_timeouts"]
    return (f"{metrics['benchmark']}: {metrics['num_problems']} problems x {metrics['samples_per_problem']} samples  "
            f"{scores}" + (f"  ({failures} answers could not be graded)" if failures else ""))


def _bench_dirs(result_dir: Path) -> list[Path]:
    """The benchmark folders in a result folder (or the folder itself if it is one)."""
    if (result_dir / SETTINGS_FILE).is_file():
        return [result_dir]
    found = sorted(p.parent for p in result_dir.glob(f"*/{SETTINGS_FILE}"))
    if not found:
        raise ValueError(f"{result_dir} holds no generation results (no <benchmark>/{SETTINGS_FILE})")
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ranktuner_verl.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="generate, grade and score a model on benchmarks")
    run.add_argument("--model", required=True, help="a Hugging Face model dir, a verl checkpoint global_step_N or "
                     "checkpoint root (merged first), or a LoRA run (its adapter is merged in)")
    run.add_argument("--work-dir", default=None, help="where merged checkpoints go (default: beside the checkpoint)")
    run.add_argument("--out", required=True, help="result folder; an existing one is resumed")
    run.add_argument("--benchmarks", default=",".join(BENCHMARKS), help="comma-separated (default: all five)")
    run.add_argument("--data-dir", default=None, help="folder of local benchmark .jsonl files (default: the hub)")
    run.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    run.add_argument("--backend", choices=["hf", "vllm"], default="vllm")
    defaults = SamplingConfig()
    run.add_argument("--n", type=int, default=defaults.n, help="samples per problem")
    run.add_argument("--temperature", type=float, default=defaults.temperature)
    run.add_argument("--top-p", type=float, default=defaults.top_p)
    run.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    run.add_argument("--seed", type=int, default=defaults.seed)
    run.add_argument("--system-prompt", default=COT_SYSTEM_PROMPT)
    run.add_argument("--tp", type=int, default=1, help="vllm: tensor-parallel GPUs per replica")
    run.add_argument("--dp", type=int, default=1, help="data-parallel replicas, each in its own process (vllm: tp x "
                     "dp GPUs in all; hf: one GPU each with --device cuda, or a share of the CPU cores)")
    run.add_argument("--chunk-size", type=int, default=1024, help="vllm: requests per generate call")
    run.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm")
    run.add_argument("--max-model-len", type=int, default=None, help="vllm: context length (default: the model's)")
    run.add_argument("--device", default="cpu", help="hf: torch device")
    run.add_argument("--grade-timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per answer")
    run.add_argument("--grade-workers", type=int, default=1, help="grading processes")

    grade = commands.add_parser("grade", help="(re)grade result folders and rewrite their metrics")
    grade.add_argument("results", nargs="+", help="result folders (or single benchmark folders)")
    grade.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per answer")
    grade.add_argument("--workers", type=int, default=1, help="grading processes")

    table = commands.add_parser("table", help="result folders -> Markdown, CSV and LaTeX table")
    table.add_argument("results", nargs="+", help="result folders, one row each")
    table.add_argument("--out", required=True, help="output prefix: writes PREFIX.md, PREFIX.csv, PREFIX.tex")
    table.add_argument("--labels", default=None, help="comma-separated row labels (default: folder names)")
    table.add_argument("--k", type=int, nargs="+", default=[1, 16], help="which Pass@k columns (default: 1 16)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _run_command(args)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as error:  # bad input: one clear line, no traceback
        parser.error(str(error))


def _run_command(args: argparse.Namespace) -> None:
    if args.command == "run":
        options = ({"device": args.device, "data_parallel_size": args.dp} if args.backend == "hf" else
                   {"tensor_parallel_size": args.tp, "data_parallel_size": args.dp, "chunk_size": args.chunk_size,
                    "gpu_memory_utilization": args.gpu_memory_utilization, "max_model_len": args.max_model_len})
        sampling = SamplingConfig(n=args.n, temperature=args.temperature, top_p=args.top_p,
                                  max_new_tokens=args.max_new_tokens, seed=args.seed)
        from ranktuner_verl.integration.checkpoints import resolve_model_dir

        model = resolve_model_dir(args.model, args.work_dir)
        evaluate(model, args.out, args.benchmarks.split(","), data_dir=args.data_dir, limit=args.limit,
                 backend=args.backend, backend_options=options, sampling=sampling, system_prompt=args.system_prompt,
                 grade_timeout=args.grade_timeout, grade_workers=args.grade_workers)
    elif args.command == "grade":
        bench_dirs = [d for result in args.results for d in _bench_dirs(Path(result))]
        for bench_dir in bench_dirs:
            print(_summary_line(grade_benchmark(bench_dir, timeout=args.timeout, workers=args.workers)), flush=True)
    else:
        labels = args.labels.split(",") if args.labels else None
        table = collect_table(args.results, labels, ks=tuple(args.k))
        paths = write_tables(table, args.out)
        print(to_markdown(table))
        print("wrote " + ", ".join(map(str, paths)))
