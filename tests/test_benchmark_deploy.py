"""benchmarks/deploy.py: run discovery, the three targets and the files it writes, on tiny trained runs."""

from __future__ import annotations

import json

import pytest
import yaml

from redistill.train import run_training


def _config(strides: list[int]) -> dict:
    return {"model": {"student": "cifar_resnet8", "options": {"width": 4, "strides": strides}},
            "data": {"name": "synthetic", "workers": 0, "batch_size": 16,
                     "synthetic": {"train_size": 64, "test_size": 32, "image_size": 16}},
            "run": {"epochs": 1, "progress": False, "device": "cpu"}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """teacher_s0 / vanilla_s0 / red_s0: strides 1,1,2,2, and two x4 students 4,1,1,1 (the last with RED)."""
    root = tmp_path_factory.mktemp("runs")
    run_training(_config([1, 1, 2, 2]), root / "teacher_s0")
    run_training(_config([4, 1, 1, 1]), root / "vanilla_s0")
    red = _config([4, 1, 1, 1])
    red["model"]["teacher_checkpoint"] = str(root / "teacher_s0")
    red["distill"] = {"method": "red", "pairs": "auto", "options": {"alpha": 1.0}}
    run_training(red, root / "red_s0")
    (root / "unrelated").mkdir()
    return root


def test_find_runs_names_the_missing_role(load_benchmark, tmp_path):
    bd = load_benchmark("deploy.py")
    for name in ("teacher_s0", "vanilla"):
        (tmp_path / name).mkdir()
    with pytest.raises(SystemExit, match="no run directory for red; give --runs DIR or --red DIR"):
        bd.main(["--runs", str(tmp_path), "--out", str(tmp_path / "res")])


def test_end_to_end_on_tiny_runs(load_benchmark, runs, tmp_path):
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
    ratio = tg["student_peak_4x_below_teacher"]["teacher_over_red_measured"]
    for key in ("fp32", "int8"):
        assert ratio[key] == pytest.approx(data["rows"]["teacher"]["variants"][key]["measured_peak_bytes"]
                                           / red["variants"][key]["measured_peak_bytes"])
    peaks = tg["measured_within_10pct_or_explained"]
    assert peaks["of"] == 6 and peaks["met"] == all(p["within"] or p["explained"] for p in peaks["per_model"].values())
    md = (out / "deploy.md").read_text()
    assert "| red | int8 |" in md and "## Targets" in md and (out / "deploy.png").stat().st_size > 0
    # --rewrite recomputes the targets and the Markdown from the JSON alone
    (out / "deploy.md").unlink()
    assert bd.main(["--rewrite", "--out", str(out)]) == 0
    assert (out / "deploy.md").read_text() == md
