"""Response-based losses on classifier logits: KD, DKD, MLLD.

Every function returns unweighted terms; the weights live in the method wrappers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def kd_loss(logits_s: Tensor, logits_t: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: ``T^2 * mean_b KL(softmax(z_t/T) || softmax(z_s/T))``.

    Args:
        logits_s: student logits (B, K).
        logits_t: teacher logits (B, K).
        temperature: softening temperature T; ``T^2`` keeps gradient scale independent of T.

    Returns:
        Scalar loss.
    """
    log_p_s = F.log_softmax(logits_s / temperature, dim=1)
    log_p_t = F.log_softmax(logits_t / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


class KDLoss(nn.Module):
    """Module form of :func:`kd_loss` (RepDistiller style ``(z_s, z_t) -> loss``)."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, logits_s: Tensor, logits_t: Tensor) -> Tensor:
        return kd_loss(logits_s, logits_t, self.temperature)


def _binary_kl(p_t: Tensor, p_s: Tensor) -> Tensor:
    """Mean over the batch of KL between Bernoulli(p_t) and Bernoulli(p_s)."""
    eps = torch.finfo(p_s.dtype).tiny
    t = torch.stack([p_t, 1 - p_t], dim=1)
    s = torch.stack([p_s, 1 - p_s], dim=1).clamp_min(eps)
    return (torch.xlogy(t, t) - t * s.log()).sum(1).mean()


def dkd_loss(logits_s: Tensor, logits_t: Tensor, targets: Tensor, temperature: float = 1.0) -> dict[str, Tensor]:
    """Decoupled KD (Zhao et al., CVPR 2022): target-class and non-target-class parts.

    TCKD is the KL between the binary (target, rest) distributions; NCKD the KL between
    the distributions over the non-target classes alone (target removed, renormalised).
    Both are scaled by ``T^2`` and averaged over the batch.

    Args:
        logits_s: student logits (B, K).
        logits_t: teacher logits (B, K).
        targets: class indices (B,).
        temperature: T.

    Returns:
        ``{"tckd": ..., "nckd": ...}``.
    """
    b, k = logits_s.shape
    z_s, z_t = logits_s / temperature, logits_t / temperature
    gt = F.one_hot(targets, k).bool()
    p_s_gt = F.softmax(z_s, dim=1)[gt]  # (B,)
    p_t_gt = F.softmax(z_t, dim=1)[gt]
    tckd = _binary_kl(p_t_gt, p_s_gt) * temperature**2
    other_s = z_s[~gt].view(b, k - 1)
    other_t = z_t[~gt].view(b, k - 1)
    nckd = F.kl_div(
        F.log_softmax(other_s, dim=1), F.log_softmax(other_t, dim=1), reduction="batchmean", log_target=True
    ) * temperature**2
    return {"tckd": tckd, "nckd": nckd}


def class_correlation_loss(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """MLLD class level: squared gap of the (K, K) class-correlation matrices ``P^T P``, / K."""
    p_s = F.softmax(logits_s / temperature, dim=1)
    p_t = F.softmax(logits_t / temperature, dim=1)
    k = p_s.shape[1]
    return (p_t.T @ p_t - p_s.T @ p_s).pow(2).sum() / k


def batch_correlation_loss(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """MLLD batch level: squared gap of the (B, B) sample-similarity matrices ``P P^T``, / B."""
    p_s = F.softmax(logits_s / temperature, dim=1)
    p_t = F.softmax(logits_t / temperature, dim=1)
    b = p_s.shape[0]
    return (p_t @ p_t.T - p_s @ p_s.T).pow(2).sum() / b


def mlld_loss(
    logits_s: Tensor, logits_t: Tensor, temperatures: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0)
) -> dict[str, Tensor]:
    """Multi-level logit distillation (Jin et al., CVPR 2023), single view.

    Instance (KD), batch and class levels, each summed over the temperatures.

    Returns:
        ``{"instance": ..., "batch": ..., "class": ...}``.
    """
    zero = logits_s.new_zeros(())
    out = {"instance": zero, "batch": zero, "class": zero}
    for t in temperatures:
        out["instance"] = out["instance"] + kd_loss(logits_s, logits_t, t)
        out["batch"] = out["batch"] + batch_correlation_loss(logits_s, logits_t, t)
        out["class"] = out["class"] + class_correlation_loss(logits_s, logits_t, t)
    return out
