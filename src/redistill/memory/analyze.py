"""``analyze_memory``: exact peak activation memory of any ``nn.Module``."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensorMode

from redistill.errors import UserError
from redistill.memory import liveness, replay
from redistill.memory.fold import fold_batchnorm, fold_trace, foldable_pairs
from redistill.memory.report import MemoryReport, ModuleEntry, OpEntry
from redistill.memory.trace import Trace, paused_gc, trace_model
from redistill.util import model_inputs

DTYPE_SIZES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}

InputLike = Sequence[int] | torch.Tensor | tuple[torch.Tensor, ...]


def make_inputs(input: InputLike, batch_size: int | None = None,
                fake_mode: FakeTensorMode | None = None) -> tuple[torch.Tensor, ...]:
    """Example input tensors from a shape (random, seeded) or tensors.

    Args:
        input: a shape like (1, 3, 224, 224) or (3, 224, 224), a tensor, or a tuple of tensors.
        batch_size: replaces the batch dimension of a shape (prepended to a 3-d shape).
        fake_mode: make fake tensors of this ``FakeTensorMode`` instead (shapes only, nothing allocated).
    """
    if isinstance(input, torch.Tensor):
        input = (input,)
    if isinstance(input, (tuple, list)) and input and all(isinstance(t, torch.Tensor) for t in input):
        return tuple(fake_mode.from_tensor(t) for t in input) if fake_mode else tuple(input)
    shape = [int(s) for s in input]
    if any(s <= 0 for s in shape) or not shape:
        raise UserError(f"input shape {shape} must have positive sizes, e.g. 1x3x224x224")
    if len(shape) == 3:
        shape = [batch_size or 1, *shape]
    elif batch_size is not None:
        shape[0] = batch_size
    if fake_mode is not None:
        with fake_mode:
            return (torch.empty(shape),)
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(shape, generator=gen),)


def prepare(model: nn.Module, inputs: tuple[torch.Tensor, ...], fold_bn: bool, folded_model: bool = True,
            fake_mode: FakeTensorMode | None = None, compute_all: bool = False,
            named: list[tuple[str, nn.Module]] | None = None) -> tuple[nn.Module, Trace, int]:
    """Trace the model once in eval mode, BN folded into convs when asked (the trace is folded
    as the model would be; the model only on a copy, and only when ``folded_model``).
    With ``fake_mode`` (the inputs' mode) the forward runs on fake tensors: shapes and
    lifetimes, no activation is allocated. The heavy ops are allocated, not computed, unless
    ``compute_all`` (:func:`redistill.memory.trace.trace_model`'s ``values``). ``named`` is
    ``list(model.named_modules())`` where the caller has walked the model already.

    Returns:
        The folded copy (or the model itself: no pair, or ``folded_model`` False), the trace
        of the folded model and the number of folded (conv, bn) pairs.
    """
    # Only the modules in training mode are switched (and switched back): ``Module.eval()`` walks every
    # module through ``__setattr__``, which costs more than tracing a small model's forward.
    named = list(model.named_modules()) if named is None else named
    training = [m for _, m in named if m.training]
    for m in training:
        m.training = False
    try:
        with paused_gc():
            with fake_mode if fake_mode is not None else contextlib.nullcontext():
                trace, _ = trace_model(model, inputs, values=compute_all, named=named)
            pairs = foldable_pairs(trace, model) if fold_bn else []
            if pairs:
                trace = fold_trace(trace, model, pairs, weights=folded_model)  # the weights only where it runs
                if folded_model:
                    model = fold_batchnorm(model, pairs)
    finally:
        for m in training:
            m.training = True
    return model, trace, len(pairs)


def analyze_memory(
    model: nn.Module,
    input: InputLike,
    *,
    batch_size: int | None = None,
    dtype: str = "fp32",
    convention: str = "live",
    fold_bn: bool = True,
    inplace_depthwise: bool = False,
    inplace_add: bool = False,
    measure: bool = False,
    fake: bool = False,
    compute_all: bool = False,
    name: str | None = None,
) -> MemoryReport:
    """Peak activation memory of ``model`` on ``input``.

    Args:
        model: any module; it is not modified (folding works on a copy).
        input: example input: a shape or tensor(s); from an image alone, the other inputs a
            model declares (:func:`redistill.util.model_inputs`, e.g. a UNet's timestep) are added.
        batch_size: batch size (default: the shape's, or 1).
        dtype: element size of activations: fp32 | fp16 | bf16 | int8 (1 byte).
        convention: live | eager | layer (see :mod:`redistill.memory.liveness`).
        fold_bn: fold BatchNorm into the preceding conv, as deployed.
        inplace_depthwise: depthwise convs overwrite their input (+ one channel).
        inplace_add: element-wise adds overwrite a dying input.
        measure: also run the model for real and measure (adds ``report.measured``).
        fake: analyse under ``FakeTensorMode``: the same shapes and lifetimes without allocating any
            activation, so inputs too large for this machine can be planned (not with ``measure``).
        compute_all: compute every op of the trace. By default the heavy ops (convolutions, matrix
            products) are allocated from their meta kernels instead, and whatever derives from their
            outputs only where a value is needed; the trace is the same (rerun in full where a value
            decides anything an ATen op sees). Only a model that reads values without an ATen op
            (``Tensor.tolist()``, ``.numpy()``) needs it.
        name: model name for the report.
    Returns:
        A :class:`MemoryReport`.
    """
    if dtype not in DTYPE_SIZES:
        raise UserError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPE_SIZES)}")
    if convention not in liveness.CONVENTIONS:
        raise UserError(f"unknown convention '{convention}'; use one of {', '.join(liveness.CONVENTIONS)}")
    if fake and measure:
        raise UserError("--measure runs the model for real; drop --fake to measure")
    # The collector stays paused until the trace is gone: it dies by reference counting, and the
    # collection that re-enabling would run over its thousands of objects is never needed.
    with paused_gc():
        return _analyze(model, input, batch_size, dtype, convention, fold_bn, inplace_depthwise, inplace_add,
                        measure, fake, compute_all, name)


def _analyze(model, input, batch_size, dtype, convention, fold_bn, inplace_depthwise, inplace_add, measure,
             fake, compute_all, name) -> MemoryReport:
    elem = DTYPE_SIZES[dtype]
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
    inputs = make_inputs(input, batch_size, fake_mode)
    if len(inputs) == 1:  # a model that needs more than the image (a UNet's timestep) builds the rest
        inputs = model_inputs(model, inputs[0])
    named = list(model.named_modules())  # one walk of the module tree, shared by every step below
    traced_model, trace, n_folded = prepare(model, inputs, fold_bn, folded_model=measure, fake_mode=fake_mode,
                                           compute_all=compute_all, named=named)

    live = liveness.plan_live(trace, elem, inplace_depthwise, inplace_add)
    eager = liveness.plan_eager(trace, elem)
    layer_idx = liveness.layer_ops(trace, live)
    peaks = {
        "live": max(live.live, default=0),
        "eager": max(eager.live, default=0),
        "layer": max((live.live[i] for i in layer_idx), default=0),
    }
    plan = eager if convention == "eager" else live
    candidates = layer_idx if convention == "layer" else range(len(trace.ops))
    peak_index = max(candidates, key=lambda i: plan.live[i], default=0)
    layer_set = set(layer_idx)
    timeline = [
        OpEntry(op.index, op.name.removeprefix("aten."), op.module, plan.live[op.index],
                plan.produced[op.index], op.index in layer_set)
        for op in trace.ops
    ]
    peak_op = trace.ops[peak_index] if trace.ops else None
    report = MemoryReport(
        model=name or type(model).__name__,
        input_shape=list(inputs[0].shape),
        dtype=dtype,
        convention=convention,
        options={"fold_bn": fold_bn, "folded_pairs": n_folded, "fake": fake, "compute_all": compute_all,
                 "inplace_depthwise": inplace_depthwise, "inplace_add": inplace_add},
        peak_bytes=peaks[convention],
        peak_index=peak_index,
        peak_op=peak_op.name.removeprefix("aten.") if peak_op else "",
        peak_module=peak_op.module if peak_op else "",
        peaks=peaks,
        param_bytes=sum(trace.param_bytes.values()),  # the model's own, before any folding
        timeline=timeline,
        modules=_module_summary(trace, plan, traced_model),
    )
    if measure:
        fp32 = live if elem == 4 else liveness.plan_live(trace, 4, inplace_depthwise, inplace_add)
        report.measured = measure_report(traced_model, trace, live, eager, inputs, elem, fp32)
    return report


def measure_report(model: nn.Module, trace: Trace, live: liveness.Plan, eager: liveness.Plan,
                   inputs: tuple[torch.Tensor, ...], elem: int, fp32_live: liveness.Plan) -> dict:
    """Measured peaks next to the predictions (see :mod:`redistill.memory.replay`).

    The allocator runs the model in fp32, so its excess is taken over ``fp32_live``.
    """
    live_measured = replay.replay(trace, live, inputs, elem)
    eager_measured = replay.measure_eager(model, inputs, elem)
    alloc = replay.allocator_peak_cpu(trace, live, inputs)
    return {
        "live_boundary_peak": max(live_measured, default=0),
        "live_predicted_peak": max(live.live, default=0),
        "eager_boundary_peak": max(eager_measured, default=0),
        "eager_predicted_peak": max(eager.live, default=0),
        "cpu_allocator_peak": alloc,
        "cpu_allocator_excess": alloc - max(fp32_live.live, default=0),
        "cuda_peak": replay.cuda_peak(trace, live, inputs),
        "live_boundary": live_measured,
        "eager_boundary": eager_measured,
    }


def _display_groups(model: nn.Module) -> set[str]:
    """Children of the root, with root-level containers expanded one level."""
    names = set()
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            names.update(f"{name}.{sub}" for sub, _ in child.named_children())
        else:
            names.add(name)
    return names


def _module_summary(trace: Trace, plan: liveness.Plan, model: nn.Module) -> list[ModuleEntry]:
    groups = _display_groups(model)
    entries: dict[str, ModuleEntry] = {}
    for name, first, last in trace.module_spans:
        if name not in groups or last < first:
            continue
        peak = max(plan.live[first:last + 1])
        produced = sum(plan.produced[first:last + 1])
        e = entries.get(name)
        if e is None:
            entries[name] = ModuleEntry(name, trace.module_types.get(name, ""), first, last, peak, produced)
        else:  # a module called several times: merge its calls
            e.last_op, e.peak_bytes = max(e.last_op, last), max(e.peak_bytes, peak)
            e.produced_bytes += produced
    return sorted(entries.values(), key=lambda e: e.first_op)
