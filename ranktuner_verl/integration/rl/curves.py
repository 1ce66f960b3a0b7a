"""GRPO reward curves on copy3 for vanilla and every token-weighted mode, several seeds each, through verl's real
PPO trainer on a CPU (``toy_grpo``): one figure (mean and spread over seeds) and one markdown table (docs/rl.md).

    python -m ranktuner_verl.integration.rl.curves --out rl_curves [--variants ...] [--seeds 0,1,2]
        [--steps 30] [--parallel 3] [--lr 5e-3]

Runs go ``--parallel`` at a time (each a verl job with its own Ray cluster); ``results.json`` is rewritten after
every run and the figure and table are made from whatever has finished, so an interrupted sweep still reports;
rerunning the same command skips the runs that finished.
Overhead: each run's median ``timing_s/step`` (the whole step, orchestration included) and ``timing_s/update_actor``
(first step excluded: it starts verl's agent loop), the mean over seeds, over vanilla's; runs that share the machine
slow each other down, so read them as rough figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from ranktuner_verl.integration.rl import toy_grpo

OPTION = "actor_rollout_ref.actor.policy_loss.token_weight."
# name -> (loss_mode, token_weight overrides): the variants docs/rl.md compares (issue 21: vanilla, RankTuner in
# both forms, dft, eaft, high_entropy; talr and deft were left out for time)
VARIANTS = {
    "vanilla": ("vanilla", ()),
    "ranktuner": ("ranktuner", ()),
    "ranktuner_exact": ("ranktuner", (f"{OPTION}form=exact",)),
    "dft": ("dft", ()),
    "eaft": ("eaft", ()),
    "high_entropy": ("high_entropy", ()),
}
REWARD, STEP_TIME, UPDATE_TIME = "critic/score/mean", "timing_s/step", "timing_s/update_actor"
LAST = 5  # the final reward is the mean over the last LAST steps of a run


def run_one(out: Path, variant: str, seed: int, steps: int, lr: float, prompts: int, samples: int,
            start: bool = True) -> dict | None:
    """Run one GRPO job unless it already finished (``start=False``: only read a finished one; None if there is none);
    the summary comes from the run's own metrics."""
    loss_mode, extra = VARIANTS[variant]
    task_dir = out / f"task_seed{seed}"
    run_dir = out / "runs" / f"{variant}_seed{seed}"
    task = {"model": task_dir / "model", "train": task_dir / "train.parquet", "val": task_dir / "val.parquet"}
    args = toy_grpo.overrides(task, run_dir, steps=steps, loss_mode=loss_mode, prompts=prompts, samples=samples,
                              lr=lr, seed=seed, extra=extra)
    done = run_dir / "done.json"  # a finished run is not run again (rerun the command to resume a sweep)
    if not (done.exists() and json.loads(done.read_text())["args"] == args):
        if not start:
            return None
        result = toy_grpo.run(run_dir, args, steps=steps)
        done.write_text(json.dumps({"args": args, "wall_s": result.seconds}))
    recorded = json.loads(done.read_text())
    run = toy_grpo.GrpoRun(0, toy_grpo.records(run_dir / "metrics.jsonl")[:steps], 0.0, run_dir / "output.log")
    return {"variant": variant, "seed": seed, "reward": run.values(REWARD), "step_time": run.values(STEP_TIME),
            "update_time": run.values(UPDATE_TIME), "weight_mean": run.values("actor/weight_mean"),
            "probs_diff_max": max(run.values("training/rollout_probs_diff_max"), default=None),
            "wall_s": recorded.get("wall_s"), "note": recorded.get("note")}


def summarize(results: list[dict], variants: list[str]) -> list[dict]:
    """Per variant: seeds, first/last reward (mean, std over seeds), median step time and its ratio to vanilla."""
    rows = []
    for variant in variants:
        runs = [r for r in results if r["variant"] == variant]
        if not runs:
            continue
        first = [r["reward"][0] for r in runs]
        last = [statistics.fmean(r["reward"][-LAST:]) for r in runs]
        step = statistics.fmean(statistics.median(r["step_time"][1:] or r["step_time"]) for r in runs)
        update = statistics.fmean(statistics.median(r["update_time"][1:] or r["update_time"]) for r in runs)
        rows.append({"variant": variant, "seeds": len(runs), "first": statistics.fmean(first),
                     "last": statistics.fmean(last), "last_std": statistics.stdev(last) if len(last) > 1 else 0.0,
                     "last_min": min(last), "last_max": max(last), "step_s": step, "update_s": update,
                     "probs_diff_max": max((r["probs_diff_max"] or 0.0) for r in runs),
                     "wall_s": sum(r["wall_s"] or 0.0 for r in runs)})
    base = next((row for row in rows if row["variant"] == "vanilla"), None)
    for row in rows:
        row["overhead"] = row["step_s"] / base["step_s"] if base else float("nan")
        row["update_overhead"] = row["update_s"] / base["update_s"] if base else float("nan")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [f"| variant | seeds | reward, step 1 | reward, last {LAST} steps: mean ± std (min-max) | step s "
             "(vs vanilla) | actor update s (vs vanilla) | max rollout/actor prob gap |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seeds']} | {r['first']:.3f} | {r['last']:.3f} ± {r['last_std']:.3f} "
                     f"({r['last_min']:.3f}-{r['last_max']:.3f}) | {r['step_s']:.1f} ({r['overhead']:.2f}x) "
                     f"| {r['update_s']:.2f} ({r['update_overhead']:.2f}x) | {r['probs_diff_max']:.1e} |")
    return "\n".join(lines)


def report(results: list[dict], variants: list[str], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    toy_grpo.plot(results, variants, out / "reward_curves.png")
    text = markdown(summarize(results, variants))
    (out / "table.md").write_text(text + "\n")
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", "--out-dir", dest="out", type=Path, default=Path("rl_curves"),
                        help="tasks, runs, results.json, table.md, reward_curves.png (default ./rl_curves)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (model init, prompts, sampling)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--parallel", type=int, default=3, help="runs at a time (default 3)")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step (default 16)")
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt (default 8)")
    parser.add_argument("--report-only", action="store_true", help="start nothing: the figure and table of the runs "
                        "of this command that have finished")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    out = args.out.resolve()
    if args.report_only:
        results = [run_one(out, v, s, args.steps, args.lr, args.prompts, args.samples, start=False)
                   for s in seeds for v in variants]
        print(report([r for r in results if r is not None], variants, out))
        return
    for seed in seeds:  # one model and prompt set per seed, shared by every variant (kept when resuming)
        if not (out / f"task_seed{seed}" / "val.parquet").exists():
            toy_grpo.build_task(out / f"task_seed{seed}", prompts=args.prompts, seed=seed)
    jobs = [(v, s) for s in seeds for v in variants]
    results, start = [], time.monotonic()
    with ThreadPoolExecutor(args.parallel) as pool, tqdm(total=len(jobs), desc="GRPO runs", unit="run") as bar:
        futures = {pool.submit(run_one, out, v, s, args.steps, args.lr, args.prompts, args.samples): (v, s)
                   for v, s in jobs}
        for future in as_completed(futures):
            try:
                results.append(future.result())
            except Exception as error:  # noqa: BLE001  (report the others; the failed run's log says why)
                tqdm.write(f"{futures[future]} failed: {str(error)[:2000]}")
            bar.update(1)
            report(results, variants, out)
    print(report(results, variants, out))
    print(f"\nwall time {time.monotonic() - start:.0f} s; figure {out / 'reward_curves.png'}; data {out / 'results.json'}")


if __name__ == "__main__":
    main()
