"""Optimizers and per-step learning-rate schedules (linear warm-up, then cosine or multistep)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from redistill.train.config import OptimConfig, ScheduleConfig


def build_optimizer(cfg: OptimConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW over ``params``, with weight decay."""
    params = list(params)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int, base_lr: float) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps.

    Warm-up rises linearly over ``warmup_epochs``; cosine then decays to ``min_lr`` at the last
    step; multistep multiplies by ``gamma`` at each milestone epoch.
    """
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "multistep":
        epoch = step / steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.name == "cosine":
        total = max(epochs * steps_per_epoch - warmup, 1)
        progress = min((step - warmup) / total, 1.0)
        floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def build_scheduler(
    cfg: ScheduleConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int
) -> LambdaLR:
    """A scheduler stepped once per optimizer step (so warm-up is smooth within an epoch)."""
    base_lr = optimizer.param_groups[0]["lr"]
    return LambdaLR(optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, epochs, base_lr))
