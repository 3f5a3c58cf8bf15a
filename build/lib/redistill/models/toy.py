"""Small networks with the shapes real ones have, for tests and benchmarks of the analyzer."""

from __future__ import annotations

import torch
import torch.nn as nn


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallUNet(nn.Module):
    """Two-level UNet whose skips are concatenated: the pattern where peak memory holds
    encoder maps alive across the whole decoder.

    Args:
        c: channels of the first level (doubled at each level down).
    """

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.enc1, self.enc2 = _conv_bn_relu(3, c), _conv_bn_relu(c, 2 * c)
        self.pool = nn.MaxPool2d(2)
        self.mid = _conv_bn_relu(2 * c, 4 * c)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, 2), _conv_bn_relu(4 * c, 2 * c)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * c, c, 2, 2), _conv_bn_relu(2 * c, c)
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 3, H, W)
        e1 = self.enc1(x)  # (B, c, H, W)
        e2 = self.enc2(self.pool(e1))  # (B, 2c, H/2, W/2)
        m = self.mid(self.pool(e2))  # (B, 4c, H/4, W/4)
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)
