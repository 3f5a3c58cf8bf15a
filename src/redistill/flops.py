"""FLOP and parameter counts, via ``torch.utils.flop_counter`` (grouped convs counted correctly)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from redistill.util import model_inputs


def count_flops(model: nn.Module, input: Sequence[int] | torch.Tensor | tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one eval-mode forward pass (a multiply-add counts as 2 FLOPs).

    Args:
        model: the network; its train/eval mode is restored afterwards.
        input: an input tensor, or its shape (a zero tensor on the model's device is used); the
            other inputs the model declares (a UNet's timestep) are added, see ``util.model_inputs``;
            or a tuple of all the input tensors (image first), used as given.
    Returns:
        Total FLOPs as counted by ``FlopCounterMode`` (convs, matmuls; element-wise ops are free).
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if isinstance(input, (tuple, list)) and input and all(isinstance(t, torch.Tensor) for t in input):
        args = tuple(input)
    else:
        x = input if isinstance(input, torch.Tensor) else torch.zeros(tuple(input), device=device)
        args = model_inputs(model, x)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once).

    Args:
        model: the network.
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
