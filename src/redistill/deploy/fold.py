"""BatchNorm folded into the convolution that feeds it, checked against the unfolded model."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    unfolded_bn: list[str]  # BatchNorms no single-use conv feeds (e.g. one after a RED block), or called twice
    max_abs_diff: float
    bn_as_conv: list[str] = field(default_factory=list)  # of those, the 2-d ones now a depthwise 1x1 conv


def bn_as_depthwise(bn: nn.BatchNorm2d) -> nn.Conv2d:
    """The eval-mode ``bn`` as the per-channel affine it is: a depthwise 1x1 convolution with bias.

    onnxruntime has int8 kernels for convolutions but none for BatchNormalization, so a BatchNorm
    left unfolded would run in fp32 between a dequantize and a quantize node, its input and output
    held at 4 bytes an element; as a convolution it is quantized like any other.
    """
    scale = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    scale = scale / torch.sqrt(bn.running_var + bn.eps)
    conv = nn.Conv2d(bn.num_features, bn.num_features, 1, groups=bn.num_features, bias=True)
    with torch.no_grad():
        conv.weight.copy_(scale.view(-1, 1, 1, 1))
        conv.bias.copy_(shift - bn.running_mean * scale)
    return conv.to(device=bn.running_mean.device, dtype=bn.running_mean.dtype).eval()


def fold_model(model: nn.Module, inputs: tuple[torch.Tensor, ...], atol: float = 1e-3,
               depthwise: bool = True) -> FoldResult:
    """Fold every foldable (conv, BN) pair of ``model`` (found in its executed graph) into a copy.

    With ``depthwise``, each 2-d BatchNorm left over (no single-use convolution feeds it, as after a
    RED block on a stem convolution) becomes :func:`bn_as_depthwise`, so int8 export quantizes it.

    Args:
        model: the model, in eval mode; it is not modified.
        inputs: example inputs (their batch is used for the check).
        atol: largest output difference accepted, relative to the output's scale.
        depthwise: turn the 2-d BatchNorms that cannot fold into depthwise 1x1 convolutions.
    Returns:
        A :class:`FoldResult`.
    Raises:
        UserError: the folded model's outputs differ from the unfolded one's beyond ``atol``.
    """
    model = model.eval()
    trace, _ = trace_model(model, inputs, values=False)
    pairs = foldable_pairs(trace, model)
    folded = fold_batchnorm(model, pairs)
    folded_bn = {bn for _, bn in pairs}
    left = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and n not in folded_bn]
    as_conv = []
    for name in left if depthwise else []:
        bn = folded.get_submodule(name)
        if isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
            folded.set_submodule(name, bn_as_depthwise(bn))
            as_conv.append(name)
    with torch.no_grad():
        ref, out = model(*inputs), folded(*inputs)
    diff = float((ref - out).abs().max())
    scale = max(float(ref.abs().max()), 1.0)
    if diff > atol * scale:
        raise UserError(f"folding BatchNorm changed the outputs by {diff:.3g} (scale {scale:.3g}); "
                        "a BatchNorm is probably read by more than its convolution: pass --no-fold")
    return FoldResult(folded, pairs, left, diff, as_conv)
