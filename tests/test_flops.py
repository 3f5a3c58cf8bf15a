"""FLOP and parameter counts."""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from redistill.flops import count_flops, count_params
from redistill.models import create_model


def _conv_flops(cin: int, cout: int, k: int, groups: int, h: int, w: int) -> int:
    return 2 * cout * (cin // groups) * k * k * h * w  # a multiply-add is 2 FLOPs


def test_grouped_conv_flops_divide_by_groups():
    # The authors' counter ignored groups; a 32-group conv does 1/32 of the dense work.
    dense = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    grouped = nn.Conv2d(64, 64, 3, padding=1, groups=32, bias=False)
    depthwise = nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)
    shape = (1, 64, 10, 10)
    assert count_flops(dense, shape) == _conv_flops(64, 64, 3, 1, 10, 10)
    assert count_flops(grouped, shape) == _conv_flops(64, 64, 3, 32, 10, 10) == count_flops(dense, shape) // 32
    assert count_flops(depthwise, shape) == _conv_flops(64, 64, 3, 64, 10, 10)


def test_resnext18_counts_its_grouped_convs():
    resnet = create_model("resnet18", width=32, num_classes=10)
    resnext = create_model("resnext18", width=32, num_classes=10)
    shape = (1, 3, 32, 32)
    # Same layout except every block's conv2 has 32 groups: its FLOPs drop by 31/32.
    x, out_hw, saved = torch.zeros(shape), {}, 0
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: out_hw.__setitem__(n, o.shape[-2:]))
             for n, m in resnet.named_modules() if n.endswith("conv2") and n.startswith("layer")]
    resnet.eval()(x)
    for h in hooks:
        h.remove()
    for n, hw in out_hw.items():
        conv = resnet.get_submodule(n)
        full = _conv_flops(conv.in_channels, conv.out_channels, 3, 1, *hw)
        saved += full - full // 32
    assert count_flops(resnet, shape) - count_flops(resnext, shape) == saved


def test_flops_scale_with_batch_and_mode_is_restored():
    model = create_model("cifar_resnet8", in_channels=1).train()
    one = count_flops(model, (1, 1, 28, 28))
    assert count_flops(model, torch.zeros(3, 1, 28, 28)) == 3 * one
    assert model.training


def test_count_params():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8, 2))
    assert count_params(model) == 3 * 8 * 9 + 8 + 8 * 2 + 2
    model[0].weight.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 8 + 8 * 2 + 2
    assert count_params(create_model("resnet18")) == count_params(torchvision.models.resnet18(weights=None))
