"""Fold eval-mode BatchNorm into the convolution that feeds it (the deployed form)."""

from __future__ import annotations

import copy

import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from redistill.memory.trace import Trace

_BN_OPS = {"aten._native_batch_norm_legit_no_training.default", "aten.native_batch_norm.default"}


def foldable_pairs(trace: Trace, model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where the BN reads a conv output that nothing else reads.

    Found from the executed graph, not from module order, so it is right for any model;
    modules called more than once are left alone (folding would change other calls).
    """
    modules = dict(model.named_modules())
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
        if op.name not in _BN_OPS or not isinstance(modules.get(op.module), nn.BatchNorm2d):
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
