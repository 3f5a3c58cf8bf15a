"""benchmarks/deploy.py: run discovery, the three targets and the files it writes, on tiny trained runs."""

from __future__ import annotations

import json

import pytest
import yaml


def test_find_runs_names_the_missing_role(load_benchmark, tmp_path):
    bd = load_benchmark("deploy.py")
    for name in ("teacher_s0", "vanilla"):
        (tmp_path / name).mkdir()
    with pytest.raises(SystemExit, match="no run directory for red; give --runs DIR or --red DIR"):
        bd.main(["--runs", str(tmp_path), "--out", str(tmp_path / "res")])


def test_end_to_end_on_tiny_runs(load_benchmark, tiny_protocol_runs, tmp_path):
    runs = tiny_protocol_runs
    bd = load_benchmark("deploy.py")
    out = tmp_path / "res"
    assert bd.main(["--runs", str(runs), "--skip-torchvision", "--calib", "16", "--latency-runs", "3",
                    "--out", str(out)]) == 0
    data = json.loads((out / "deploy.json").read_text())
    assert set(data["rows"]) == {"teacher", "vanilla", "red"}
    assert data["settings"]["runs"]["red"] == str(runs / "red_s0")
    red = data["rows"]["red"]
    assert yaml.safe_load((runs / "red_s0" / "config.yaml").read_text())["distill"]["method"] == "red"
    assert red["params"] > data["rows"]["vanilla"]["params"]  # the RED blocks are deployed with the student
    for row in data["rows"].values():
        assert set(row["variants"]) == {"fp32", "int8"}
        assert 0 <= row["accuracy"]["onnx_int8"] <= 100 and row["parity_fp32"]["top1_agreement"] == 100.0
    tg = data["targets"]
    gaps = tg["int8_within_0.5_points"]["fp32_minus_int8_points"]
    for role in ("vanilla", "red"):  # the target's figures are the rows' own accuracies
        acc = data["rows"][role]["accuracy"]
        assert gaps[role] == pytest.approx(acc["onnx_fp32"] - acc["onnx_int8"])
    t3 = tg["student_peak_4x_below_teacher"]
    for key in ("fp32", "int8"):
        for field, figure in (("teacher_over_red_measured", "measured_peak_bytes"),
                              ("teacher_over_red_deployed", "deployed_peak_bytes")):
            assert t3[field][key] == pytest.approx(data["rows"]["teacher"]["variants"][key][figure]
                                                   / red["variants"][key][figure])
    assert t3["met"] == all(r >= 4.0 for r in t3["teacher_over_red_deployed"].values())
    peaks = tg["measured_within_10pct_or_explained"]
    assert peaks["of"] == 6 and peaks["met"] == all(p["within"] or p["explained"] for p in peaks["per_model"].values())
    md = (out / "deploy.md").read_text()
    assert "| red | int8 |" in md and "## Targets" in md and (out / "deploy.png").stat().st_size > 0
    # --rewrite recomputes the targets and the Markdown from the JSON alone
    (out / "deploy.md").unlink()
    assert bd.main(["--rewrite", "--out", str(out)]) == 0
    assert (out / "deploy.md").read_text() == md
