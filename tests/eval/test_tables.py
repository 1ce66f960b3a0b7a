"""The results table: values, best-per-column marks, the average column, three formats, bad result folders."""

from __future__ import annotations

import csv
import io

import pytest

from ranktuner_verl.eval.benchmarks import load_benchmark
from ranktuner_verl.eval.cli import main
from ranktuner_verl.eval.tables import AVERAGE, build_table, collect_table, to_csv, to_latex, to_markdown, write_tables


def metrics(pass_1: float, pass_16: float | None = None) -> dict:
    return {"pass@k": {"1": pass_1, **({"16": pass_16} if pass_16 is not None else {})}}


@pytest.fixture
def table():
    return build_table({
        "sft": {"math500": metrics(0.70, 0.90), "aime24": metrics(0.10, 0.30)},
        "ranktuner": {"math500": metrics(0.72, 0.90), "aime24": metrics(0.05, 0.20)},
        "partial": {"math500": metrics(0.50)},
    })


def test_values_average_and_best(table):
    assert table.benchmarks == ["math500", "aime24"]  # the paper's order, not the input's
    assert table.values["sft"][("math500", 1)] == pytest.approx(70.0)
    assert table.values["sft"][(AVERAGE, 1)] == pytest.approx(40.0)
    assert table.values["ranktuner"][(AVERAGE, 16)] == pytest.approx(55.0)
    assert table.values["partial"][("math500", 16)] is None
    assert table.values["partial"][(AVERAGE, 1)] is None  # a run missing a benchmark has no average
    assert table.best(("math500", 1)) == {"ranktuner"}
    assert table.best(("math500", 16)) == {"sft", "ranktuner"}  # ties are all marked
    assert table.best(("aime24", 1)) == {"sft"}


def test_markdown(table):
    lines = to_markdown(table).splitlines()
    assert lines[0] == ("| Run | MATH500 Pass@1 | MATH500 Pass@16 | AIME24 Pass@1 | AIME24 Pass@16 | Avg Pass@1 "
                        "| Avg Pass@16 |")
    assert lines[2] == "| sft | 70.00 | **90.00** | **10.00** | **30.00** | **40.00** | **60.00** |"
    assert lines[3] == "| ranktuner | **72.00** | **90.00** | 5.00 | 20.00 | 38.50 | 55.00 |"
    assert lines[4] == "| partial | 50.00 | - | - | - | - | - |"


def test_csv(table):
    rows = list(csv.reader(io.StringIO(to_csv(table))))
    assert rows[0][:3] == ["run", "math500 pass@1", "math500 pass@16"]
    assert rows[1][:2] == ["sft", "70.0000"] and rows[3][2] == ""
    assert rows[-1] == ["best", "ranktuner", "sft ranktuner", "sft", "sft", "sft", "sft"]


def test_latex(table):
    tex = to_latex(table)
    assert tex.startswith("\\begin{tabular}{lcccccc}") and tex.rstrip().endswith("\\end{tabular}")
    assert "\\multicolumn{2}{c}{MATH500}" in tex and "\\cmidrule(lr){2-3}" in tex
    assert "sft & 70.00 & \\textbf{90.00} & \\textbf{10.00}" in tex
    escaped = build_table({"lr_5e-5 & 100%": {"aime24": metrics(0.1)}}, ks=(1,))
    assert "lr\\_5e-5 \\& 100\\%" in to_latex(escaped)


def test_graded_result_folders_give_known_values(tmp_path, eval_data_dir, write_reference_results):
    """Real grading of known answers: 2 of 4 samples right on one problem, 4 of 4 on another, 0 on a third."""
    aime = load_benchmark("aime24", path=eval_data_dir, limit=3)
    amc = load_benchmark("amc23", path=eval_data_dir, limit=2)
    write_reference_results(tmp_path / "good" / "aime24", aime, [2, 4, 0], n=4)
    write_reference_results(tmp_path / "good" / "amc23", amc, [4, 4], n=4)
    write_reference_results(tmp_path / "bad" / "aime24", aime, [0, 0, 1], n=4)
    write_reference_results(tmp_path / "bad" / "amc23", amc, [0, 0], n=4)

    table = collect_table([tmp_path / "good", tmp_path / "bad"], ks=(1, 2, 4))
    good, bad = table.values["good"], table.values["bad"]
    assert good[("aime24", 1)] == pytest.approx(100 * 6 / 12)
    assert good[("aime24", 2)] == pytest.approx(100 * ((1 - 1 / 6) + 1 + 0) / 3)
    assert good[("aime24", 4)] == pytest.approx(100 * 2 / 3)
    assert good[("amc23", 4)] == 100.0 and bad[("amc23", 1)] == 0.0
    assert bad[("aime24", 1)] == pytest.approx(100 / 12)
    assert good[(AVERAGE, 1)] == pytest.approx((50 + 100) / 2)
    assert table.best(("aime24", 1)) == {"good"}

    main(["table", str(tmp_path / "good"), str(tmp_path / "bad"), "--labels", "RankTuner,SFT", "--k", "1", "4",
          "--out", str(tmp_path / "tables" / "main")])
    markdown = (tmp_path / "tables" / "main.md").read_text()
    assert "| RankTuner | **50.00** | **66.67** | **100.00** | **100.00** | **75.00** | **83.33** |" in markdown
    assert (tmp_path / "tables" / "main.csv").is_file() and (tmp_path / "tables" / "main.tex").is_file()


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
    with pytest.raises(ValueError, match="labels repeat"):
        collect_table([tmp_path / "a" / "x", tmp_path / "b" / "x"])
    with pytest.raises(ValueError, match="one label per folder"):
        collect_table([tmp_path / "empty"], labels=["a", "b"])
    with pytest.raises(ValueError, match="none of the runs has Pass@k"):
        build_table({"run": {"aime24": metrics(0.1)}}, ks=(16,))
    assert not (tmp_path / "tables").exists()


def test_write_tables_writes_three_files(tmp_path, table):
    paths = write_tables(table, tmp_path / "out" / "paper")
    assert [p.name for p in paths] == ["paper.md", "paper.csv", "paper.tex"]
    assert paths[0].read_text() == to_markdown(table)
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_empty_cells_are_explained_under_the_markdown(table):
    with_n = build_table({"n2": {"math500": {**metrics(0.5), "samples_per_problem": 2}}, "full": {
        "math500": {**metrics(0.5, 0.75), "samples_per_problem": 16}, "aime24": metrics(0.1, 0.2)}})
    text = to_markdown(with_n)
    assert "`-`: n2, MATH500 Pass@16: n = 2 samples per problem < k = 16 (and Avg Pass@16); evaluate with --n 16" \
        in text
    assert "`-`: n2: no AIME24 results (Avg needs every benchmark)" in text
    assert not [note for note in with_n.notes if note.startswith("full")]


def test_run_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for shown in ["samples per problem (default: 16)", "(default: 4096)", "0: greedy (default: 1.0)",
                  "vllm (GPUs) or hf (transformers) (default: vllm)", "math benchmarks' grader (default: math-verify)",
                  "(default: math500,minerva_math,olympiadbench,aime24,amc23)"]:
        assert shown in text, shown
