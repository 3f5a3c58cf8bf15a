"""Patch-based execution of a traced CNN: the prefix up to a split point tile by tile, the rest as usual.

:func:`compile_patches` takes a trace of the model (BN folded as deployed), a split point (a module
name: that module and everything before it run patch-wise) and an n x n grid over the split
output. For every output tile it follows the receptive field back through the prefix
(:mod:`redistill.patch.region`), so each tile recomputes only the input region (and halo) it
needs. :class:`PatchedModel` runs that program: per tile, each prefix op on its region, with
the op's zero (or -inf) padding applied only on sides that touch the image border; the tile is
written into a buffer holding the split output; then the ops after the split run as recorded.
Its real op sequence can be traced like any model, which is how its peak is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten, tree_map

from redistill.errors import UserError, did_you_mean
from redistill.memory.trace import Op, Ref, Trace
from redistill.patch.region import Region, back_regions, is_activation, op_kind, window_of


@dataclass
class Cut:
    """A split point: the module, the value it outputs and the index of its last op."""

    name: str
    vid: int
    last: int


@dataclass
class PatchProgram:
    """Everything the executor needs; ``tiles`` holds, per tile, the region of every prefix value."""

    trace: Trace
    cut: Cut
    grid: int
    kinds: dict[int, str]
    tiles: list[tuple[Region, dict[int, Region]]] = field(repr=False)

    @property
    def split_shape(self) -> tuple[int, ...]:
        return self.trace.values[self.cut.vid].shape


def _crossing(trace: Trace) -> list[tuple[int, int, int]]:
    """(vid, producer, last reader) of every activation value that some op reads."""
    last: dict[int, int] = {}
    for op in trace.ops:
        for v in op.inputs:
            last[v] = op.index
    for v in trace.output_vids:
        last[v] = len(trace.ops)
    return [(v, trace.values[v].producer, end) for v, end in last.items() if is_activation(trace, v)]


def locate_split(trace: Trace, split: str) -> Cut:
    """The cut a module name denotes.

    Raises:
        UserError: not a module, called more than once, not a 4-d map, or a tensor from before
            it is read after it (a skip connection across the split).
    """
    spans = [s for s in trace.module_spans if s[0] == split]
    if not spans:
        names = [s[0] for s in trace.module_spans]
        raise UserError(f"split point '{split}' is not a module of the model{did_you_mean(split, names)}; "
                        "`redistill layers MODEL` lists them")
    if len(spans) > 1:
        raise UserError(f"split point '{split}' runs {len(spans)} times in one forward; choose a module called once")
    _, first, last = spans[0]
    if last < first or not trace.ops[last].outputs:
        raise UserError(f"split point '{split}' runs no op; choose a module that computes something")
    vid = trace.ops[last].outputs[0]
    shape = trace.values[vid].shape
    if len(shape) != 4:
        raise UserError(f"split point '{split}' outputs a {len(shape)}-d tensor {list(shape)}; "
                        "choose a module whose output is a 4-d feature map")
    for v, producer, end in _crossing(trace):
        if v != vid and producer <= last < end:
            reader = next(op for op in trace.ops[last + 1:] if v in op.inputs) if end < len(trace.ops) else None
            who = f"'{reader.module or '<root>'}'" if reader else "the model output"
            raise UserError(f"split point '{split}' is not a cut: {who} after it reads a tensor computed "
                            "before it (a skip connection across the split); choose the block containing both")
    return Cut(split, vid, last)


def compile_patches(trace: Trace, split: str, grid: int) -> PatchProgram:
    """The patch program for ``split`` and an ``grid`` x ``grid`` tiling of its output.

    Raises:
        UserError: a bad split (:func:`locate_split`), a prefix op that cannot run patch-wise
            (named), or a grid that does not divide the split output.
    """
    if len(trace.input_vids) != 1:
        raise UserError(f"patch-based execution needs a model with one input, this one takes {len(trace.input_vids)}")
    cut = locate_split(trace, split)
    kinds = {op.index: op_kind(trace, op) for op in trace.ops[:cut.last + 1]}
    h, w = trace.values[cut.vid].shape[2:]
    if grid < 1 or h % grid or w % grid:
        fits = [n for n in range(1, min(h, w) + 1) if h % n == 0 and w % n == 0][:8]
        raise UserError(f"grid {grid} does not divide the {h}x{w} output of '{split}'; "
                        f"use one of {', '.join(map(str, fits))}")
    th, tw = h // grid, w // grid
    prefix = trace.ops[:cut.last + 1]
    tiles = []
    for i in range(grid):
        for j in range(grid):
            tile = (i * th, (i + 1) * th, j * tw, (j + 1) * tw)
            tiles.append((tile, back_regions(trace, prefix, kinds, cut.vid, tile)))
    return PatchProgram(trace, cut, grid, kinds, tiles)


def _crop(t: torch.Tensor, have: Region, want: Region) -> torch.Tensor:
    """The ``want`` part of a tensor that holds region ``have``."""
    if have == want:
        return t
    r0, c0 = want[0] - have[0], want[2] - have[2]
    return t[:, :, r0:r0 + want[1] - want[0], c0:c0 + want[3] - want[2]]


def _window_call(trace: Trace, op: Op, x: torch.Tensor, have: Region, out: Region, args: list) -> Any:
    """Run a conv/pool on the part of ``x`` it needs, padding only on sides at the image border."""
    win = window_of(trace, op)
    h, w = trace.values[op.args[0].vid].shape[2:]
    r0, r1 = win.needed(out[0], out[1], 0)
    c0, c1 = win.needed(out[2], out[3], 1)
    clipped = (max(r0, 0), min(r1, h), max(c0, 0), min(c1, w))
    x = _crop(x, have, clipped)
    pads = [(clipped[0] - r0, r1 - clipped[1]), (clipped[2] - c0, c1 - clipped[3])]
    sym = [min(a, b) for a, b in pads]  # the op pads both sides by this much itself
    extra = [pads[1][0] - sym[1], pads[1][1] - sym[1], pads[0][0] - sym[0], pads[0][1] - sym[0]]
    if any(extra):  # asymmetric border: the rest is padded explicitly
        x = torch.ops.aten.constant_pad_nd.default(x, extra, win.fill)
    if op.name == "aten.convolution.default":
        return op.func(x, args[1], args[2], args[3], sym, *args[5:])
    stride = list(win.stride)
    if op.name == "aten.avg_pool2d.default":
        rest = list(args[5:7]) if len(args) > 5 else []
        return op.func(x, args[1], stride, sym, False, *rest)
    return op.func(x, args[1], stride, sym, list(win.dilation), False)


def _last_reads(ops: list[Op]) -> dict[int, list[int]]:
    """op index -> vids whose last read (within ``ops``) it is."""
    last: dict[int, int] = {}
    for op in ops:
        for v in op.inputs:
            last[v] = op.index
    drop: dict[int, list[int]] = {}
    for v, i in last.items():
        drop.setdefault(i, []).append(v)
    return drop


def run_program(prog: PatchProgram, x: torch.Tensor) -> Any:
    """Execute the patch program on input ``x``; returns the model output."""
    trace, cut = prog.trace, prog.cut
    consts = trace.constants
    xin = trace.input_vids[0]
    full_in = (0, x.shape[2], 0, x.shape[3])
    split = trace.values[cut.vid]
    # The prefix is batch-agnostic (convs, pools, element-wise); the suffix replays recorded shapes.
    out_buf = torch.empty((x.shape[0], *split.shape[1:]), dtype=split.dtype, device=x.device)
    prefix = trace.ops[:cut.last + 1]
    drop = _last_reads(prefix)
    for tile, need in prog.tiles:
        env: dict[int, tuple[torch.Tensor, Region | None]] = {xin: (x, full_in)}
        for op in prefix:
            kind = prog.kinds[op.index]
            out = need.get(op.outputs[0]) if op.outputs else None
            if kind != "const" and out is None:
                continue  # nothing of this op is needed for this tile

            def resolve(a: Any) -> Any:
                if not isinstance(a, Ref):
                    return a
                if a.vid in consts:
                    return consts[a.vid]
                t, have = env[a.vid]
                return t if have is None or out is None else _crop(t, have, out)

            if kind == "window":
                t, have = env[op.args[0].vid]
                args = [consts.get(a.vid) if isinstance(a, Ref) else a for a in op.args]
                result = _window_call(trace, op, t, have, out, args)
            else:
                result = op.func(*tree_map(resolve, op.args), **tree_map(resolve, op.kwargs))
            flat_ref, _ = tree_flatten(op.out_tree, is_leaf=lambda r: isinstance(r, Ref))
            for ref, t in zip(flat_ref, tree_flatten(result)[0]):
                if isinstance(ref, Ref):
                    region = out if isinstance(t, torch.Tensor) and t.dim() == 4 and kind != "const" else None
                    env[ref.vid] = (t, region)
            del result
            for v in drop.get(op.index, ()):
                if v != cut.vid:
                    env.pop(v, None)
        t, _ = env[cut.vid]
        out_buf[:, :, tile[0]:tile[1], tile[2]:tile[3]].copy_(t)
        del env, t
    return _run_suffix(trace, cut, out_buf)


def _run_suffix(trace: Trace, cut: Cut, split_value: torch.Tensor) -> Any:
    """The ops after the split, as recorded, each tensor let go after its last read."""
    env: dict[int, Any] = {cut.vid: split_value}
    suffix = trace.ops[cut.last + 1:]
    drop = _last_reads(suffix)
    keep = set(trace.output_vids)
    resolve = lambda a: (trace.constants[a.vid] if a.vid in trace.constants else env[a.vid]) \
        if isinstance(a, Ref) else a  # noqa: E731
    for op in suffix:
        result = op.func(*tree_map(resolve, op.args), **tree_map(resolve, op.kwargs))
        flat_ref, _ = tree_flatten(op.out_tree, is_leaf=lambda r: isinstance(r, Ref))
        for ref, t in zip(flat_ref, tree_flatten(result)[0]):
            if isinstance(ref, Ref):
                env[ref.vid] = t
        del result
        for v in drop.get(op.index, ()):
            if v not in keep:
                env.pop(v, None)
    outs = [env[v] for v in trace.output_vids]
    return outs[0] if len(outs) == 1 else tuple(outs)


class PatchedModel(nn.Module):
    """``model`` run patch-wise up to the split point; holds the model so its parameters count."""

    def __init__(self, model: nn.Module, program: PatchProgram):
        super().__init__()
        self.model = model
        self.program = program

    def forward(self, x: torch.Tensor) -> Any:
        return run_program(self.program, x)
