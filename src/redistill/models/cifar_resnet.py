"""CIFAR-style ResNets (depth 6n+2, three stages) for 28-32 px inputs such as Fashion-MNIST.

Slots are ``conv1, layer1, layer2, layer3`` (default strides 1,1,2,2; the x4 student is 4,1,1,1).
Shortcuts are 1x1 conv + BN (``downsample``) where the shape changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from redistill.errors import UserError
from redistill.models.common import cumulative, feature, init_weights
from redistill.models.registry import register_model
from redistill.models.resnet import BasicBlock

SLOTS = ("conv1", "layer1", "layer2", "layer3")
DEFAULT_STRIDES = (1, 1, 2, 2)
DEPTHS = (8, 14, 20, 32, 56)
# Slots a derived student sets to stride 1 first, in the order of the authors' ResNeXt-18 students
# (layer4, then the maxpool right after the stem, then layer3): the last stage, then the first one
# after the stem, then the middle one. A factor-4 student of [1,2,2,2] is [4,1,2,1] (same peak as
# [4,2,1,1], 15% more FLOPs): a stage at the stem's resolution, then its one later down-sampling, so
# its three RED pairs sit on three different features (in [4,2,1,1] two of them are the stem output,
# before and after its BatchNorm and ReLU). docs/results.md section 2b measures that pair.
DROP_ORDER = ("layer3", "layer1", "layer2")


class CifarResNet(nn.Module):
    """ResNet-(6n+2) with a 3x3 stem and stages of width w, 2w, 4w.

    Args:
        depth: 8, 14, 20, 32 or 56.
        strides: four strides, see ``SLOTS``.
        num_classes, in_channels: classifier outputs and input channels (1 for Fashion-MNIST).
        width: base width w (16 in the reference layout).
        dropout: probability of the dropout before ``fc`` (0 disables it).
        stem_kernel: kernel size of the stem conv (odd; padding keeps the size). A 3x3 stem with
            stride 4 never reads 8 of the 28 rows and columns (49% of a 28 px image's pixels);
            5 misses only the last row and column, 7 reads every pixel.
    """

    def __init__(
        self,
        depth: int,
        strides: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        dropout: float = 0.0,
        stem_kernel: int = 3,
    ):
        super().__init__()
        if depth not in DEPTHS:
            raise UserError(f"cifar_resnet depth must be one of {', '.join(map(str, DEPTHS))}, got {depth}")
        if not isinstance(stem_kernel, int) or stem_kernel < 1 or stem_kernel % 2 == 0:
            raise UserError(f"cifar_resnet stem_kernel must be an odd positive integer, got {stem_kernel!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(
            in_channels, width, stem_kernel, stride=strides[0], padding=stem_kernel // 2, bias=False
        )
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        inplanes, stages = width, []
        for i, s in enumerate(strides[1:]):
            planes = width * 2**i
            blocks = [BasicBlock(inplanes, planes, s)] + [BasicBlock(planes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            inplanes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(inplanes, num_classes)
        init_weights(self)
        reductions = cumulative(strides)
        self.feature_info = [feature("relu", width, reductions[0])] + [
            feature(f"layer{i + 1}", width * 2**i, reductions[i + 1]) for i in range(3)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, w, H/s0, W/s0)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


_OPTIONS = {"width": 16, "dropout": 0.0, "stem_kernel": 3}


@register_model(
    "cifar_resnet", slots=SLOTS, default_strides=DEFAULT_STRIDES, drop_order=DROP_ORDER,
    options={"depth": 20, **_OPTIONS, "num_classes": 10},
    description="CIFAR ResNet, depth option 8/14/20/32/56 (28-32 px inputs)",
)
def cifar_resnet(strides, depth: int = 20, **kw) -> CifarResNet:
    return CifarResNet(depth, strides, **kw)


def _register(depth: int) -> None:
    @register_model(
        f"cifar_resnet{depth}", slots=SLOTS, default_strides=DEFAULT_STRIDES, drop_order=DROP_ORDER,
        options={**_OPTIONS, "num_classes": 10}, description=f"CIFAR ResNet-{depth} (28-32 px inputs)",
    )
    def build(strides, **kw) -> CifarResNet:
        return CifarResNet(depth, strides, **kw)


for _depth in DEPTHS:
    _register(_depth)
