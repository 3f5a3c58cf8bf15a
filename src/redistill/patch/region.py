"""Receptive fields over a traced program: which input rows and columns each op needs.

A region is ``(r0, r1, c0, c1)``: rows ``r0:r1`` and columns ``c0:c1`` of a 4-d value. Every
prefix op gets a kind saying how its output region maps back to its inputs:

- ``window``: convolutions and pooling (kernel, stride, dilation, padding per spatial dim);
- ``pointwise``: element-wise ops, BatchNorm in eval, channel concatenation: same region;
- ``const``: no activation input (nothing to tile).

Anything else that reads an activation (a global pooling, a matmul, attention, a reshape, an op
whose output shape depends on the data) cannot run patch-wise, and :func:`op_kind` names it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from redistill.errors import UserError
from redistill.memory.trace import Op, Trace

Region = tuple[int, int, int, int]

# Element-wise ops ATen does not tag as pointwise.
_POINTWISE_EXTRA = {
    "aten._native_batch_norm_legit_no_training.default", "aten.native_batch_norm.default",
    "aten.hardswish.default", "aten.hardswish_.default", "aten.hardsigmoid.default",
    "aten.hardsigmoid_.default", "aten.alias.default", "aten.detach.default",
}
_POOLS = {"aten.max_pool2d_with_indices.default", "aten.max_pool2d.default", "aten.avg_pool2d.default"}
_GLOBAL = {"aten.mean.dim", "aten._adaptive_avg_pool2d.default", "aten.adaptive_max_pool2d.default",
           "aten.amax.default", "aten.sum.dim_IntList", "aten.var_mean.correction"}
_MATMUL = {"aten.mm.default", "aten.bmm.default", "aten.addmm.default", "aten.linear.default",
           "aten._softmax.default", "aten._scaled_dot_product_flash_attention_for_cpu.default",
           "aten._scaled_dot_product_attention_math.default", "aten.baddbmm.default"}
_DATA_DEPENDENT = {"aten.nonzero.default", "aten._local_scalar_dense.default", "aten.item.default",
                   "aten.masked_select.default", "aten.unique_consecutive.default"}


@dataclass
class Window:
    """A sliding window over the two spatial dims (per dim: kernel, stride, padding, dilation)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    fill: float  # value of the padding: 0 for convs and average pools, -inf for max pools

    def needed(self, lo: int, hi: int, dim: int) -> tuple[int, int]:
        """Input span (unclipped: may reach into the padding) for output ``lo:hi`` of ``dim``."""
        k, s, p, d = self.kernel[dim], self.stride[dim], self.padding[dim], self.dilation[dim]
        return lo * s - p, (hi - 1) * s - p + d * (k - 1) + 1


def _pair(v, default) -> tuple[int, int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    if not v:
        v = list(default)
    return (int(v[0]), int(v[-1]))


def window_of(trace: Trace, op: Op) -> Window:
    """The window of a conv or pooling op, from its recorded arguments."""
    a = list(op.args)
    if op.name == "aten.convolution.default":
        kernel = trace.values[a[1].vid].shape[2:]
        return Window((kernel[0], kernel[1]), _pair(a[3], (1,)), _pair(a[4], (0,)), _pair(a[5], (1,)), 0.0)
    kernel = _pair(a[1], (1,))
    stride = _pair(a[2] if len(a) > 2 else [], kernel)
    padding = _pair(a[3] if len(a) > 3 else 0, (0,))
    if op.name == "aten.avg_pool2d.default":
        return Window(kernel, stride, padding, (1, 1), 0.0)
    dilation = _pair(a[4] if len(a) > 4 else 1, (1,))
    return Window(kernel, stride, padding, dilation, float("-inf"))


def is_activation(trace: Trace, vid: int) -> bool:
    return trace.storages[trace.values[vid].sid].kind != "param"


def op_kind(trace: Trace, op: Op) -> str:
    """``window`` | ``pointwise`` | ``const`` for an op that can run on a tile.

    Raises:
        UserError: the op cannot run patch-wise; the message names it and its module.
    """
    acts = [v for v in op.inputs if is_activation(trace, v)]
    if not acts:
        return "const"
    where = f"op {op.name.removeprefix('aten.').removesuffix('.default')} in module '{op.module or '<root>'}'"
    if op.name in _GLOBAL:
        raise UserError(f"cannot run patch-wise: {where} is a global pooling (reads the whole map); "
                        "choose a split point before it")
    if op.name in _MATMUL:
        raise UserError(f"cannot run patch-wise: {where} is a matmul/attention over the whole map; "
                        "choose a split point before it")
    if op.name in _DATA_DEPENDENT:
        raise UserError(f"cannot run patch-wise: {where} has a data-dependent shape; "
                        "choose a split point before it")
    out = trace.values[op.outputs[0]] if op.outputs else None
    if out is None or len(out.shape) != 4:
        raise UserError(f"cannot run patch-wise: {where} does not produce a 4-d feature map; "
                        "choose a split point before it")
    if op.name == "aten.convolution.default":
        if op.args[6]:
            raise UserError(f"cannot run patch-wise: {where} is a transposed convolution")
        if len(op.args[3]) != 2:
            raise UserError(f"cannot run patch-wise: {where} is not a 2-d convolution")
        return "window"
    if op.name in _POOLS:
        ceil = op.args[4] if op.name == "aten.avg_pool2d.default" and len(op.args) > 4 else False
        include_pad = op.args[5] if op.name == "aten.avg_pool2d.default" and len(op.args) > 5 else True
        pads = _pair(op.args[3], (0,)) if len(op.args) > 3 else (0, 0)
        if op.name == "aten.avg_pool2d.default" and (ceil or (any(pads) and not include_pad)):
            raise UserError(f"cannot run patch-wise: {where} averages over a border-dependent count "
                            "(ceil_mode or count_include_pad=False)")
        return "window"
    spatial = out.shape[2:]
    for v in acts:  # element-wise over the same map (or a broadcast without spatial extent)
        shape = trace.values[v].shape
        if len(shape) != 4 or (shape[2:] != spatial and shape[2:] != (1, 1)):
            raise UserError(f"cannot run patch-wise: {where} mixes maps of different sizes")
        if shape[2:] == (1, 1) and spatial != (1, 1):
            raise UserError(f"cannot run patch-wise: {where} scales the map by a per-channel vector "
                            "computed from the whole map (e.g. squeeze-and-excitation); choose a split before it")
    if op.name == "aten.cat.default":
        dim = op.args[1] if len(op.args) > 1 else op.kwargs.get("dim", 0)
        if dim % 4 in (2, 3):
            raise UserError(f"cannot run patch-wise: {where} concatenates along a spatial dim")
        return "pointwise"
    if torch.Tag.pointwise in op.func.tags or op.name in _POINTWISE_EXTRA:
        return "pointwise"
    raise UserError(f"cannot run patch-wise: {where} is not known to be local (element-wise, conv or "
                    "pool); choose a split point before it")


def union(a: Region | None, b: Region) -> Region:
    if a is None:
        return b
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def back_regions(trace: Trace, ops: list[Op], kinds: dict[int, str], split_vid: int,
                 tile: Region) -> dict[int, Region]:
    """Region of every activation the prefix must compute for one output tile of the split."""
    need: dict[int, Region] = {split_vid: tile}
    for op in reversed(ops):
        kind = kinds[op.index]
        if kind == "const":
            continue
        out = need.get(op.outputs[0]) if op.outputs else None
        if out is None:
            continue
        acts = [v for v in op.inputs if is_activation(trace, v)]
        if kind == "window":
            win = window_of(trace, op)
            x = trace.values[op.args[0].vid]
            h, w = x.shape[2:]
            r0, r1 = win.needed(out[0], out[1], 0)
            c0, c1 = win.needed(out[2], out[3], 1)
            req = (max(r0, 0), min(r1, h), max(c0, 0), min(c1, w))
            need[op.args[0].vid] = union(need.get(op.args[0].vid), req)
        else:
            for v in acts:
                if trace.values[v].shape[2:] == trace.values[op.outputs[0]].shape[2:]:
                    need[v] = union(need.get(v), out)
    return need
