"""benchmarks/paper_regime.py: the arms' configs (the authors' STL10 recipe, 5 auto pairs, alpha 50, student+),
the budget and quick forms, the data variants, the results files and a --quick end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from test_benchmark_fashion_mnist import _summary

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_regime.py"


@pytest.fixture(scope="module")
def pr(load_benchmark):
    return load_benchmark("paper_regime.py")


def _configs(pr, argv: list[str], seed: int = 1) -> dict:
    from redistill.train import load_config

    args = pr.parse_args(argv)
    return {k: load_config(pr.CONFIGS / pr.CONFIG_FILES[k], pr.arm_overrides(args, k, seed)) for k in pr.fm.kinds(args)}


def test_arms_follow_the_authors_stl10_recipe(pr, tmp_path):
    cfgs = _configs(pr, ["--out", str(tmp_path), "distill.options.alpha=10"])
    assert list(cfgs) == ["teacher", "vanilla", "red", "student_plus", "kd"]
    for kind, cfg in cfgs.items():
        o, s, d, a = cfg.optim, cfg.schedule, cfg.data, cfg.data.augment
        assert (o.name, o.lr, o.momentum, o.weight_decay) == ("sgd", 0.01, 0.9, 0.0), kind
        assert (s.name, s.milestones, s.gamma, cfg.run.epochs) == ("multistep", [180, 240, 270], 0.2, 300), kind
        assert (a.crop, a.flip, a.cutmix_alpha, a.mixup_alpha) == ("resized", True, 0.2, 0.2), kind
        assert (d.name, d.root, d.image_size, d.canvas, d.batch_size) == ("fashion_mnist", None, 128, 56, 8), kind
        assert (d.subset, d.val_subset, d.test_subset, d.preload) == (5000, None, None, True), kind
        assert cfg.run.seed == 1 and cfg.model.options == {"dropout": 0.0}, kind
        assert cfg.model.student == (pr.TEACHER if kind == "teacher" else pr.STUDENT), kind
        distilled = kind in ("red", "student_plus", "kd")
        assert (cfg.model.teacher_checkpoint == str(tmp_path / "teacher_s1")) == distilled, kind
        assert cfg.model.teacher == (pr.TEACHER if distilled else None), kind
    assert cfgs["teacher"].distill.method is None and cfgs["vanilla"].distill.method is None
    red, plus, kd = cfgs["red"].distill, cfgs["student_plus"].distill, cfgs["kd"].distill
    assert red.method == plus.method == "red" and red.pairs == plus.pairs == "auto"
    assert red.options == {"w_task": 0.5, "w_distill": 0.5, "alpha": 10}  # the call's override reaches RED ...
    assert plus.options == {"w_task": 0.5, "w_distill": 0.5, "alpha": 0}  # ... but never student+
    assert kd.method == "kd" and kd.pairs is None
    assert _configs(pr, ["--out", str(tmp_path)])["red"].distill.options["alpha"] == 50  # the authors' alpha
    assert all(c.data.canvas is None for c in _configs(pr, ["--variant", "resize128"]).values())


def test_auto_pairs_are_the_authors_five_at_128px(pr, tmp_path):
    """pairs: auto on the 128 px teacher and student (batch 1) gives the pairs configs/stl10 lists, alpha 50 / 0."""
    from redistill.distill import create_method
    from redistill.train.build import build_model
    from redistill.train.data import DataInfo

    cfgs = _configs(pr, ["--out", str(tmp_path)])
    info = DataInfo("fashion_mnist", 10, 1, 128, (0.286,), (0.353,))
    shipped = yaml.safe_load((pr.CONFIGS / "resnext18_x4_red.yaml").read_text())["distill"]["pairs"]
    for kind, alpha in (("red", 50.0), ("student_plus", 0.0)):
        cfg = cfgs[kind]
        student = build_model(cfg.model.student, cfg.model, info).module
        teacher = build_model(cfg.model.teacher, cfg.model, info).module
        method = create_method(cfg.distill.method, pairs=cfg.distill.pairs, **cfg.distill.options)
        method.setup(student.eval(), teacher.eval(), torch.zeros(1, 1, 128, 128))
        assert [(p.student, p.teacher, p.side) for p in method.pairs] == [
            (p["student"], p["teacher"], p["side"]) for p in shipped]
        assert len(method.pairs) == 5 and {p.alpha for p in method.pairs} == {alpha}, kind


def test_budget_quick_and_stl10_forms(pr, tmp_path):
    budget = pr.parse_args(["--budget"])
    assert (budget.image_size, budget.batch_size, budget.lr, budget.jobs) == (64, 64, pytest.approx(0.08), 8)
    assert budget.teacher_epochs == budget.student_epochs == 100 and budget.milestones == [60, 80, 90]
    assert pr.results_stem(budget) == "paper_regime_canvas_budget"
    assert budget.out == pr.REPO / "runs" / "paper_regime_canvas_budget"
    cfgs = _configs(pr, ["--budget", "--out", str(tmp_path)])
    for cfg in cfgs.values():
        assert (cfg.data.image_size, cfg.data.canvas, cfg.data.batch_size, cfg.run.epochs) == (64, 56, 64, 100)
        assert cfg.optim.lr == pytest.approx(0.08) and cfg.schedule.milestones == [60, 80, 90]
        assert cfg.optim.weight_decay == 0.0 and cfg.data.augment.crop == "resized"
    shorter = pr.parse_args(["--budget", "--epochs", "50", "--jobs", "3"])
    assert shorter.milestones == [30, 40, 45] and shorter.jobs == 3
    assert pr.parse_args(["--epochs", "10"]).milestones == [6, 8, 9]
    assert pr.parse_args(["--epochs", "2"]).milestones == [1, 2, 3]  # positive and increasing, however short

    quick = _configs(pr, ["--quick", "--out", str(tmp_path)])
    for cfg in quick.values():
        assert (cfg.data.image_size, cfg.run.epochs, cfg.model.options["width"]) == (32, 1, pr.QUICK_WIDTH)
        assert cfg.schedule.milestones == [1, 2, 3]
        assert (cfg.data.subset, cfg.data.val_subset, cfg.data.test_subset) == pr.QUICK_SIZES
    assert pr.parse_args(["--quick"]).seeds == [0, 1] and pr.results_stem(pr.parse_args(["--quick"])).endswith("_quick")

    stl = _configs(pr, ["--data", "stl10", "--data-root", "/d", "--out", str(tmp_path)])
    assert all((c.data.name, c.data.root, c.data.canvas, c.data.subset) == ("stl10", "/d", None, None)
               for c in stl.values())
    assert pr.results_stem(pr.parse_args(["--data", "stl10", "--budget"])) == "paper_regime_budget"
    for bad in (["--data", "stl10", "--variant", "canvas"], ["--epochs", "0"], ["--variant", "x"]):
        with pytest.raises(SystemExit):
            pr.parse_args(bad)


def test_canvas_variant_enlarges_the_image_to_half_the_side(pr, tmp_path):
    """data.canvas=56 + data.image_size=128: the 28 px image ends up 64 px wide, at a random place on 128 px."""
    from redistill.train import load_config
    from redistill.train.data import build_datasets

    args = pr.parse_args(["--out", str(tmp_path)])
    cfg = load_config(pr.CONFIGS / pr.CONFIG_FILES["vanilla"], pr.arm_overrides(args, "vanilla", 0) + [
        "data.name=synthetic", "data.subset=null",
        "data.synthetic={train_size: 20, test_size: 40, image_size: 28, channels: 1}"])
    splits = build_datasets(cfg.data)
    assert splits.info.image_size == 128
    places = set()
    for i in range(len(splits.test)):
        image = splits.test[i][0][0]  # normalised; the blank background is its minimum
        rows, cols = (image > image.min() + 1e-3).nonzero(as_tuple=True)
        height, width = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
        assert 64 <= height <= 68 and 64 <= width <= 68, (height, width)  # bilinear edges blur a pixel or two
        places.add((int(rows.min()), int(cols.min())))
    assert len(places) > 30 and max(t for t, _ in places) > 55  # spread over the canvas


def _fake_run(pr, results: Path, argv: list[str], device: str = "cpu") -> tuple[str, dict]:
    accs = {"teacher": [94.0, 94.4, 93.6], "vanilla": [88.0, 88.4, 87.6], "red": [90.0, 90.6, 89.9],
            "student_plus": [89.0, 89.2, 89.4], "kd": [91.0, 91.0, 91.0]}
    summaries = {f"{k}_s{s}": {**_summary(k, a, a), "device": device} for k, v in accs.items() for s, a in enumerate(v)}
    pairs = [{"student": "conv1", "teacher": "layer2.0", "side": "out", "alpha": 50.0}]
    for s in range(3):
        summaries[f"red_s{s}"]["pairs"] = pairs
    args = pr.parse_args(["--results", str(results), *argv])
    md = pr.write_results(args, pr.fm.aggregate(summaries, args.seeds, pr.fm.kinds(args)), summaries, 60.0)[1]
    return md.read_text(), json.loads(md.with_suffix(".json").read_text())


def test_results_files_say_where_they_ran_and_feed_red_summary(pr, load_benchmark, tmp_path):
    text, data = _fake_run(pr, tmp_path, ["--budget", "--device", "cpu"])
    assert data["settings"]["budget"] and data["settings"]["train_images"] == 5000
    assert data["differences"]["RED - student+"]["per_seed"] == pytest.approx([1.0, 1.4, 0.5])
    assert "Ran on: cpu (--device cpu)" in text
    assert ("No GPU ran this call: the budget form has not been run on a GPU here. With one: "
            "`python benchmarks/paper_regime.py --budget --device cuda --jobs 8 --variant canvas`.") in text
    assert "RED - vanilla **+2.17 ± 0.15**" in text and "student+ - vanilla" in text
    assert "Teacher - vanilla gap: 6.00 points; a setting tests RED only with a gap of at least 3: **yes**" in text
    assert "| student_plus |" in text and "| kd |" in text and "RED pairs (1, alpha 50): conv1 (out) -> layer2.0" in text
    assert (tmp_path / "paper_regime_canvas_budget.png").read_bytes()[:4] == b"\x89PNG"
    gpu, _ = _fake_run(pr, tmp_path, ["--budget", "--device", "cuda", "--variant", "resize128"], device="cuda")
    assert "Ran on: cuda" in gpu and "No GPU ran" not in gpu

    rs = load_benchmark("red_summary.py")
    assert rs.main(["--results", str(tmp_path)]) == 0
    rows = {r["file"]: r for r in json.loads((tmp_path / "red_summary.json").read_text())["rows"]}
    row = rows["paper_regime_canvas_budget"]
    assert row["command"].startswith("python benchmarks/paper_regime.py --results ")
    assert row["command"].endswith(" --budget --device cpu")
    assert row["train images"] == "5,000" and row["epochs (teacher / student)"] == "100 / 100"
    assert row["change"] == "paper regime (canvas), teacher `resnext18-1-21222`"
    assert "`benchmarks/paper_regime.py` results file" in (tmp_path / "red_summary.md").read_text()


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    """--quick trains the five arms for two seeds, writes the results files; a second call reuses every run."""
    out, res = tmp_path / "runs", tmp_path / "results"
    argv = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--jobs", "2", "--workers", "0",
            "--out", str(out), "--results", str(res)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{k}_s{s}" for k in ("teacher", "vanilla", "red", "student_plus", "kd") for s in (0, 1))
    data = json.loads((res / "paper_regime_canvas_quick.json").read_text())
    assert set(data["groups"]) == {"teacher", "vanilla", "red", "student_plus", "kd"}
    assert [p["alpha"] for p in data["runs"]["red_s1"]["pairs"]] == [50.0] * 5
    assert [p["alpha"] for p in data["runs"]["student_plus_s1"]["pairs"]] == [0.0] * 5
    assert data["runs"]["kd_s0"]["params"] == data["runs"]["vanilla_s0"]["params"]
    assert set(data["differences"]) == {"RED - vanilla", "RED - student+", "student+ - vanilla"}
    cfg = yaml.safe_load((out / "red_s0" / "config.yaml").read_text())
    assert cfg["model"]["teacher_checkpoint"] == str(out / "teacher_s0") and cfg["data"]["canvas"] == 56
    text = (res / "paper_regime_canvas_quick.md").read_text()
    assert "QUICK smoke run" in text and "Ran on: cpu" in text and "No GPU ran this call" in text
    assert (res / "paper_regime_canvas_quick.png").read_bytes()[:4] == b"\x89PNG"
    again = subprocess.run(argv, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count(": reused in ") == 10
