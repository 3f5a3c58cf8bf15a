"""Dispatch-level tracing of one forward pass.

The tracer runs the real model on real tensors under a ``TorchDispatchMode``, so it works
on any model (including data-dependent Python control flow that ``torch.fx`` cannot
trace) and sees every ATen op that actually executes. It records, per op, which values
(tensors) it reads and writes, which storage each value lives in, the module that was
running, and when eager PyTorch actually freed each storage. The recording holds no
reference to activations, so those frees are real. The recording is also a straight-line
program that :mod:`redistill.memory.replay` can execute again.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._prims_common as prims_common
import torch.nn as nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils import _python_dispatch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from redistill.errors import UserError

# Element-wise merges of two activations; the in-place-add option and the layer
# convention treat these specially.
ADD_OPS = {"aten.add.Tensor", "aten.add_.Tensor"}

_aten = torch.ops.aten
# The ops that cost a forward its time. A trace that needs shapes and lifetimes only (``values=False``)
# does not compute them: their outputs are allocated with the sizes and strides of their meta kernels.
HEAVY_OPS = frozenset({_aten.convolution.default, _aten.mm.default, _aten.addmm.default, _aten.bmm.default,
                       _aten.baddbmm.default})
# Element-wise ops whose result, for tensor operands of one shape, dtype (floating) and layout and any
# Python numbers besides, is a new tensor of that shape, dtype and layout: the common merges and
# activations of CNNs, where a shapes-only trace allocates it rather than computing it (see _uncomputed).
_SAME_LAYOUT_OPS = frozenset({
    _aten.add.Tensor, _aten.sub.Tensor, _aten.mul.Tensor, _aten.relu.default, _aten.hardswish.default,
    _aten.hardsigmoid.default, _aten.sigmoid.default, _aten.silu.default, _aten.hardtanh.default,
    _aten.gelu.default, _aten.tanh.default})
# Ops whose result (a Python scalar, an output shape) depends on the values of their inputs.
_VALUE_TAGS = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)


_CONV = _aten.convolution.default
_EMPTY = _aten.empty.memory_format  # eval BatchNorm allocates one on every call
_EXPIRED, _FREE_REF = torch.UntypedStorage._expired, torch.UntypedStorage._free_weak_ref


class _NeedValues(BaseException):
    """A value that was not computed decides something: the trace is rerun with every op computed.
    A BaseException, so that a model's own ``except Exception`` does not swallow it."""


def _has_scalar(out: Any) -> bool:
    if isinstance(out, (tuple, list)):
        return any(_has_scalar(x) for x in out)
    return isinstance(out, (bool, int, float, complex))


def _meta_like(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device="meta")
    return x


@dataclass(frozen=True, slots=True)
class _OpInfo:
    """What the tracer needs to know of an OpOverload, worked out once per process (none of it is free)."""

    name: str
    is_view: bool
    value_dependent: bool  # a Python number or an output shape that depends on its inputs' values
    stand_in: str | None  # how a shapes-only trace replaces computing it (see _uncomputed)
    writes: tuple[int | str, ...]  # the arguments it writes into (positions, or names when passed by keyword)
    # The positions of its Tensor and optional Tensor arguments: only those are looked at for tensors
    # (the others, a convolution's strides and paddings, pass through unwalked). None where an argument
    # is a list of tensors (``cat``, ``index``): then every argument is walked.
    tensor_args: tuple[int, ...] | None

    @staticmethod
    def of(func) -> _OpInfo:
        tags = func.tags
        if func in HEAVY_OPS:
            stand_in = "allocate"
        elif torch.Tag.inplace in tags and torch.Tag.pointwise in tags:
            stand_in = "inplace"
        elif func in _SAME_LAYOUT_OPS:
            stand_in = "same_layout"
        elif func is _aten._native_batch_norm_legit_no_training.default:
            stand_in = "eval_bn"
        elif func is _aten.native_batch_norm.default:
            stand_in = "bn"
        else:
            stand_in = None
        arguments = func._schema.arguments
        writes = tuple(x for i, a in enumerate(arguments)
                       if a.alias_info is not None and a.alias_info.is_write for x in (i, a.name))
        kinds = [_argument_kind(a.type) for a in arguments]
        tensor_args = None if "list" in kinds else tuple(
            i for i, (a, k) in enumerate(zip(arguments, kinds)) if k == "tensor" and not a.kwarg_only)
        return _OpInfo(str(func), func.is_view, any(t in tags for t in _VALUE_TAGS), stand_in, writes, tensor_args)


def _argument_kind(t) -> str:
    """"tensor" for a Tensor or optional Tensor schema type, "list" for a list that may hold tensors
    (or a type that is neither, to be safe), "other" for everything else."""
    if isinstance(t, torch.OptionalType):
        t = t.getElementType()
    if isinstance(t, torch.TensorType):
        return "tensor"
    if isinstance(t, torch.ListType):
        return "other" if _argument_kind(t.getElementType()) == "other" else "list"
    if isinstance(t, (torch.IntType, torch.FloatType, torch.BoolType, torch.NumberType, torch.StringType,
                      torch.DeviceObjType, torch.SymIntType, torch.ComplexType)) or str(t) in _PLAIN_TYPES:
        return "other"
    return "list"


# Schema types that print as these hold no tensor (dtypes, layouts and memory formats print as int).
_PLAIN_TYPES = frozenset({"int", "float", "bool", "str", "number", "Device", "Layout", "ScalarType",
                          "MemoryFormat", "Generator", "Dimname", "SymInt", "complex", "Storage"})


# OpOverload -> what the tracer needs to know of it (the same in every trace; OpOverloads live for good).
_OP_INFO: dict[Any, _OpInfo] = {}


def _uncomputed(stand_in: str, func, args, kwargs, undefined: bool) -> Any:
    """What a shapes-only trace puts in place of computing ``func``, or None where it must compute it.

    The heavy ops on contiguous CPU operands are allocated from their meta kernels. Where an input is
    already undefined, the result is too, and three kinds of common op need no computing either: an
    in-place pointwise op (``relu_``, ``add_``) returns its argument as it is, an element-wise op of
    operands alike in shape, dtype and strides (:data:`_SAME_LAYOUT_OPS`: a residual add, an activation)
    returns a tensor like its first, and an eval BatchNorm of a contiguous fp32 CPU input returns a
    contiguous tensor and two empty statistics, as its CPU kernel allocates them (its meta kernel is a
    Python decomposition that costs more than the kernel). Their buffers are
    left as allocated, and zeroed only where a computed op reads them (``_Tracer._fill``)."""
    if stand_in == "allocate":
        # Where the meta kernel's layout is the CPU kernel's: operands on the CPU with exactly row-major
        # strides, size-1 dimensions included (for an operand the CPU convolution reads as channels-last,
        # such as an (O, I, 1, 1) weight converted to it, which ``is_contiguous()`` also accepts, the meta
        # kernel answers contiguous where the CPU one answers channels-last).
        if func is _CONV:  # its tensors are its first three arguments (the bias may be None)
            x, weight, bias = args[0], args[1], args[2]
            if _row_major_cpu(x) and _row_major_cpu(weight) and (bias is None or _row_major_cpu(bias)):
                return _allocate_output(func, args, kwargs)
            return None
        for a in args:
            if isinstance(a, torch.Tensor) and not _row_major_cpu(a):
                return None
        return _allocate_output(func, args, kwargs)
    if not undefined or not args or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    if stand_in == "same_layout":
        # Operands of one shape, dtype and strides, non-overlapping and dense: TensorIterator gives the
        # output those strides (``empty_like`` keeps them), and a Python number never changes a floating dtype.
        if not x.dtype.is_floating_point or not (x.is_contiguous() or _dense(x)):
            return None
        shape, stride, dtype = x.shape, x.stride(), x.dtype
        for a in (*args[1:], *kwargs.values()):
            if isinstance(a, torch.Tensor):
                if a.shape != shape or a.dtype != dtype or a.stride() != stride or a.device != x.device:
                    return None
            elif type(a) not in (int, float, bool, str) and a is not None:  # gelu's approximate='tanh'
                return None
        return torch.empty_like(x)
    if stand_in == "inplace":
        # eager refuses an overlapping write (the contiguous case answered first: the full check is in Python)
        if not (x.is_contiguous() or _dense(x)):
            return None
        others = [a for a in (*args[1:], *kwargs.values()) if isinstance(a, torch.Tensor)]
        if all(a.dtype == x.dtype and torch.broadcast_shapes(a.shape, x.shape) == x.shape for a in others):
            return x
        return None
    eval_mode = stand_in == "eval_bn" or (len(args) > 5 and args[5] is False)  # native_batch_norm: training
    if eval_mode and x.dtype == torch.float32 and x.is_cpu and x.is_contiguous():
        return torch.empty_like(x), x.new_empty(0), x.new_empty(0)
    return None


def _dense(t: torch.Tensor) -> bool:
    return prims_common.is_non_overlapping_and_dense_or_false(t)


def _row_major_cpu(t: torch.Tensor) -> bool:
    """On the CPU with exactly row-major strides (``make_contiguous_strides_for``'s, size-1 and size-0
    dimensions included), in plain integers: this runs for every operand of every heavy op."""
    if not t.is_cpu:  # (``t.device.type`` builds a device object: several times the cost)
        return False
    shape = t.shape
    if 1 not in shape and 0 not in shape:  # without size-1 (or empty) dimensions, contiguous is exactly row-major
        return t.is_contiguous()
    expected = 1
    for size, stride in zip(reversed(shape), reversed(t.stride())):
        if stride != expected:
            return False
        if size > 1:
            expected *= size
    return True


def _conv_output_shape(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    """The output shape ``aten.convolution``'s meta kernel gives (contiguous, in the input's dtype), in
    plain integers: the meta kernel costs about 40 us a call, as much as the rest of recording the op.
    None where the arguments are anything but ordinary (the meta kernel then decides)."""
    shape, kernel = x.shape, weight.shape
    n = len(shape) - 2
    if n <= 0 or len(kernel) != n + 2 or shape[1] == 0:
        return None
    if len(stride) != n or len(padding) != n or len(dilation) != n or len(output_padding) != n:
        stride, padding, dilation, output_padding = (
            list(v) * n if len(v) == 1 else list(v) for v in (stride, padding, dilation, output_padding))
        if not (len(stride) == len(padding) == len(dilation) == len(output_padding) == n):
            return None
    out = [shape[0], 0]
    if transposed:
        out[1] = groups * kernel[1]
        for j in range(n):
            span = dilation[j] * (kernel[j + 2] - 1) + 1
            o = (shape[j + 2] - 1) * stride[j] - 2 * padding[j] + span + output_padding[j]
            if o <= 0:
                return None
            out.append(o)
    else:
        if kernel[1] * groups != shape[1]:
            return None
        out[1] = kernel[0]
        for j in range(n):
            span = dilation[j] * (kernel[j + 2] - 1) + 1
            padded = shape[j + 2] + 2 * padding[j]
            if padded < span:
                return None
            out.append((padded - span) // stride[j] + 1)
    return out


def _allocate_output(func, args, kwargs) -> Any:
    """The output of ``func`` allocated, not computed: sizes, strides and dtype from its meta kernel
    (what eager PyTorch allocates), the device of its first tensor argument, left uninitialised."""
    if func is _CONV and not kwargs:
        shape = _conv_output_shape(*args)
        if shape is not None:
            return args[0].new_empty(shape)  # the input's dtype and device
    device = next(x.device for x in args if isinstance(x, torch.Tensor))
    meta = func(*map_args(_meta_like, args), **map_args(_meta_like, kwargs))

    def real(m: Any) -> Any:
        if isinstance(m, torch.Tensor):
            return torch.empty_strided(m.size(), m.stride(), dtype=m.dtype, device=device)
        return m
    return map_args(real, meta)


@dataclass(slots=True)
class Storage:
    """One physical buffer seen during the trace."""

    sid: int
    nbytes: int
    itemsize: int
    floating: bool
    kind: str  # "input" | "activation" | "param" (parameters, buffers, constants)
    birth: int  # index of the op that produced it (-1: existed before the forward)
    eager_death: int | None = None  # last op index during which eager PyTorch kept it


@dataclass(slots=True)
class Value:
    """One tensor produced (or read) during the trace."""

    vid: int
    sid: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    numel: int
    producer: int  # op index, -1 for inputs and constants


@dataclass(slots=True)
class Ref:
    """Placeholder for a traced tensor inside a recorded op's arguments."""

    vid: int


@dataclass(slots=True)
class Op:
    index: int
    name: str  # e.g. "aten.convolution.default"
    func: Any  # the OpOverload, for replay
    args: Any  # pytree with Ref placeholders
    kwargs: Any
    inputs: list[int]  # vids read (unique, in order)
    outputs: list[int]  # vids written
    out_tree: Any  # pytree of the result with Ref placeholders
    module: str  # qualified name of the innermost running module ("" = root)
    module_type: str
    in_place_of: int | None = None  # vid whose tensor object the op returned (in-place op)


@dataclass
class Trace:
    ops: list[Op] = field(default_factory=list)
    values: dict[int, Value] = field(default_factory=dict)
    storages: dict[int, Storage] = field(default_factory=dict)
    input_vids: list[int] = field(default_factory=list)
    output_vids: list[int] = field(default_factory=list)
    constants: dict[int, torch.Tensor] = field(default_factory=dict)  # vid -> tensor (params etc.)
    module_types: dict[str, str] = field(default_factory=dict)
    module_spans: list[tuple[str, int, int]] = field(default_factory=list)  # (name, first op, last op)
    # name -> module of the traced model (what ``named_modules`` gives; walking it again costs a forward's
    # worth of small ops on a large model). Empty in a trace derived from another (fold_trace).
    modules: dict[str, nn.Module] = field(default_factory=dict)
    # storage cdata -> bytes of the traced model's parameters and buffers (:func:`param_storages`)
    param_bytes: dict[int, int] = field(default_factory=dict)


# Leaf types that are neither a tensor nor a placeholder (most op arguments): passed through as they are.
_LEAVES = frozenset({int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout,
                     torch.memory_format})


_DIRECT = (torch.Tensor, Ref)  # what ``map_args`` hands to its ``fn``


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def map_args(fn, tree: Any) -> Any:
    """``tree_map(fn, tree)`` for op arguments, whose ``fn`` maps tensors and :class:`Ref` placeholders:
    plain tuples, lists and dicts are walked by hand (the tracer does this for every op, and ``tree_map``
    costs about ten times more), scalars, dtypes and devices pass through without a call to ``fn``, and
    any other container (a named tuple, a structseq) goes to ``tree_map``."""
    kind = type(tree)
    if kind in _LEAVES:
        return tree
    leaves, direct = _LEAVES, _DIRECT
    # A tensor or placeholder among the items goes straight to ``fn``, without a call of this function.
    if kind is tuple:
        return tuple([x if type(x) in leaves else fn(x) if isinstance(x, direct) else map_args(fn, x)
                      for x in tree])
    if kind is list:
        return [x if type(x) in leaves else fn(x) if isinstance(x, direct) else map_args(fn, x) for x in tree]
    if kind is dict:
        return {k: v if type(v) in leaves else fn(v) if isinstance(v, direct) else map_args(fn, v)
                for k, v in tree.items()}
    if isinstance(tree, (tuple, list, dict)):
        return tree_map(fn, tree)
    return fn(tree)


class _Tracer(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # TorchDispatchMode wraps a subclass's __torch_dispatch__ in torch._disable_dynamo, a few
        # microseconds on every op; nothing here runs under torch.compile, so the wrapper is not asked for.
        return False

    def __init__(self, trace: Trace, param_cdata: dict[int, int], values: bool = True):
        super().__init__()
        self.trace = trace
        self.param_cdata = param_cdata
        self.values = values  # False: HEAVY_OPS are allocated, not computed
        self.undefined: set[int] = set()  # sids whose contents were not computed (or derive from such)
        # sids of stand-in outputs whose buffer still holds what the allocator left there: zeroed only
        # when a computed op reads them (see _fill)
        self.unfilled: set[int] = set()
        self.input_cdata: set[int] = set()  # storages of the model's inputs
        # id(tensor) -> (vid, weak reference to the tensor). A plain dict: a WeakIdKeyDictionary builds a
        # reference object on every lookup, and lookups happen for every argument of every op. The weak
        # reference tells a live entry from one whose tensor died and whose id was reused.
        self.vids: dict[int, tuple[int, weakref.ref]] = {}
        # storage cdata -> (sid, weak reference): a raw one (``UntypedStorage._weak_ref``), freed by
        # release(); torch's StorageWeakRef wrapper costs several times more to make and drop.
        self.live: dict[int, tuple[int, int]] = {}
        self.params: dict[int, int] = {}  # storage cdata -> sid of the model's own parameters and buffers
        self.module_stack: list[str] = [""]

    # -- bookkeeping -------------------------------------------------------
    def _storage_of(self, t: torch.Tensor, producer: int, kind: str) -> int:
        st = t.untyped_storage()
        key = st._cdata
        if key in self.params:
            return self.params[key]
        hit = self.live.get(key)
        if hit is not None:
            if not _EXPIRED(hit[1]):
                return hit[0]
            # Freed since the last op boundary and its address reused already.
            self.trace.storages[hit[0]].eager_death = producer - 1
            _FREE_REF(hit[1])
        sid = len(self.trace.storages)
        if key in self.param_cdata:
            kind = "param"
        dtype = t.dtype
        self.trace.storages[sid] = Storage(sid, st.nbytes(), t.element_size(),
                                           dtype.is_floating_point or dtype.is_complex, kind, producer)
        if key in self.param_cdata:  # the model holds it for the whole forward: never reaped
            self.params[key] = sid
        else:
            self.live[key] = (sid, st._weak_ref())
        return sid

    def _new_value(self, t: torch.Tensor, producer: int, kind: str = "activation") -> int:
        vid = len(self.trace.values)
        sid = self._storage_of(t, producer, kind)
        self.trace.values[vid] = Value(vid, sid, tuple(t.shape), t.dtype, t.numel(), producer)
        self.vids[id(t)] = (vid, weakref.ref(t))
        return vid

    def vid_of(self, t: torch.Tensor) -> int | None:
        """The value id of a tensor seen by the tracer, or None."""
        hit = self.vids.get(id(t))
        return hit[0] if hit is not None and hit[1]() is t else None

    def _alias_param_view(self, view: torch.Tensor, base_vid: int) -> None:
        """A view of a parameter is a parameter: under FakeTensorMode its storage is the fake copy's,
        not the parameter's, so it is bound to the parameter's storage here."""
        base = self.trace.storages[self.trace.values[base_vid].sid]
        st = view.untyped_storage()
        if base.kind == "param" and st._cdata not in self.live:
            self.live[st._cdata] = (base.sid, st._weak_ref())

    def register_input(self, t: torch.Tensor) -> None:
        self.trace.input_vids.append(self._new_value(t, -1, "input"))
        self.input_cdata.add(t.untyped_storage()._cdata)

    def _writes_state(self, writes: tuple[int | str, ...], args, kwargs) -> bool:
        """Whether an op writes into a parameter, a buffer or an input of the model."""
        for w in writes:
            t = args[w] if isinstance(w, int) and w < len(args) else kwargs.get(w) if isinstance(w, str) else None
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage()._cdata
                if key in self.param_cdata or key in self.input_cdata:
                    return True
        return False

    def _new_constant(self, t: torch.Tensor) -> int:
        """A value for an argument no traced op produced: a parameter, buffer or constant."""
        vid = self._new_value(t, -1, "param")
        self.trace.constants[vid] = t
        return vid

    def _fill(self, tensors: list[torch.Tensor], vids: list[int]) -> None:
        """Zero the buffers a computed op is about to read that a stand-in left as allocated: what an
        uninitialised buffer holds can be denormal or NaN, which slows the op several times. Buffers
        no computed op reads (most of them: a convolution's output read only by its BatchNorm) are
        never written at all."""
        values = self.trace.values
        for t, v in zip(tensors, vids):
            sid = values[v].sid
            if sid in self.unfilled:
                self.unfilled.discard(sid)
                t.untyped_storage().fill_(0)

    def _reap(self, index: int) -> None:
        """Record the storages eager PyTorch has freed since the previous op."""
        dead = [k for k, (_, ref) in self.live.items() if _EXPIRED(ref)]
        for key in dead:
            sid, ref = self.live.pop(key)
            self.trace.storages[sid].eager_death = index - 1
            _FREE_REF(ref)

    def release(self) -> None:
        """Free the weak references still held (the storages that outlive the forward)."""
        for _, ref in self.live.values():
            _FREE_REF(ref)
        self.live.clear()

    # -- the mode ----------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.prim.device.default:  # a metadata query (fake tensors ask it), not an op
            return func(*args, **kwargs)
        index = len(self.trace.ops)
        self._reap(index)
        # Placeholders are taken before the call: an add_ re-binds its tensor to a new value.
        in_tensors: list[torch.Tensor] = []
        in_vids: list[int] = []

        vids = self.vids

        def to_ref(x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            hit = vids.get(id(x))  # vid_of, inlined: this runs for every tensor argument of every op
            vid = hit[0] if hit is not None and hit[1]() is x else self._new_constant(x)
            in_tensors.append(x)
            in_vids.append(vid)
            return Ref(vid)

        info = _OP_INFO.get(func)
        if info is None:
            info = _OP_INFO[func] = _OpInfo.of(func)
        positions = info.tensor_args
        if positions is None:
            args_ref = map_args(to_ref, args)
        else:  # only the Tensor arguments (in order, as map_args would meet them): the rest are no tensors
            args_ref = list(args)
            n = len(args)
            for i in positions:
                if i < n:
                    args_ref[i] = to_ref(args[i])
            args_ref = tuple(args_ref)
        kwargs_ref = map_args(to_ref, kwargs) if kwargs else kwargs
        values = self.trace.values  # storages, not values: a write into a view leaves its base undefined
        undefined = False
        if self.undefined:
            for v in in_vids:
                if values[v].sid in self.undefined:
                    undefined = True
                    break
        if not self.values and info.writes and self._writes_state(info.writes, args, kwargs):
            # The model's parameters, buffers or inputs would be written from what may not have been
            # computed, and twice if the trace had to rerun: compute every op from the start instead.
            raise _NeedValues(info.name)
        out = None
        if not self.values and info.stand_in is not None:
            out = _uncomputed(info.stand_in, func, args, kwargs, undefined)
        stood_in = out is not None
        if stood_in:
            undefined = True
        else:
            if undefined and info.value_dependent:
                raise _NeedValues(info.name)
            if self.unfilled and not info.is_view:
                self._fill(in_tensors, in_vids)
            # torch.empty is the same op, without the cost of parsing keywords against the schema
            out = torch.empty(*args, **kwargs) if func is _EMPTY else func(*args, **kwargs)
            if undefined and _has_scalar(out):
                raise _NeedValues(info.name)  # a Python number read off an undefined tensor
        name, is_view = info.name, info.is_view
        in_place_of = None
        outputs: list[int] = []

        def record(x: Any) -> Any:
            nonlocal in_place_of
            if not isinstance(x, torch.Tensor):
                return x
            if is_view and in_vids:
                self._alias_param_view(x, in_vids[0])
            same = None
            for t, v in zip(in_tensors, in_vids):
                if t is x:
                    same = v
                    break
            if same is not None and name not in ADD_OPS:
                # An in-place op returned its argument: same value, same buffer.
                in_place_of = same
                vid = same
            else:
                # add_ is recorded as a new value so conventions may give it a fresh buffer.
                if same is not None:
                    in_place_of = same
                vid = self._new_value(x, index)
            outputs.append(vid)
            return Ref(vid)

        out_tree = record(out) if type(out) is torch.Tensor else map_args(record, out)
        if undefined:
            self.undefined.update(values[v].sid for v in outputs)
            if stood_in and info.stand_in != "inplace":
                # Only the buffers a stand-in allocated: an in-place stand-in hands back its argument's
                # buffer as it was (unfilled still, or real data that may be the model's own state).
                self.unfilled.update(values[v].sid for v in outputs)
        mod = self.module_stack[-1]
        inputs = list(dict.fromkeys(in_vids)) if len(in_vids) > 1 else in_vids
        self.trace.ops.append(
            Op(index, name, func, args_ref, kwargs_ref, inputs, outputs, out_tree,
               mod, self.trace.module_types.get(mod, ""), in_place_of)
        )
        return out


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (nestable). A recording allocates thousands of small
    objects that all survive it; the collections they trigger walk every object in the process, tens
    of milliseconds each, for nothing: nothing here makes a reference cycle."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def param_storages(modules) -> dict[int, int]:
    """cdata -> bytes of the storages of the parameters and buffers of ``modules`` (every module of a
    model), read off each module's own dicts: ``Module.parameters()`` walks the module tree once per call."""
    out = {}
    for m in modules:
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None:
                st = t.untyped_storage()
                out[st._cdata] = st.nbytes()
    return out


def trace_model(model: nn.Module, inputs: tuple[torch.Tensor, ...], values: bool = True,
                named: list[tuple[str, nn.Module]] | None = None) -> tuple[Trace, Any]:
    """Run ``model(*inputs)`` once under the tracer.

    Args:
        model: any module, already in the mode it should run in (eval).
        inputs: example input tensors.
        values: compute every op. False when only the trace is wanted (shapes, lifetimes, the op
            sequence): the heavy ops (:data:`HEAVY_OPS`) are then allocated, not computed, and the
            returned output is None. Should a value derived from one decide anything an ATen op can
            see (a Python number such as ``bool(t)`` or ``t.item()``, a data-dependent shape such as
            ``nonzero``), an op write into a parameter, buffer or input (before it does), or the
            forward fail, the trace is rerun with every op computed, so the recording is the same
            either way. Values read without an ATen op (``Tensor.tolist``, ``.numpy()``) are not seen,
            and Python state a forward keeps between calls (a cache built on the first call) is left
            as the stopped attempt made it: trace such a model with ``values=True``. Always True under
            another dispatch mode (a FLOP counter, ``FakeTensorMode``), which must see the real ops.
        named: ``list(model.named_modules())`` where the caller has walked the model already.
    Returns:
        The trace and the model's output.
    Raises:
        UserError: the forward pass failed; the message names the module and op.
    """
    if not values and not _python_dispatch._get_current_dispatch_mode_stack():
        try:
            return _trace(model, inputs, False, named)[0], None
        except (_NeedValues, UserError):
            pass  # rerun with every op computed: the recording (or the error) is the real one
    return _trace(model, inputs, True, named)


def _trace(model: nn.Module, inputs: tuple[torch.Tensor, ...], values: bool,
           named: list[tuple[str, nn.Module]] | None = None) -> tuple[Trace, Any]:
    # The first dispatch imports torch._dynamo (the mode's guard); that import leaves a reference cycle
    # holding the running op's frame, whose tensors then outlive their eager death while the collector
    # is paused. Imported here, before anything is recorded.
    import torch._dynamo  # noqa: F401
    trace = Trace()
    names = {m: n for n, m in (model.named_modules() if named is None else named)}
    trace.modules = {n: m for m, n in names.items()}
    trace.module_types = {n: type(m).__name__ for n, m in trace.modules.items()}
    trace.param_bytes = param_storages(names)
    tracer = _Tracer(trace, trace.param_bytes, values)
    open_spans: list[tuple[str, int]] = []

    def pre(mod, _args):
        if mod is model or mod not in names:  # the root, or a module that is not the model's
            return
        name = names[mod]
        tracer.module_stack.append(name)
        open_spans.append((name, len(trace.ops)))

    def post(mod, _args, _out):
        if mod is model or mod not in names:
            return
        name, first = open_spans.pop()
        tracer.module_stack.pop()
        trace.module_spans.append((name, first, len(trace.ops) - 1))

    # Two global hooks rather than two per module: registering hundreds of handles costs more than
    # the hooks themselves.
    handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post)]
    try:
        with torch.no_grad(), tracer, paused_gc():
            for t in inputs:
                tracer.register_input(t)
            try:
                out = model(*inputs)
            except Exception as err:
                where = tracer.module_stack[-1] or "<root>"
                last = trace.ops[-1].name if trace.ops else "<none>"
                raise _explain_failure(model, names, where, inputs, err, last) from err
            tracer._reap(len(trace.ops))
            flat_out, _ = tree_flatten(out)
            trace.output_vids = [v for v in (tracer.vid_of(t) for t in flat_out if _is_tensor(t)) if v is not None]
    finally:
        for h in handles:
            h.remove()
        tracer.release()
    return trace, out


def _explain_failure(model, names, where, inputs, err, last_op) -> UserError:
    """Turn a failed forward into one actionable line."""
    mod = dict(model.named_modules()).get(where) if where != "<root>" else model
    if isinstance(mod, nn.modules.conv._ConvNd) and inputs and inputs[0].dim() >= 2:
        expected = mod.in_channels
        first_conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
        if mod is first_conv and inputs[0].shape[1] != expected:
            shape = list(inputs[0].shape)
            fixed = "x".join(str(s) for s in [shape[0], expected, *shape[2:]])
            return UserError(
                f"the input has {shape[1]} channels but the model's first conv '{where}' expects "
                f"{expected}; use an input like {fixed}"
            )
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(
        f"cannot analyse the model: module '{where}' failed after op {last_op}: "
        f"{type(err).__name__}: {msg}"
    )
