"""Stride slots of torchvision classification models (resnet*, resnext*, wide_resnet*,
mobilenet_v2, mobilenet_v3_*, efficientnet_*), found from their structure and edited in place.

Slots: ResNets ``conv1, maxpool, layer1..4``; MobileNets/EfficientNets the stem ``features.0``
plus one slot per inverted-residual block (its strided conv).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from redistill.errors import UserError, did_you_mean
from redistill.models.info import Built, ModelInfo

RESNET_SLOTS = ("conv1", "maxpool", "layer1", "layer2", "layer3", "layer4")
# Same order as this project's resnet families (the authors' choice): layer4, maxpool, layer3, ...
RESNET_DROP = ("layer4", "maxpool", "layer3", "layer2", "layer1")


def _pair(v: Any) -> int:
    return v[0] if isinstance(v, (tuple, list)) else int(v)


def _is_block(module: nn.Module) -> bool:
    from torchvision.models.efficientnet import FusedMBConv, MBConv
    from torchvision.models.mobilenetv2 import InvertedResidual as IR2
    from torchvision.models.mobilenetv3 import InvertedResidual as IR3

    return isinstance(module, (IR2, IR3, MBConv, FusedMBConv))


def _strided_conv(block: nn.Module) -> nn.Conv2d:
    """The conv that carries a block's stride: the first conv with a kernel larger than 1."""
    for m in block.modules():
        if isinstance(m, nn.Conv2d) and _pair(m.kernel_size) > 1:
            return m
    raise UserError(f"block {type(block).__name__} has no spatial conv to carry a stride")


def _kind(model: nn.Module) -> str:
    from torchvision.models import ResNet

    if isinstance(model, ResNet):
        return "resnet"
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and any(_is_block(m) for m in features.modules()):
        return "blocks"
    raise UserError(
        f"cannot find stride slots in {type(model).__name__}; supported: this project's families "
        "(`redistill models`) and torchvision resnet*, mobilenet_v2, mobilenet_v3_*, efficientnet_*"
    )


def is_torchvision_supported(model: nn.Module) -> bool:
    """Whether :func:`tv_slots` understands ``model``."""
    try:
        _kind(model)
        return True
    except UserError:
        return False


def tv_slots(model: nn.Module) -> tuple[list[str], list[int], list[str]]:
    """Slot names, their strides and the default drop order of a torchvision model.

    Raises:
        UserError: the model is not of a supported torchvision family.
    """
    if _kind(model) == "resnet":
        strides = [_pair(model.conv1.stride), _pair(model.maxpool.stride)]
        strides += [_pair(_strided_conv(getattr(model, n)[0]).stride) for n in RESNET_SLOTS[2:]]
        return list(RESNET_SLOTS), strides, list(RESNET_DROP)
    names, strides = ["features.0"], [_pair(_strided_conv(model.features[0]).stride)]
    for name, m in model.features.named_modules(prefix="features"):
        if _is_block(m):
            names.append(name)
            strides.append(_pair(_strided_conv(m).stride))
    return names, strides, list(reversed(names[1:]))


def _set_conv_stride(conv: nn.Conv2d, stride: int) -> None:
    conv.stride = (stride, stride)


def set_tv_stride(model: nn.Module, slot: str, stride: int) -> None:
    """Set the stride of ``slot`` in place (stem conv, pool, or a block with its shortcut).

    Raises:
        UserError: unknown slot name (with the closest names).
    """
    names = tv_slots(model)[0]
    if slot not in names:
        raise UserError(f"{type(model).__name__} has no stride slot '{slot}'{did_you_mean(slot, names)}")
    module = model.get_submodule(slot)
    if isinstance(module, nn.MaxPool2d):
        module.stride = stride
        return
    if slot.startswith("layer"):  # torchvision ResNet stage: first block and its down-sample conv
        block = module[0]
        if block.downsample is None and stride != 1:
            raise UserError(
                f"{slot} of this torchvision ResNet has no down-sample shortcut, so it cannot take stride {stride}"
            )
        _set_conv_stride(_strided_conv(block), stride)
        if block.downsample is not None:
            _set_conv_stride(block.downsample[0], stride)
        block.stride = stride
        return
    _set_conv_stride(_strided_conv(module), stride)
    if _is_block(module):
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        if hasattr(module, "stride"):
            module.stride = stride
        # A block that keeps its shape gets the identity shortcut, as if built with this stride.
        module.use_res_connect = stride == 1 and convs[0].in_channels == convs[-1].out_channels


def create_torchvision(spec: dict[str, Any]) -> Built:
    """Build ``{"source": "torchvision", "name": ..., "strides": [...], **kwargs}`` (random init).

    Returns:
        ``(module, info)``; models without known stride slots get an info without slots.
    Raises:
        UserError: unknown torchvision name, bad options, or strides for a model without slots
            or of the wrong count.
    """
    from torchvision import models

    spec = dict(spec)
    spec.pop("source", None)
    name = spec.pop("name", None)
    strides = spec.pop("strides", None)
    known = models.list_models(module=models)
    if name not in known:
        raise UserError(f"unknown torchvision model '{name}'{did_you_mean(str(name), known)}")
    try:
        model = models.get_model(name, weights=None, **spec)
    except TypeError as err:  # an option the builder does not take
        raise UserError(f"torchvision {name} does not accept {sorted(spec)}: {err}") from None
    if strides is not None:
        slots = tv_slots(model)[0]
        if len(strides) != len(slots):
            raise UserError(
                f"torchvision {name} has {len(slots)} stride slots ({', '.join(slots)}) "
                f"but {len(strides)} strides were given: {list(strides)}"
            )
        for slot, s in zip(slots, strides):
            set_tv_stride(model, slot, int(s))
    return Built(model, tv_info(model, name, spec))


def tv_info(model: nn.Module, name: str, options: dict[str, Any] | None = None) -> ModelInfo:
    """The record of a torchvision model: its slots and strides read from its structure."""
    options = dict(options or {})
    slots, strides, drop = tv_slots(model) if is_torchvision_supported(model) else ([], [], [])
    spec = {"source": "torchvision", "name": name, **({"strides": strides} if slots else {}), **options}
    return ModelInfo(
        source="torchvision", name=name, spec=spec, slots=tuple(slots), strides=tuple(strides),
        drop_order=tuple(drop), num_classes=options.get("num_classes", 1000), in_channels=3,
    )
