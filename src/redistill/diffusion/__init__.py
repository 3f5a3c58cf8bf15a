"""Diffusion: the DDPM noise schedule, an EMA of the weights, sampling (DDPM / DDIM), and generative
metrics (FID, KID, precision / recall, in :mod:`redistill.diffusion.metrics`) with their feature extractors."""

from redistill.diffusion.ema import ema_module, ema_weights, make_ema
from redistill.diffusion.sample import DEFAULT_DDIM_STEPS, sample_images, save_grid, scheduler_for, to_uint8, write_samples
from redistill.diffusion.schedule import BETA_SCHEDULES, SAMPLERS, VARIANCES, NoiseSchedule

__all__ = [
    "BETA_SCHEDULES", "DEFAULT_DDIM_STEPS", "NoiseSchedule", "SAMPLERS", "VARIANCES", "ema_module", "ema_weights", "make_ema",
    "sample_images", "save_grid", "scheduler_for", "to_uint8", "write_samples",
]
