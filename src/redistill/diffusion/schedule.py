"""The noise schedule of DDPM (Ho et al. 2020), kept apart from the network.

``diffusers``' schedulers hold the betas and the update rules; this module builds them from the
few numbers a run config names, so that training (the forward process) and sampling (DDPM or
DDIM) always read the same schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from redistill.errors import UserError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
VARIANCES = ("fixed_large", "fixed_small")
SAMPLERS = ("ddpm", "ddim")


@dataclass(frozen=True)
class NoiseSchedule:
    """What defines a DDPM schedule (the defaults are the paper's and the authors' CIFAR-10 ones).

    Attributes:
        timesteps: T, the number of diffusion steps.
        beta_start, beta_end: the first and last beta of the schedule.
        beta_schedule: linear | scaled_linear | squaredcos_cap_v2 (diffusers' names).
        variance: the reverse-process variance of DDPM sampling: fixed_large (beta_t, the
            authors' ``var_type=fixedlarge``) or fixed_small (the posterior variance).
        clip_sample: clip the predicted x0 to [-1, 1] at each sampling step.
    """

    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    variance: str = "fixed_large"
    clip_sample: bool = True

    def __post_init__(self) -> None:
        if self.timesteps < 1:
            raise UserError(f"diffusion timesteps must be >= 1, got {self.timesteps}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise UserError(
                f"diffusion betas must satisfy 0 < beta_start < beta_end < 1, got {self.beta_start:g} and {self.beta_end:g}"
            )
        if self.beta_schedule not in BETA_SCHEDULES:
            raise UserError(f"unknown beta schedule '{self.beta_schedule}'; use one of {', '.join(BETA_SCHEDULES)}")
        if self.variance not in VARIANCES:
            raise UserError(f"unknown DDPM variance '{self.variance}'; use one of {', '.join(VARIANCES)}")

    def _common(self) -> dict:
        return {
            "num_train_timesteps": self.timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule,
            "clip_sample": self.clip_sample,
            "prediction_type": "epsilon",
        }

    def ddpm(self) -> DDPMScheduler:
        """The DDPM scheduler: the forward process (``add_noise``) and ancestral sampling."""
        return DDPMScheduler(**self._common(), variance_type=self.variance)

    def ddim(self) -> DDIMScheduler:
        """The DDIM scheduler (deterministic with eta = 0) over the same betas."""
        # "trailing" spacing ends the chain at t = T-1, where training put pure noise.
        return DDIMScheduler(**self._common(), set_alpha_to_one=True, timestep_spacing="trailing")

    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t for t = 0 .. T-1 (float32)."""
        return self.ddpm().alphas_cumprod.float()

