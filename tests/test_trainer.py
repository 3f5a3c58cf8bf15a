"""The training loop on tiny synthetic runs: outputs, distillation, divergence, exact resume."""

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

from redistill.errors import UserError
from redistill.train import load_config, run_training
from redistill.checkpoint import load_checkpoint
from redistill.train.config import ScheduleConfig
from redistill.train.optim import lr_factor

TINY = {
    "model": {"student": "cifar_resnet8", "options": {"width": 4}},
    "data": {"name": "synthetic", "workers": 0, "batch_size": 16, "synthetic": {"train_size": 96, "test_size": 32}},
    "optim": {"lr": 0.05},
    "run": {"epochs": 2, "progress": False, "seed": 0},
}


def tiny(*overrides: str):
    return load_config(TINY, list(overrides))


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "teacher"
    summary = run_training(tiny(), run_dir)
    return run_dir, summary


def test_vanilla_run_writes_everything(teacher_run):
    run_dir, summary = teacher_run
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").iterdir()), "no TensorBoard events"
    assert load_config(run_dir / "config.yaml") == tiny()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train/loss", "train/ce", "train/acc", "val/acc", "val/loss", "lr"} <= set(records[0])
    assert records[0]["weights"] == {"ce": 1.0}
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert summary["val_acc"] == max(r["val/acc"] for r in records)
    assert 0 <= summary["test_acc"] <= 100
    assert summary["params"] > 0 and summary["flops"] > 0
    assert summary["peak_bytes_live"] > 0 and summary["peak_bytes_layer"] > 0
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 2


def test_existing_run_dir_is_never_overwritten_silently(teacher_run, tmp_path):
    run_dir, _ = teacher_run
    before = (run_dir / "last.pt").read_bytes()
    with pytest.raises(UserError, match="--resume.*--overwrite"):
        run_training(tiny(), run_dir)
    assert (run_dir / "last.pt").read_bytes() == before
    stranger = tmp_path / "notarun"
    stranger.mkdir()
    (stranger / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a redistill run directory"):
        run_training(tiny(), stranger, overwrite=True)
    assert (stranger / "precious.txt").is_file()
    fresh = tmp_path / "fresh"
    with pytest.raises(UserError, match="exclude each other"):
        run_training(tiny(), fresh, resume=True, overwrite=True)
    assert not fresh.exists()  # refused before anything (the lock included) touched the disk


_LOCKER = """
import sys, time
from pathlib import Path
from redistill.train.rundir import run_dir_lock
with run_dir_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_run_directory_another_process_trains_into_is_refused(teacher_run):
    run_dir, summary = teacher_run
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    other = subprocess.Popen([sys.executable, "-c", _LOCKER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert other.stdout.readline().strip() == "locked"
        for how in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(UserError, match="in use by another training process"):
                run_training(tiny(), run_dir, **how)
    finally:
        other.kill()
        other.wait()
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # nothing touched
    # The kernel drops the lock with the process that held it: the run can be used again.
    assert run_training(tiny(), run_dir, resume=True) == summary


def test_resume_refuses_a_different_config(teacher_run):
    run_dir, _ = teacher_run
    with pytest.raises(UserError, match="optim.lr"):
        run_training(tiny("optim.lr=0.5"), run_dir, resume=True)


def test_red_distillation_logs_every_term_and_shrinks_peak(teacher_run, tmp_path):
    teacher_dir, teacher_summary = teacher_run
    cfg = tiny(
        "model.student=cifar_resnet8:strides=4,1,1,1",
        f"model.teacher_checkpoint={teacher_dir}",
        "distill.method=red",
        "distill.pairs=auto",
        "distill.options={alpha: 10}",
        "run.epochs=1",
    )
    summary = run_training(cfg, tmp_path / "red")
    record = json.loads((tmp_path / "red" / "metrics.jsonl").read_text().splitlines()[0])
    red_terms = [k for k in record if k.startswith("train/red/")]
    assert red_terms, record
    assert record["weights"]["ce"] == 0.5
    expected = 0.5 * record["train/ce"] + sum(record["weights"][k[6:]] * record[k] for k in red_terms)
    assert record["train/loss"] == pytest.approx(expected, rel=1e-4)
    assert summary["method"] == "red" and summary["pairs"][0]["student"] == "conv1"
    assert summary["peak_bytes_live"] < teacher_summary["peak_bytes_live"]
    layout = load_checkpoint(tmp_path / "red" / "best.pt")["surgery"]["red"]
    assert [(e["layer"], e["side"]) for e in layout] == [(p["student"], p["side"]) for p in summary["pairs"]]


def test_distillation_without_teacher_checkpoint_is_refused(tmp_path):
    cfg = tiny("model.teacher=cifar_resnet8", "distill.method=red")
    with pytest.raises(UserError, match="teacher_checkpoint"):
        run_training(cfg, tmp_path / "r")


def test_a_teacher_spec_other_than_the_checkpoints_is_refused(teacher_run):
    from redistill.train.build import load_teacher
    from redistill.train.data import build_datasets

    teacher_dir, _ = teacher_run  # trained as cifar_resnet8 (strides 1,1,2,2), width 4
    info = build_datasets(tiny().data).info

    def teacher(spec: str):
        return load_teacher(tiny(f"model.teacher={spec}", f"model.teacher_checkpoint={teacher_dir}",
                                 "distill.method=red"), info)

    # Other strides load the same weight shapes: only the spec check stops a wrong teacher.
    with pytest.raises(UserError, match=r"teacher cifar_resnet8:strides=1,2,2,2 is not the network .* trained as "
                                        r"\(cifar_resnet8:strides=1,1,2,2:width=4\)"):
        teacher("cifar_resnet8:strides=1,2,2,2")
    assert teacher("cifar_resnet8:strides=1,1,2,2") is not None  # spelled differently, same network


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from redistill.distill.distiller import Distiller

    calls = {"n": 0}
    original = Distiller.total_loss

    def poisoned(self, terms):  # the 8th step (second epoch) blows up
        calls["n"] += 1
        loss = original(self, terms)
        return loss * float("nan") if calls["n"] >= 8 else loss

    monkeypatch.setattr(Distiller, "total_loss", poisoned)
    run_dir = tmp_path / "nan"
    with pytest.raises(UserError, match=r"not finite at epoch 2.*last good checkpoint"):
        run_training(tiny("run.epochs=3"), run_dir)
    state = load_checkpoint(run_dir / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (run_dir / "summary.json").exists()


def test_lr_schedules():
    warm = ScheduleConfig(name="cosine", warmup_epochs=1.0)
    assert lr_factor(warm, 0, 10, 5, 0.1) == pytest.approx(0.1)
    assert lr_factor(warm, 9, 10, 5, 0.1) == pytest.approx(1.0)
    assert lr_factor(warm, 10, 10, 5, 0.1) == pytest.approx(1.0)
    assert lr_factor(warm, 30, 10, 5, 0.1) == pytest.approx(0.5)
    assert lr_factor(warm, 50, 10, 5, 0.1) == pytest.approx(0.0, abs=1e-12)
    floor = ScheduleConfig(name="cosine", min_lr=0.01)
    assert lr_factor(floor, 50, 10, 5, 0.1) == pytest.approx(0.1)
    steps = ScheduleConfig(name="multistep", milestones=[2, 4], gamma=0.2)
    assert [lr_factor(steps, s * 10, 10, 5, 0.1) for s in range(5)] == pytest.approx([1, 1, 0.2, 0.2, 0.04])


# The child slows down (without changing any computation) once its first checkpoint exists, so
# the SIGKILL reliably lands in the middle of epoch 2 however loaded the machine is.
_CHILD = """
import sys, time
from pathlib import Path
from redistill.distill.distiller import Distiller
from redistill.train import load_config, run_training

original = Distiller.total_loss

def slowed(self, terms):
    if (Path(sys.argv[2]) / "last.pt").exists():
        time.sleep(0.2)
    return original(self, terms)

Distiller.total_loss = slowed
run_training(load_config(sys.argv[1]), sys.argv[2])
"""


def test_sigkill_then_resume_ends_with_identical_weights(tmp_path):
    overrides = ["run.epochs=4", "run.deterministic=true", "data.augment.cutmix_alpha=0.5",
                 "model.options={width: 4, dropout: 0.2}"]
    cfg = tiny(*overrides)
    # One uninterrupted run.
    run_training(cfg, tmp_path / "whole")
    # The same run in a child process, killed with SIGKILL as soon as its first checkpoint lands.
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(cfg.to_yaml())
    killed_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(cfg_file), str(killed_dir)], env=env)
    try:
        deadline = time.time() + 120
        while not (killed_dir / "last.pt").exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert (killed_dir / "last.pt").exists()
    assert not (killed_dir / "summary.json").exists(), "the child finished before it was killed"
    assert load_checkpoint(killed_dir / "last.pt")["epoch"] == 1
    summary = run_training(load_config(cfg_file), killed_dir, resume=True)
    whole = load_checkpoint(tmp_path / "whole" / "last.pt")
    resumed = load_checkpoint(killed_dir / "last.pt")
    assert resumed["epoch"] == whole["epoch"] == 4
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert len((killed_dir / "metrics.jsonl").read_text().splitlines()) == 4
    assert summary["test_acc"] == json.loads((tmp_path / "whole" / "summary.json").read_text())["test_acc"]
    assert yaml.safe_load((killed_dir / "config.yaml").read_text()) == cfg.to_dict()


def test_method_pre_stage_runs_before_main_training(teacher_run, tmp_path):
    teacher_dir, _ = teacher_run
    cfg = tiny(
        f"model.teacher_checkpoint={teacher_dir}",
        "distill.method=fitnet",
        "distill.options={hint_epochs: 1}",
        "run.epochs=1",
    )
    run_training(cfg, tmp_path / "fitnet")
    records = [json.loads(line) for line in (tmp_path / "fitnet" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["stage"] == "fitnet_init" and records[0]["stage_epoch"] == 1
    assert any(k.startswith("train/fitnet/") for k in records[0])
    assert records[1]["epoch"] == 1 and "stage" not in records[1]


def test_preloaded_run_interrupted_then_resumed_matches(tmp_path, monkeypatch):
    from redistill.train.task import ClassificationTask

    cfg = tiny("data.preload=true", "data.augment.cutmix_alpha=0.5", "run.epochs=3")
    run_training(cfg, tmp_path / "whole")
    real_evaluate, calls = ClassificationTask.evaluate, {"n": 0}

    def crash_in_epoch_two(*args, **kwargs):  # after epoch 2's steps, before its checkpoint
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(ClassificationTask, "evaluate", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "cut")
    monkeypatch.setattr(ClassificationTask, "evaluate", real_evaluate)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    run_training(cfg, tmp_path / "cut", resume=True)
    whole, resumed = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("whole", "cut"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_progress_is_a_bar_on_a_terminal_and_one_line_per_epoch_elsewhere(tmp_path, monkeypatch, capfd):
    import redistill.train.trainer as trainer

    cfg = tiny("run.progress=true", "run.epochs=2")
    run_training(cfg, tmp_path / "piped")  # pytest's capture is no terminal
    out, err = capfd.readouterr()
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    assert "it/s" not in err and "\r" not in err  # no bar frames in a log
    monkeypatch.setattr(trainer, "progress_to_terminal", lambda: True)
    run_training(cfg, tmp_path / "terminal")
    out, err = capfd.readouterr()
    assert "epoch 1/2" in out and "it/s" in err  # the bar, and still the epoch lines


@pytest.mark.parametrize("channels_last", [True, False])
def test_run_channels_last_sets_the_memory_format_on_the_cpu_too(tmp_path, channels_last):
    """``run.channels_last`` is honoured on the CPU (where it is faster too), and only changes the order
    of summation: the weights after an epoch match those trained in NCHW."""
    wide = "model.options.width=16"  # its strided 1x1 shortcuts read >= 16 channels: no oneDNN hazard
    cfg = tiny(f"run.channels_last={str(channels_last).lower()}", "run.epochs=1", wide)
    run_training(cfg, tmp_path / "run")
    weights = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    convs = [w for w in weights.values() if w.dim() == 4 and w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) == channels_last for w in convs)
    if channels_last:
        run_training(tiny("run.channels_last=false", "run.epochs=1", wide), tmp_path / "nchw")
        nchw = load_checkpoint(tmp_path / "nchw" / "last.pt")["model"]
        assert all(torch.allclose(weights[k].float(), nchw[k].float(), rtol=1e-3, atol=1e-5) for k in nchw)


def test_channels_last_falls_back_to_nchw_where_onednn_mishandles_it(tmp_path, capfd):
    """Width 4: the strided 1x1 shortcuts read 4 channels, which oneDNN's channels-last CPU backward corrupts
    memory on; the run trains in NCHW and says why."""
    from redistill.models import create_model
    from redistill.train.trainer import channels_last_cpu_hazard

    assert channels_last_cpu_hazard(create_model("cifar_resnet8", width=16)) is None
    narrow = create_model("cifar_resnet8", width=4)
    assert channels_last_cpu_hazard(narrow) == "layer2.0.downsample.0 (1x1 conv, stride 2, 4 input channels)"
    narrow.requires_grad_(False)  # a frozen teacher is never differentiated
    assert channels_last_cpu_hazard(narrow) is None
    run_training(tiny("run.channels_last=true", "run.epochs=1"), tmp_path / "run")
    assert "training in NCHW, not channels-last" in capfd.readouterr().err
    weights = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    convs = [w for w in weights.values() if w.dim() == 4 and w.shape[2] * w.shape[3] > 1]
    assert convs and not any(w.is_contiguous(memory_format=torch.channels_last) for w in convs if w.shape[1] > 1)


