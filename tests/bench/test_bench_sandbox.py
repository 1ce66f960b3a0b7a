"""The sandbox benchmark runs and prints each isolation's ratio to the unisolated baseline."""

from ranktuner_verl.bench.sandbox import main


def test_the_sandbox_benchmark_prints_a_ratio_per_isolation(capsys):
    main(["--problems", "2", "--rounds", "1", "--workers", "2"])
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"bwrap", "unshare", "none"} and rows["none"][2] == "1.00"
    assert all(float(row[1]) > 0 for row in rows.values())
