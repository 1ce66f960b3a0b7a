"""Benchmark: the cost of isolating HumanEval programs, against the unisolated process, in the same run.

    python -m ranktuner_verl.bench.sandbox                 # 32 problems, 3 rounds, one worker per core
    python -m ranktuner_verl.bench.sandbox --problems 164 --rounds 1 --workers 1

Grades the canonical solutions of the first ``--problems`` HumanEval problems with each isolation that works here
(``none`` is the baseline: a fresh ``python -I`` process with the same runner, as before the sandbox), the
isolations interleaved in each round. Prints the wall time per program (median over rounds), its ratio to the
baseline, and the time 164 problems x 16 samples would take at that rate. Machines are noisy: read the ratios.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time

from ranktuner_verl.bench.cases import BenchParser
from ranktuner_verl.eval.benchmarks import load_benchmark
from ranktuner_verl.eval.code import grade_code_many
from ranktuner_verl.eval.sandbox import ISOLATIONS, probe

BASELINE = "none"


def main(argv: list[str] | None = None) -> None:
    parser = BenchParser(__doc__)
    parser.add_argument("--problems", type=int, default=32, help="first N HumanEval problems")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="programs at a time (default: one per CPU core)")
    args = parser.parse_args(argv)
    problems = load_benchmark("humaneval", limit=args.problems)
    usable = [name for name in ISOLATIONS if name == BASELINE or probe(name, shutil.which(name)) is None]
    seconds: dict[str, list[float]] = {name: [] for name in usable}
    for round_index in range(args.rounds):
        for name in usable[round_index % len(usable):] + usable[:round_index % len(usable)]:
            started = time.perf_counter()
            grades = grade_code_many([p.answer for p in problems], [p.extra for p in problems],
                                     workers=args.workers, isolation=name, progress=False)
            seconds[name].append((time.perf_counter() - started) / len(problems))
            failed = [p.id for p, g in zip(problems, grades) if not g.correct]
            if failed:
                raise SystemExit(f"{name}: canonical solutions failed: {failed}")
    workers = args.workers or os.cpu_count()
    base = statistics.median(seconds[BASELINE])
    print(f"{len(problems)} canonical HumanEval solutions x {args.rounds} rounds, {workers} workers")
    print(f"{'isolation':<10} {'ms/program':>10} {'ratio':>6} {'164 x 16 samples':>17}")
    for name in usable:
        per = statistics.median(seconds[name])
        print(f"{name:<10} {1000 * per:>10.1f} {per / base:>6.2f} {164 * 16 * per / 60:>13.1f} min")


if __name__ == "__main__":
    main()
