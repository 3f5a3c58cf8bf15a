"""Relation-based losses between samples of a batch: SP, CC, RKD, PKT.

They compare how samples relate to each other, so student and teacher features may
have any (different) sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Similarity preserving (Tung & Mori, ICCV 2019).

    ``G = normalize_rows(F F^T)`` over flattened features (B, B); loss
    ``||G_t - G_s||_F^2 / B^2``.
    """
    b = f_s.shape[0]
    g_s = F.normalize(f_s.flatten(1) @ f_s.flatten(1).T, dim=1)
    g_t = F.normalize(f_t.flatten(1) @ f_t.flatten(1).T, dim=1)
    return (g_t - g_s).pow(2).sum() / (b * b)


def cc_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """Correlation congruence (Peng et al., ICCV 2019), the RepDistiller form.

    With ``d = |e_s - e_t|`` per sample, the loss is the batch mean of ``<d_i, d_{i+1}>``
    over consecutive samples: a first-order (Taylor) estimate of the gap between the
    student's and the teacher's sample-correlation matrices.
    """
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


def _pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix (B, B) with an exact zero diagonal (safe gradient)."""
    sq = e.pow(2).sum(1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.T).clamp_min(eps)
    off_diag = ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d2.sqrt() * off_diag


def rkd_distance_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """RKD distance term: smooth-L1 between distance matrices, each divided by its mean off-diagonal distance."""
    with torch.no_grad():
        d_t = _pairwise_distances(e_t)
        d_t = d_t / d_t[d_t > 0].mean()
    d_s = _pairwise_distances(e_s)
    d_s = d_s / d_s[d_s > 0].mean()
    return F.smooth_l1_loss(d_s, d_t)


def _angles(e: Tensor) -> Tensor:
    """Cosine of the angle at vertex i of every triplet (i, j, k): (B^3,)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # (B, B, D): [i, j] = e_j - e_i
    return (diff @ diff.transpose(1, 2)).flatten()


def rkd_angle_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """RKD angle term: smooth-L1 between the triplet angle cosines."""
    with torch.no_grad():
        a_t = _angles(e_t)
    return F.smooth_l1_loss(_angles(e_s), a_t)


def rkd_loss(e_s: Tensor, e_t: Tensor) -> dict[str, Tensor]:
    """Relational KD (Park et al., CVPR 2019) on flattened features (B, D).

    Returns:
        ``{"distance": ..., "angle": ...}`` (the authors weight them 25 and 50).
    """
    e_s, e_t = e_s.flatten(1), e_t.flatten(1)
    return {"distance": rkd_distance_loss(e_s, e_t), "angle": rkd_angle_loss(e_s, e_t)}


def pkt_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

    Cosine similarities mapped to [0, 1] and row-normalised into conditional
    probabilities; the loss is ``mean_ij p_t log(p_t / p_s)`` over all (B, B) entries.
    """
    s = F.normalize(f_s.flatten(1), dim=1, eps=eps)
    t = F.normalize(f_t.flatten(1), dim=1, eps=eps)
    sim_s = (s @ s.T + 1) / 2
    sim_t = (t @ t.T + 1) / 2
    p_s = sim_s / sim_s.sum(1, keepdim=True)
    p_t = sim_t / sim_t.sum(1, keepdim=True)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()
