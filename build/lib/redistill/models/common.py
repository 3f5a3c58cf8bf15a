"""Small helpers shared by the model families."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn as nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, never more than 10% below it.

    Channel counts of width-multiplied MobileNets follow this rule so that
    checkpoints of the reference layouts keep their shapes.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def feature(module: str, num_chs: int, reduction: int) -> dict:
    """One ``feature_info`` entry."""
    return {"module": module, "num_chs": int(num_chs), "reduction": int(reduction)}


def cumulative(strides: Sequence[int]) -> list[int]:
    """Running product of ``strides`` (the reduction after each slot)."""
    out, total = [], 1
    for s in strides:
        total *= s
        out.append(total)
    return out


def init_weights(model: nn.Module) -> None:
    """He-normal convs, unit BN, small normal linears: the usual CNN initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 1.0 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
