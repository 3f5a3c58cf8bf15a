"""MobileNetV2 and MobileNetV3 (small, large) with explicit stride slots.

Layout: ``features.0`` is the stem (conv, bn, activation); ``features.1..N`` are inverted
residual blocks, each with one flat ``conv`` Sequential ([1x1 expand, bn, act,] depthwise
(strided), bn, act, [SE,] 1x1 project, bn), so that with expansion ``features.4.conv.3`` is
a depthwise conv; then a 1x1 conv to the last channel count, pooling, dropout and the
classifier. MobileNetV2 slots are the stem plus the first block of each of the 7 stages;
MobileNetV3 has one slot per block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torchvision.ops.misc import SqueezeExcitation

from redistill.models.common import feature, init_weights, make_divisible
from redistill.models.registry import register_model


def _conv_bn_act(cin: int, cout: int, k: int, stride: int, act: type[nn.Module], groups: int = 1) -> list:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act(inplace=True),
    ]


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (kxk, strided), optional squeeze-excitation, project (1x1).

    The identity shortcut is used when the block keeps the shape (stride 1, same channels).
    """

    def __init__(
        self, cin: int, cout: int, stride: int, expanded: int, kernel: int = 3,
        se: bool = False, act: type[nn.Module] = nn.ReLU6,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != cin:
            layers += _conv_bn_act(cin, expanded, 1, 1, act)
        layers += _conv_bn_act(expanded, expanded, kernel, stride, act, groups=expanded)
        if se:
            squeeze = make_divisible(expanded // 4, 8)
            layers.append(SqueezeExcitation(expanded, squeeze, scale_activation=nn.Hardsigmoid))
        layers += [nn.Conv2d(expanded, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.stride = stride
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNet(nn.Module):
    """A stem, a list of inverted residual blocks, a 1x1 head conv and a classifier.

    Args:
        stem: (channels, stride, activation) of the 3x3 stem conv.
        blocks: per block (cin, kernel, expanded, cout, se, activation, stride).
        head_channels: output channels of the 1x1 conv after the blocks.
        head_act: its activation.
        classifier: module mapping pooled features to logits.
        in_channels: input channels.
        dropout: probability of the dropout before the classifier (MobileNetV2 layout).
    """

    def __init__(
        self, stem: tuple, blocks: Sequence[tuple], head_channels: int, head_act: type[nn.Module],
        classifier: nn.Module, in_channels: int = 3, dropout: float = 0.0,
    ):
        super().__init__()
        stem_ch, stem_stride, stem_act = stem
        layers = [nn.Sequential(*_conv_bn_act(in_channels, stem_ch, 3, stem_stride, stem_act))]
        layers += [InvertedResidual(cin, cout, s, e, k, se, act) for cin, k, e, cout, se, act, s in blocks]
        last = blocks[-1][3]
        layers.append(nn.Sequential(*_conv_bn_act(last, head_channels, 1, 1, head_act)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = classifier
        init_weights(self)
        # One entry for the stem, one where a run of equal-width blocks ends, one for the head.
        red = stem_stride
        self.feature_info = [feature("features.0", stem_ch, red)]
        for i, (_, _, _, cout, _, _, s) in enumerate(blocks):
            red *= s
            if i + 1 == len(blocks) or blocks[i + 1][3] != cout:
                self.feature_info.append(feature(f"features.{i + 1}", cout, red))
        self.feature_info.append(feature(f"features.{len(blocks) + 1}", head_channels, red))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C_head, H/32, W/32) for the reference strides
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(self.dropout(x))


# MobileNetV2 stages: (expansion t, channels c, blocks n); the stride of each stage is a slot.
_V2_STAGES = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))
_V2_FIRST = [1 + sum(n for _, _, n in _V2_STAGES[:i]) for i in range(len(_V2_STAGES))]
V2_SLOTS = ("features.0",) + tuple(f"features.{i}" for i in _V2_FIRST)


@register_model(
    "mobilenetv2", slots=V2_SLOTS, default_strides=(2, 1, 2, 2, 2, 1, 2, 1),
    # The authors' x4/x8 students (mobilenetv2-4-1221111, -8-1211111) drop the latest stride-2 stages first.
    drop_order=tuple(reversed(V2_SLOTS[1:])),
    options={"width": 1.0, "dropout": 0.2},
    description="MobileNetV2 (width multiplier); slots = stem + 7 stages",
)
def mobilenetv2(strides, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0, dropout: float = 0.2):
    ch = lambda c: make_divisible(c * width, 8)  # noqa: E731
    blocks, cin = [], ch(32)
    for (t, c, n), s in zip(_V2_STAGES, strides[1:]):
        for j in range(n):
            blocks.append((cin, 3, cin * t, ch(c), False, nn.ReLU6, s if j == 0 else 1))
            cin = ch(c)
    head = make_divisible(1280 * max(1.0, width), 8)
    return MobileNet(
        (ch(32), strides[0], nn.ReLU6), blocks, head, nn.ReLU6, nn.Linear(head, num_classes),
        in_channels=in_channels, dropout=dropout,
    )


RE, HS = nn.ReLU, nn.Hardswish
# (cin, kernel, expanded, cout, squeeze-excitation, activation); strides come from the slots.
_V3_SMALL = (
    (16, 3, 16, 16, True, RE), (16, 3, 72, 24, False, RE), (24, 3, 88, 24, False, RE),
    (24, 5, 96, 40, True, HS), (40, 5, 240, 40, True, HS), (40, 5, 240, 40, True, HS),
    (40, 5, 120, 48, True, HS), (48, 5, 144, 48, True, HS), (48, 5, 288, 96, True, HS),
    (96, 5, 576, 96, True, HS), (96, 5, 576, 96, True, HS),
)
_V3_LARGE = (
    (16, 3, 16, 16, False, RE), (16, 3, 64, 24, False, RE), (24, 3, 72, 24, False, RE),
    (24, 5, 72, 40, True, RE), (40, 5, 120, 40, True, RE), (40, 5, 120, 40, True, RE),
    (40, 3, 240, 80, False, HS), (80, 3, 200, 80, False, HS), (80, 3, 184, 80, False, HS),
    (80, 3, 184, 80, False, HS), (80, 3, 480, 112, True, HS), (112, 3, 672, 112, True, HS),
    (112, 5, 672, 160, True, HS), (160, 5, 960, 160, True, HS), (160, 5, 960, 160, True, HS),
)


def _mobilenetv3(config, last_channel: int, strides, num_classes: int, in_channels: int, width: float, dropout: float):
    ch = lambda c: make_divisible(c * width, 8)  # noqa: E731
    blocks = [(ch(cin), k, ch(e), ch(cout), se, act, s) for (cin, k, e, cout, se, act), s in zip(config, strides[1:])]
    head = 6 * blocks[-1][3]
    classifier = nn.Sequential(
        nn.Linear(head, last_channel), nn.Hardswish(inplace=True), nn.Dropout(dropout),
        nn.Linear(last_channel, num_classes),
    )
    return MobileNet((ch(16), strides[0], HS), blocks, head, HS, classifier, in_channels=in_channels)


def _v3_slots(n: int) -> tuple[str, ...]:
    return ("features.0",) + tuple(f"features.{i + 1}" for i in range(n))


@register_model(
    "mobilenetv3_small", slots=_v3_slots(len(_V3_SMALL)),
    default_strides=(2, 2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1),
    # mobilenetv3_small-4-22111111111 drops the two latest stride-2 blocks of -1-22121111211.
    drop_order=tuple(reversed(_v3_slots(len(_V3_SMALL))[1:])),
    options={"width": 1.0, "dropout": 0.2},
    description="MobileNetV3-small (width multiplier); one slot per block",
)
def mobilenetv3_small(strides, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0, dropout: float = 0.2):
    return _mobilenetv3(_V3_SMALL, make_divisible(1024 * width, 8), strides, num_classes, in_channels, width, dropout)


@register_model(
    "mobilenetv3_large", slots=_v3_slots(len(_V3_LARGE)),
    default_strides=(2, 1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1),
    drop_order=tuple(reversed(_v3_slots(len(_V3_LARGE))[1:])),
    options={"width": 1.0, "dropout": 0.2},
    description="MobileNetV3-large (width multiplier); one slot per block",
)
def mobilenetv3_large(strides, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0, dropout: float = 0.2):
    return _mobilenetv3(_V3_LARGE, make_divisible(1280 * width, 8), strides, num_classes, in_channels, width, dropout)
