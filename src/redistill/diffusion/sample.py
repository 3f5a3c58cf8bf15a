"""Drawing images from a trained denoiser: DDPM (every step) or DDIM (a few), seeded and batched.

Every image has its own random stream, seeded from ``(seed, index)``, so image k of a seed is the
same whatever the batch size or the number of images asked for; the batch only sets the speed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn
from diffusers.utils.torch_utils import randn_tensor
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

from redistill.diffusion.schedule import SAMPLERS, NoiseSchedule
from redistill.errors import UserError

DEFAULT_DDIM_STEPS = 100


def _generators(seed: int, start: int, count: int) -> list[torch.Generator]:
    # One stream per (seed, image); the multiplier keeps neighbouring seeds from sharing streams.
    return [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(count)]


def scheduler_for(schedule: NoiseSchedule, sampler: str, steps: Optional[int]):
    """The diffusers scheduler of ``sampler`` with its timesteps set.

    Args:
        schedule: the run's noise schedule.
        sampler: "ddpm" (all T steps; ``steps`` must be None or T) or "ddim".
        steps: DDIM steps (default 100, at most T).
    Raises:
        UserError: an unknown sampler or a step count it cannot take.
    """
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler '{sampler}'; use one of {', '.join(SAMPLERS)}")
    T = schedule.timesteps
    if sampler == "ddpm":
        if steps is not None and steps != T:
            raise UserError(f"the DDPM sampler runs all {T} steps; drop --steps or use --sampler ddim")
        scheduler = schedule.ddpm()
        scheduler.set_timesteps(T)
        return scheduler
    steps = min(DEFAULT_DDIM_STEPS, T) if steps is None else steps
    if not 1 <= steps <= T:
        raise UserError(f"--steps must be in [1, {T}] (the run's timesteps), got {steps}")
    scheduler = schedule.ddim()
    scheduler.set_timesteps(steps)
    return scheduler


@torch.no_grad()
def sample_images(
    model: nn.Module,
    schedule: NoiseSchedule,
    n: int,
    image_shape: tuple[int, int, int],
    sampler: str = "ddpm",
    steps: Optional[int] = None,
    seed: int = 0,
    batch_size: int = 64,
    device: Union[torch.device, str] = "cpu",
    progress: bool = True,
    eta: float = 0.0,
) -> torch.Tensor:
    """``n`` images from ``model`` (``model(x_t, t) -> predicted noise``), in [-1, 1], on the CPU.

    Args:
        model: the denoiser (the EMA network of a run); in eval mode while sampling.
        schedule: the noise schedule it was trained with.
        n: number of images.
        image_shape: (C, H, W).
        sampler: "ddpm" or "ddim".
        steps: DDIM steps (default 100); DDPM always runs all T.
        seed: the images are a function of (seed, index) only.
        batch_size: images denoised at once.
        device: where the model runs.
        progress: show a tqdm bar (denoising steps over all batches).
        eta: DDIM's stochasticity (0: deterministic given the initial noise).
    Returns:
        A float tensor (n, C, H, W).
    """
    if n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    device = torch.device(device)
    scheduler = scheduler_for(schedule, sampler, steps)
    timesteps = scheduler.timesteps
    was_training = model.training
    model.eval()
    out = []
    batches = (n + batch_size - 1) // batch_size
    bar = tqdm(total=len(timesteps) * batches, desc=f"sampling ({sampler}, {len(timesteps)} steps)",
               disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            gens = _generators(seed, start, count)
            x = randn_tensor((count, *image_shape), generator=gens, device=device)
            for t in timesteps:
                eps = model(x, torch.full((count,), int(t), device=device, dtype=torch.long))
                if sampler == "ddpm":  # the step draws its noise per image from the same streams
                    x = scheduler.step(eps, t, x, generator=gens).prev_sample
                else:
                    x = scheduler.step(eps, t, x, eta=eta, generator=gens).prev_sample
                bar.update(1)
            out.append(x.clamp(-1, 1).float().cpu())
    finally:
        bar.close()
        model.train(was_training)
    return torch.cat(out)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as uint8 pixels (the form a PNG stores)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_grid(images: torch.Tensor, path: Union[str, Path], nrow: Optional[int] = None) -> Path:
    """A PNG grid of images in [-1, 1] (``nrow`` per row; default: a square-ish grid)."""
    path = Path(path)
    nrow = nrow or max(1, int(round(len(images) ** 0.5)))
    grid = make_grid(to_uint8(images).float() / 255.0, nrow=nrow, padding=2, pad_value=1.0)
    save_image(grid, path)
    return path


def write_samples(images: torch.Tensor, out: Union[str, Path], meta: Optional[dict] = None,
                  each: bool = True) -> Path:
    """Write ``grid.png``, ``samples.pt`` (a uint8 (N, C, H, W) tensor), ``samples.json`` (``meta``: how
    they were drawn) and, with ``each``, ``images/NNNNN.png``.

    Written into a temporary directory next to ``out`` and renamed, so ``out`` is complete or absent.

    Raises:
        UserError: ``out`` exists and is not empty, or its parent cannot be written.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output directory {out} already exists and is not empty; choose another --out")
    parent = out.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {out}: {parent} does not exist")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}") from err
    try:
        pixels = to_uint8(images)
        torch.save(pixels, tmp / "samples.pt")  # one tensor: what `redistill fid` reads
        (tmp / "samples.json").write_text(json.dumps({"count": len(pixels), "shape": list(pixels.shape[1:]),
                                                      **(meta or {})}, indent=2) + "\n")
        save_grid(images[:256], tmp / "grid.png")
        if each:
            (tmp / "images").mkdir()
            for i, image in enumerate(pixels):
                save_image(image.float() / 255.0, tmp / "images" / f"{i:05d}.png")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
