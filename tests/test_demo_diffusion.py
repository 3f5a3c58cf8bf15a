"""The diffusion demo end to end on a tiny schedule, and the shipped diffusion configs."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from redistill.cli.main import main
from redistill.demo import DemoOptions
from redistill.demo_diffusion import default_config_dir, run_diffusion_demo
from redistill.models import create_model
from redistill.train import load_config
from redistill.train.data import FASHION_MNIST_ROOT

CONFIGS = Path(str(resources.files("redistill") / "configs"))
TINY = ["model.options={ch: 8, ch_mult: [1, 2, 2, 2], num_res_blocks: 1, attn: [1], dropout: 0.0, norm_groups: 4}",
        "data.subset=32", "data.val_subset=16", "data.test_subset=16", "data.batch_size=16", "run.epochs=1"]
needs_data = pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason="Fashion-MNIST is not installed")


@needs_data
def test_diffusion_demo_end_to_end(tmp_path, monkeypatch):
    import redistill.demo_diffusion as demo

    monkeypatch.setattr(demo, "SAMPLES", 4)
    monkeypatch.setattr(demo, "DDIM_STEPS", 3)
    result = run_diffusion_demo(DemoOptions(out=tmp_path / "d", overrides=TINY, progress=False))
    assert [r["name"] for r in result.rows] == ["teacher", "vanilla", "red"]
    teacher, vanilla, red = result.rows
    assert vanilla["peak_bytes_live"] < teacher["peak_bytes_live"] and red["reduction_layer"] > 1
    for name in ("report.md", "results.json", "samples.png", "samples_teacher.png", "samples_red.png"):
        assert (tmp_path / "d" / name).is_file(), name
    report = (tmp_path / "d" / "report.md").read_text()
    assert "![samples of teacher, vanilla student and RED student](samples.png)" in report
    assert json.loads((tmp_path / "d" / "results.json").read_text())["ddim_steps"] == 3
    # A second call reuses the three finished runs.
    again = run_diffusion_demo(DemoOptions(out=tmp_path / "d", overrides=TINY, progress=False))
    assert again.reused == ["teacher", "vanilla", "red"]


def test_demo_cli_takes_the_task(tmp_path, capsys):
    assert main(["demo", "--task", "diffusion", "--out", str(tmp_path / "d"), "optim.lr=-1"]) == 2
    assert "'optim.lr' must be > 0" in capsys.readouterr().err


DIFFUSION = sorted((CONFIGS / "diffusion").glob("*.yaml")) + sorted(default_config_dir().glob("*.yaml"))


@pytest.mark.parametrize("path", DIFFUSION, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_diffusion_configs_load(path):
    cfg = load_config(path)
    assert cfg.task == "diffusion" and cfg.data.normalize == "symmetric"
    assert cfg.optim.name == "adam" and cfg.optim.grad_clip == 1.0
    if cfg.distill.method is not None:
        assert cfg.distill.method == "red" and cfg.distill.pairs == "auto"
        assert cfg.distill.options["w_task"] == cfg.distill.options["w_distill"] == 1.0  # L_diff + mean_k(alpha_k L_k)


@pytest.mark.parametrize("group", ["diffusion/cifar10", "diffusion/celeba", "demo_diffusion/"])
def test_a_family_shares_one_recipe(group):
    folder, prefix = group.split("/")
    paths = [p for p in DIFFUSION if p.parent.name == folder and p.stem.startswith(prefix)]
    assert len(paths) >= 3
    cfgs = [load_config(p) for p in paths]
    for key in ("data", "optim", "schedule", "diffusion", "run"):
        assert len({json.dumps(getattr(c, key).__dict__, default=str, sort_keys=True) for c in cfgs}) == 1, key
    assert len({json.dumps(c.model.options, sort_keys=True) for c in cfgs}) == 1


def test_demo_models_build():
    cfg = load_config(default_config_dir() / "student_red.yaml")
    for spec in (cfg.model.student, cfg.model.teacher):
        create_model(spec, in_channels=1, **cfg.model.options)
