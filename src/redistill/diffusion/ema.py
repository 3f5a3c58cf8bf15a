"""An exponential moving average of a network's weights, buffers included.

The authors' DDPM code kept an "EMA" that was the training model itself; here it is
``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``: after each optimizer step
``ema = decay * ema + (1 - decay) * model`` for every parameter and floating-point buffer (BatchNorm
statistics of RED blocks included). The averaged copy is what is evaluated, sampled and exported.
"""

from __future__ import annotations

import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from redistill.errors import UserError


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA of ``model`` (a deep copy on the same device; the first update copies the weights).

    Args:
        model: the network being trained.
        decay: the EMA decay in [0, 1) (the authors: 0.9999 over 800k steps).
    Raises:
        UserError: ``decay`` outside [0, 1).
    """
    if not 0.0 <= decay < 1.0:
        raise UserError(f"EMA decay must be in [0, 1), got {decay}")
    # AveragedModel deep-copies the model; its own copy of a parametrised RED student stays in step.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema.eval()


def ema_module(ema: AveragedModel) -> nn.Module:
    """The averaged network itself (what ships), in eval mode."""
    return ema.module.eval()



def ema_weights(ema_state: dict) -> dict:
    """The averaged network's own ``state_dict`` from an ``AveragedModel.state_dict()``."""
    return {k[len("module."):]: v for k, v in ema_state.items() if k.startswith("module.")}
