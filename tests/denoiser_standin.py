"""A tiny stand-in denoiser ``forward(x, t)`` for the diffusion tests (a user factory file).

The teacher (``head_stride=1``) keeps full resolution in its head and down-samples once in the
middle; the x2 student (``head_stride=2``) moves that stride into the head and ends in a stride-2
transposed convolution, so student ``head`` and teacher ``down`` have the same resolution.
"""

import torch
import torch.nn as nn


class TinyDenoiser(nn.Module):
    def __init__(self, in_channels: int = 1, width: int = 4, head_stride: int = 1) -> None:
        super().__init__()
        self.temb = nn.Linear(1, width)
        self.head = nn.Conv2d(in_channels, width, 3, stride=head_stride, padding=1)
        self.down = nn.Conv2d(width, width, 3, stride=2 if head_stride == 1 else 1, padding=1)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.up = nn.ConvTranspose2d(width, width, 2, stride=2) if head_stride == 1 else nn.Conv2d(width, width, 1)
        self.tail = (nn.Conv2d(width, in_channels, 3, padding=1) if head_stride == 1
                     else nn.ConvTranspose2d(width, in_channels, 2, stride=2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.temb(t.float().view(-1, 1) / 1000.0)[:, :, None, None]  # (B, W, 1, 1)
        h = torch.relu(self.head(x) + emb)
        h = torch.relu(self.down(h))
        h = torch.relu(self.mid(h) + emb)
        h = torch.relu(self.up(h))
        return self.tail(h)


def tiny_denoiser(num_classes=None, in_channels: int = 1, width: int = 4, head_stride: int = 1) -> TinyDenoiser:
    return TinyDenoiser(in_channels, width, head_stride)
