"""``redistill sample``: images from a diffusion run's EMA denoiser, written as PNGs and a tensor."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from redistill.diffusion import sample_images, scheduler_for, write_samples
from redistill.errors import UserError
from redistill.train.diffusion_task import noise_schedule
from redistill.train.export import load_run_model
from redistill.util import pick_device


@dataclass
class SampleResult:
    """Where the samples went and what drawing them cost."""

    out: Path
    n: int
    sampler: str
    steps: int
    seconds: float

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(self.n, 1)


def load_denoiser(run_dir: Union[str, Path], checkpoint: str = "best", trust_code: bool = False):
    """The deployed (EMA) denoiser of a diffusion run, its config and data description.

    Raises:
        UserError: ``run_dir`` is not a run directory, or its run is not a diffusion run.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"no such run directory: {run_dir}")
    model, cfg, info, _ = load_run_model(run_dir, checkpoint, trust_code=trust_code)
    if cfg.task != "diffusion":
        raise UserError(f"{run_dir} is a {cfg.task} run; redistill sample needs a run trained with task: diffusion")
    return model, cfg, info


def sample_run(
    run_dir: Union[str, Path],
    out: Union[str, Path],
    n: int = 64,
    sampler: str = "ddpm",
    steps: Optional[int] = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
    checkpoint: str = "best",
    trust_code: bool = False,
) -> SampleResult:
    """Draw ``n`` images from a diffusion run and write them to ``out``.

    Args:
        run_dir: a run directory trained with ``task: diffusion``.
        out: a new (or empty) directory: ``grid.png``, ``samples.pt`` (uint8), ``images/*.png``.
        n: number of images.
        sampler: "ddpm" (all T steps) or "ddim" (``steps``, default 100).
        steps: DDIM steps.
        seed: image k of a seed is the same for any ``n`` and ``batch_size``.
        batch_size: images denoised at once.
        device: auto | cpu | cuda | cuda:N.
        progress: show a progress bar.
        checkpoint: "best" or "last".
        trust_code: whether the run's model spec may import user code.
    Returns:
        A :class:`SampleResult`.
    """
    out = Path(out)
    if n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # refuse before minutes of sampling
        raise UserError(f"output directory {out} already exists and is not empty; choose another --out")
    dev = pick_device(device, what="--device")
    model, cfg, info = load_denoiser(run_dir, checkpoint, trust_code)
    schedule = noise_schedule(cfg.diffusion)
    scheduler_for(schedule, sampler, steps)  # a bad --steps fails before any work
    start = time.perf_counter()
    images = sample_images(model.to(dev), schedule, n, (info.in_channels, info.image_size, info.image_size),
                           sampler=sampler, steps=steps, seed=seed, batch_size=batch_size, device=dev, progress=progress)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    used = schedule.timesteps if sampler == "ddpm" else (steps or min(100, schedule.timesteps))
    meta = {"run_dir": str(run_dir), "sampler": sampler, "steps": used, "seed": seed, "checkpoint": checkpoint}
    write_samples(images, out, meta)
    return SampleResult(out, n, sampler, used, seconds)
