"""The denoising task (DDPM, Ho et al. 2020): the student predicts the noise added to an image.

A batch of images x0 in [-1, 1] becomes ``inputs = (x_t, t)`` and ``targets = noise`` with
t ~ U{0, .., T-1}, noise ~ N(0, I) and x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; the task loss
is the MSE between predicted and true noise (L_simple). With RED, the Distiller adds
``mean_k(alpha_k L_k)`` to it (``w_task = w_distill = 1`` in the config: the authors' DDPM total).

Validation is the same loss on held-out images, at timesteps and noise drawn once from
``diffusion.eval_seed``: every epoch and every run scores the same denoising problems, so the
numbers compare (lower is better).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from redistill.diffusion import NoiseSchedule
from redistill.train.config import DiffusionConfig
from redistill.train.task import Task


def noise_schedule(cfg: DiffusionConfig) -> NoiseSchedule:
    """The noise schedule a run's ``diffusion`` section describes."""
    return NoiseSchedule(cfg.timesteps, cfg.beta_start, cfg.beta_end, cfg.beta_schedule, cfg.variance, cfg.clip_sample)


class DiffusionTask(Task):
    """Images in [-1, 1] (labels ignored); epsilon prediction; validation = denoising MSE.

    Args:
        cfg: the run's ``diffusion`` section.
    """

    term = "diffusion"
    metric = "loss"
    higher_is_better = False

    def __init__(self, cfg: DiffusionConfig) -> None:
        self.cfg = cfg
        self.schedule = noise_schedule(cfg)
        self.scheduler = self.schedule.ddpm()
        self.ema_decay = cfg.ema_decay

    def _noised(self, x0: torch.Tensor, generator: torch.Generator | None) -> tuple[tuple, torch.Tensor]:
        b = x0.shape[0]
        if generator is None:  # training: the global generators (saved in checkpoints) on the device
            t = torch.randint(0, self.schedule.timesteps, (b,), device=x0.device)
            noise = torch.randn_like(x0)
        else:  # evaluation: a private CPU stream, the same on every device
            t = torch.randint(0, self.schedule.timesteps, (b,), generator=generator).to(x0.device)
            noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        x_t = self.scheduler.add_noise(x0, noise, t)
        return (x_t, t), noise

    def prepare(self, batch, device, channels_last=False):
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self._noised(images, None)

    def loss(self, outputs, targets):
        return F.mse_loss(outputs.float(), targets.float())

    def example_input(self, in_channels: int, image_size: int, batch: int = 2) -> Any:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, in_channels, image_size, image_size, generator=gen)
        return x, torch.randint(0, self.schedule.timesteps, (batch,), generator=gen)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device, amp=False, channels_last=False) -> dict[str, float]:
        """Mean denoising MSE (per element) of ``model`` on ``loader`` and the image count."""
        was_training = model.training
        model.eval()
        gen = torch.Generator().manual_seed(self.cfg.eval_seed)
        total, count = 0.0, 0
        autocast = torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext()
        for batch in loader:
            images = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            (x_t, t), noise = self._noised(images, gen)
            with autocast:
                eps = model(x_t, t)
            per_image = F.mse_loss(eps.float(), noise.float(), reduction="none").flatten(1).mean(1)
            total += float(per_image.sum())
            count += len(per_image)
        model.train(was_training)
        return {"loss": total / max(count, 1), "count": count}
