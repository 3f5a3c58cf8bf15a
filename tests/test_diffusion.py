"""The diffusion package: the noise schedule's forward process, the EMA, sampling and its output."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from denoiser_standin import TinyDenoiser
from redistill.diffusion import NoiseSchedule, make_ema, sample_images, scheduler_for, write_samples
from redistill.diffusion.ema import ema_weights
from redistill.errors import UserError


def test_forward_process_matches_the_closed_form():
    schedule = NoiseSchedule()  # T = 1000, linear betas 1e-4 .. 0.02
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1.0 - betas, dim=0)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 1, 8, 8, generator=gen), torch.randn(4, 1, 8, 8, generator=gen)
    t = torch.tensor([0, 1, 500, 999])
    expected = abar[t].sqrt().view(-1, 1, 1, 1) * x0.double() + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * noise.double()
    got = schedule.ddpm().add_noise(x0, noise, t)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(schedule.alphas_cumprod().double(), abar, rtol=1e-5, atol=1e-7)
    # The last step is (almost) pure noise: sqrt(abar_T) is about 6e-3.
    assert float(abar[-1].sqrt()) < 0.01


def test_schedule_rejects_bad_betas():
    with pytest.raises(UserError, match="beta_start < beta_end"):
        NoiseSchedule(beta_start=0.02, beta_end=1e-4)
    with pytest.raises(UserError, match="unknown beta schedule"):
        NoiseSchedule(beta_schedule="cubic")


def test_ema_equals_a_hand_computed_average_buffers_included():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    decay = 0.75
    ema = make_ema(model, decay)
    seen = []
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(torch.randn(2))
            model[1].running_var.mul_(1.5)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        ema.update_parameters(model)
    # Hand-computed: the first update copies, each later one is decay * ema + (1 - decay) * model.
    for key in ("0.weight", "0.bias", "1.weight", "1.running_mean", "1.running_var"):
        expected = seen[0][key]
        for snapshot in seen[1:]:
            expected = decay * expected + (1 - decay) * snapshot[key]
        torch.testing.assert_close(ema.module.state_dict()[key], expected)
        assert not torch.allclose(expected, seen[-1][key])  # the average is not the last model
    assert set(ema_weights(ema.state_dict())) == set(model.state_dict())
    assert not any(p.requires_grad for p in ema.parameters())


def test_ema_decay_out_of_range():
    with pytest.raises(UserError, match=r"EMA decay must be in \[0, 1\)"):
        make_ema(nn.Linear(1, 1), 1.0)


@pytest.fixture
def denoiser():
    torch.manual_seed(0)
    return TinyDenoiser(in_channels=1, width=4)


def test_ddim_five_steps_is_seeded_and_batch_independent(denoiser):
    schedule = NoiseSchedule()
    a = sample_images(denoiser, schedule, 5, (1, 8, 8), sampler="ddim", steps=5, seed=3, batch_size=5, progress=False)
    b = sample_images(denoiser, schedule, 5, (1, 8, 8), sampler="ddim", steps=5, seed=3, batch_size=2, progress=False)
    c = sample_images(denoiser, schedule, 5, (1, 8, 8), sampler="ddim", steps=5, seed=4, batch_size=5, progress=False)
    assert a.shape == (5, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b)  # image k depends on (seed, k) only
    assert not torch.allclose(a, c)
    assert denoiser.training  # the mode is restored


def test_ddpm_runs_every_step_and_draws_per_image_noise(denoiser):
    schedule = NoiseSchedule(timesteps=10)
    assert len(scheduler_for(schedule, "ddpm", None).timesteps) == 10
    a = sample_images(denoiser, schedule, 3, (1, 8, 8), sampler="ddpm", seed=0, batch_size=3, progress=False)
    b = sample_images(denoiser, schedule, 3, (1, 8, 8), sampler="ddpm", seed=0, batch_size=1, progress=False)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0], a[1])


def test_sampler_arguments_are_checked():
    schedule = NoiseSchedule(timesteps=10)
    with pytest.raises(UserError, match="runs all 10 steps"):
        scheduler_for(schedule, "ddpm", 5)
    with pytest.raises(UserError, match=r"--steps must be in \[1, 10\]"):
        scheduler_for(schedule, "ddim", 11)
    with pytest.raises(UserError, match="unknown sampler 'euler'"):
        scheduler_for(schedule, "euler", None)


def test_write_samples_is_all_or_nothing(tmp_path):
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    out = write_samples(images, tmp_path / "s", {"seed": 1})
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "images", "samples.json", "samples.pt"]
    saved = torch.load(out / "samples.pt", weights_only=True)
    assert saved.dtype == torch.uint8 and saved.shape == (3, 1, 8, 8)
    torch.testing.assert_close(saved.float() / 127.5 - 1, images, atol=1 / 127.5, rtol=0)
    assert json.loads((out / "samples.json").read_text()) == {"count": 3, "shape": [1, 8, 8], "seed": 1}
    assert len(list((out / "images").iterdir())) == 3
    with pytest.raises(UserError, match="already exists and is not empty"):
        write_samples(images, out)
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary directory left behind


class _Oracle(nn.Module):
    """The exact noise predictor for a data set of one image: eps = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t)."""

    def __init__(self, target: torch.Tensor, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.target, self.abar = target, schedule.alphas_cumprod()

    def forward(self, x, t):
        a = self.abar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.target) / (1 - a).sqrt()


@pytest.mark.parametrize("sampler, steps, timesteps", [("ddim", 10, 1000), ("ddpm", None, 50)])
def test_samplers_recover_the_image_of_an_exact_denoiser(sampler, steps, timesteps):
    schedule = NoiseSchedule(timesteps=timesteps)
    target = torch.linspace(-0.9, 0.9, 64).view(1, 1, 8, 8)
    images = sample_images(_Oracle(target, schedule), schedule, 3, (1, 8, 8), sampler=sampler, steps=steps,
                           progress=False)
    torch.testing.assert_close(images, target.expand(3, 1, 8, 8), atol=1e-3, rtol=0)
