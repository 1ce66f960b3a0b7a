"""The results table: rows of seeds, the 95% interval (closed forms and a seeded simulation), best only outside
noise, math and OOD averages, refusing rows measured differently, three formats, bad result folders."""

from __future__ import annotations

import csv
import io
import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from ranktuner_verl.eval.benchmarks import load_benchmark
from ranktuner_verl.eval.cli import main
from ranktuner_verl.eval.grading import GRADING_VERSION
from ranktuner_verl.eval.tables import (
    Seed, build_table, collect_table, estimate, to_csv, to_latex, to_markdown, write_tables,
)


def result(counts: dict[str, list[int]], n: int = 4, seed: int = 0, model: str = "model", grader: str = "math-verify",
           grading_version: int | None = GRADING_VERSION, **sampling) -> dict[str, dict]:
    """benchmark -> metrics as ``grade_benchmark`` writes them: problem j of a benchmark has counts[j] of n right."""
    generation = {"model": model, "seed": seed, "n": n, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 4096,
                  "system_prompt": "cot", **sampling}
    return {b: {"benchmark": b, "samples_per_problem": n, "grader": grader, "grading_version": grading_version,
                "generation": generation,
                "correct_per_problem": {f"{b}-{j:03d}": c for j, c in enumerate(cs)}} for b, cs in counts.items()}


def one_seed(**rows: dict[str, dict]) -> dict[str, list[Seed]]:
    return {label: [Seed(label, results)] for label, results in rows.items()}


def write_folder(folder, results: dict[str, dict]) -> None:
    for benchmark, metrics in results.items():
        (folder / benchmark).mkdir(parents=True)
        (folder / benchmark / "metrics.json").write_text(json.dumps(metrics))


def solved(right: int, of: int) -> list[int]:
    """Per-problem counts with n = 1: ``right`` of ``of`` problems solved."""
    return [1] * right + [0] * (of - right)


# ---------------------------------------------------------------------------------------------------------------
# The interval
# ---------------------------------------------------------------------------------------------------------------


def test_one_seed_one_sample_gives_the_binomial_standard_error():
    table = build_table(one_seed(run=result({"math500": solved(30, 100)}, n=1)), ks=(1,))
    cell = table.cells["run"][("math500", 1)]
    assert cell.mean == pytest.approx(30.0)
    assert cell.se == pytest.approx(100 * math.sqrt(0.3 * 0.7 / 99))  # sample variance of 0/1 values: p(1-p) m/(m-1)
    assert (cell.low, cell.high) == pytest.approx((30 - 1.959964 * cell.se, 30 + 1.959964 * cell.se), abs=1e-4)


def test_two_seeds_closed_form():
    """n = 2; seed 0 solves problems (2, 1, 0) of 2 samples, seed 1 (2, 2, 0): x = [[1, .5, 0], [1, 1, 0]].
    Problem means (1, 3/4, 0): sample variance 13/48, over m = 3; seed means (1/2, 2/3): variance 1/72, over S = 2."""
    rows = {"run": [Seed("s0", result({"aime24": [2, 1, 0]}, n=2, seed=0)),
                    Seed("s1", result({"aime24": [2, 2, 0]}, n=2, seed=1))]}
    cell = build_table(rows, ks=(1, 2)).cells["run"]
    assert cell[("aime24", 1)].mean == pytest.approx(100 * 7 / 12)
    assert cell[("aime24", 1)].se == pytest.approx(100 * math.sqrt(13 / 48 / 3 + 1 / 72 / 2))
    assert cell[("aime24", 2)].mean == pytest.approx(100 * 2 / 3)  # Pass@2 per problem: (1, 1, 0) for both seeds
    assert cell[("aime24", 2)].se == pytest.approx(100 * math.sqrt(1 / 3 / 3))


BETA = (0.6, 0.9)  # problem difficulty: p_i ~ Beta(0.6, 0.9), mean 40%, many problems near 0 or 1


def expit(z):
    return 1 / (1 + np.exp(-z))


def simulate(rng, problems: int, seeds: int, n: int, seed_sd: float, benchmarks: int) -> list[np.ndarray]:
    """Per benchmark, x[s, i] = the share of n samples right, at chance expit(logit(p_i) + b_s): p_i ~ Beta, and one
    seed effect b_s ~ N(0, seed_sd) shared by all benchmarks (a seed is one run)."""
    effect = rng.normal(0, seed_sd, size=(seeds, 1))
    matrices = []
    for _ in range(benchmarks):
        p = rng.beta(*BETA, size=problems)
        matrices.append(rng.binomial(n, expit(np.log(p / (1 - p))[None, :] + effect)) / n)
    return matrices


@pytest.mark.parametrize("seeds, seed_sd, benchmarks", [(3, 0.0, 1), (1, 0.0, 1), (8, 0.4, 2)],
                         ids=["sampling-seeds", "one-seed", "run-seeds-average-of-two"])
def test_the_interval_covers_the_truth_in_a_seeded_simulation(seeds, seed_sd, benchmarks):
    """60 problems per benchmark, n = 4: about 95% of the intervals hold the true mean (over the problems' and the
    seeds' populations), and the mean SE^2 is close to the variance of the estimates (a little above: by design)."""
    rng = np.random.default_rng(0)
    p = rng.beta(*BETA, size=50_000)
    effects = [NormalDist(0, seed_sd).inv_cdf((j + 0.5) / 200) for j in range(200)] if seed_sd else [0.0]
    truth = 100 * float(np.mean([expit(np.log(p / (1 - p)) + b).mean() for b in effects]))
    cells = [estimate(simulate(rng, 60, seeds, 4, seed_sd, benchmarks)) for _ in range(1500)]
    coverage = np.mean([c.low <= truth <= c.high for c in cells])
    ratio = np.mean([c.se ** 2 for c in cells]) / np.var([c.mean for c in cells])
    print(f"coverage {coverage:.3f}, mean SE^2 / variance {ratio:.3f}")
    assert 0.93 <= coverage <= 0.985, coverage
    assert 0.9 <= ratio <= 1.3, ratio


# ---------------------------------------------------------------------------------------------------------------
# Best, averages, refusing unlike rows
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def table():
    """strong beats weak clearly on MATH500; close is within noise of strong; AIME24 Pass@4 ties."""
    return build_table(one_seed(
        strong=result({"math500": [4] * 80 + [0] * 20, "aime24": [2, 2, 0, 0]}),
        close=result({"math500": [4] * 76 + [0] * 24, "aime24": [1, 1, 1, 1]}),
        weak=result({"math500": [4] * 20 + [0] * 80, "aime24": [0, 0, 0, 0]}),
    ), ks=(1, 4))


def test_values_and_best_only_outside_noise(table):
    assert table.benchmarks == ["math500", "aime24"] and table.averages == ["math_avg"]
    assert table.values["strong"][("math500", 1)] == pytest.approx(80.0)
    assert table.values["close"][("aime24", 4)] == pytest.approx(100.0)
    assert table.values["strong"][("math_avg", 1)] == pytest.approx((80 + 25) / 2)
    assert table.ranked(("math500", 1)) == ["strong", "close", "weak"]
    assert table.best(("math500", 1)) is None  # 80 +- 7.9 overlaps 76 +- 8.4
    two = build_table(one_seed(strong=result({"math500": [4] * 80 + [0] * 20}),
                               weak=result({"math500": [4] * 20 + [0] * 80})), ks=(1,))
    assert two.best(("math500", 1)) == "strong"
    alone = build_table(one_seed(only=result({"math500": [4, 0]})), ks=(1,))
    assert alone.best(("math500", 1)) is None and alone.within_noise() == []  # nothing to compare with
    assert "MATH500 Pass@1 (strong, close)" in table.within_noise()


def test_math_and_ood_averages_are_separate():
    full = result({"math500": [4, 2], "aime24": [0, 4], "arc_challenge": [4, 4], "gpqa_diamond": [1, 1],
                   "humaneval": [0, 0]})
    partial = {b: m for b, m in full.items() if b != "aime24"}
    table = build_table({"full": [Seed("full", full)], "partial": [Seed("partial", partial)]}, ks=(1,),
                        allow_mixed=True)
    assert table.averages == ["math_avg", "ood_avg"]
    assert table.values["full"][("math_avg", 1)] == pytest.approx(100 * (0.75 + 0.5) / 2)
    assert table.values["full"][("ood_avg", 1)] == pytest.approx(100 * (1 + 0.25 + 0) / 3)
    assert table.values["partial"][("math_avg", 1)] is None
    assert table.values["partial"][("ood_avg", 1)] == table.values["full"][("ood_avg", 1)]
    assert "partial: no AIME24 results (an average needs each of its benchmarks)" in table.notes
    header = to_markdown(table).splitlines()[0]
    assert header.endswith("| HumanEval Pass@1 | Math avg Pass@1 | OOD avg Pass@1 |")
    single = build_table(one_seed(run=result({"math500": [4], "humaneval": [1]})), ks=(1,))
    assert single.averages == []  # an average of one benchmark would repeat its column


@pytest.mark.parametrize("changed, named", [
    ({"grader": "qwen"}, "MATH500 grader: 'math-verify' (sft) vs 'qwen' (ranktuner)"),
    ({"grading_version": None}, f"MATH500 grading version: {GRADING_VERSION} (sft) vs None (ranktuner)"),
    ({"n": 8}, "MATH500 n: 4 (sft) vs 8 (ranktuner)"),
    ({"temperature": 0.6}, "MATH500 temperature: 1.0 (sft) vs 0.6 (ranktuner)"),
    ({"max_new_tokens": 2048}, "MATH500 max_new_tokens: 4096 (sft) vs 2048 (ranktuner)"),
    ({"counts": [4, 1]}, "MATH500 problems: 3 problems [math500-000, math500-001, math500-002] (sft) vs 2 problems "
                         "[math500-000, math500-001] (ranktuner)"),
])
def test_rows_measured_differently_are_refused_naming_the_difference(changed, named):
    counts = changed.pop("counts", [4, 1, 0])
    rows = one_seed(sft=result({"math500": [4, 1, 0], "aime24": [1]}),
                    ranktuner=result({"math500": counts, "aime24": [1]}, **changed))
    with pytest.raises(ValueError, match="not measured alike") as error:
        build_table(rows, ks=(1,))
    assert named in str(error.value) and "--allow-mixed" in str(error.value)
    table = build_table(rows, ks=(1,), allow_mixed=True)
    assert f"measured differently (--allow-mixed): {named}" in table.notes
    assert f"- measured differently (--allow-mixed): {named}" in to_markdown(table)


# ---------------------------------------------------------------------------------------------------------------
# Rows of seeds from folders
# ---------------------------------------------------------------------------------------------------------------


def test_a_folder_of_seed_folders_or_a_shared_label_is_one_row(tmp_path):
    for seed, counts in enumerate([[4, 0], [2, 2], [0, 4]]):
        write_folder(tmp_path / "sft" / f"seed{seed}", result({"math500": counts}, seed=seed))
    write_folder(tmp_path / "rt_a", result({"math500": [4, 4]}, model="rt", seed=0))
    write_folder(tmp_path / "rt_b", result({"math500": [4, 2]}, model="rt", seed=1))
    table = collect_table([tmp_path / "sft", tmp_path / "rt_a", tmp_path / "rt_b"], labels=["sft", "rt", "rt"],
                          ks=(1,))
    assert table.runs == ["sft", "rt"] and table.seeds == {"sft": 3, "rt": 2}
    assert table.values["sft"][("math500", 1)] == pytest.approx(50.0)
    assert table.values["rt"][("math500", 1)] == pytest.approx(87.5)
    assert to_markdown(table).splitlines()[2].startswith("| sft | 3 | 50.00 ± ")
    assert collect_table([tmp_path / "sft"], ks=(1,)).seeds == {"sft": 3}
    with pytest.raises(ValueError, match="share names"):
        collect_table([tmp_path / "sft" / "seed0", tmp_path / "x" / "seed0"])


def test_a_rows_seeds_must_be_one_configuration_evaluated_alike():
    def row(*results):
        return {"row": [Seed(f"seed{i}", r) for i, r in enumerate(results)]}

    with pytest.raises(ValueError, match=r"row row: seed0 and seed1 are the same evaluation \(model model, seed 0\)"):
        build_table(row(result({"math500": [1]}), result({"math500": [2]})))
    with pytest.raises(ValueError, match="its seeds were not evaluated alike .MATH500 grader: 'math-verify' "
                                         r"\(seed0\) vs 'qwen' \(seed1\)"):
        build_table(row(result({"math500": [1]}), result({"math500": [2]}, seed=1, grader="qwen")), allow_mixed=True)
    with pytest.raises(ValueError, match="its seeds hold different benchmarks"):
        build_table(row(result({"math500": [1]}), result({"math500": [2], "aime24": [1]}, seed=1)))


# ---------------------------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------------------------


def test_markdown(table):
    lines = to_markdown(table).splitlines()
    assert lines[0] == ("| Run | Seeds | MATH500 Pass@1 | MATH500 Pass@4 | AIME24 Pass@1 | AIME24 Pass@4 "
                        "| Math avg Pass@1 | Math avg Pass@4 |")
    cell = table.cells["strong"][("math500", 1)]
    assert lines[2].startswith(f"| strong | 1 | 80.00 ± {cell.half_width:.2f} | 80.00 ± {cell.half_width:.2f} | "
                               "25.00 ± 28.29 | 50.00 ± 56.58 |")
    assert "**" not in "\n".join(lines[:5])  # every column's top two are within noise
    assert lines[6].startswith("Pass@k in percent: mean over problems and seeds ± half-width of its 95% interval")
    assert lines[7].startswith("- Within noise (the top two intervals overlap, no best marked): MATH500 Pass@1 "
                               "(strong, close); MATH500 Pass@4 (strong, close);")
    clear = build_table(one_seed(a=result({"math500": solved(90, 100)}, n=1),
                                 b=result({"math500": solved(10, 100)}, n=1)), ks=(1,))
    assert to_markdown(clear).splitlines()[2].startswith("| a | 1 | **90.00 ± ")


def test_csv(table):
    rows = list(csv.reader(io.StringIO(to_csv(table))))
    assert rows[0][:5] == ["run", "seeds", "math500 pass@1", "math500 pass@1 ci95 low", "math500 pass@1 ci95 high"]
    cell = table.cells["weak"][("math500", 1)]
    assert rows[3][:5] == ["weak", "1", "20.0000", f"{cell.low:.4f}", f"{cell.high:.4f}"]
    assert rows[1][11:14] == ["50.0000", "0.0000", "100.0000"]  # 50 +- 56.58: the interval stays in [0, 100]
    assert rows[-1][:4] == ["best", "", "within noise", ""]


def test_latex(table):
    tex = to_latex(table)
    assert tex.startswith("\\begin{tabular}{lccccccc}") and "\\end{tabular}" in tex
    assert "Run & Seeds & \\multicolumn{2}{c}{MATH500}" in tex and "\\cmidrule(lr){3-4}" in tex
    assert "strong & 1 & 80.00 $\\pm$ " in tex
    assert "\n% Pass@k in percent: mean over problems and seeds" in tex
    escaped = build_table(one_seed(**{"lr_5e-5 & 100%": result({"aime24": [1]})}), ks=(1,))
    assert "lr\\_5e-5 \\& 100\\% & 1 & 25.00" in to_latex(escaped)
    clear = build_table(one_seed(a=result({"math500": solved(90, 100)}, n=1),
                                 b=result({"math500": solved(10, 100)}, n=1)), ks=(1,))
    assert "a & 1 & \\textbf{90.00 $\\pm$ " in to_latex(clear)


def test_write_tables_writes_three_files(tmp_path, table):
    paths = write_tables(table, tmp_path / "out" / "paper")
    assert [p.name for p in paths] == ["paper.md", "paper.csv", "paper.tex"]
    assert paths[0].read_text() == to_markdown(table)
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_empty_cells_are_explained_under_the_markdown():
    rows = {"n2": [Seed("n2", result({"math500": [1]}, n=2))],
            "full": [Seed("full", result({"math500": [8], "aime24": [4]}, n=16))]}
    text = to_markdown(build_table(rows, allow_mixed=True))
    assert "- n2, MATH500 Pass@16: n = 2 samples per problem < k = 16 (and its average); evaluate with --n 16" in text
    assert "- n2: no AIME24 results (an average needs each of its benchmarks)" in text
    assert "- full," not in text


# ---------------------------------------------------------------------------------------------------------------
# Real result folders and the CLI
# ---------------------------------------------------------------------------------------------------------------


def test_graded_result_folders_give_known_values(tmp_path, eval_data_dir, write_reference_results, capsys):
    """Real grading of known answers; "good" has two seeds (a folder of seed folders), "bad" one."""
    aime = load_benchmark("aime24", path=eval_data_dir, limit=3)
    amc = load_benchmark("amc23", path=eval_data_dir, limit=2)
    for seed, aime_right in [(0, [2, 4, 0]), (1, [4, 4, 0])]:
        write_reference_results(tmp_path / "good" / f"seed{seed}" / "aime24", aime, aime_right, n=4, seed=seed)
        write_reference_results(tmp_path / "good" / f"seed{seed}" / "amc23", amc, [4, 4], n=4, seed=seed)
    write_reference_results(tmp_path / "bad" / "aime24", aime, [0, 0, 1], n=4)
    write_reference_results(tmp_path / "bad" / "amc23", amc, [0, 0], n=4)

    table = collect_table([tmp_path / "good", tmp_path / "bad"], ks=(1, 2, 4))
    good, bad = table.values["good"], table.values["bad"]
    assert table.seeds == {"good": 2, "bad": 1}
    assert good[("aime24", 1)] == pytest.approx(100 * (6 / 12 + 8 / 12) / 2)
    assert good[("aime24", 2)] == pytest.approx(100 * (((1 - 1 / 6) + 1 + 0) / 3 + 2 / 3) / 2)
    assert good[("aime24", 4)] == pytest.approx(100 * 2 / 3)
    assert good[("amc23", 4)] == 100.0 and bad[("amc23", 1)] == 0.0
    assert bad[("aime24", 1)] == pytest.approx(100 / 12)
    assert good[("math_avg", 1)] == pytest.approx((100 * 7 / 12 + 100) / 2)

    main(["grade", str(tmp_path / "good")])  # a folder of seed folders: every seed's benchmarks are re-graded
    assert capsys.readouterr().out.count("aime24: 3 problems x 4 samples") == 2
    main(["table", str(tmp_path / "good"), str(tmp_path / "bad"), "--labels", "RankTuner,SFT", "--k", "1", "4",
          "--out", str(tmp_path / "tables" / "main")])
    markdown = (tmp_path / "tables" / "main.md").read_text()
    assert "| RankTuner | 2 | 58.33 ± " in markdown and "| SFT | 1 | 8.33 ± " in markdown
    assert (tmp_path / "tables" / "main.csv").is_file() and (tmp_path / "tables" / "main.tex").is_file()


def test_the_cli_refuses_mixed_rows_unless_asked(tmp_path, capsys):
    write_folder(tmp_path / "sft", result({"math500": [4, 0]}))
    write_folder(tmp_path / "rt", result({"math500": [4, 4]}, grader="qwen"))
    out = tmp_path / "tables" / "t"
    with pytest.raises(SystemExit):
        main(["table", str(tmp_path / "sft"), str(tmp_path / "rt"), "--k", "1", "--out", str(out)])
    assert "MATH500 grader: 'math-verify' (sft) vs 'qwen' (rt)" in capsys.readouterr().err
    assert not (tmp_path / "tables").exists()
    main(["table", str(tmp_path / "sft"), str(tmp_path / "rt"), "--k", "1", "--out", str(out), "--allow-mixed"])
    assert "measured differently (--allow-mixed): MATH500 grader" in out.with_suffix(".md").read_text()


def test_bad_result_folders_write_nothing(tmp_path, capsys):
    out = tmp_path / "tables" / "t"
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["table", str(tmp_path / "missing"), "--out", str(out)])
    assert "error: result folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["table", str(tmp_path / "empty"), "--out", str(out)])
    assert "holds no results (no <benchmark>/metrics.json)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="holds no results"):
        collect_table([tmp_path / "empty"])
    with pytest.raises(ValueError, match="one label per folder"):
        collect_table([tmp_path / "empty"], labels=["a", "b"])
    with pytest.raises(ValueError, match="none of the runs has Pass@k"):
        build_table(one_seed(run=result({"aime24": [1]})), ks=(16,))
    assert not (tmp_path / "tables").exists()


def test_run_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for shown in ["samples per problem (default: 16)", "(default: 4096)", "0: greedy (default: 1.0)",
                  "vllm (GPUs) or hf (transformers) (default: vllm)", "math benchmarks' grader (default: math-verify)",
                  "(default: math500,minerva_math,olympiadbench,aime24,amc23)"]:
        assert shown in text, shown
