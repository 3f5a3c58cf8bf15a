"""Feature-map losses: FitNet, AT, NST, FSP, AB, FT, VID.

Each loss is a function or a small module taking ``(f_s, f_t)`` and returning an
unweighted scalar. Maps of different resolution are pooled to the smaller size first
(:func:`~redistill.distill.baselines.common.align_spatial`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from redistill.distill.baselines.common import align_spatial


# --- FitNet (Romero et al., ICLR 2015) -----------------------------------------------
class ConvRegressor(nn.Module):
    """FitNet regressor: student map -> teacher channel count, 3x3 conv + BN + ReLU.

    It works at the student's resolution; the teacher hint is pooled to it when larger.

    Args:
        in_channels: student channels.
        out_channels: teacher channels.
        relu: end with a ReLU (FitNet) or not (AB connectors, which need signed outputs).
        kernel_size: 3 for FitNet, 1 for AB connectors.
    """

    def __init__(self, in_channels: int, out_channels: int, relu: bool = True, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


def hint_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """FitNet hint: mean squared error after spatial alignment."""
    f_s, f_t = align_spatial(f_s, f_t)
    return F.mse_loss(f_s, f_t)


# --- AT (Zagoruyko & Komodakis, ICLR 2017) -------------------------------------------
def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention: channel mean of ``|f|^p``, flattened and L2-normalised -> (B, H*W)."""
    return F.normalize(f.abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer: mean squared difference of the normalised attention maps."""
    f_s, f_t = align_spatial(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


# --- NST (Huang & Wang, 2017) --------------------------------------------------------
def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Neuron selectivity transfer: squared MMD with the polynomial kernel ``(x.y)^2``.

    Each channel's map (flattened, L2-normalised over positions) is one sample; channel
    counts may differ.
    """
    f_s, f_t = align_spatial(f_s, f_t)
    s = F.normalize(f_s.flatten(2), dim=2)  # (B, Cs, HW)
    t = F.normalize(f_t.flatten(2), dim=2)  # (B, Ct, HW)

    def kernel_mean(a: Tensor, b: Tensor) -> Tensor:
        return (a @ b.transpose(1, 2)).pow(2).mean()

    return kernel_mean(t, t) + kernel_mean(s, s) - 2 * kernel_mean(s, t)


# --- FSP (Yim et al., CVPR 2017) -----------------------------------------------------
def fsp_matrix(f0: Tensor, f1: Tensor) -> Tensor:
    """Flow matrix between two maps: ``f0 f1^T / (H*W)`` -> (B, C0, C1); f0 pooled to f1's size."""
    if f0.shape[-2:] != f1.shape[-2:]:
        f0 = F.adaptive_avg_pool2d(f0, f1.shape[-2:])
    return f0.flatten(2) @ f1.flatten(2).transpose(1, 2) / f1[0, 0].numel()


def fsp_loss(s0: Tensor, s1: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
    """Mean squared difference of student and teacher FSP matrices (channels must match)."""
    return (fsp_matrix(s0, s1) - fsp_matrix(t0, t1)).pow(2).mean()


# --- AB (Heo et al., AAAI 2019) ------------------------------------------------------
def ab_loss(f_s: Tensor, f_t: Tensor, margin: float = 1.0) -> Tensor:
    """Activation-boundary loss (alternative L2), summed over elements, divided by batch size.

    Where the teacher neuron is active (> 0) the student response is pushed above
    ``+margin``; where it is inactive, below ``-margin``.
    """
    f_s, f_t = align_spatial(f_s, f_t)
    active = f_t > 0
    push_up = (f_s - margin).pow(2) * (active & (f_s <= margin))
    push_down = (f_s + margin).pow(2) * (~active & (f_s > -margin))
    return (push_up + push_down).sum() / f_s.shape[0]


def ab_layer_weights(n: int) -> list[float]:
    """AB's per-layer weights ``2^(i-n+1)``: the deepest layer 1, each shallower one half."""
    return [2.0 ** (i - n + 1) for i in range(n)]


# --- FT (Kim et al., NeurIPS 2018) ---------------------------------------------------
def _ft_block(cin: int, cout: int, bn: bool, transpose: bool = False) -> list[nn.Module]:
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    return [conv(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout) if bn else nn.Identity(), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """FT paraphraser: auto-encoder on the teacher map; its code (``rate * C`` channels) is the factor.

    Args:
        channels: teacher channels.
        rate: factor channels / teacher channels (paper: 0.5).
        bn: batch norm after each conv.
    """

    def __init__(self, channels: int, rate: float = 0.5, bn: bool = False) -> None:
        super().__init__()
        mid = max(1, int(channels * rate))
        self.encoder = nn.Sequential(
            *_ft_block(channels, channels, bn), *_ft_block(channels, mid, bn), *_ft_block(mid, mid, bn)
        )
        self.decoder = nn.Sequential(
            *_ft_block(mid, mid, bn, True), *_ft_block(mid, channels, bn, True), *_ft_block(channels, channels, bn, True)
        )

    def forward(self, f_t: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(factor, reconstruction)``."""
        factor = self.encoder(f_t)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """FT translator: student map -> factor space of the paraphraser (``rate * C_t`` channels)."""

    def __init__(self, in_channels: int, teacher_channels: int, rate: float = 0.5, bn: bool = True) -> None:
        super().__init__()
        mid = max(1, int(teacher_channels * rate))
        self.encoder = nn.Sequential(
            *_ft_block(in_channels, in_channels, bn), *_ft_block(in_channels, mid, bn), *_ft_block(mid, mid, bn)
        )

    def forward(self, f_s: Tensor) -> Tensor:
        return self.encoder(f_s)


def ft_loss(factor_s: Tensor, factor_t: Tensor) -> Tensor:
    """Factor transfer: L1 distance of the L2-normalised flattened factors, averaged over elements.

    The factors are compared as whole vectors (the FT paper's ``F / ||F||_2``).
    """
    factor_s, factor_t = align_spatial(factor_s, factor_t)
    s = F.normalize(factor_s.flatten(1), dim=1)
    t = F.normalize(factor_t.flatten(1), dim=1)
    return (s - t).abs().mean()


# --- VID (Ahn et al., CVPR 2019) -----------------------------------------------------
class VIDLoss(nn.Module):
    """Variational information distillation for one layer pair.

    A 1x1-conv regressor predicts the teacher map's mean from the student map and a
    learned per-channel variance (softplus); the loss is the Gaussian negative log
    likelihood of the teacher map, averaged over elements (constant dropped).

    Args:
        in_channels: student channels.
        mid_channels: hidden width of the regressor.
        out_channels: teacher channels.
        init_pred_var: initial predicted variance.
        eps: variance floor.
    """

    def __init__(
        self, in_channels: int, mid_channels: int, out_channels: int, init_pred_var: float = 5.0, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False),
        )
        # softplus(log_scale) + eps == init_pred_var at start
        self.log_scale = nn.Parameter(torch.full((out_channels,), math.log(math.expm1(init_pred_var - eps))))
        self.eps = eps

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        f_s, f_t = align_spatial(f_s, f_t)
        mean = self.regressor(f_s)
        var = (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)
        return vid_nll(mean, var, f_t)


def vid_nll(mean: Tensor, var: Tensor, target: Tensor) -> Tensor:
    """``mean(0.5 * ((mean - target)^2 / var + log var))``."""
    return (0.5 * ((mean - target).pow(2) / var + var.log())).mean()


def consecutive_pairs(items: Sequence) -> list[tuple]:
    """``[a, b, c] -> [(a, b), (b, c)]`` (FSP compares each stage with the next)."""
    return list(zip(items[:-1], items[1:]))
