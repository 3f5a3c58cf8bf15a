"""Fold eval-mode BatchNorm into the convolution that feeds it (the deployed form): in the model
(:func:`fold_batchnorm`) and, without running it again, in its trace (:func:`fold_trace`)."""

from __future__ import annotations

import copy
import math

import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

from redistill.memory.trace import Op, Ref, Storage, Trace, Value, map_args

_BN_OPS = {"aten._native_batch_norm_legit_no_training.default", "aten.native_batch_norm.default"}


def foldable_pairs(trace: Trace, model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where the BN reads a conv output that nothing else reads (and has
    running statistics to fold).

    Found from the executed graph, not from module order, so it is right for any model;
    modules called more than once are left alone (folding would change other calls).
    """
    modules = _modules(trace, model)
    calls: dict[str, int] = {}
    for name, _, _ in trace.module_spans:
        calls[name] = calls.get(name, 0) + 1
    readers: dict[int, int] = {}
    for op in trace.ops:
        for v in op.inputs:
            readers[v] = readers.get(v, 0) + 1
    conv_of = {}  # vid -> conv module name that produced it
    for op in trace.ops:
        if op.name == "aten.convolution.default" and isinstance(modules.get(op.module), nn.Conv2d):
            conv_of[op.outputs[0]] = op.module
    pairs = []
    for op in trace.ops:
        bn = modules.get(op.module)
        # a BN without running statistics normalises by the batch's, in eval mode too: nothing to fold
        if op.name not in _BN_OPS or not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
            continue
        x = op.args[0].vid
        conv = conv_of.get(x)
        if conv is None or readers.get(x) != 1 or x in trace.output_vids:
            continue
        if calls.get(conv) == 1 and calls.get(op.module) == 1:
            pairs.append((conv, op.module))
    return pairs


def fold_batchnorm(model: nn.Module, pairs: list[tuple[str, str]]) -> nn.Module:
    """A copy of ``model`` with each (conv, bn) pair fused and the BN replaced by Identity."""
    folded = copy.deepcopy(model)
    modules = dict(folded.named_modules())
    for conv_name, bn_name in pairs:
        fused = fuse_conv_bn_eval(modules[conv_name], modules[bn_name])
        folded.set_submodule(conv_name, fused)
        folded.set_submodule(bn_name, nn.Identity())
    return folded.eval()


def fold_trace(trace: Trace, model: nn.Module, pairs: list[tuple[str, str]], weights: bool = True) -> Trace:
    """The trace ``fold_batchnorm(model, pairs)`` would give, derived from ``trace`` without a second run.

    Each BN op is dropped, its readers read the conv output instead, and the conv reads the fused
    weight and bias (computed as ``fuse_conv_bn_eval`` computes them; with ``weights`` False only
    their shapes and sizes, and no tensor in ``constants``, for an analysis that never runs the trace).
    Op indices, births, eager deaths and module spans are renumbered; the conv output's buffer lives
    as long as the BN output did, as it does when the folded model runs.
    """
    modules = _modules(trace, model)
    bn_of = dict(pairs)
    conv_ops = {op.module: op for op in trace.ops
                if op.name == "aten.convolution.default" and op.module in bn_of}
    drop: set[int] = set()
    rename: dict[int, int] = {}  # BN output vid -> conv output vid
    new_args: dict[int, tuple[int, int]] = {}  # conv op index -> (weight vid, bias vid)
    values, storages, constants = dict(trace.values), dict(trace.storages), dict(trace.constants)
    # New ids count up from past every id the trace used, so none can be mistaken for a renamed one.
    next_vid, next_sid = max(values, default=-1) + 1, max(storages, default=-1) + 1
    by_sid: dict[int, list[int]] = {}  # storage -> the values viewing it
    for vid, v in values.items():
        by_sid.setdefault(v.sid, []).append(vid)
    bn_names = set(bn_of.values())
    conv_of_bn = {b: c for c, b in pairs}
    for op in trace.ops:
        if op.name not in _BN_OPS or op.module not in bn_names:
            continue
        conv_name = conv_of_bn[op.module]
        conv_op, conv, bn = conv_ops[conv_name], modules[conv_name], modules[op.module]
        if weights:  # (shape, dtype, tensor) of the fused weight and bias
            fused = [(tuple(t.shape), t.dtype, t.detach()) for t in fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)]
        else:  # what fuse_conv_bn_weights returns, in shape and dtype only, read off the recorded operands
            weight = values[conv_op.args[1].vid]
            bias = conv_op.args[2] if conv_op.args[2] is not None else op.args[3]  # else BN's running mean
            fused = [(weight.shape, weight.dtype, None), ((weight.shape[0],), values[bias.vid].dtype, None)]
        vids = []
        for shape, dtype, t in fused:
            vid, sid = next_vid, next_sid
            next_vid, next_sid = next_vid + 1, next_sid + 1
            numel, itemsize = math.prod(shape), dtype.itemsize
            storages[sid] = Storage(sid, numel * itemsize, itemsize, True, "param", -1)
            values[vid] = Value(vid, sid, shape, dtype, numel, -1)
            if t is not None:
                constants[vid] = t
            vids.append(vid)
        new_args[conv_op.index] = (vids[0], vids[1])
        conv_out, bn_out = conv_op.outputs[0], op.outputs[0]
        rename[bn_out] = conv_out
        cs, bs = storages[values[conv_out].sid], storages[values[bn_out].sid]
        death = None if cs.eager_death is None or bs.eager_death is None else max(cs.eager_death, bs.eager_death)
        storages[cs.sid] = Storage(cs.sid, cs.nbytes, cs.itemsize, cs.floating, cs.kind, cs.birth, death)
        values.pop(bn_out)
        for vid in by_sid.pop(bs.sid, []):  # views and in-place results of the BN output
            if vid in values:
                v = values[vid]
                values[vid] = Value(v.vid, cs.sid, v.shape, v.dtype, v.numel, v.producer)
                by_sid.setdefault(cs.sid, []).append(vid)
        storages.pop(bs.sid, None)
        drop.add(op.index)

    # The BN module becomes an Identity: every op it ran goes (eval BN also allocates empty
    # statistics tensors), with the values only those ops produced.
    folded_bns = set(bn_of.values())
    for op in trace.ops:
        if op.module in folded_bns:
            drop.add(op.index)
            for v in op.outputs:
                if v in values and v not in rename:
                    storages.pop(values.pop(v).sid, None)
    kept = [op for op in trace.ops if op.index not in drop]
    new_index = {op.index: i for i, op in enumerate(kept)}
    # An old index maps to the last kept op at or before it (a dropped op's effects end there).
    at_or_before, last = [], -1
    for i in range(len(trace.ops)):
        last = new_index.get(i, last)
        at_or_before.append(last)
    remap = lambda i: i if i < 0 else at_or_before[i]  # noqa: E731
    swap = lambda x: Ref(rename.get(x.vid, x.vid)) if isinstance(x, Ref) else x  # noqa: E731
    ops = []
    renamed = set(rename)
    for op in kept:  # Op(...) rather than dataclasses.replace: this loop visits every op of the model
        conv = new_args.get(op.index)
        touched_in = conv is not None or not renamed.isdisjoint(op.inputs)
        args, kwargs, inputs = op.args, op.kwargs, op.inputs
        if touched_in:
            if conv is not None:  # aten.convolution's tensors are its first three arguments, none by keyword
                x = op.args[0]
                args = (Ref(rename.get(x.vid, x.vid)), Ref(conv[0]), Ref(conv[1]), *op.args[3:])
                inputs = list(dict.fromkeys([args[0].vid, conv[0], conv[1]]))
            else:
                args, kwargs = map_args(swap, op.args), map_args(swap, op.kwargs)
                inputs = list(dict.fromkeys(rename.get(v, v) for v in op.inputs))
        outputs, out_tree = op.outputs, op.out_tree
        if not renamed.isdisjoint(op.outputs):
            outputs, out_tree = [rename.get(v, v) for v in op.outputs], map_args(swap, op.out_tree)
        in_place_of = None if op.in_place_of is None else rename.get(op.in_place_of, op.in_place_of)
        ops.append(Op(new_index[op.index], op.name, op.func, args, kwargs, inputs, outputs, out_tree,
                      op.module, op.module_type, in_place_of))
    for vid, v in values.items():
        p = v.producer
        if p >= 0 and at_or_before[p] != p:
            values[vid] = Value(v.vid, v.sid, v.shape, v.dtype, v.numel, at_or_before[p])
    for sid, s in storages.items():
        birth, death = s.birth, s.eager_death
        new_birth = birth if birth < 0 else at_or_before[birth]
        new_death = death if death is None or death < 0 else at_or_before[death]
        if new_birth != birth or new_death != death:
            storages[sid] = Storage(s.sid, s.nbytes, s.itemsize, s.floating, s.kind, new_birth, new_death)
    # A span starts at its first kept op, or (none kept) just after the last kept op before it.
    next_kept, upcoming = [len(trace.ops)] * (len(trace.ops) + 1), len(trace.ops)
    for i in range(len(trace.ops) - 1, -1, -1):
        upcoming = i if i in new_index else upcoming
        next_kept[i] = upcoming
    spans = []
    for name, first, end in trace.module_spans:
        start = new_index[next_kept[first]] if next_kept[first] <= end else remap(end) + 1
        spans.append((name, start, remap(end) if end >= 0 else end))
    types = dict(trace.module_types)
    types.update({bn: "Identity" for _, bn in pairs})
    return Trace(ops=ops, values=values, storages=storages, input_vids=list(trace.input_vids),
                 output_vids=[rename.get(v, v) for v in trace.output_vids], constants=constants,
                 module_types=types, module_spans=spans, param_bytes=trace.param_bytes)


def _modules(trace: Trace, model: nn.Module) -> dict[str, nn.Module]:
    """name -> module of ``model``: the trace's own walk when it traced this very model."""
    return trace.modules if trace.modules.get("") is model else dict(model.named_modules())

