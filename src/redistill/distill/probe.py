"""Look inside a model with one forward: feature shapes, and every module call with its maps.

Probes run in eval mode without gradients and restore every module's train/eval flag, so BN
statistics never learn from a probe. RED surgery, the pairing rule, the baselines and
``redistill layers`` all read shapes from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from redistill.distill.hooks import capture
from redistill.errors import UserError
from redistill.util import model_inputs


def _example(model: nn.Module, example_input) -> tuple[torch.Tensor, ...]:
    """One image's worth of inputs: from a shape, a tensor, or a tuple of tensors (image first)."""
    like = next(iter(model.parameters()), None)
    device = like.device if like is not None else torch.device("cpu")
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    if isinstance(example_input, (tuple, list)) and example_input and isinstance(example_input[0], torch.Tensor):
        image, *rest = example_input
        return (image[:1].to(device=device, dtype=dtype), *(r[:1].to(device) if r.dim() else r.to(device) for r in rest))
    if isinstance(example_input, torch.Tensor):
        x = example_input[:1].to(device=device, dtype=dtype)  # shapes need one image only
    else:
        x = torch.zeros(tuple(example_input), device=device, dtype=dtype)
    return model_inputs(model, x)  # a UNet's timestep, for instance


class _eval_no_grad:
    """Run a probe forward in eval mode (BN statistics must not move) and restore modes."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.grad = torch.is_grad_enabled()
        self.model.eval()
        torch.set_grad_enabled(False)

    def __exit__(self, *exc) -> None:
        torch.set_grad_enabled(self.grad)
        for module, mode in self.modes:
            module.training = mode


def probe_shapes(model: nn.Module, refs: Sequence[str], example_input, what: str = "model") -> dict[str, tuple]:
    """Shapes of the features named by ``refs`` for one image of ``example_input``.

    Args:
        model: the model (its train/eval flags and BN statistics are left as they were).
        refs: feature refs (``"layer"`` / ``"layer:in"``).
        example_input: a shape tuple or a tensor (its first image is used).
        what: name of the model in error messages.
    Returns:
        ``{ref: shape}`` with batch size 1.
    """
    inputs = _example(model, example_input)
    with _eval_no_grad(model), capture(model, refs, what) as feats:
        model(*inputs)
    missing = [r for r in refs if r not in feats]
    if missing:
        raise UserError(f"layer '{missing[0]}' of the {what} is never called in forward; pick a layer that runs")
    return {ref: tuple(feats[ref].shape) for ref in refs}


@dataclass
class _Call:
    name: str
    inp: torch.Tensor | None
    out: torch.Tensor | None = None
    children: list[_Call] = field(default_factory=list)


def _tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _trace(model: nn.Module, example_input) -> tuple[_Call, list[_Call]]:
    """One forward recording every module call: (root call, first calls in start order)."""
    inputs = _example(model, example_input)
    root_frame = _Call("<top>", None)
    stack = [root_frame]
    started: list[_Call] = []
    handles = []

    def pre(name: str):
        def hook(_m, args):
            call = _Call(name, _tensor(args))
            stack.append(call)
            started.append(call)

        return hook

    def post(name: str):
        def hook(_m, _args, output):
            call = stack.pop()
            call.out = _tensor(output)
            stack[-1].children.append(call)

        return hook

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(pre(name)))
            handles.append(module.register_forward_hook(post(name)))
        with _eval_no_grad(model):
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    first: dict[str, _Call] = {}
    for call in started:
        first.setdefault(call.name, call)
    return root_frame.children[0], list(first.values())


def _is_map(t: torch.Tensor | None) -> bool:
    return t is not None and t.dim() == 4


def _changes(call: _Call) -> bool:
    return _is_map(call.inp) and _is_map(call.out) and call.inp.shape[-2:] != call.out.shape[-2:]


def _is_chain(call: _Call) -> bool:
    # A module is a plain chain when its children run one after another on each other's
    # outputs (Sequential, an inverted residual without skip). Then the down-sampling
    # happens in one child and we look inside; with a skip or parallel branch the
    # module itself is the down-sampling layer (a ResNet block).
    kids = call.children
    if not kids or kids[0].inp is not call.inp or kids[-1].out is not call.out:
        return False
    return all(kids[i].inp is kids[i - 1].out for i in range(1, len(kids)))


def _downsampling(call: _Call, is_root: bool) -> list[str]:
    # Global pooling (output 1 x 1) ends the feature maps; it is no layer to align.
    own = [call.name] if _changes(call) and tuple(call.out.shape[-2:]) != (1, 1) else []
    if not is_root and (not _changes(call) or not _is_chain(call)):
        return own
    found: list[str] = []
    for kid in call.children:
        if _changes(kid):
            found += _downsampling(kid, False)
    if not found and not is_root:
        return own  # the down-sampling happens in functional code of this module
    return list(dict.fromkeys(found))  # a module called twice is still one layer


def chw(shape: Sequence[int]) -> str:
    """``(64, 32, 32)`` -> ``"64 x 32 x 32"``."""
    return " x ".join(str(int(v)) for v in shape)


@dataclass
class LayerInfo:
    """One row of a layer table: a module whose input and output are feature maps."""

    name: str
    kind: str
    in_shape: tuple[int, int, int]  # (C, H, W)
    out_shape: tuple[int, int, int]
    downsampling: bool = False
    is_output: bool = False  # its output is the model's output (a UNet's tail)

    @property
    def in_hw(self) -> tuple[int, int]:
        return self.in_shape[1:]

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.out_shape[1:]


def layer_table(model: nn.Module, example_input) -> list[LayerInfo]:
    """Every module with feature-map input and output, in call order, with its shapes.

    ``downsampling`` marks the layers the pairing rule works with: the smallest modules
    that change H x W, where a block with a skip or parallel branch counts as one layer
    (``layer2.0`` of a ResNet) and a plain chain is looked into (``features.4.conv.3``,
    the depthwise conv of a MobileNetV2 block).

    Args:
        model: the model (not modified; BN statistics untouched).
        example_input: shape tuple such as (1, 3, 128, 128), or a tensor.
    Returns:
        The rows, in the order the modules are first called.
    """
    root, calls = _trace(model, example_input)
    units = set(_downsampling(root, True))
    rows = []
    for call in calls:
        if call.name and _is_map(call.inp) and _is_map(call.out):
            module = model.get_submodule(call.name)
            rows.append(
                LayerInfo(
                    call.name,
                    type(module).__name__,
                    tuple(call.inp.shape[1:]),
                    tuple(call.out.shape[1:]),
                    call.name in units,
                    call.out is root.out,
                )
            )
    return rows
