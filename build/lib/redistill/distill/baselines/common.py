"""Helpers shared by the baseline distillers: layer selection, spatial alignment, embeddings.

Student and teacher features in this project often differ in resolution: a ReDistill
student down-samples in its stem, so its stage ``i`` output is smaller than the teacher's.
Feature losses that compare maps element-wise therefore average-pool the larger map to
the smaller one first (the convention RepDistiller uses for AT, NST, VID and FT).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from redistill.errors import UserError


def align_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two (B, C, H, W) maps to the other's H x W.

    Args:
        f_s: student feature map.
        f_t: teacher feature map.

    Returns:
        ``(f_s, f_t)`` with equal spatial size (channels untouched).
    """
    size = (min(f_s.shape[-2], f_t.shape[-2]), min(f_s.shape[-1], f_t.shape[-1]))
    if tuple(f_s.shape[-2:]) != size:
        f_s = F.adaptive_avg_pool2d(f_s, size)
    if tuple(f_t.shape[-2:]) != size:
        f_t = F.adaptive_avg_pool2d(f_t, size)
    return f_s, f_t


def pool_to(f: Tensor, size: Sequence[int]) -> Tensor:
    """Average-pool ``f`` to ``size`` (H, W) unless it already has it."""
    return f if tuple(f.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(f, tuple(size))


def as_vector(f: Tensor) -> Tensor:
    """Flatten a feature to (B, D); a (B, C, H, W) map is global-average-pooled first."""
    if f.dim() == 4:
        f = f.mean(dim=(2, 3))
    return f.flatten(1)


class Embed(nn.Module):
    """Linear projection of a flattened feature, optionally L2-normalised (CRD, CC).

    Args:
        dim_in: input feature size.
        dim_out: embedding size.
        normalize: L2-normalise each embedding.
    """

    def __init__(self, dim_in: int, dim_out: int = 128, normalize: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(as_vector(x))
        return F.normalize(x, dim=1) if self.normalize else x


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the model's last ``nn.Linear`` (its classifier)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UserError(
            f"{type(model).__name__} has no nn.Linear classifier; pass the penultimate feature "
            "explicitly with the method option `embed_layer: <module>:in`"
        )
    return names[-1]


def penultimate_ref(model: nn.Module) -> str:
    """Ref of the pooled feature that enters the classifier (``"<fc>:in"``)."""
    return f"{classifier_name(model)}:in"


def stage_refs(model: nn.Module, skip_stem: bool = True) -> list[str]:
    """Stage-output refs from ``model.feature_info`` (list of dicts with a ``module`` key).

    Args:
        model: a project model carrying ``feature_info``.
        skip_stem: drop the first entry when there are several (RepDistiller taps the
            outputs of the residual stages, not the stem).

    Returns:
        Module names, shallow to deep.
    """
    info = getattr(model, "feature_info", None)
    if not info:
        raise UserError(
            f"{type(model).__name__} has no feature_info; list the layers to tap with the "
            "method options `student_layers: [...]` and `teacher_layers: [...]`"
        )
    refs = [entry["module"] for entry in info]
    if skip_stem and len(refs) > 1:
        refs = refs[1:]
    return refs


def pair_layers(
    student: nn.Module,
    teacher: nn.Module,
    student_layers: Sequence[str] | None,
    teacher_layers: Sequence[str] | None,
) -> tuple[list[str], list[str]]:
    """Resolve the (student, teacher) layer lists a feature method taps.

    Defaults are the stage outputs of both models paired deepest-first, so a shallower
    student keeps its deepest stages matched with the teacher's deepest stages.

    Returns:
        Two lists of equal length.
    """
    s = list(student_layers) if student_layers is not None else stage_refs(student)
    t = list(teacher_layers) if teacher_layers is not None else stage_refs(teacher)
    if student_layers is None and teacher_layers is None:
        n = min(len(s), len(t))
        s, t = s[len(s) - n :], t[len(t) - n :]
    if len(s) != len(t) or not s:
        raise UserError(
            f"student_layers ({len(s)}: {s}) and teacher_layers ({len(t)}: {t}) must be two "
            "non-empty lists of the same length"
        )
    return s, t
