"""benchmarks/patch.py: the Fashion-MNIST comparison on tiny protocol runs, and the files it writes."""

from __future__ import annotations

import json


def test_fashion_mnist_rows_and_files(load_benchmark, tiny_protocol_runs, tmp_path, monkeypatch):
    bp = load_benchmark("patch.py")
    monkeypatch.setattr(bp, "RESULTS", tmp_path / "results")
    rows = bp.fashion_mnist(tiny_protocol_runs, repeats=1)
    assert [r["model"] for r in rows] == ["teacher", "patch-based teacher", "RED x4 student",
                                          "patch-based RED x4 student"]
    for plain, patched in (rows[0:2], rows[2:4]):
        assert plain["split"] is None and plain["test_count"] == 32
        assert patched["exact"]
        assert patched["peak_after"]["fp32"] <= plain["peak_after"]["fp32"]
        if patched["split"] is None:  # no plan lowers the peak: the model runs plainly, same accuracy
            assert patched["test_acc"] == plain["test_acc"]
    bp.write([], None, rows)
    data = json.loads((tmp_path / "results" / "patch.json").read_text())
    assert [r["model"] for r in data["fashion_mnist"]] == [r["model"] for r in rows]
    md = (tmp_path / "results" / "patch.md").read_text()
    assert "RED student vs patch-based inference" in md and "| patch-based RED x4 student |" in md
    assert (tmp_path / "results" / "patch.png").stat().st_size > 0
