"""The run directory as a unit: marker, write order, leftovers, torn files, full disks, locks
and worker processes, architecture checks, and artifacts that must never run code."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import redistill.checkpoint as checkpoint_mod
from redistill.checkpoint import load_checkpoint
from redistill.cli.main import main
from redistill.errors import UserError
from redistill.train import load_config, run_training
from redistill.train.rundir import MARKER, read_metrics

TINY = {
    "model": {"student": "cifar_resnet8", "options": {"width": 4}},
    "data": {"name": "synthetic", "workers": 0, "batch_size": 16, "synthetic": {"train_size": 96, "test_size": 32}},
    "optim": {"lr": 0.05},
    "run": {"epochs": 3, "progress": False, "seed": 0, "deterministic": True},
}


def tiny(*overrides: str):
    return load_config(TINY, list(overrides))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted run every interrupted one must end equal to."""
    run_dir = tmp_path_factory.mktemp("rundir") / "whole"
    summary = run_training(tiny(), run_dir)
    return run_dir, summary


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_a_run_directory_is_marked_and_only_marked_ones_are_emptied(whole, tmp_path):
    run_dir, _ = whole
    assert json.loads((run_dir / MARKER).read_text())["format"] == "redistill-run"
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text("model: {student: resnet18}\n")  # looks like a run, is not
    (project / "src" / "main.py").write_text("print('mine')\n")
    for flag in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(UserError, match="not a redistill run directory"):
            run_training(tiny(), project, **flag)
    assert (project / "src" / "main.py").read_text() == "print('mine')\n"
    assert sorted(p.name for p in project.iterdir()) == [".lock", "config.yaml", "src"]


def _crash_on_save(monkeypatch, nth: int):
    """Make the nth checkpoint write (best.pt or last.pt) die like a kill right before it."""
    real, seen = checkpoint_mod.save_checkpoint, {"n": 0}

    def save(path, state):
        seen["n"] += 1
        if seen["n"] == nth:
            raise KeyboardInterrupt  # the process ends here: nothing after this write happens
        return real(path, state)

    monkeypatch.setattr("redistill.train.trainer.save_checkpoint", save)


# Writes of this run, in order: epoch 1 best + last, then last (and best when validation improved).
@pytest.mark.parametrize("nth", [1, 2, 3, 4])
def test_a_kill_in_any_checkpoint_write_window_resumes_exactly(whole, tmp_path, monkeypatch, nth):
    run_dir = tmp_path / "cut"
    _crash_on_save(monkeypatch, nth)
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny(), run_dir)
    monkeypatch.undo()
    if (run_dir / "last.pt").exists():
        # What last.pt records is on disk: best.pt holds at least its best epoch's weights.
        last = load_checkpoint(run_dir / "last.pt")
        best = load_checkpoint(run_dir / "best.pt")
        assert best["epoch"] >= last["best_epoch"] and best["epoch"] in (last["best_epoch"], last["epoch"] + 1)
    summary = run_training(tiny(), run_dir, resume=True)
    assert _same_weights(run_dir / "last.pt", whole[0] / "last.pt")
    assert _same_weights(run_dir / "best.pt", whole[0] / "best.pt")
    assert summary["test_acc"] == whole[1]["test_acc"]
    assert [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3]


def test_torn_metrics_line_empty_config_and_leftovers_resume_exactly(whole, tmp_path, monkeypatch):
    run_dir = tmp_path / "torn"
    _crash_on_save(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny(), run_dir)
    monkeypatch.undo()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train/lo')  # a kill in the middle of a line
    (run_dir / "config.yaml").write_text("")  # and in the middle of the config write
    (run_dir / ".last.pt.tmp").write_bytes(b"half a checkpoint")
    with pytest.warns(UserWarning, match=r"metrics.jsonl: line \d is torn"):
        run_training(tiny(), run_dir, resume=True)  # the config in last.pt is what counts
    assert not (run_dir / ".last.pt.tmp").exists()
    assert _same_weights(run_dir / "last.pt", whole[0] / "last.pt")
    assert [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3]
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == tiny().to_dict()


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "full"
    real = torch.save

    def no_space(obj, f, *args, **kwargs):
        if Path(f).name == ".last.pt.tmp" and (run_dir / "last.pt").exists():
            Path(f).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_mod.torch, "save", no_space)
    with pytest.raises(UserError) as info:
        run_training(tiny(), run_dir)
    message = str(info.value)
    assert "No space left on device" in message and ".last.pt.tmp" in message
    assert "last good checkpoint" in message and "\n" not in message
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1 and not (run_dir / ".last.pt.tmp").exists()
    monkeypatch.undo()
    run_training(tiny(), run_dir, resume=True)
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 3


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="mounting a tmpfs needs root on Linux")
def test_a_real_full_tmpfs(tmp_path):
    cfg = tiny("model.options={width: 8}")
    run_training(cfg, tmp_path / "sizing")
    size = (tmp_path / "sizing" / "last.pt").stat().st_size
    mount = tmp_path / "small"
    mount.mkdir()
    # Room for best.pt + last.pt (and the small files), not for a third checkpoint being written.
    opts = f"size={int(2.6 * size) // 1024}k"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        rc = main(["train", _write(tmp_path / "cfg.yaml", cfg), "--out", str(mount / "run")])
        assert rc == 2
        assert load_checkpoint(mount / "run" / "last.pt")["epoch"] >= 1
        assert not list((mount / "run").glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(mount)])


def _write(path: Path, cfg) -> str:
    path.write_text(cfg.to_yaml())
    return str(path)


_WORKERS_CHILD = """
import sys
from redistill.train import load_config, run_training
run_training(load_config(sys.argv[1]), sys.argv[2])
"""


def test_sigkill_with_data_workers_then_an_immediate_resume(tmp_path):
    cfg = tiny("data.workers=2", "run.epochs=40", "data.synthetic={train_size: 256, test_size: 32}")
    cfg_file = _write(tmp_path / "cfg.yaml", cfg)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _WORKERS_CHILD, cfg_file, str(run_dir)], env=env,
                             start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (run_dir / "last.pt").exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # into a later epoch, while its data workers run
        child.send_signal(signal.SIGKILL)  # the trainer only: its data workers live on for a moment
    finally:
        child.wait()
    assert (run_dir / "last.pt").exists()
    try:
        # At once, while the killed trainer's workers may still be alive: they must not hold the
        # lock, so the resume gets past it (and is refused here only because the config differs).
        with pytest.raises(UserError, match="config differs in run.epochs"):
            run_training(load_config(cfg_file, ["run.epochs=41"]), run_dir, resume=True)
    finally:
        os.killpg(child.pid, signal.SIGKILL) if _alive(child.pid) else None


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False


def test_a_checkpoint_of_another_architecture_is_refused(whole, tmp_path):
    run_dir, _ = whole
    # Other strides load the very same weight shapes: only the recorded architecture tells.
    cfg = tiny("model.student=cifar_resnet8:strides=1,2,2,2", f"model.teacher_checkpoint={run_dir}",
               "model.teacher=cifar_resnet8:strides=2,1,2,2", "distill.method=kd")
    with pytest.raises(UserError, match=r"not the network .* trained as \(cifar_resnet8:strides=1,1,2,2:width=4\)"):
        run_training(cfg, tmp_path / "kd")


# --- artifacts never run code --------------------------------------------------------------

EVIL = """
from pathlib import Path
Path(__file__).with_suffix(".ran").write_text("code from an artifact ran")
import torch.nn as nn
def make(num_classes=10, in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
"""


@pytest.fixture()
def evil(tmp_path):
    path = tmp_path / "evil.py"
    path.write_text(EVIL)
    return path


def _ran(evil: Path) -> bool:
    return evil.with_suffix(".ran").exists()


def test_a_run_directory_naming_code_is_refused_without_trust_code(whole, tmp_path, evil, capsys):
    run_dir, _ = whole
    hostile = tmp_path / "hostile_run"
    hostile.mkdir()
    for name in (MARKER, "best.pt", "last.pt"):
        (hostile / name).write_bytes((run_dir / name).read_bytes())
    cfg = tiny().to_dict()
    cfg["model"]["student"] = f"{evil}:make"
    (hostile / "config.yaml").write_text(yaml.safe_dump(cfg))
    for argv in (["eval", str(hostile)], ["export", str(hostile), "--out", str(tmp_path / "e")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "names code to import" in err and "--trust-code" in err and err.count("\n") == 1
    assert not _ran(evil)


def test_an_export_naming_code_never_runs_it(whole, tmp_path, evil, capsys):
    run_dir, _ = whole
    out = tmp_path / "export"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    spec = yaml.safe_load((out / "spec.yaml").read_text())
    for model in ({"name": f"{evil}:make"}, f"{evil}:make"):
        spec["model"] = model
        (out / "spec.yaml").write_text(yaml.safe_dump(spec))
        for argv in (["memory", str(out)], ["eval", str(out)], ["--trust-code", "memory", str(out)]):
            assert main(argv) == 2
            assert capsys.readouterr().err.count("\n") == 1
    assert not _ran(evil)


def test_a_teacher_checkpoint_naming_code_is_refused(whole, tmp_path, evil):
    run_dir, _ = whole
    state = load_checkpoint(run_dir / "best.pt")
    state["config"]["model"]["student"] = f"{evil}:make"
    hostile = tmp_path / "teacher.pt"
    checkpoint_mod.save_checkpoint(hostile, {k: v for k, v in state.items() if k not in ("format", "version")})
    cfg = tiny("model.student=cifar_resnet8:strides=2,1,2,2", f"model.teacher_checkpoint={hostile}",
               "distill.method=kd")
    with pytest.raises(UserError, match="names code to import"):
        run_training(cfg, tmp_path / "kd")
    assert not _ran(evil)


def test_code_the_user_names_runs_and_errors_in_it_are_theirs(tmp_path, capsys):
    good = tmp_path / "net.py"
    good.write_text(EVIL.replace('Path(__file__).with_suffix(".ran").write_text("code from an artifact ran")', ""))
    assert main(["memory", f"{good}:make", "--input", "1x1x16x16", "--top", "1"]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.py"
    bad.write_text("def make():\n    raise RuntimeError('my factory broke')\n")
    assert main(["memory", f"{bad}:make"]) == 2
    err = capsys.readouterr().err
    assert "factory" in err and "my factory broke" in err and err.count("\n") == 1


def test_a_run_that_failed_before_its_first_checkpoint_can_simply_be_rerun(tmp_path):
    run_dir = tmp_path / "failed"
    with pytest.raises(UserError, match="data.subset"):
        run_training(tiny("data.subset=100000"), run_dir)  # refused after the directory was prepared
    assert (run_dir / MARKER).is_file() and not (run_dir / "last.pt").exists()
    run_training(tiny("run.epochs=1"), run_dir)  # no --overwrite needed: there was nothing to lose
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1
