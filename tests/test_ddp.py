"""DDP: two CPU processes under torchrun (gloo) train a few steps and end with identical weights."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from redistill.checkpoint import load_checkpoint

CONFIG = {
    "model": {"student": "cifar_resnet8", "options": {"width": 4}},
    "data": {"name": "synthetic", "workers": 0, "batch_size": 16, "synthetic": {"train_size": 80, "test_size": 16}},
    "optim": {"lr": 0.05},
    "run": {"epochs": 2, "progress": False, "device": "cpu"},
}

# Each rank saves its own final weights (before the summary reloads the best checkpoint) so the
# test can compare what the two processes hold in memory.
_SCRIPT = """
import sys
import torch
import redistill.train.trainer as trainer
from redistill.train import load_config, run_training

finish = trainer._finish

def keep_rank_weights(loop, run_dir, train_time):
    torch.save(loop.distiller.student.state_dict(), run_dir / f"rank{loop.env.rank}.pt")
    if loop.ema is not None:
        torch.save(loop.ema.state_dict(), run_dir / f"ema{loop.env.rank}.pt")
    return finish(loop, run_dir, train_time)

trainer._finish = keep_rank_weights
run_training(load_config(sys.argv[1]), sys.argv[2])
"""


def _torchrun(tmp_path, config: dict):
    cfg, script, out = tmp_path / "cfg.yaml", tmp_path / "ddp_run.py", tmp_path / "run"
    cfg.write_text(yaml.safe_dump(config))
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(cfg), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _same_on_both_ranks_and_saved(out, prefix: str, checkpoint_key: str) -> dict:
    """The state dicts rank 0 and rank 1 saved as ``prefix{rank}.pt`` equal each other and ``last.pt``'s."""
    rank0, rank1 = (torch.load(out / f"{prefix}{r}.pt", weights_only=True) for r in (0, 1))
    saved = load_checkpoint(out / "last.pt")[checkpoint_key]
    assert rank0.keys() == rank1.keys() == saved.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], saved[key]), key
    return rank0


def test_two_cpu_processes_end_with_identical_weights(tmp_path):
    out = _torchrun(tmp_path, CONFIG)
    _same_on_both_ranks_and_saved(out, "rank", "model")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    # 72 training images, global batch 16 split over 2 processes: 4 steps of 8 per process.
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # only rank 0 logs
    assert summary["epochs"] == 2 and summary["best_epoch"] in (1, 2)


DIFFUSION = {
    "task": "diffusion",
    "model": {"student": "ddpm_unet:ch=8:ch_mult=1,2:num_res_blocks=1:attn=:dropout=0", "in_channels": 1},
    "data": {"name": "synthetic", "workers": 0, "batch_size": 8, "normalize": "symmetric", "augment": {"crop": "none"},
             "synthetic": {"train_size": 40, "test_size": 8, "image_size": 8, "channels": 1}},
    "optim": {"name": "adam", "lr": 2e-3, "weight_decay": 0.0, "grad_clip": 1.0},
    "diffusion": {"ema_decay": 0.5},
    "run": {"epochs": 1, "progress": False, "device": "cpu"},
}


def test_diffusion_under_ddp_keeps_one_ema_on_both_processes(tmp_path):
    out = _torchrun(tmp_path, DIFFUSION)
    ema0 = _same_on_both_ranks_and_saved(out, "ema", "ema")
    student = torch.load(out / "rank0.pt", weights_only=True)
    # 36 training images, global batch 8: 4 full steps, each averaged in (decay 0.5), so the EMA is not the student
    assert int(ema0["n_averaged"]) == 4
    weights = [k for k in student if k.endswith("weight")]
    assert any(not torch.equal(ema0[f"module.{k}"], student[k]) for k in weights)
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_torchrun_cli_distills_with_red(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    teacher_cfg = tmp_path / "teacher.yaml"
    teacher_cfg.write_text(yaml.safe_dump(CONFIG))
    red = {**CONFIG, "model": {"student": "cifar_resnet8:strides=4,1,1,1", "options": {"width": 4},
                               "teacher_checkpoint": str(tmp_path / "teacher")},
           "distill": {"method": "red", "pairs": "auto"}}
    red_cfg = tmp_path / "red.yaml"
    red_cfg.write_text(yaml.safe_dump(red))
    for cfg, out in ((teacher_cfg, "teacher"), (red_cfg, "red")):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "redistill", "train", str(cfg), "--out", str(tmp_path / out)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("test acc") == 1  # only rank 0 prints the summary
    summary = json.loads((tmp_path / "red" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["method"] == "red" and summary["pairs"]
