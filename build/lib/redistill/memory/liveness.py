"""Peak-memory conventions computed from a :class:`~redistill.memory.trace.Trace`.

- ``live``: dataflow liveness over the executed op order. A buffer is live from the op
  that produces it to its last consumer (the model outputs to the end); views and in-place
  ops share their base's buffer. Element-wise ``add``/``add_`` get a fresh output buffer
  unless ``inplace_add`` (deployment runtimes do not add in place by default, and the
  published ResNet-50 figures assume they don't). ``inplace_depthwise`` lets a depthwise
  conv write its output into its dying input buffer, with one output channel of scratch.
- ``eager``: the buffers eager PyTorch really kept alive, as observed during the trace.
- ``layer``: the paper's convention: the max over conv/pool/linear/merge ops of their
  input + output bytes plus the tensors alive across them, under ``live`` lifetimes
  (so BN, activations and reshapes, which are not layers, never set the peak).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redistill.memory.trace import ADD_OPS, Trace

CONVENTIONS = ("live", "eager", "layer")

LAYER_OPS = {
    "aten.convolution.default",
    "aten.max_pool2d_with_indices.default",
    "aten.max_pool2d.default",
    "aten.max_pool1d.default",
    "aten.avg_pool2d.default",
    "aten._adaptive_avg_pool2d.default",
    "aten.adaptive_max_pool2d.default",
    "aten.mean.dim",
    "aten.addmm.default",
    "aten.mm.default",
    "aten.bmm.default",
    "aten.linear.default",
}
# Merges count as layers when at least two of their inputs are activations.
MERGE_OPS = ADD_OPS | {"aten.sub.Tensor", "aten.mul.Tensor", "aten.cat.default"}


@dataclass
class Buffer:
    """A buffer under a convention: a physical storage, or a fresh one the convention adds."""

    bid: int
    nbytes: int  # scaled to the requested element size
    kind: str  # "input" | "activation" | "param"
    birth: int
    death: int  # last op index it is live at; < birth when never used


@dataclass
class Plan:
    """Lifetimes under one convention, and the execution choices they imply for replay."""

    convention: str
    buffers: dict[int, Buffer]
    buffer_of: dict[int, int]  # vid -> bid
    live: list[int]  # live activation bytes at each op boundary (incl. scratch)
    produced: list[int]  # bytes of new buffers born at each op
    extra: dict[int, int] = field(default_factory=dict)  # op index -> scratch bytes
    add_mode: dict[int, str] = field(default_factory=dict)  # op index -> fresh|alias0|alias1
    dw_inplace: set[int] = field(default_factory=set)
    last_use: dict[int, int] = field(default_factory=dict)  # vid -> last op index


def scaled_bytes(nbytes: int, itemsize: int, floating: bool, elem_size: int) -> int:
    """Bytes of a buffer when its floating-point elements take ``elem_size`` bytes."""
    return nbytes // itemsize * elem_size if floating else nbytes


def _last_uses(trace: Trace) -> dict[int, int]:
    end = len(trace.ops) - 1
    last: dict[int, int] = {}
    for op in trace.ops:
        for v in op.inputs:
            last[v] = op.index
    for v in trace.output_vids:
        last[v] = end
    return last


def is_depthwise(trace: Trace, op) -> bool:
    if op.name != "aten.convolution.default":
        return False
    x, w = trace.values[op.args[0].vid], trace.values[op.args[1].vid]
    groups, transposed = op.args[8], op.args[6]
    return not transposed and groups > 1 and groups == x.shape[1] == w.shape[0]


def plan_eager(trace: Trace, elem_size: int) -> Plan:
    """Lifetimes as eager PyTorch kept them during the trace."""
    end = len(trace.ops) - 1
    buffers = {}
    for s in trace.storages.values():
        death = end if s.eager_death is None else s.eager_death
        nbytes = scaled_bytes(s.nbytes, s.itemsize, s.floating, elem_size)
        buffers[s.sid] = Buffer(s.sid, nbytes, s.kind, max(s.birth, 0), death)
    buffer_of = {v.vid: v.sid for v in trace.values.values()}
    return _finish(Plan("eager", buffers, buffer_of, [], [], last_use=_last_uses(trace)), trace)


def plan_live(trace: Trace, elem_size: int, inplace_depthwise: bool = False,
              inplace_add: bool = False, convention: str = "live") -> Plan:
    """Dataflow lifetimes (see module docstring)."""
    last = _last_uses(trace)
    buffers: dict[int, Buffer] = {}
    buffer_of: dict[int, int] = {}
    by_storage: dict[int, int] = {}  # physical sid -> bid currently holding it
    plan = Plan(convention, buffers, buffer_of, [], [], last_use=last)

    def new_buffer(nbytes: int, floating: bool, itemsize: int, kind: str, birth: int) -> int:
        bid = len(buffers)
        buffers[bid] = Buffer(bid, scaled_bytes(nbytes, itemsize, floating, elem_size), kind,
                              max(birth, 0), -1)
        return bid

    def assign(vid: int, bid: int) -> None:
        buffer_of[vid] = bid
        buffers[bid].death = max(buffers[bid].death, last.get(vid, -1))

    def from_storage(vid: int) -> int:
        s = trace.storages[trace.values[vid].sid]
        if s.sid not in by_storage:
            by_storage[s.sid] = new_buffer(s.nbytes, s.floating, s.itemsize, s.kind, s.birth)
        return by_storage[s.sid]

    for vid in trace.input_vids:
        assign(vid, from_storage(vid))
    for op in trace.ops:
        for vid in op.inputs:  # parameters and constants appear first as inputs
            if vid not in buffer_of:
                assign(vid, from_storage(vid))
        for out in op.outputs:
            if out in buffer_of:  # in-place op returning its argument
                continue
            value = trace.values[out]
            storage = trace.storages[value.sid]
            bid = None
            if op.name in ADD_OPS:
                hit = _alias_for_add(trace, op, out, buffer_of, buffers) if inplace_add else None
                if hit is not None:
                    bid, k = hit
                    plan.add_mode[op.index] = f"alias{k}"
                else:
                    plan.add_mode[op.index] = "fresh"
                    bid = new_buffer(value.numel * storage.itemsize, storage.floating,
                                     storage.itemsize, "activation", op.index)
            elif inplace_depthwise and is_depthwise(trace, op):
                bid = _alias_for_depthwise(trace, op, out, buffer_of, buffers)
                if bid is not None:
                    plan.dw_inplace.add(op.index)
                    n, c, h, w = value.shape
                    plan.extra[op.index] = h * w * elem_size if storage.floating else h * w
            if bid is None:
                bid = from_storage(out)
            else:
                by_storage[value.sid] = bid
            assign(out, bid)
    return _finish(plan, trace)


def _alias_for_add(trace, op, out, buffer_of, buffers) -> tuple[int, int] | None:
    """(buffer, arg position) of an input the add may overwrite: same shape, dying here."""
    shape = trace.values[out].shape
    for k, arg in enumerate(op.args[:2]):
        vid = getattr(arg, "vid", None)
        if vid is None or trace.values[vid].shape != shape:
            continue
        if trace.values[vid].dtype != trace.values[out].dtype:
            continue
        buf = buffers[buffer_of[vid]]
        alpha = op.kwargs.get("alpha", 1)
        if k == 1 and alpha != 1:  # b.add_(a) equals a + alpha*b only for alpha 1
            continue
        if buf.kind == "activation" and buf.death == op.index:
            return buf.bid, k
    return None


def _alias_for_depthwise(trace, op, out, buffer_of, buffers) -> int | None:
    vid = op.args[0].vid
    x, y = trace.values[vid], trace.values[out]
    storage = trace.storages[x.sid]
    buf = buffers[buffer_of[vid]]
    dense = storage.nbytes == x.numel * storage.itemsize
    if buf.kind == "activation" and buf.death == op.index and dense and y.numel <= x.numel:
        return buf.bid
    return None


def _finish(plan: Plan, trace: Trace) -> Plan:
    """Per-op live and produced bytes from the buffer lifetimes."""
    n = len(trace.ops)
    delta = [0] * (n + 1)
    produced = [0] * n
    for buf in plan.buffers.values():
        if buf.kind == "param" or buf.death < buf.birth:
            continue
        delta[buf.birth] += buf.nbytes
        delta[buf.death + 1] -= buf.nbytes
        if buf.kind == "activation" and buf.birth < n:
            produced[buf.birth] += buf.nbytes
    live, running = [], 0
    for i in range(n):
        running += delta[i]
        live.append(running + plan.extra.get(i, 0))
    plan.live, plan.produced = live, produced
    return plan


def layer_ops(trace: Trace, plan: Plan) -> list[int]:
    """Indices of the ops the layer convention takes its max over."""
    picked = []
    for op in trace.ops:
        if op.name in LAYER_OPS:
            picked.append(op.index)
        elif op.name in MERGE_OPS:
            acts = {plan.buffer_of[v] for v in op.inputs
                    if plan.buffers[plan.buffer_of[v]].kind != "param"}
            if len(acts) >= 2:
                picked.append(op.index)
    return picked
