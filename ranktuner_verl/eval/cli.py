"""``python -m ranktuner_verl.eval``: sample, grade and score a model on benchmarks; build result tables.

    run        MODEL -> OUT/<benchmark>/{problems.jsonl, generation.json, completions.jsonl, grades.jsonl,
               metrics.json}; resumes an interrupted run in the same OUT. MODEL: a HF dir, a verl checkpoint
               (global_step_N or its root) or a LoRA run, resolved by ranktuner_verl.checkpoints.
    grade      (re)grade the completions of result folders and rewrite their grades and metrics.
    table      result folders -> PREFIX.md, PREFIX.csv, PREFIX.tex (configurations x benchmarks, Pass@1 / Pass@16,
               math and OOD averages; mean over seeds with a 95% interval; a folder of seed folders is one row).
    agreement  math-verify vs the Qwen2.5-Math harness's rules on the gold solutions of local benchmark files.
    truth-set  both math graders against answer forms labelled by a careful human grader (tests/eval/answer_forms.txt).

Examples:
    python -m ranktuner_verl.eval run --model ckpt/hf --out results/sft --backend vllm --tp 1 --dp 4
    python -m ranktuner_verl.eval run --model tiny --out results/tiny --backend hf --benchmarks aime24 --limit 3 --n 2
    python -m ranktuner_verl.eval table results/sft results/ranktuner --out results/table   # results/sft/seed0 ...
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from ranktuner_verl.eval import code
from ranktuner_verl.eval.backends import DEFAULT_CHUNK_SIZE, SamplingConfig, make_backend
from ranktuner_verl.eval.benchmarks import (
    BENCHMARKS, DEFAULT_BENCHMARKS, OPTION_ORDERS, as_sampled, canonical_name, get, load_benchmark,
)
from ranktuner_verl.eval.choice import grade_choice
from ranktuner_verl.eval.generate import (
    COMPLETIONS_FILE, SETTINGS_FILE, generate_completions, read_completions, read_problems, write_text_atomic,
)
from ranktuner_verl.eval.grading import DEFAULT_TIMEOUT_S, GRADERS, GRADING_VERSION, grade_many
from ranktuner_verl.eval.metrics import benchmark_metrics
from ranktuner_verl.eval.sandbox import UNSAFE_FLAG, choose_isolation
from ranktuner_verl.eval.tables import METRICS_FILE, collect_table, to_markdown, write_tables

GRADES_FILE = "grades.jsonl"
UNSAFE_HELP = ("code benchmarks: where neither bubblewrap nor unshare can isolate the programs, run them anyway, "
               "unisolated, with your rights (unsafe)")


def grade_benchmark(bench_dir: str | Path, timeout: float | None = DEFAULT_TIMEOUT_S, workers: int | None = None,
                    grader: str = "math-verify", allow_unisolated_code: bool = False, n: int | None = None) -> dict:
    """Grade a benchmark folder's completions; write ``grades.jsonl`` and ``metrics.json``; return the metrics.

    The benchmark is the folder's name; its kind picks the grader (math: ``grader``, math-verify or qwen; choice:
    the chosen letter; code: the tests run in an isolated process, ``timeout`` each, see ``sandbox``). ``workers``:
    grading processes (None: 1 for math, one per CPU core for code). Every problem must have its
    ``n`` completions (see ``generation.json``). ``length_limited`` is the share of samples that hit the token limit.
    ``n`` below the folder's (a run resumed with a smaller ``--n``) scores each problem's first ``n`` samples, and
    says so.
    """
    bench_dir = Path(bench_dir)
    problems = read_problems(bench_dir)
    settings = json.loads((bench_dir / SETTINGS_FILE).read_text(encoding="utf-8"))
    if n is not None and n < settings["n"]:
        print(f"{bench_dir}: the folder holds {settings['n']} samples per problem; scoring the first {n} as --n {n} "
              f"asks (give --n {settings['n']} to score them all)", flush=True)
    n = settings["n"] if n is None else min(n, settings["n"])
    records = read_completions(bench_dir / COMPLETIONS_FILE)
    keys = [(p.id, s) for p in problems for s in range(n)]
    missing = [key for key in keys if key not in records]
    if missing:
        raise ValueError(f"{bench_dir}: {len(missing)} of {len(keys)} completions are missing (first: problem "
                         f"{missing[0][0]!r}, sample {missing[0][1]}); run generation again with the same --out "
                         "to finish it")
    kind = get(bench_dir.name).kind
    by_id = {p.id: p for p in problems}
    texts = [records[k]["completion"] for k in keys]
    if kind == "code":
        grader = "tests"
        grades = code.grade_code_many(texts, [by_id[pid].extra for pid, _ in keys], timeout=timeout or
                                      DEFAULT_TIMEOUT_S, workers=workers, desc=f"grading {bench_dir.name}",
                                      isolation=choose_isolation(allow_unisolated_code))
    elif kind == "choice":
        grader = "choice letter"
        grades = [grade_choice(text, as_sampled(by_id[pid], s).answer, len(by_id[pid].extra["choices"]))
                  for text, (pid, s) in zip(texts, keys)]
    else:
        grades = grade_many(texts, [by_id[pid].answer for pid, _ in keys], timeout=timeout, workers=workers or 1,
                            desc=f"grading {bench_dir.name}", grader=grader)
    outcomes: dict[str, list[bool]] = {p.id: [] for p in problems}
    for (pid, _), g in zip(keys, grades):
        outcomes[pid].append(g.correct)
    metrics = {
        "benchmark": bench_dir.name,
        **benchmark_metrics(outcomes),
        "grader": grader,
        "grading_version": GRADING_VERSION,
        "length_limited": sum(records[k].get("finish_reason") == "length" for k in keys) / len(keys),
        "grader_errors": sum(g.error is not None and not g.timed_out for g in grades),
        "grader_timeouts": sum(g.timed_out for g in grades),
        "generation": settings,
    }
    write_text_atomic(bench_dir / GRADES_FILE, "".join(
        json.dumps({"id": pid, "sample": s, "correct": g.correct, "extracted": g.extracted, "error": g.error},
                   ensure_ascii=False) + "\n" for (pid, s), g in zip(keys, grades)))
    write_text_atomic(bench_dir / METRICS_FILE, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics


def evaluate(model: str | Path, out_dir: str | Path, benchmarks: Sequence[str] = DEFAULT_BENCHMARKS, *,
             data_dir: str | Path | None = None, limit: int | None = None, backend: str = "hf",
             backend_options: dict | None = None, sampling: SamplingConfig = SamplingConfig(),
             system_prompt: str | None = None, grade_timeout: float | None = DEFAULT_TIMEOUT_S,
             grade_workers: int | None = None, grader: str = "math-verify", gpqa_order: str = "per-problem",
             progress: bool = True, allow_unisolated_code: bool = False) -> dict[str, dict]:
    """Generate, grade and score ``model`` on each benchmark into ``out_dir/<benchmark>``; benchmark -> metrics.

    ``system_prompt``: None for each benchmark's own (``Benchmark.system_prompt``). The GPQA choice order is
    shuffled with ``sampling.seed``, once per problem or once per sample (``gpqa_order``, ``OPTION_ORDERS``). All
    benchmarks are loaded (and the model directory and, for code, the isolation checked) before anything is
    generated or written.
    """
    names = [canonical_name(b) for b in benchmarks]
    if not names:
        raise ValueError(f"no benchmarks given; choose from {', '.join(BENCHMARKS)}")
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; choose one of {', '.join(GRADERS)}")
    problems = {name: load_benchmark(name, path=data_dir, limit=limit, seed=sampling.seed, option_order=gpqa_order)
                for name in names}
    check_code_isolation(names, allow_unisolated_code)
    generator = make_backend(backend, model, **(backend_options or {}))
    results = {}
    for name in names:
        prompt = system_prompt if system_prompt is not None else get(name).system_prompt
        generate_completions(generator, problems[name], Path(out_dir) / name, sampling, prompt, progress)
        results[name] = grade_benchmark(Path(out_dir) / name, timeout=grade_timeout, workers=grade_workers,
                                        grader=grader, allow_unisolated_code=allow_unisolated_code, n=sampling.n)
        print(_summary_line(results[name]), flush=True)
    return results


def check_code_isolation(benchmarks: Sequence[str], allow_unisolated_code: bool) -> None:
    """Where a benchmark runs code, refuse now (before any model loads) if no isolation works here."""
    if any(get(name).kind == "code" for name in benchmarks):
        choose_isolation(allow_unisolated_code)


def _summary_line(metrics: dict) -> str:
    scores = "  ".join(f"pass@{k} {100 * v:.2f}" for k, v in metrics["pass@k"].items())
    failures = metrics["grader_errors"] + metrics["grader_timeouts"]
    limited = metrics.get("length_limited", 0.0)
    return (f"{metrics['benchmark']}: {metrics['num_problems']} problems x {metrics['samples_per_problem']} samples  "
            f"{scores}  hit the token limit {100 * limited:.1f}%"
            + (f"  ({failures} answers could not be graded)" if failures else ""))


def _bench_dirs(result_dir: Path) -> list[Path]:
    """The benchmark folders in a result folder, or in a folder of result folders (seeds), or the folder itself."""
    if (result_dir / SETTINGS_FILE).is_file():
        return [result_dir]
    found = sorted(p.parent for p in result_dir.glob(f"*/{SETTINGS_FILE}")) or sorted(
        p.parent for p in result_dir.glob(f"*/*/{SETTINGS_FILE}"))
    if not found:
        raise ValueError(f"{result_dir} holds no generation results (no <benchmark>/{SETTINGS_FILE})")
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ranktuner_verl.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    with_defaults = argparse.ArgumentDefaultsHelpFormatter

    run = commands.add_parser("run", help="generate, grade and score a model on benchmarks",
                              formatter_class=with_defaults)
    run.add_argument("--model", required=True, help="a Hugging Face model dir, a verl checkpoint global_step_N or "
                     "checkpoint root (merged first), or a LoRA run (its adapter is merged in)")
    run.add_argument("--work-dir", default=None, help="where merged checkpoints go (None: beside the checkpoint)")
    run.add_argument("--out", required=True, help="result folder; an existing one is resumed")
    run.add_argument("--benchmarks", default=",".join(DEFAULT_BENCHMARKS),
                     help=f"comma-separated, from: {', '.join(BENCHMARKS)}")
    run.add_argument("--data-dir", default=None, help="folder of local benchmark .jsonl files (None: the hub)")
    run.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark (None: all)")
    run.add_argument("--backend", choices=["hf", "vllm"], default="vllm", help="vllm (GPUs) or hf (transformers)")
    defaults = SamplingConfig()
    run.add_argument("--n", type=int, default=defaults.n, help="samples per problem")
    run.add_argument("--temperature", type=float, default=defaults.temperature, help="0: greedy")
    run.add_argument("--top-p", type=float, default=defaults.top_p, help="nucleus sampling")
    run.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                     help="capped per prompt by the model's context; the budget is in generation.json")
    run.add_argument("--seed", type=int, default=defaults.seed, help="run seed (per-problem seeds, GPQA shuffle)")
    run.add_argument("--system-prompt", default=None, help="None: the benchmark's (math, choice: the Qwen2.5-Math "
                     "CoT prompt; code: a code-block prompt)")
    run.add_argument("--grader", choices=GRADERS, default="math-verify", help="math benchmarks' grader")
    run.add_argument("--gpqa-order", choices=OPTION_ORDERS, default="per-problem",
                     help="GPQA's choice order: one per problem for all its samples (Pass@k's k samples of one "
                     "prompt), or a new one per sample (simple-evals' per-repeat order); the paper does not say")
    run.add_argument("--tp", type=int, default=1, help="vllm: tensor-parallel GPUs per replica")
    run.add_argument("--dp", type=int, default=1, help="data-parallel replicas, each in its own process (vllm: tp x "
                     "dp GPUs in all; hf: one GPU each with --device cuda, or a share of the CPU cores)")
    run.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                     help="vllm: problems per generate call (each with its n samples)")
    run.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm")
    run.add_argument("--max-model-len", type=int, default=None, help="vllm: context length (None: the model's)")
    run.add_argument("--device", default="cpu", help="hf: torch device")
    run.add_argument("--grade-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                     help="seconds per answer (code: per program run)")
    run.add_argument("--grade-workers", type=int, default=None,
                     help="grading processes (None: 1 for math, one per CPU core for code)")
    run.add_argument(UNSAFE_FLAG, action="store_true", help=UNSAFE_HELP)

    grade = commands.add_parser("grade", help="(re)grade result folders and rewrite their metrics",
                                formatter_class=with_defaults)
    grade.add_argument("results", nargs="+", help="result folders (or single benchmark folders)")
    grade.add_argument("--grader", choices=GRADERS, default="math-verify", help="math benchmarks' grader")
    grade.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per answer")
    grade.add_argument("--workers", type=int, default=None,
                       help="grading processes (None: 1 for math, one per CPU core for code)")
    grade.add_argument(UNSAFE_FLAG, action="store_true", help=UNSAFE_HELP)

    table = commands.add_parser("table", help="result folders -> Markdown, CSV and LaTeX table",
                                formatter_class=with_defaults)
    table.add_argument("results", nargs="+", help="result folders, one row each; a folder of result folders "
                       "(seed0/, seed1/, ...) is one row of several seeds")
    table.add_argument("--out", required=True, help="output prefix: writes PREFIX.md, PREFIX.csv, PREFIX.tex")
    table.add_argument("--labels", default=None, help="comma-separated row labels, one per folder; folders with "
                       "the same label are the seeds of one row (None: folder names)")
    table.add_argument("--k", type=int, nargs="+", default=[1, 16], help="which Pass@k columns")
    table.add_argument("--allow-mixed", action="store_true", help="tabulate rows with different graders, n, "
                       "problems or sampling settings (listed under the table) instead of refusing them")

    agreement = commands.add_parser("agreement", help="math-verify vs qwen grader on gold and perturbed answers",
                                    formatter_class=with_defaults)
    agreement.add_argument("--data-dir", required=True, help="folder of the five math benchmark .jsonl files")
    agreement.add_argument("--limit", type=int, default=None, help="first N problems of each (None: all)")
    agreement.add_argument("--out", default=None, help="also write the Markdown to this file")
    agreement.add_argument("--workers", type=int, default=1, help="grading processes")
    agreement.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per answer")

    truth = commands.add_parser("truth-set", help="both math graders against a labelled set of answer forms",
                                formatter_class=with_defaults)
    truth.add_argument("cases", help="the truth-set file (the project's: tests/eval/answer_forms.txt)")
    truth.add_argument("--out", default=None, help="also write the Markdown to this file")
    truth.add_argument("--workers", type=int, default=1, help="grading processes")
    truth.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per answer")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _run_command(args)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as error:  # bad input: one clear line
        parser.error(str(error))


def _run_command(args: argparse.Namespace) -> None:
    if args.command == "run":
        from ranktuner_verl.checkpoints import resolve_model_dir

        options = ({"device": args.device, "data_parallel_size": args.dp} if args.backend == "hf" else
                   {"tensor_parallel_size": args.tp, "data_parallel_size": args.dp, "chunk_size": args.chunk_size,
                    "gpu_memory_utilization": args.gpu_memory_utilization, "max_model_len": args.max_model_len})
        sampling = SamplingConfig(n=args.n, temperature=args.temperature, top_p=args.top_p,
                                  max_new_tokens=args.max_new_tokens, seed=args.seed)
        benchmarks = [canonical_name(b) for b in args.benchmarks.split(",")]  # checked before any merge
        check_code_isolation(benchmarks, args.allow_unisolated_code)
        model = resolve_model_dir(args.model, args.work_dir)
        evaluate(model, args.out, benchmarks, data_dir=args.data_dir, limit=args.limit, backend=args.backend,
                 backend_options=options, sampling=sampling, system_prompt=args.system_prompt,
                 grade_timeout=args.grade_timeout, grade_workers=args.grade_workers, grader=args.grader,
                 gpqa_order=args.gpqa_order, allow_unisolated_code=args.allow_unisolated_code)
    elif args.command == "grade":
        bench_dirs = [d for result in args.results for d in _bench_dirs(Path(result))]
        for bench_dir in bench_dirs:
            metrics = grade_benchmark(bench_dir, timeout=args.timeout, workers=args.workers, grader=args.grader,
                                      allow_unisolated_code=args.allow_unisolated_code)
            print(_summary_line(metrics), flush=True)
    elif args.command in ("agreement", "truth-set"):
        from ranktuner_verl.eval import agreement

        if args.command == "agreement":
            text = agreement.to_markdown(agreement.measure(args.data_dir, limit=args.limit, workers=args.workers,
                                                          timeout=args.timeout))
        else:
            cases = agreement.read_truth_set(args.cases)
            text = agreement.truth_set_markdown(cases, agreement.grade_truth_set(cases, args.workers, args.timeout))
        print(text)
        if args.out:
            write_text_atomic(args.out, text)
    else:
        labels = args.labels.split(",") if args.labels else None
        table = collect_table(args.results, labels, ks=tuple(args.k), allow_mixed=args.allow_mixed)
        paths = write_tables(table, args.out)
        print(to_markdown(table))
        print("wrote " + ", ".join(map(str, paths)))
