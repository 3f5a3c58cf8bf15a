"""ImageNet-layout ResNet and ResNeXt families with explicit stride slots.

Module names follow torchvision (conv1, bn1, relu, maxpool, layer1..4, avgpool, fc; blocks with
conv1/bn1/conv2/bn2/downsample), so torchvision state dicts load unchanged. Slots are
``conv1, maxpool, layer1..layer4`` (a stage's stride is that of its first block).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from redistill.models.common import cumulative, feature, init_weights
from redistill.models.registry import register_model

SLOTS = ("conv1", "maxpool", "layer1", "layer2", "layer3", "layer4")
IMAGENET_STRIDES = (2, 2, 1, 2, 2, 2)
# The authors' students drop layer4 first, then the max-pool, then layer3 (docs/method.md section 2:
# resnext18-2-21221, -4-11221, -8-11211 and ResNet [8,1,1,2,2,1]).
DROP_ORDER = ("layer4", "maxpool", "layer3", "layer2", "layer1")


def _downsample(inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), nn.BatchNorm2d(outplanes)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs; ``groups`` applies to the second (the authors' ResNeXt-18)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, grouped) -> 1x1, as torchvision's ResNet v1.5."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet/ResNeXt with one stride per slot (conv1, maxpool, layer1..4).

    Args:
        block: BasicBlock or Bottleneck.
        layers: blocks per stage.
        strides: six strides, see ``SLOTS``.
        num_classes, in_channels: classifier outputs and input channels.
        groups, base_width: ResNeXt cardinality and width per group.
        width: channels of the stem and first stage (64 in the reference layout).
        dropout: probability of the dropout before ``fc`` (0 disables it).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        strides: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        groups: int = 1,
        base_width: int = 64,
        width: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        stem, pool, *stage_strides = strides
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=stem, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=pool, padding=1)
        inplanes = width
        stages = []
        for i, (n, s) in enumerate(zip(layers, stage_strides)):
            planes = width * 2**i
            blocks = [block(inplanes, planes, s, groups, base_width)]
            inplanes = planes * block.expansion
            blocks += [block(inplanes, planes, 1, groups, base_width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(inplanes, num_classes)
        init_weights(self)
        reductions = cumulative(strides)
        self.feature_info = [feature("relu", width, reductions[0])] + [
            feature(f"layer{i + 1}", width * 2**i * block.expansion, reductions[i + 2]) for i in range(4)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, w, H/r0r1, W/r0r1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


_OPTIONS = {"width": 64, "dropout": 0.0}


def _register(name: str, block, layers, groups: int, base_width: int, description: str) -> None:
    @register_model(
        name, slots=SLOTS, default_strides=IMAGENET_STRIDES, drop_order=DROP_ORDER,
        options=_OPTIONS, description=description,
    )
    def build(strides, **kw) -> ResNet:
        return ResNet(block, layers, strides, groups=groups, base_width=base_width, **kw)


_register("resnet18", BasicBlock, (2, 2, 2, 2), 1, 64, "ResNet-18 (torchvision layout)")
_register("resnet34", BasicBlock, (3, 4, 6, 3), 1, 64, "ResNet-34 (torchvision layout)")
_register("resnet50", Bottleneck, (3, 4, 6, 3), 1, 64, "ResNet-50 v1.5 (torchvision layout)")
_register("resnext18", BasicBlock, (2, 2, 2, 2), 32, 64,
          "ResNeXt-18: BasicBlock whose second conv has 32 groups (the authors' STL10 model)")
_register("resnext50", Bottleneck, (3, 4, 6, 3), 32, 4, "ResNeXt-50 32x4d (torchvision layout)")
