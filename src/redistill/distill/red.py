"""RED blocks, the module surgery that inserts them (and its layout, to redo it), and the RED loss.

docs/method.md s.3-4: for a student feature ``x`` (C channels) the block computes
``y = x * sigmoid(BN(conv_g(x))) + ReLU6(BN(conv_e(x)))`` and ``y`` replaces the
activation, in training and in the deployed student. The loss compares channel-mean
maps of ``y`` and of a teacher feature with the same H x W.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from redistill.distill.hooks import find_module, make_ref
from redistill.distill.probe import probe_shapes
from redistill.errors import UserError

#: Options a pair's ``red`` dict may set (the keyword arguments of :class:`REDBlock`).
RED_OPTIONS = ("gate_kernel", "encoder_kernel", "gate", "encoder", "shortcut")
DISTANCES = ("cosine", "mse")


def _conv_bn(channels: int, kernel: int) -> list[nn.Module]:
    # The kernel is odd (REDBlock checks it), so padding kernel // 2 keeps H x W.
    # No conv bias: the BatchNorm that follows has its own shift.
    return [nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(channels)]


class REDBlock(nn.Module):
    """Residual encoded block ``y = x * g(x) + r(x)`` (docs/method.md s.3).

    Args:
        channels: channels C of the student feature (kept by the block).
        gate_kernel: kernel of the gate conv ``g = sigmoid(BN(conv(x)))``.
        encoder_kernel: kernel of the encoder conv ``r = ReLU6(BN(conv(x)))``.
        gate: False for the no-gate ablation ``y = x + r(x)``.
        encoder: False for the no-encoder ablation ``y = x * g(x)``.
        shortcut: False for the no-shortcut ablation ``y = r(x * g(x))`` (encoder applied
            to the gated feature, no residual path).
    """

    def __init__(
        self,
        channels: int,
        gate_kernel: int = 1,
        encoder_kernel: int = 3,
        gate: bool = True,
        encoder: bool = True,
        shortcut: bool = True,
    ) -> None:
        super().__init__()
        # Checked here, the one constructor every config, checkpoint and export goes through.
        for name, value in (("gate_kernel", gate_kernel), ("encoder_kernel", encoder_kernel)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
                raise UserError(f"RED option {name} must be an odd integer >= 1 (1, 3, 5), got {value!r}")
        for name, value in (("gate", gate), ("encoder", encoder), ("shortcut", shortcut)):
            if not isinstance(value, bool):
                raise UserError(f"RED option {name} must be true or false, got {value!r}")
        if not (gate or encoder):
            raise UserError("a RED block needs its gate or its encoder: gate=false and encoder=false leave nothing")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise UserError(f"a RED block needs a positive integer channel count, got {channels!r}")
        self.channels = int(channels)
        self.shortcut = bool(shortcut)
        self.gate = nn.Sequential(*_conv_bn(channels, gate_kernel)) if gate else None
        self.encoder = nn.Sequential(*_conv_bn(channels, encoder_kernel), nn.ReLU6()) if encoder else None

    def options(self) -> dict:
        """The constructor arguments that rebuild this block (minus ``channels``)."""
        return {
            "gate_kernel": self.gate[0].kernel_size[0] if self.gate is not None else 1,
            "encoder_kernel": self.encoder[0].kernel_size[0] if self.encoder is not None else 3,
            "gate": self.gate is not None,
            "encoder": self.encoder is not None,
            "shortcut": self.shortcut,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        gated = x * torch.sigmoid(self.gate(x)) if self.gate is not None else x
        if self.encoder is None:
            return gated
        if not self.shortcut:
            return self.encoder(gated)
        return gated + self.encoder(x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, shortcut={self.shortcut}"


class REDWrapped(nn.Module):
    """A student layer with RED blocks on its input and/or output side.

    Replaces the layer in its parent, so the RED blocks are visible in ``print(model)``
    and in the ``state_dict`` (``<layer>.red_in.*``, ``<layer>.layer.*``, ``<layer>.red_out.*``).
    """

    def __init__(self, layer: nn.Module, red_in: REDBlock | None = None, red_out: REDBlock | None = None) -> None:
        super().__init__()
        # Registering the empty slots first keeps the printed order: red_in, layer, red_out.
        self.register_module("red_in", red_in)
        self.layer = layer
        self.register_module("red_out", red_out)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.red_in is not None:
            x = self.red_in(x)
        y = self.layer(x, *args, **kwargs)
        if self.red_out is not None:
            y = self.red_out(y)
        return y


def _feature_channels(model: nn.Module, layer: str, side: str, example_input: torch.Tensor | None) -> int:
    if example_input is None:
        raise UserError(f"insert_red('{layer}'): give channels= or an example_input to read them from")
    return probe_shapes(model, [make_ref(layer, side)], example_input)[make_ref(layer, side)][1]


def insert_red(
    model: nn.Module,
    layer: str,
    side: str,
    channels: int | None = None,
    example_input: torch.Tensor | None = None,
    **options,
) -> REDBlock:
    """Insert a RED block on the ``side`` ("out" or "in") of ``model``'s ``layer``, in place.

    The layer is replaced by a :class:`REDWrapped` holding it (a second call for the other
    side of the same layer reuses that wrapper).

    Args:
        model: the student (modified in place).
        layer: qualified module name, e.g. ``"layer2.0"``.
        side: "out" (the block rewrites the layer's output) or "in" (its input).
        channels: channels of that feature; read from a forward of ``example_input`` if None.
        example_input: an input batch, needed only when ``channels`` is None.
        **options: :class:`REDBlock` options (``gate_kernel``, ``encoder``, ...).
    Returns:
        The new block (already placed on the layer's device and dtype).
    Raises:
        UserError: unknown layer (with suggestions), bad side or option, a side that
            already has a RED block.
    """
    if side not in ("out", "in"):
        raise UserError(f"RED side must be 'out' or 'in', got '{side}'")
    unknown = [k for k in options if k not in RED_OPTIONS]
    if unknown:
        raise UserError(f"unknown RED option '{unknown[0]}'; valid options: {', '.join(RED_OPTIONS)}")
    target = find_module(model, layer, "student")
    if channels is None:
        channels = _feature_channels(model, layer, side, example_input)
    wrapper = target if isinstance(target, REDWrapped) else REDWrapped(target)
    slot = "red_in" if side == "in" else "red_out"
    if getattr(wrapper, slot) is not None:
        raise UserError(f"layer '{layer}' already has a RED block on its {side} side; list each (layer, side) once")
    block = REDBlock(channels, **options).train(target.training)
    # A parameter-free layer (pooling) takes the device and dtype of the rest of the model.
    like = next(iter(target.parameters()), None)
    if like is None:
        like = next(iter(model.parameters()), None)
    if like is None and example_input is not None:
        like = example_input[0] if isinstance(example_input, tuple) else example_input
    if like is not None:
        block = block.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)
    setattr(wrapper, slot, block)
    if wrapper is not target:
        model.set_submodule(layer, wrapper)
    return block


def red_layout(model: nn.Module) -> list[dict]:
    """Describe the RED surgery of ``model`` so it can be redone on a fresh model.

    Returns:
        ``[{"layer": name, "side": "in"|"out", "channels": C, **block options}, ...]``,
        layer names as in the model *before* surgery.
    """
    layout: list[dict] = []

    def walk(module: nn.Module, original: str) -> None:
        if isinstance(module, REDWrapped):
            for side, block in (("in", module.red_in), ("out", module.red_out)):
                if block is not None:
                    layout.append({"layer": original, "side": side, "channels": block.channels, **block.options()})
            # The wrapped layer keeps the wrapper's original name: the ".layer" hop is ours.
            walk(module.layer, original)
            return
        for child_name, child in module.named_children():
            walk(child, f"{original}.{child_name}" if original else child_name)

    walk(model, "")
    return layout


def apply_red_layout(model: nn.Module, layout: Sequence[dict]) -> nn.Module:
    """Redo the surgery described by :func:`red_layout` on ``model`` (in place); returns it."""
    for entry in layout:  # read from artifacts: check the shape of each entry before using it
        if not isinstance(entry, dict) or not isinstance(entry.get("layer"), str) or "side" not in entry \
                or "channels" not in entry:
            raise UserError(f"RED layout entry {entry!r} needs 'layer' (a name), 'side' and 'channels'")
    for entry in sorted(layout, key=lambda e: -e["layer"].count(".")):
        entry = dict(entry)
        insert_red(model, entry.pop("layer"), entry.pop("side"), channels=entry.pop("channels"), **entry)
    return model


class _ChannelMean(torch.autograd.Function):
    """Channel mean in fp32 whose gradient keeps the input's dtype and memory format.

    Autograd's own mean backward hands back a broadcast NCHW gradient; added to the
    channels-last gradient of the rest of the network, it turns the student's backward
    NCHW and roughly doubles its BatchNorm backward time on GPU.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape, ctx.dtype = x.shape, x.dtype
        nhwc = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        ctx.memory_format = torch.channels_last if nhwc else torch.contiguous_format
        return x.mean(dim=1, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = (grad / ctx.shape[1]).to(ctx.dtype).unsqueeze(1).expand(ctx.shape)
        return grad.contiguous(memory_format=ctx.memory_format)


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(dim=1)`` accumulated in fp32: (B, C, H, W) -> (B, H, W) float32."""
    return _ChannelMean.apply(x)


def red_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """RED distance between channel-mean maps (docs/method.md s.4).

    Args:
        student_feat: (B, Cs, H, W), the RED block output.
        teacher_feat: (B, Ct, H, W); channel counts may differ.
        distance: "cosine" -> ``mean_b(1 - cos(s_b, t_b))``; "mse" -> ``mse(s, t)``.
    Returns:
        A scalar tensor.
    """
    if student_feat.shape[-2:] != teacher_feat.shape[-2:]:
        raise ValueError(
            f"RED loss needs equal H x W: student {tuple(student_feat.shape)} vs teacher {tuple(teacher_feat.shape)}"
        )
    # fp32 accumulation: fp16 channel means lose the small differences that matter here.
    s = channel_mean(student_feat)  # (B, H, W)
    t = channel_mean(teacher_feat)
    if distance == "cosine":
        return (1.0 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)).mean()
    if distance == "mse":
        return F.mse_loss(s, t)
    raise UserError(f"unknown RED distance '{distance}'; use one of {', '.join(DISTANCES)}")
