"""Measured peaks: run the model for real and count what is actually alive.

- ``measure_live``: executes the traced op sequence again as a straight-line program
  that drops every tensor right after its last use (and adds/depthwise convs in place
  where the plan says so), and sums the bytes of the storages that are really alive
  (weak references, not bookkeeping) at each op boundary.
- ``measure_eager``: runs the model normally and sums live storages at each op boundary.
- ``allocator_peak_cpu``: the CPU allocator's peak during the replay, from the
  ``torch.profiler`` memory events; above the prediction by convolution workspaces.
- ``cuda_peak``: ``torch.cuda.max_memory_allocated`` during a CUDA replay.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Any

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from redistill.memory.liveness import Plan, scaled_bytes
from redistill.memory.trace import Ref, Trace


class _LiveCounter:
    """Sums the bytes of tracked storages that are still alive."""

    def __init__(self, elem_size: int, exclude: set[int]):
        self.elem_size = elem_size
        self.exclude = exclude  # parameter storages
        self.refs: dict[int, tuple[StorageWeakRef, int]] = {}

    def track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = st._cdata
        if key in self.exclude:
            return
        hit = self.refs.get(key)
        if hit is None or hit[0].expired():
            floating = t.is_floating_point() or t.is_complex()
            nbytes = scaled_bytes(st.nbytes(), t.element_size(), floating, self.elem_size)
            self.refs[key] = (StorageWeakRef(st), nbytes)

    def live_bytes(self) -> int:
        total = 0
        for key in list(self.refs):
            ref, nbytes = self.refs[key]
            if ref.expired():
                del self.refs[key]
            else:
                total += nbytes
        return total


def _depthwise_into_input(x: torch.Tensor, weight, bias, stride, padding, dilation,
                          counter: _LiveCounter | None, scratch_bytes: list[int]) -> torch.Tensor:
    """Depthwise conv that writes its output over its own input, one channel of scratch.

    Output channel (n, c) lands at flat offset (n*C + c)*Ho*Wo, which only overlaps input
    channels already consumed, so processing channels in order is safe.
    """
    n, c = x.shape[:2]
    flat = x.view(-1)
    out = None
    for i in range(n):
        for j in range(c):
            tmp = F.conv2d(x[i:i + 1, j:j + 1], weight[j:j + 1],
                           None if bias is None else bias[j:j + 1], stride, padding, dilation)
            if out is None:
                ho, wo = tmp.shape[-2:]
                out = flat[: n * c * ho * wo].view(n, c, ho, wo)
                if counter is not None:  # the moment with the most alive: input + scratch
                    scratch_bytes.append(counter.live_bytes() + _scaled(tmp, counter))
            out[i, j].copy_(tmp[0, 0])
    return out


def _scaled(t: torch.Tensor, counter: _LiveCounter) -> int:
    floating = t.is_floating_point()
    return scaled_bytes(t.numel() * t.element_size(), t.element_size(), floating, counter.elem_size)


def replay(trace: Trace, plan: Plan, inputs: tuple[torch.Tensor, ...], elem_size: int,
           device: torch.device | None = None, count: bool = True) -> list[int]:
    """Execute the trace under ``plan``'s semantics; live bytes measured at each op boundary.

    Args:
        trace: the recorded program.
        plan: lifetimes and in-place choices (from ``plan_live``).
        inputs: the model inputs (cloned, so the caller's tensors do not count).
        elem_size: bytes per floating-point element to report.
        device: run on this device (constants are copied there first).
        count: measure (False: only execute, e.g. under the profiler).
    Returns:
        The measured live bytes after each op (empty when ``count`` is False).
    """
    env: dict[int, Any] = {}
    for vid, t in trace.constants.items():
        env[vid] = t if device is None else t.to(device)
    exclude = {t.untyped_storage()._cdata for t in env.values()}
    counter = _LiveCounter(elem_size, exclude) if count else None
    for vid, t in zip(trace.input_vids, inputs):
        env[vid] = t.detach().clone() if device is None else t.detach().to(device, copy=True)
        if counter:
            counter.track(env[vid])
    drop_after: dict[int, list[int]] = {}
    for vid, last in plan.last_use.items():
        drop_after.setdefault(last, []).append(vid)
    for vid in trace.input_vids:  # inputs nobody reads
        if vid not in plan.last_use:
            env.pop(vid, None)

    measured: list[int] = []
    resolve = lambda x: env[x.vid] if isinstance(x, Ref) else x  # noqa: E731
    with torch.no_grad():
        for op in trace.ops:
            args, kwargs = tree_map(resolve, op.args), tree_map(resolve, op.kwargs)
            scratch: list[int] = []
            mode = plan.add_mode.get(op.index)
            if mode == "fresh":
                result = torch.ops.aten.add.Tensor(*args, **kwargs)
            elif mode == "alias0":
                result = args[0].add_(args[1], **kwargs)
            elif mode == "alias1":
                result = args[1].add_(args[0])
            elif op.index in plan.dw_inplace:
                result = _depthwise_into_input(*args[:6], counter, scratch)
            else:
                result = op.func(*args, **kwargs)
            flat_res, _ = tree_flatten(result)
            flat_ref, _ = tree_flatten(op.out_tree, is_leaf=lambda x: isinstance(x, Ref))
            for ref, t in zip(flat_ref, flat_res):
                if isinstance(ref, Ref) and ref.vid in plan.last_use:
                    env[ref.vid] = t  # outputs nobody reads are let go at once
            del result, flat_res, args, kwargs
            if counter:
                for ref in flat_ref:
                    if isinstance(ref, Ref) and ref.vid in env:
                        counter.track(env[ref.vid])
                measured.append(max([counter.live_bytes(), *scratch]))
            for vid in drop_after.get(op.index, ()):
                if vid not in trace.output_vids:
                    env.pop(vid, None)
    return measured


class _EagerCounter(TorchDispatchMode):
    def __init__(self, counter: _LiveCounter):
        super().__init__()
        self.counter = counter
        self.measured: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.counter.track(t)
        self.measured.append(self.counter.live_bytes())
        return out


def measure_eager(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], elem_size: int) -> list[int]:
    """Run ``model`` eagerly; live activation bytes after each op."""
    exclude = {t.untyped_storage()._cdata for t in list(model.parameters()) + list(model.buffers())}
    counter = _LiveCounter(elem_size, exclude)
    mode = _EagerCounter(counter)
    with torch.no_grad(), mode:
        for t in inputs:
            counter.track(t)
        out = model(*inputs)
    del out
    return mode.measured


def allocator_peak_cpu(trace: Trace, plan: Plan, inputs: tuple[torch.Tensor, ...]) -> int:
    """Peak bytes the CPU allocator held during a replay (fp32, as executed)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        replay(trace, plan, inputs, elem_size=4, count=False)
    # Raw allocator records (+bytes on allocation, -bytes on free), in time order.
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    peak = running = 0
    for _, delta in sorted(events, key=lambda x: x[0]):
        running += delta
        peak = max(peak, running)
    return peak


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence the profiler's native start/stop chatter on file descriptor 2."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced (e.g. captured by pytest)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def cuda_peak(trace: Trace, plan: Plan, inputs: tuple[torch.Tensor, ...]) -> int | None:
    """``max_memory_allocated`` above the parameters during a CUDA replay, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda")
    torch.cuda.synchronize()
    # Copy constants once so their bytes are in the baseline, not the peak.
    moved = {vid: t.to(device) for vid, t in trace.constants.items()}
    saved, trace.constants = trace.constants, moved
    try:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        replay(trace, plan, inputs, elem_size=4, device=device, count=False)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    finally:
        trace.constants = saved
