"""CRD (Tian et al., ICLR 2020): contrastive representation distillation.

Student and teacher penultimate features are embedded (linear + L2 norm, 128-d) and
contrasted with noise-contrastive estimation: each student embedding must pick its own
teacher embedding out of ``nce_k`` negatives, and vice versa.

The authors index a memory bank by dataset index. The :class:`Distiller` sees only
``(images, targets)``, so here the memory is a FIFO queue of the last ``nce_k``
embeddings of each side (negatives drawn from recent batches instead of random dataset
entries). The NCE objective and the noise probability ``1 / n_data`` are the paper's.
The normaliser Z is fixed once the queue holds only real embeddings (the authors fix it
on the first batch, when their memory is random and stays mostly random for an epoch; a
queue fills within ``nce_k / B`` steps, and a Z estimated on the random rows then
under-normalises by orders of magnitude, which made training diverge).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from redistill.distill.baselines.common import Embed


def nce_contrast_loss(scores: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE loss; ``scores[:, 0]`` is the positive, the rest negatives (already / Z).

    ``-(sum_b log(P+ / (P+ + m Pn)) + sum_{b,k} log(m Pn / (P- + m Pn))) / B`` with
    ``m`` negatives and noise probability ``Pn = 1 / n_data``.

    Args:
        scores: (B, 1 + m) unnormalised probabilities.
        n_data: size of the data the noise distribution is uniform over.
    """
    b, m = scores.shape[0], scores.shape[1] - 1
    noise = m / n_data
    pos = scores[:, 0]
    neg = scores[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + eps))
    log_d0 = torch.log(noise / (neg + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / b


class CRDLoss(nn.Module):
    """Embeddings, memory queues and the two-sided NCE loss.

    Args:
        s_dim: student feature size.
        t_dim: teacher feature size.
        feat_dim: embedding size.
        nce_k: number of negatives (queue length).
        nce_t: temperature.
        n_data: training-set size (noise probability ``1/n_data``).
    """

    def __init__(
        self, s_dim: int, t_dim: int, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07, n_data: int = 50000
    ) -> None:
        super().__init__()
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.nce_t, self.n_data = nce_t, n_data
        # the authors' memory initialisation: uniform in +-1/sqrt(dim/3)
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("queue_s", torch.rand(nce_k, feat_dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("queue_t", torch.rand(nce_k, feat_dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        # normalisers (-1: not set yet), re-estimated every step until the queue is full
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        self.register_buffer("filled", torch.tensor(False))
        self._z_fixed = False  # mirror of `filled`, avoids a device sync per step

    def _scores(self, anchor: Tensor, positive: Tensor, queue: Tensor, z: Tensor) -> Tensor:
        # fp32 even under autocast: exp(cos / 0.07) reaches 1.6e6, beyond fp16
        with torch.autocast(anchor.device.type, enabled=False):
            anchor, positive = anchor.float(), positive.float()
            logits = torch.cat([(anchor * positive).sum(1, keepdim=True), anchor @ queue.float().clone().T], dim=1)
            out = torch.exp(logits / self.nce_t)  # (B, 1 + K)
            if not self._z_fixed:
                if bool(self.filled) and z.item() > 0:
                    self._z_fixed = True
                else:
                    z.fill_(out.detach().mean().item() * self.n_data)
            return out / z

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        """Args: penultimate student and teacher features (B, Ds), (B, Dt). Returns: scalar loss."""
        e_s, e_t = self.embed_s(f_s), self.embed_t(f_t)
        # like the authors' memory, the contrasted side carries no gradient
        scores_s = self._scores(e_s, e_t.detach(), self.queue_t, self.z_s)  # student anchors
        scores_t = self._scores(e_t, e_s.detach(), self.queue_s, self.z_t)  # teacher anchors
        loss = nce_contrast_loss(scores_s, self.n_data) + nce_contrast_loss(scores_t, self.n_data)
        if self.training:
            self._enqueue(e_s.detach(), e_t.detach())
        return loss

    @torch.no_grad()
    def _enqueue(self, e_s: Tensor, e_t: Tensor) -> None:
        k = self.queue_s.shape[0]
        idx = (self.ptr + torch.arange(e_s.shape[0], device=e_s.device)) % k
        self.queue_s.index_copy_(0, idx, e_s.to(self.queue_s.dtype))
        self.queue_t.index_copy_(0, idx, e_t.to(self.queue_t.dtype))
        end = int(self.ptr) + e_s.shape[0]
        if end >= k:
            self.filled.fill_(True)
        self.ptr.fill_(end % k)
