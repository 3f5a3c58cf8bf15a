"""benchmarks/red_signal.py: distances of RED targets, checked against the library's RED loss."""

from __future__ import annotations

import json

import pytest
import torch

from redistill.distill.hooks import capture
from redistill.distill.red import red_loss
from redistill.train import load_config, run_training
from redistill.train.build import load_teacher
from redistill.train.data import build_datasets
from redistill.train.export import load_run_model

TINY = {
    "model": {"student": "cifar_resnet8", "options": {"width": 4}},
    "data": {"name": "synthetic", "workers": 0, "batch_size": 16, "val_fraction": 0.25,
             "synthetic": {"train_size": 96, "test_size": 16}},
    "optim": {"lr": 0.05},
    "run": {"epochs": 1, "progress": False},
}
STUDENT = "model.student=cifar_resnet8:strides=2,1,2,1"


@pytest.fixture(scope="module")
def rs(load_benchmark):
    return load_benchmark("red_signal.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("red_signal")
    run_training(load_config(TINY), root / "teacher")
    run_training(load_config(TINY, [STUDENT]), root / "vanilla")
    red = [STUDENT, f"model.teacher_checkpoint={root / 'teacher'}", "distill.method=red", "distill.pairs=auto"]
    run_training(load_config(TINY, red), root / "red")
    return root


def test_cos_dist(rs):
    a = torch.rand(3, 4, 4) + 0.1
    assert torch.allclose(rs.cos_dist(a, a), torch.zeros(3, dtype=torch.double), atol=1e-12)
    assert torch.allclose(rs.cos_dist(a, 5 * a), torch.zeros(3, dtype=torch.double), atol=1e-12)  # scale-free
    e1, e2 = torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)
    e1[0, 0, 0], e2[0, 1, 1] = 1.0, 1.0
    assert rs.cos_dist(e1, e2).item() == pytest.approx(1.0)
    assert rs.cos_dist(e1, -e1).item() == pytest.approx(2.0)


def test_student_column_is_the_red_loss_of_each_pair(rs, runs):
    result = rs.analyze_run(runs / "red", runs / "vanilla", images=64, data_root=None)
    pairs = json.loads((runs / "red" / "summary.json").read_text())["pairs"]
    assert [p["pair"] for p in result["pairs"]] == [
        f"{p['student']}{':in' * (p['side'] == 'in')} <-> {p['teacher']}{':in' * (p['side'] == 'in')}" for p in pairs
    ]
    assert len(pairs) == 3 and result["images"] == 24  # 25% of 96 held out

    # Recompute every pair's RED loss with the library, on the same validation images.
    student, cfg, info, _ = load_run_model(runs / "red")
    teacher = load_teacher(cfg, info).eval()
    val = build_datasets(cfg.data).val
    x = torch.stack([val[i][0] for i in range(len(val))])
    vanilla = load_run_model(runs / "vanilla")[0]
    # The input column from the stored uint8 pixels, not from un-normalising the model input.
    raw = val.dataset.images[val.indices].float().div(255).mean(dim=1, keepdim=True)
    s_refs = [f"{p['student']}.red_{p['side']}" for p in pairs]
    v_refs = [p["student"] + (":in" if p["side"] == "in" else "") for p in pairs]
    t_refs = [p["teacher"] + (":in" if p["side"] == "in" else "") for p in pairs]
    with torch.no_grad(), capture(student, s_refs) as fs, capture(teacher, t_refs) as ft, \
            capture(vanilla, v_refs) as fv:
        student(x)
        teacher(x)
        vanilla(x)
        for i, row in enumerate(result["pairs"]):
            t_feat = ft[t_refs[i]]
            assert row["student"] == pytest.approx(red_loss(fs[s_refs[i]], t_feat).item(), rel=1e-5)
            assert row["vanilla"] == pytest.approx(red_loss(fv[v_refs[i]], t_feat).item(), rel=1e-5)
            assert row["hw"] == list(t_feat.shape[-2:])
            t_map = t_feat.mean(dim=1)
            pooled = torch.nn.functional.adaptive_avg_pool2d(raw, t_map.shape[-2:])
            assert row["input"] == pytest.approx(red_loss(pooled, t_feat).item(), rel=1e-5)
            previous = t_feat[torch.arange(len(x)) - 1]  # image k against image k - 1 (the first against the last)
            assert row["other image"] == pytest.approx(red_loss(previous, t_feat).item(), rel=1e-5)
            mean_feat = t_feat.mean(dim=0, keepdim=True).expand_as(t_feat)
            assert row["mean map"] == pytest.approx(red_loss(mean_feat, t_feat).item(), rel=1e-5)
    assert result["pairs"][0]["vanilla"] != result["pairs"][0]["student"]


def test_main_writes_results_and_refuses_bad_runs(rs, runs, tmp_path, capsys):
    out = tmp_path / "res"
    code = rs.main(["--run", str(runs / "red"), "--vanilla", str(runs / "vanilla"), "--images", "16",
                    "--tag", "t", "--results", str(out)])
    assert code == 0 and torch.is_grad_enabled()  # no global autograd switch leaks into later tests
    assert sorted(p.name for p in out.iterdir()) == ["red_signal_t.json", "red_signal_t.md", "red_signal_t.png"]
    md = (out / "red_signal_t.md").read_text()
    assert md.count("| `") == 3 and "layer2.0:in <-> layer3.0:in" in md
    data = json.loads((out / "red_signal_t.json").read_text())
    assert data["runs"][0]["images"] == 16 and "examples" not in data["runs"][0]

    capsys.readouterr()
    assert rs.main(["--run", str(runs / "vanilla"), "--results", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a RED run" in err
    assert rs.main(["--run", str(tmp_path / "nothing"), "--results", str(tmp_path / "x")]) == 2
    assert "no finished run" in capsys.readouterr().err
    # A vanilla run of another student: its maps do not line up with the teacher's.
    assert rs.main(["--run", str(runs / "red"), "--vanilla", str(runs / "teacher"), "--results", str(tmp_path / "x")]) == 2
    assert "give the undistilled run of the same student" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
