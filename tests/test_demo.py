"""The main job (redistill demo) end to end on tiny synthetic runs, run reuse, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from redistill.demo import DemoOptions, config_differences, run_demo
from redistill.errors import UserError

# A tiny stand-in for configs/demo: same three roles, synthetic 16 px data, a narrow ResNet-8.
_COMMON = {
    "data": {
        "name": "synthetic",
        "batch_size": 32,
        "workers": 0,
        "val_fraction": 0.25,
        "synthetic": {"train_size": 128, "test_size": 48, "num_classes": 4, "channels": 1, "image_size": 16},
    },
    "optim": {"name": "sgd", "lr": 0.05},
    "schedule": {"name": "constant"},
    "run": {"epochs": 1, "seed": 0, "device": "cpu", "progress": False},
}
TEACHER = "cifar_resnet8"
STUDENT = "cifar_resnet8:strides=4,1,1,1"


def _write_configs(root: Path) -> Path:
    cdir = root / "configs"
    cdir.mkdir()
    model_opts = {"options": {"width": 4}}
    docs = {
        "teacher.yaml": {"model": {"student": TEACHER, **model_opts}},
        "student_vanilla.yaml": {"model": {"student": STUDENT, **model_opts}},
        "student_red.yaml": {
            "model": {"student": STUDENT, "teacher": TEACHER, "teacher_checkpoint": "unused", **model_opts},
            "distill": {"method": "red", "pairs": "auto", "options": {"alpha": 5}},
        },
    }
    for name, doc in docs.items():
        (cdir / name).write_text(yaml.safe_dump({**_COMMON, **doc}))
    return cdir


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cdir = _write_configs(root)
    opts = DemoOptions(out=root / "out", config_dir=cdir, progress=False, deploy_calib=32)
    statuses = []
    result = run_demo(opts, on_stage=lambda name, status: statuses.append((name, status)))
    return opts, result, statuses


def test_demo_ends_by_deploying_the_red_student(demo_run):
    opts, result, _ = demo_run
    report = json.loads((Path(opts.out) / "deploy_red" / "report.json").read_text())
    assert set(report["variants"]) == {"fp32", "int8"}
    assert report["source"]["run_dir"] == str(Path(opts.out) / "red")
    assert report["calibration"] == {"images": 32, "split": "train"}
    assert "int8" in result.deploy_table and "measured peak" in result.deploy_table
    assert result.deploy_test_images == report["accuracy"]["test_images"] > 0


def test_demo_trains_three_runs_and_writes_report(demo_run):
    opts, result, statuses = demo_run
    assert statuses == [("teacher", "trained"), ("vanilla", "trained"), ("red", "trained")]
    out = Path(opts.out)
    for name in ("teacher", "vanilla", "red"):
        assert (out / name / "summary.json").is_file()
    # The RED run was distilled from this demo's teacher run.
    red_cfg = yaml.safe_load((out / "red" / "config.yaml").read_text())
    assert red_cfg["model"]["teacher_checkpoint"] == str(out / "teacher")

    rows = {r.name: r for r in result.rows}
    t, v, r = rows["teacher"], rows["vanilla"], rows["red"]
    # Stride relocation cuts the peak; RED blocks ship inside the student (more parameters).
    assert v.peak_live < t.peak_live and v.peak_layer < t.peak_layer
    assert r.params > v.params
    assert r.peak_live >= v.peak_live
    for row in result.rows:
        assert 0.0 <= row.acc <= 1.0 and row.flops > 0

    text = result.report_path.read_text()
    assert "**Schedule**" in text and "1 epochs" in text
    assert "fashion_mnist_56_resize_wd0" not in text  # not the shipped configs: no protocol named
    assert "| teacher |" in text and "| vanilla |" in text and "| red |" in text
    assert "student `conv1` <-> teacher `layer3.0`" in text  # the auto pair at 16 px
    for png in result.plots:
        assert png.read_bytes()[:4] == b"\x89PNG" and f"]({png.name})" in text
    data = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in data["rows"]] == ["teacher", "vanilla", "red"]
    assert data["rows"][0]["peak_live"] == t.peak_live
    # The table's reduction column is computed against the teacher.
    assert f"x{t.peak_live / v.peak_live:.2f}" in result.table


def test_demo_reuses_finished_runs(demo_run):
    opts, first, _ = demo_run
    out = Path(opts.out)
    stamps = {n: (out / n / "best.pt").stat().st_mtime_ns for n in ("teacher", "vanilla", "red")}
    statuses = []
    again = run_demo(opts, on_stage=lambda name, status: statuses.append(status))
    assert statuses == ["reused"] * 3
    assert again.reused == ["teacher", "vanilla", "red"] and again.trained == []
    assert {n: (out / n / "best.pt").stat().st_mtime_ns for n in stamps} == stamps
    assert [r.acc for r in again.rows] == [r.acc for r in first.rows]


def test_demo_resumes_an_unfinished_run(demo_run):
    opts, first, _ = demo_run
    summary = Path(opts.out) / "vanilla" / "summary.json"
    summary.unlink()  # as if killed after its last checkpoint
    statuses = {}
    result = run_demo(opts, on_stage=lambda name, status: statuses.__setitem__(name, status))
    assert statuses == {"teacher": "reused", "vanilla": "resumed", "red": "reused"}
    assert summary.is_file()
    assert result.rows[1].acc == first.rows[1].acc  # same weights, same test accuracy


def test_demo_refuses_a_run_with_other_settings(demo_run):
    opts, _, _ = demo_run
    changed = DemoOptions(out=opts.out, config_dir=opts.config_dir, overrides=["optim.lr=0.01"], progress=False)
    with pytest.raises(UserError, match=r"optim\.lr: 0\.05 -> 0\.01.*--overwrite"):
        run_demo(changed)


def test_config_differences_ignores_execution_only_keys():
    a = {"run": {"device": "cpu", "epochs": 2, "progress": True}, "data": {"workers": 0, "subset": 10}}
    b = {"run": {"device": "cuda", "epochs": 2, "progress": False}, "data": {"workers": 8, "subset": 10}}
    assert config_differences(a, b) == []
    b["data"]["subset"] = 20
    assert config_differences(a, b) == ["data.subset: 20 -> 10"]


def test_demo_bad_config_dir_is_a_user_error(tmp_path, capsys):
    from redistill.cli.main import main

    rc = main(["demo", "--out", str(tmp_path / "o"), "--configs", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "demo config directory not found" in err and len(err.strip().splitlines()) == 1


def test_demo_cli_prints_table(demo_run, capsys):
    from redistill.cli.main import main

    opts, _, _ = demo_run
    rc = main(["demo", "--out", str(opts.out), "--configs", str(opts.config_dir), "--no-progress",
               "--deploy-calib", "32"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "peak live KiB" in out and "report:" in out
    assert "deployed RED student" in out and "measured peak" in out
    n = json.loads((Path(opts.out) / "deploy_red" / "report.json").read_text())["accuracy"]["test_images"]
    assert f"test accuracy on {n} test images, the table above on the whole test split" in out
    assert out.count("reused") >= 3


@pytest.mark.slow
def test_real_demo_end_to_end(tmp_path):
    """The shipped demo settings on the real Fashion-MNIST, on this machine's CPU.

    Its duration is reported in the README from a measured run, not asserted (machines are noisy).
    """
    result = run_demo(DemoOptions(out=tmp_path / "demo_out", overrides=["run.device=cpu"], progress=False))
    rows = {r.name: r for r in result.rows}
    assert rows["teacher"].peak_live / rows["red"].peak_live >= 3.9
    assert rows["teacher"].acc > 0.8 and rows["vanilla"].acc > 0.7 and rows["red"].acc > 0.7


def test_run_stage_restarts_a_run_that_never_checkpointed(tmp_path):
    """A run that failed before its first checkpoint (e.g. wrong data path) is no reason to refuse."""
    from redistill.demo import run_stage
    from redistill.train import load_config

    cdir = _write_configs(tmp_path)
    cfg = load_config(cdir / "student_vanilla.yaml")
    from redistill.train.rundir import MARKER

    run_dir = tmp_path / "vanilla"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"data": {"root": "/nonexistent"}}))
    # A file named config.yaml does not make a run directory: only the project's marker does.
    with pytest.raises(UserError, match="not a redistill run directory"):
        run_stage("vanilla", cfg, run_dir)
    (run_dir / MARKER).write_text("{}\n")  # what a failed run of this project leaves
    summary, status = run_stage("vanilla", cfg, run_dir)
    assert status == "trained" and (run_dir / "last.pt").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["name"] == "synthetic"
