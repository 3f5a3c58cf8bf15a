"""BatchNorm folded into the convolution that feeds it, checked against the unfolded model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from redistill.errors import UserError
from redistill.memory.fold import fold_batchnorm, foldable_pairs
from redistill.memory.trace import trace_model


@dataclass
class FoldResult:
    """A folded copy of a model and how far its outputs moved."""

    model: nn.Module
    pairs: list[tuple[str, str]]
    unfolded_bn: list[str]  # BatchNorms left alone (no single-use conv feeds them, or called twice)
    max_abs_diff: float


def fold_model(model: nn.Module, inputs: tuple[torch.Tensor, ...], atol: float = 1e-3) -> FoldResult:
    """Fold every foldable (conv, BN) pair of ``model`` (found in its executed graph) into a copy.

    Args:
        model: the model, in eval mode; it is not modified.
        inputs: example inputs (their batch is used for the check).
        atol: largest output difference accepted, relative to the output's scale.
    Returns:
        A :class:`FoldResult`.
    Raises:
        UserError: the folded model's outputs differ from the unfolded one's beyond ``atol``.
    """
    model = model.eval()
    trace, _ = trace_model(model, inputs)
    pairs = foldable_pairs(trace, model)
    folded = fold_batchnorm(model, pairs)
    with torch.no_grad():
        ref, out = model(*inputs), folded(*inputs)
    diff = float((ref - out).abs().max())
    scale = max(float(ref.abs().max()), 1.0)
    if diff > atol * scale:
        raise UserError(f"folding BatchNorm changed the outputs by {diff:.3g} (scale {scale:.3g}); "
                        "a BatchNorm is probably read by more than its convolution: pass --no-fold")
    folded_bn = {bn for _, bn in pairs}
    left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and n not in folded_bn]
    return FoldResult(folded, pairs, left, diff)
