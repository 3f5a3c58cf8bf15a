"""Diffusion runs through the task-agnostic trainer: teacher, RED student, EMA, resume, sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from redistill.checkpoint import load_checkpoint
from redistill.diffusion import ema_weights
from redistill.errors import UserError
from redistill.train import load_config, load_run_model, run_training
from redistill.train.data import build_datasets
from redistill.train.sampling import sample_run

STANDIN = f"{Path(__file__).with_name('denoiser_standin.py')}:tiny_denoiser"

# Two optimizer steps per epoch: 32 images of 8 x 8, batch 16.
TINY = {
    "task": "diffusion",
    "model": {"student": STANDIN},
    "data": {"name": "synthetic", "workers": 0, "batch_size": 16, "normalize": "symmetric", "val_fraction": 0.25,
             "augment": {"crop": "none"}, "synthetic": {"train_size": 42, "test_size": 8, "image_size": 8}},
    "optim": {"name": "adam", "lr": 2e-3, "weight_decay": 0.0, "grad_clip": 1.0},
    "schedule": {"name": "constant", "warmup_epochs": 0.5},
    "diffusion": {"ema_decay": 0.5},
    "run": {"epochs": 1, "progress": False, "device": "cpu", "seed": 0},
}


def tiny(*overrides: str):
    return load_config(TINY, list(overrides))


def red(teacher_dir: Path, *overrides: str):
    return tiny(
        "model.options={head_stride: 2}", f"model.teacher={STANDIN}", f"model.teacher_checkpoint={teacher_dir}",
        "distill.method=red", "distill.options={w_task: 1.0, w_distill: 1.0, alpha: 50.0, distance: mse}",
        "distill.pairs=[{student: head, teacher: down}]", *overrides,
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("diff") / "teacher"
    return run_dir, run_training(tiny(), run_dir)


def test_teacher_run_two_steps(teacher):
    run_dir, summary = teacher
    assert summary["task"] == "diffusion" and summary["metric"] == "loss"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/diffusion", "val/loss"} <= set(records[0])
    assert records[0]["weights"] == {"diffusion": 1.0}
    assert summary["val_loss"] == records[0]["val/loss"] > 0 and summary["test_loss"] > 0
    assert summary["params"] > 0 and summary["flops"] > 0 and summary["peak_bytes_live"] > 0
    state = load_checkpoint(run_dir / "last.pt")
    assert int(state["ema"]["n_averaged"]) == 2  # one EMA update per optimizer step
    # The shipped model holds the EMA weights, which differ from the last training weights.
    model, cfg, _, _ = load_run_model(run_dir, trust_code=True)
    shipped = model.state_dict()
    ema = ema_weights(state["ema"])
    assert all(torch.equal(shipped[k], ema[k]) for k in shipped)
    assert any(not torch.equal(ema[k], state["model"][k]) for k in ema)
    assert cfg.task == "diffusion"


def test_red_student_two_steps(teacher, tmp_path):
    teacher_dir, _ = teacher
    summary = run_training(red(teacher_dir), tmp_path / "red")
    assert summary["method"] == "red"
    assert [(p["student"], p["teacher"]) for p in summary["pairs"]] == [("head", "down")]
    record = json.loads((tmp_path / "red" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["weights"] == {"diffusion": 1.0, "red/head": 50.0}  # L_diff + mean_k(alpha_k L_k), K = 1
    assert record["train/red/head"] > 0
    model, _, _, _ = load_run_model(tmp_path / "red", trust_code=True)
    assert any(k.startswith("head.red_out.") for k in model.state_dict())  # the RED block ships


def test_interrupted_run_resumes_exactly_ema_included(tmp_path, monkeypatch):
    from redistill.train.diffusion_task import DiffusionTask

    cfg = tiny("run.epochs=3")
    whole = run_training(cfg, tmp_path / "whole")
    real_evaluate, calls = DiffusionTask.evaluate, {"n": 0}

    def crash_in_epoch_two(*args, **kwargs):  # after epoch 2's steps, before its checkpoint
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(DiffusionTask, "evaluate", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "cut")
    monkeypatch.setattr(DiffusionTask, "evaluate", real_evaluate)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    resumed = run_training(cfg, tmp_path / "cut", resume=True)
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("whole", "cut"))
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert resumed["val_loss"] == whole["val_loss"]


def test_eval_scores_the_denoising_loss(teacher):
    from redistill.train import evaluate_path

    run_dir, summary = teacher
    result = evaluate_path(run_dir, "test", device="cpu", trust_code=True)
    assert result["loss"] == pytest.approx(summary["test_loss"]) and "acc" not in result


def test_sample_run_five_ddim_steps(teacher, tmp_path):
    run_dir, _ = teacher
    result = sample_run(run_dir, tmp_path / "s", n=4, sampler="ddim", steps=5, seed=1, batch_size=3,
                        device="cpu", progress=False, trust_code=True)
    assert torch.load(tmp_path / "s" / "samples.pt", weights_only=True).shape == (4, 1, 8, 8)
    meta = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert meta["steps"] == 5 and meta["sampler"] == "ddim" and meta["seed"] == 1
    assert (tmp_path / "s" / "grid.png").is_file() and result.seconds > 0


def test_sample_refuses_a_classification_run(tmp_path):
    cls = {"model": {"student": "cifar_resnet8", "options": {"width": 4}},
           "data": {"name": "synthetic", "workers": 0, "batch_size": 16, "synthetic": {"train_size": 40, "test_size": 8,
                                                                                       "image_size": 8}},
           "run": {"epochs": 1, "progress": False, "device": "cpu"}}
    run_training(load_config(cls), tmp_path / "cls")
    with pytest.raises(UserError, match="is a classification run"):
        sample_run(tmp_path / "cls", tmp_path / "s", n=1, progress=False)
    assert not (tmp_path / "s").exists()


def test_diffusion_config_checks():
    with pytest.raises(UserError, match="data.normalize=symmetric"):
        tiny("data.normalize=dataset")
    with pytest.raises(UserError, match="beta_start .* must be below"):
        tiny("diffusion.beta_start=0.03")
    with pytest.raises(UserError, match="no labels to mix"):
        tiny("data.augment.mixup_alpha=0.2")
    with pytest.raises(UserError, match="'task' must be one of classification, diffusion"):
        tiny("task=denoise")


def test_pad_and_symmetric_scaling():
    cfg = tiny("data.pad=2")
    splits = build_datasets(cfg.data)
    image, _ = splits.train[0]
    assert splits.info.image_size == 12 and image.shape == (1, 12, 12)
    assert image.min() >= -1 and image.max() <= 1
    assert torch.all(image[:, :2, :] == -1)  # the blank border is black: pixel 0 -> -1
