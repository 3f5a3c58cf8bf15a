"""Results tables and plots (redistill.report)."""

from __future__ import annotations

import math

import pytest

from redistill import results as report
from redistill.results import ResultRow


def _rows() -> list[ResultRow]:
    return [
        ResultRow("teacher", "cifar_resnet20", 0.92, 150 * 1024, 160 * 1024, 270_000, 31_000_000),
        ResultRow("vanilla", "cifar_resnet20:strides=4,1,1,1", 0.86, 37 * 1024, 40 * 1024, 270_000, 2_500_000),
        ResultRow("red", "cifar_resnet20:strides=4,1,1,1", 0.90, 40 * 1024, 40 * 1024, 271_000, 2_700_000,
                  acc_std=0.004, runs=3),
    ]


def test_mean_std_matches_sample_statistics():
    mean, std = report.mean_std([0.90, 0.92, 0.94])
    assert mean == pytest.approx(0.92)
    assert std == pytest.approx(0.02)  # sample std (n - 1)
    assert report.mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        report.mean_std([])


def test_gap_recovered():
    assert report.gap_recovered(0.92, 0.86, 0.90) == pytest.approx(2 / 3)
    assert report.gap_recovered(0.92, 0.86, 0.85) == pytest.approx(-1 / 6)
    assert report.gap_recovered(0.80, 0.86, 0.90) is None  # no gap to recover


def test_formatters():
    assert report.fmt_kib(3920 * 1024) == "3920.0"
    assert report.fmt_kib(None) == "-"
    assert report.fmt_count(31_400_000) == "31.40M"
    assert report.fmt_count(999) == "999"
    assert report.fmt_acc(0.9123) == "91.23"
    assert report.fmt_acc(0.9123, 0.0041) == "91.23 ± 0.41"
    assert report.fmt_acc(math.nan) == "-"
    assert report.fmt_ratio(150, 37.5) == "x4.00"
    assert report.fmt_ratio(150, None) == "-"


def test_results_table_reductions_against_teacher():
    rows = _rows()
    text = report.results_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["run", "model"]
    assert len(lines) == 2 + len(rows)
    assert "x4.05 / x4.00" in lines[3]  # vanilla: 150/37 live, 160/40 layer
    assert "x1.00 / x1.00" in lines[2]
    assert "90.00 ± 0.40" in lines[4]
    md = report.results_table(rows, markdown=True)
    assert md.splitlines()[1].startswith("|---|")
    assert all(line.startswith("| ") for line in md.splitlines() if not line.startswith("|-"))


def test_format_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="2 cells"):
        report.format_table(["a", "b", "c"], [["1", "2"]])


def test_plot_accuracy_vs_memory_writes_png(tmp_path):
    path = report.plot_accuracy_vs_memory(_rows(), tmp_path / "sub" / "acc.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000


def test_labels_of_points_at_one_memory_are_spread_apart():
    from redistill.results import _spread_labels

    # three students of one size within 0.1 point of each other, a teacher elsewhere at the same accuracy
    points = [(80.0, 87.12), (80.5, 87.06), (80.0, 87.82), (360.0, 87.10), (79.9, 86.28)]
    ys = _spread_labels(points)
    step = 0.05 * (87.82 - 86.28)
    assert ys[1] == 87.06 and ys[4] == 86.28 and ys[3] == 87.10  # the lowest of a cluster, and a lone point, stay
    assert ys[0] >= ys[1] + step - 1e-9  # moved up clear of its neighbour
    assert ys[2] == 87.82  # already clear
    same_x = sorted(y for (x, _), y in zip(points, ys) if x < 100)
    assert all(b - a >= step - 1e-9 for a, b in zip(same_x, same_x[1:]))


def test_fashion_mnist_replot_redraws_a_results_figure_and_refuses_other_files(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("fm_bench", root / "benchmarks" / "fashion_mnist.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    group = {"model": "cifar_resnet20 [4,1,2,1]", "test_acc_mean": 84.0, "test_acc_std": 0.2, "test_acc": [83.8, 84.2],
             "peak_bytes_live": 40960, "peak_bytes_layer": 40960, "params": 1000, "flops": 2000}
    results = tmp_path / "fashion_mnist_x.json"
    results.write_text(json.dumps({"settings": {"seeds": [0, 1]},
                                   "groups": {"teacher": {**group, "peak_bytes_live": 327680},
                                              "vanilla": group, "red": {**group, "test_acc_mean": 84.1}}}))
    assert bench.main(["--replot", str(results)]) == 0
    assert (tmp_path / "fashion_mnist_x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    assert bench.main(["--replot", str(other)]) == 2
    assert "not a results file of this script" in capsys.readouterr().err
    assert not (tmp_path / "other.png").exists()
