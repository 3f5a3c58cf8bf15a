"""The DDPM denoising UNet (Ho et al. 2020, the CIFAR-10 network) with stride slots.

``model(x, t)`` predicts the noise in ``x`` at timestep ``t``; the output is shaped like ``x``.

Layout, for ``ch_mult`` of L levels and ``num_res_blocks`` = n (the reference CIFAR-10 network is
ch=128, ch_mult=1,2,2,2, n=2, attention at level 1, i.e. 16 x 16 for 32 px inputs):

- ``time_embedding``: sinusoidal features of t (``ch`` of them) -> Linear -> SiLU -> Linear (4 ch);
- ``head``: 3x3 conv, stride slot 0;
- ``downblocks``: per level, n residual blocks, then (except after the last level) a strided 3x3
  conv: ``downblocks.{n}``, ``downblocks.{2n+1}``, ... are stride slots 1..L-1;
- ``middleblocks``: two residual blocks, the first with self-attention;
- ``upblocks``: per level (deepest first), n+1 residual blocks fed with the encoder skips, then
  (except after level 0) an up-sample whose factor mirrors the matching down-sample's stride;
- ``tail``: GroupNorm -> SiLU -> a 3x3 conv, or, when the head strides by s > 1, a stride-s
  transposed conv (kernel 2s) that brings the output back to the input's size.

Residual blocks, the attention level and the list indices follow the reference layout, so the
teacher's ``[1,2,2,2]`` and the x2 student's ``[2,2,2,1]`` have the same parameter shapes except
the tail's last conv.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from redistill.errors import UserError
from redistill.models.registry import register_model

DEFAULTS = {"ch": 128, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 2, "attn": [1], "dropout": 0.1,
            "norm_groups": 32}


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    # The largest group count <= groups that divides the channels (tiny test widths included).
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def _init(module: nn.Module, gain: float = 1.0) -> None:
    nn.init.xavier_uniform_(module.weight, gain=gain)
    nn.init.zeros_(module.bias)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of the timestep (half sines, half cosines), then a two-layer MLP.

    Args:
        dim: number of sinusoidal features (even, >= 4).
        out_dim: embedding size.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        half = dim // 2
        # Geometric frequencies from 1 down to 1/10000, as in the Transformer position code.
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.fc1, self.fc2 = nn.Linear(dim, out_dim), nn.Linear(out_dim, out_dim)
        for fc in (self.fc1, self.fc2):
            _init(fc)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, out_dim)
        angles = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
        return self.fc2(F.silu(self.fc1(emb)))


class AttnBlock(nn.Module):
    """Single-head self-attention over all H x W positions, added to its input.

    The attention matrix is formed explicitly (bmm, softmax, bmm), as in the reference network,
    so the memory analysis sees the (HW x HW) map the network really computes.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj = nn.Conv2d(channels, channels, 1)
        for conv in (self.q, self.k, self.v):
            _init(conv)
        _init(self.proj, gain=1e-5)  # starts as (almost) the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).flatten(2).transpose(1, 2)  # (B, HW, C)
        k = self.k(y).flatten(2)  # (B, C, HW)
        v = self.v(y).flatten(2).transpose(1, 2)  # (B, HW, C)
        weights = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=-1)  # (B, HW, HW)
        out = torch.bmm(weights, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj(out)


class ResBlock(nn.Module):
    """Two 3x3 convs with GroupNorm and SiLU, the time embedding added in between, a skip
    (1x1 conv when the width changes) and optional self-attention after the sum.
    """

    def __init__(self, cin: int, cout: int, tdim: int, dropout: float, attn: bool, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(tdim, cout)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.attn = AttnBlock(cout, groups) if attn else nn.Identity()
        for layer in (self.conv1, self.temb_proj) + ((self.shortcut,) if cin != cout else ()):
            _init(layer)
        _init(self.conv2, gain=1e-5)  # each block starts close to its skip

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.attn(h + self.shortcut(x))


class Downsample(nn.Conv2d):
    """3x3 conv with the slot's stride (1 keeps the size); ignores the time embedding."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__(channels, channels, 3, stride=stride, padding=1)
        _init(self)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class Upsample(nn.Module):
    """Nearest-neighbour up-sampling by ``factor`` (1: none), then a 3x3 conv."""

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        _init(self.conv)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        if self.factor > 1:
            x = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        return self.conv(x)


class Tail(nn.Module):
    """GroupNorm, SiLU, then the output conv: 3x3 when the head keeps the size, else a
    transposed conv with the head's stride (kernel 2s, padding s/2: exactly s times larger,
    every output pixel read from two input pixels per axis).
    """

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(cin, groups)
        if stride == 1:
            self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        else:
            self.conv = nn.ConvTranspose2d(cin, cout, 2 * stride, stride=stride, padding=stride // 2)
        _init(self.conv, gain=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.silu(self.norm(x)))


def _int_list(value: Any, key: str, allow_empty: bool = False) -> list[int]:
    if value is None or value == "" or value == []:
        if allow_empty:
            return []
        raise UserError(f"ddpm_unet option {key} needs at least one integer, e.g. {key}=1,2,2,2")
    items = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise UserError(f"ddpm_unet option {key} takes integers (e.g. {key}=1,2,2,2), got {value!r}")
    return list(items)


def _check(ch: Any, ch_mult: Any, num_res_blocks: Any, attn: Any, dropout: Any, norm_groups: Any
           ) -> tuple[list[int], list[int]]:
    mults = _int_list(ch_mult, "ch_mult")
    levels = _int_list(attn, "attn", allow_empty=True)
    if isinstance(ch, bool) or not isinstance(ch, int) or ch < 4 or ch % 2:
        raise UserError(f"ddpm_unet option ch must be an even integer >= 4, got {ch!r}")
    if any(m < 1 for m in mults):
        raise UserError(f"ddpm_unet option ch_mult takes positive integers, got {mults}")
    if isinstance(num_res_blocks, bool) or not isinstance(num_res_blocks, int) or num_res_blocks < 1:
        raise UserError(f"ddpm_unet option num_res_blocks must be an integer >= 1, got {num_res_blocks!r}")
    bad = [a for a in levels if not 0 <= a < len(mults)]
    if bad:
        raise UserError(f"ddpm_unet option attn names levels (0..{len(mults) - 1} for ch_mult={mults}), got {bad[0]}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise UserError(f"ddpm_unet option dropout must be in [0, 1), got {dropout!r}")
    if isinstance(norm_groups, bool) or not isinstance(norm_groups, int) or norm_groups < 1:
        raise UserError(f"ddpm_unet option norm_groups must be an integer >= 1, got {norm_groups!r}")
    return mults, levels


class DDPMUNet(nn.Module):
    """Ho et al.'s DDPM UNet with stride slots ``[head, down-sample 1, ..., down-sample L-1]``.

    Args:
        strides: one stride per slot (teacher: 1, 2, 2, 2 for four levels).
        in_channels: image channels (the output has as many).
        ch: base width; level i has ch * ch_mult[i] channels, the time embedding 4 ch.
        ch_mult: width multiplier per level (its length is the number of levels).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn: levels whose residual blocks end in self-attention (level 1 is 16 x 16 at 32 px).
        dropout: dropout probability inside the residual blocks.
        norm_groups: GroupNorm groups (reduced to a divisor of narrow widths).
    """

    def __init__(
        self,
        strides: Sequence[int],
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn: Sequence[int] | int = (1,),
        dropout: float = 0.1,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        mults, attn_levels = _check(ch, ch_mult, num_res_blocks, attn, dropout, norm_groups)
        if len(strides) != len(mults):
            raise UserError(f"ddpm_unet with {len(mults)} levels takes {len(mults)} strides, got {list(strides)}")
        self.size_multiple = math.prod(strides)  # H and W must be multiples of the total reduction
        tdim, groups = 4 * ch, norm_groups
        self.time_embedding = TimeEmbedding(ch, tdim)
        self.head = nn.Conv2d(in_channels, ch, 3, stride=strides[0], padding=1)
        _init(self.head)

        # 1. Encoder: remember the width of every map that is kept as a skip.
        skips, now = [ch], ch
        self.downblocks = nn.ModuleList()
        for level, mult in enumerate(mults):
            for _ in range(num_res_blocks):
                self.downblocks.append(ResBlock(now, ch * mult, tdim, dropout, level in attn_levels, groups))
                now = ch * mult
                skips.append(now)
            if level < len(mults) - 1:
                self.downblocks.append(Downsample(now, strides[level + 1]))
                skips.append(now)
        self.middleblocks = nn.ModuleList([
            ResBlock(now, now, tdim, dropout, True, groups),
            ResBlock(now, now, tdim, dropout, False, groups),
        ])
        # 2. Decoder: each residual block eats one skip; up-samples mirror the down-samples.
        self.upblocks = nn.ModuleList()
        # Fixed at construction, not read from block types: RED surgery wraps blocks in place.
        self.up_takes_skip: list[bool] = []
        for level in reversed(range(len(mults))):
            for _ in range(num_res_blocks + 1):
                cout = ch * mults[level]
                self.upblocks.append(ResBlock(now + skips.pop(), cout, tdim, dropout, level in attn_levels, groups))
                self.up_takes_skip.append(True)
                now = cout
            if level > 0:
                self.upblocks.append(Upsample(now, strides[level]))
                self.up_takes_skip.append(False)
        self.tail = Tail(now, in_channels, strides[0], groups)

    def example_extra_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The inputs besides the image an example forward needs: one timestep per image.

        Read by :func:`redistill.util.model_inputs`, so that memory analysis, FLOP counts and
        layer probes that are given only an image shape run this model as ``model(x, t)``.
        """
        return (torch.zeros(x.shape[0], dtype=torch.long, device=x.device),)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise for images ``x`` (B, C, H, W) at timesteps ``t`` (B,) or a scalar."""
        step = self.size_multiple
        if x.shape[-1] % step or x.shape[-2] % step:
            raise UserError(f"ddpm_unet with these strides needs H and W divisible by {step}, got {tuple(x.shape[-2:])}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        # 1. Time embedding, shared by every residual block.
        temb = self.time_embedding(t)  # (B, 4ch)
        # 2. Encoder, keeping every output as a skip.
        h = self.head(x)  # (B, ch, H/s0, W/s0)
        hs = [h]
        for block in self.downblocks:
            h = block(h, temb)
            hs.append(h)
        for block in self.middleblocks:
            h = block(h, temb)
        # 3. Decoder: residual blocks take the latest skip concatenated on channels.
        for block, takes_skip in zip(self.upblocks, self.up_takes_skip):
            h = block(torch.cat([h, hs.pop()], dim=1) if takes_skip else h, temb)
        return self.tail(h)  # (B, C, H, W)


def unet_layout(options: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """Slots (head, then each down-sampling conv), teacher strides and drop order (deepest first)."""
    mults = _int_list(options.get("ch_mult", DEFAULTS["ch_mult"]), "ch_mult")
    n = options.get("num_res_blocks", DEFAULTS["num_res_blocks"])
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"ddpm_unet option num_res_blocks must be an integer >= 1, got {n!r}")
    downs = tuple(f"downblocks.{(level + 1) * (n + 1) - 1}" for level in range(len(mults) - 1))
    return ("head", *downs), (1,) + (2,) * len(downs), tuple(reversed(downs))


_SLOTS, _STRIDES, _DROP = unet_layout(DEFAULTS)


@register_model(
    "ddpm_unet", slots=_SLOTS, default_strides=_STRIDES, drop_order=_DROP, options=DEFAULTS,
    description="DDPM denoising UNet (Ho et al.'s CIFAR-10 network); forward(x, t) -> noise",
    task="diffusion", layout=unet_layout,
)
def ddpm_unet(strides, **kw) -> DDPMUNet:
    return DDPMUNet(strides, **kw)
