"""ReviewKD (Chen et al., CVPR 2021): distilling knowledge via knowledge review.

Student features of all levels are fused top-down by attention-based fusion (ABF)
modules, so each teacher level is matched by a mix of the same and deeper student
levels; the hierarchical context loss (HCL) compares them at several pooling sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def hcl_loss(f_s: Sequence[Tensor], f_t: Sequence[Tensor], levels: Sequence[int] = (4, 2, 1)) -> Tensor:
    """Hierarchical context loss summed over feature pairs of equal shape.

    For each pair: MSE at full size with weight 1, then at each pooled size ``l < H``
    with weights 1/2, 1/4, ...; the weighted sum is divided by the sum of the weights.
    """
    total = f_s[0].new_zeros(())
    for s, t in zip(f_s, f_t):
        loss, weight, norm = F.mse_loss(s, t), 1.0, 1.0
        for size in levels:
            if size >= s.shape[-2]:
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
            norm += weight
        total = total + loss / norm
    return total


class ABF(nn.Module):
    """Attention-based fusion of one student level with the fused deeper levels.

    Args:
        in_channels: student channels at this level.
        mid_channels: width of the fused residual path.
        out_channels: teacher channels at this level.
        fuse: whether a deeper level exists to fuse with.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Returns ``(output at out_size with teacher channels, fused residual for the next level)``."""
        x = self.conv1(x)
        if self.att is not None and residual is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            w = self.att(torch.cat([x, residual], dim=1))  # (B, 2, H, W)
            x = x * w[:, :1] + residual * w[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


class ReviewKDModule(nn.Module):
    """The ABF chain: student features (shallow -> deep) -> features shaped like the teacher's.

    Args:
        in_channels: student channels per level, shallow to deep.
        out_channels: teacher channels per level.
        out_sizes: teacher (H, W) per level.
        max_mid_channels: cap of the fused width (the authors: ``min(512, deepest channels)``).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        out_sizes: Sequence[Sequence[int]],
        max_mid_channels: int = 512,
    ) -> None:
        super().__init__()
        mid = min(max_mid_channels, in_channels[-1])
        n = len(in_channels)
        # stored deep -> shallow, the order they run in; only the deepest has nothing to fuse
        self.abfs = nn.ModuleList(
            ABF(in_channels[i], mid, out_channels[i], fuse=i < n - 1) for i in reversed(range(n))
        )
        self.out_sizes = [tuple(s) for s in out_sizes]

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Args: student features shallow -> deep. Returns: outputs shallow -> deep."""
        outs: list[Tensor] = []
        residual = None
        for abf, x, size in zip(self.abfs, reversed(feats), reversed(self.out_sizes)):
            out, residual = abf(x, residual, size)
            outs.insert(0, out)
        return outs
