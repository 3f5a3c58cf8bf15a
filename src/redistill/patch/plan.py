"""Evaluate and search patch plans: peak (the analyzer on the executor's real op sequence),
FLOPs (``torch.utils.flop_counter``), CPU latency and exactness, next to the plain model.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from redistill.errors import UserError
from redistill.memory import DTYPE_SIZES, make_inputs
from redistill.memory.analyze import prepare
from redistill.memory.liveness import Plan, is_depthwise, plan_live
from redistill.memory.trace import Trace, trace_model
from redistill.patch.executor import Cut, PatchedModel, PatchProgram, compile_patches, locate_split
from redistill.patch.region import is_activation, op_kind
from redistill.util import fmt_bytes, parse_bytes

GRIDS = range(2, 9)  # grids the search tries (those that divide the split output)
EXACT_RTOL = 1e-5  # max |patched - plain| / max |plain| for fp32 to count as exact


@dataclass
class PatchReport:
    """A patch plan next to the plain model (peaks in bytes, per element type, ``live`` convention).

    ``split`` is None when the plain model already meets the budget (nothing is patched).
    ``*_no_input`` peaks leave the input image out (MCUNetV2 streams it from a decoder).
    """

    model: str
    input_shape: list[int]
    split: str | None
    grid: int
    split_shape: list[int]
    dtype: str
    inplace_depthwise: bool
    peak_before: dict[str, int]
    peak_after: dict[str, int]
    peak_before_no_input: dict[str, int]
    peak_after_no_input: dict[str, int]
    flops_before: int = 0
    flops_after: int = 0
    max_abs_diff: float = 0.0
    rel_diff: float = 0.0
    latency_before_s: float | None = None
    latency_after_s: float | None = None
    timeline_before: list[int] = field(default_factory=list, repr=False)
    timeline_after: list[int] = field(default_factory=list, repr=False)

    @property
    def exact(self) -> bool:
        return self.rel_diff <= EXACT_RTOL

    def reduction(self) -> float:
        return self.peak_before[self.dtype] / max(1, self.peak_after[self.dtype])

    def flops_overhead(self) -> float:
        return self.flops_after / max(1, self.flops_before) - 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(exact=self.exact, reduction=self.reduction(), flops_overhead=self.flops_overhead())
        return d

    def to_table(self) -> str:
        """The plan, peaks before/after, overheads and the exactness check, one line each."""
        d = self.dtype
        plan = f"split after '{self.split}' {self.split_shape}, {self.grid}x{self.grid} patches" \
            if self.split else "none: the plain model meets the budget, or no plan lowers its peak"
        lines = [
            f"model {self.model}  input {'x'.join(map(str, self.input_shape))}  dtype {d}"
            + ("  in-place depthwise" if self.inplace_depthwise else ""),
            f"plan          {plan}",
            f"peak before   {fmt_bytes(self.peak_before[d])}  (without the input: "
            f"{fmt_bytes(self.peak_before_no_input[d])})",
            f"peak after    {fmt_bytes(self.peak_after[d])}  (without the input: "
            f"{fmt_bytes(self.peak_after_no_input[d])})  -> {self.reduction():.2f}x smaller",
            f"FLOPs         {self.flops_before / 1e6:.1f} M -> {self.flops_after / 1e6:.1f} M "
            f"({100 * self.flops_overhead():+.1f}%)",
        ]
        if self.latency_before_s is not None and self.latency_after_s is not None:
            lines.append(f"CPU latency   {1e3 * self.latency_before_s:.1f} ms -> {1e3 * self.latency_after_s:.1f} ms "
                         f"({100 * (self.latency_after_s / self.latency_before_s - 1):+.0f}%)")
        verdict = "exact" if self.exact else f"NOT exact (tolerance {EXACT_RTOL:g} relative)"
        lines.append(f"exactness     max |patched - plain| = {self.max_abs_diff:.3g} "
                     f"({self.rel_diff:.2g} relative): {verdict}")
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        """Both footprints (live bytes per op, this report's dtype) on one figure."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4))
        for label, series in (("plain", self.timeline_before), (f"patched ({self.split}, {self.grid}x{self.grid})",
                                                                 self.timeline_after)):
            xs = [i / max(1, len(series) - 1) for i in range(len(series))]
            ax.plot(xs, [b / 1024 for b in series], label=f"{label}: peak {fmt_bytes(max(series, default=0))}")
        ax.set_xlabel("fraction of the executed op sequence")
        ax.set_ylabel(f"live activations ({self.dtype}, KiB)")
        ax.set_title(f"{self.model} {'x'.join(map(str, self.input_shape))}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def peak_of(plan: Plan, trace: Trace, with_input: bool = True) -> int:
    """Peak live bytes of a plan, optionally leaving out the model input's buffers."""
    if with_input:
        return max(plan.live, default=0)
    inputs = [b for b in plan.buffers.values() if b.kind == "input"]
    return max((live - sum(b.nbytes for b in inputs if b.birth <= i <= b.death)
                for i, live in enumerate(plan.live)), default=0)


@dataclass
class Prepared:
    """The deployed (BN-folded) model, its trace and example input, shared by every plan."""

    model: nn.Module
    trace: Trace
    inputs: tuple[torch.Tensor, ...]


def prepare_model(model: nn.Module, input: Sequence[int] | torch.Tensor) -> Prepared:
    """Fold BN and trace once; every plan of the search reuses the trace."""
    inputs = make_inputs(input)
    folded, trace, _ = prepare(model, inputs, fold_bn=True)
    return Prepared(folded.eval(), trace, inputs)


def trace_patched(prep: Prepared, split: str, grid: int, flops: bool = False
                  ) -> tuple[PatchedModel, Trace, int]:
    """Compile a plan and trace the executor's real op sequence (and count its FLOPs when asked)."""
    patched = PatchedModel(prep.model, compile_patches(prep.trace, split, grid))
    if not flops:
        return patched, trace_model(patched, prep.inputs, values=False)[0], 0
    with FlopCounterMode(display=False) as counter:
        ptrace, _ = trace_model(patched, prep.inputs)
    return patched, ptrace, int(counter.get_total_flops())


def _flops(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return int(counter.get_total_flops())


def _latency(model: nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int) -> float:
    """Median CPU wall time of one forward, after a warm-up."""
    times = []
    with torch.no_grad():
        model(*inputs)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(*inputs)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def evaluate(prep: Prepared, split: str | None, grid: int, *, dtype: str = "int8",
             inplace_depthwise: bool = False, latency_repeats: int = 5, name: str = "model") -> PatchReport:
    """Every figure of one plan (``split`` None: the plain model, nothing patched).

    Args:
        prep: from :func:`prepare_model`.
        split, grid: the plan.
        dtype: the element type the report leads with (fp32 and int8 are always computed).
        inplace_depthwise: depthwise convs overwrite their input (+ one channel), in both executions.
        latency_repeats: timed runs per execution (0: no latency).
        name: the model's name for the report.
    """
    if dtype not in DTYPE_SIZES:
        raise UserError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPE_SIZES)}")
    x = prep.inputs
    types = sorted({"fp32", "int8", dtype}, key=list(DTYPE_SIZES).index)
    before = {d: plan_live(prep.trace, DTYPE_SIZES[d], inplace_depthwise) for d in types}
    if split is None:
        patched, ptrace, flops_after = prep.model, prep.trace, _flops(prep.model, x)
        split_shape: list[int] = []
    else:
        patched, ptrace, flops_after = trace_patched(prep, split, grid, flops=True)
        split_shape = list(patched.program.split_shape)
    after = {d: plan_live(ptrace, DTYPE_SIZES[d], inplace_depthwise) for d in types}
    with torch.no_grad():
        plain_out, patched_out = prep.model(*x), patched(*x)
    diff = (plain_out - patched_out).abs().max().item()
    scale = plain_out.abs().max().item()
    report = PatchReport(
        model=name, input_shape=list(x[0].shape), split=split, grid=grid if split else 1,
        split_shape=split_shape, dtype=dtype, inplace_depthwise=inplace_depthwise,
        peak_before={d: peak_of(p, prep.trace) for d, p in before.items()},
        peak_after={d: peak_of(p, ptrace) for d, p in after.items()},
        peak_before_no_input={d: peak_of(p, prep.trace, False) for d, p in before.items()},
        peak_after_no_input={d: peak_of(p, ptrace, False) for d, p in after.items()},
        flops_before=_flops(prep.model, x), flops_after=flops_after,
        max_abs_diff=diff, rel_diff=diff / scale if scale > 0 else diff,
        timeline_before=before[dtype].live, timeline_after=after[dtype].live,
    )
    if latency_repeats > 0:
        report.latency_before_s = _latency(prep.model, x, latency_repeats)
        report.latency_after_s = _latency(patched, x, latency_repeats)
    return report


def tile_costs(prog: PatchProgram, elem: int, split_bytes: int, input_bytes: int,
               inplace_depthwise: bool = False) -> tuple[int, int]:
    """A lower bound on the patched peak and the prefix's conv FLOPs, from the tile regions alone.

    At each prefix op of each tile, the split buffer, the op's inputs and output (at their
    tile regions) and, before the last tile, the whole input are alive. Conv FLOPs are counted
    as ``torch.utils.flop_counter`` counts them (2 per multiply-add), so plans can be ordered
    by cost before any is run. An in-place depthwise conv counts only its input.
    """
    trace = prog.trace
    xin = trace.input_vids[0]

    def nbytes(v: int, need: dict) -> int:
        val, region = trace.values[v], need.get(v)
        if region is None or not trace.storages[val.sid].floating:
            return 0
        return val.shape[0] * val.shape[1] * (region[1] - region[0]) * (region[3] - region[2]) * elem

    bound = flops = 0
    for t, (_, need) in enumerate(prog.tiles):
        held = split_bytes + (input_bytes if t < len(prog.tiles) - 1 else 0)
        for op in prog.trace.ops[:prog.cut.last + 1]:
            if prog.kinds[op.index] == "const" or op.outputs[0] not in need:
                continue
            vids = {v for v in op.inputs if is_activation(trace, v)}
            if not (inplace_depthwise and is_depthwise(trace, op)):
                vids.add(op.outputs[0])
            reads_input = xin in vids and t == len(prog.tiles) - 1
            live = sum(nbytes(v, need) for v in vids if v != xin) + (input_bytes if reads_input else 0)
            bound = max(bound, held + live)
            if op.name == "aten.convolution.default":
                out, weight = need[op.outputs[0]], trace.values[op.args[1].vid].shape
                n_out = trace.values[op.outputs[0]].shape[0] * weight[0] * (out[1] - out[0]) * (out[3] - out[2])
                flops += 2 * n_out * weight[1] * weight[2] * weight[3]
    return bound, flops


def candidate_splits(trace: Trace) -> list[Cut]:
    """Every module whose output is a cut with a patchable prefix (one name per cut, outermost first)."""
    first_bad = len(trace.ops)
    for op in trace.ops:
        try:
            op_kind(trace, op)
        except UserError:
            first_bad = op.index
            break
    seen: dict[int, Cut] = {}
    for name, first, last in sorted(trace.module_spans, key=lambda s: (s[2], s[1], len(s[0]))):
        if not name or last >= first_bad or last < first or name in {c.name for c in seen.values()}:
            continue
        try:
            cut = locate_split(trace, name)
        except UserError:
            continue
        seen.setdefault(cut.vid, cut)
    return sorted(seen.values(), key=lambda c: c.last)


def search(prep: Prepared, *, budget: int | str | None = None, dtype: str = "int8",
           inplace_depthwise: bool = False, grids: Sequence[int] = GRIDS) -> tuple[str | None, int]:
    """The plan with the smallest peak, or the one with the fewest FLOPs whose peak fits ``budget``.

    Ties on peak go to the smaller grid (less recomputation). Returns ``(split, grid)``; split is
    None when the plain model already fits the budget, or, without a budget, when no plan lowers
    its peak.

    Raises:
        UserError: no cut can run patch-wise, or no plan meets the budget (the best reachable is named).
    """
    elem = DTYPE_SIZES[dtype]
    limit = parse_bytes(budget) if budget is not None else None
    base = plan_live(prep.trace, elem, inplace_depthwise)
    if limit is not None and max(base.live) <= limit:
        return None, 1
    cuts = candidate_splits(prep.trace)
    if not cuts:
        raise UserError("no split point of this model can run patch-wise (a global op comes before every cut)")
    input_bytes = sum(b.nbytes for b in base.buffers.values() if b.kind == "input")
    plans = []
    floor = None  # no plan can go below this: the split buffer, or the unchanged suffix
    for cut in cuts:
        h, w = prep.trace.values[cut.vid].shape[2:]
        split_bytes = base.buffers[base.buffer_of[cut.vid]].nbytes
        suffix = max(base.live[cut.last + 1:], default=0)
        floor = min(floor or max(suffix, split_bytes), max(suffix, split_bytes))
        for n in grids:
            if h % n or w % n or (limit is not None and max(suffix, split_bytes) > limit):
                continue
            prog = compile_patches(prep.trace, cut.name, n)
            bound, flops = tile_costs(prog, elem, split_bytes, input_bytes, inplace_depthwise)
            plans.append((max(suffix, bound), flops, n, cut.name))
    best: tuple | None = None  # (key, split, grid)
    reachable = None
    # Smallest peak: in order of the bound, until the bound passes the best peak found.
    # Under a budget: in order of FLOPs (exact from the regions), the first plan that fits wins.
    order = sorted(plans) if limit is None else sorted(plans, key=lambda p: (p[1], p[0], p[2]))
    for bound, flops, n, split in order:
        if limit is None and best is not None and bound >= best[0][0]:
            break
        if limit is not None and bound > limit:
            continue
        _, ptrace, _ = trace_patched(prep, split, n)
        peak = max(plan_live(ptrace, elem, inplace_depthwise).live)
        reachable = peak if reachable is None else min(reachable, peak)
        if limit is not None:
            if peak <= limit:
                best = ((flops, peak, n), split, n)
                break
            continue
        if best is None or (peak, n) < best[0]:
            best = ((peak, n), split, n)
    if best is None:
        got = f"the best reachable peak is {fmt_bytes(reachable)}" if reachable is not None else \
            f"no plan can go below {fmt_bytes(floor)}"
        raise UserError(f"no patch plan meets the budget {fmt_bytes(limit)} ({dtype}): {got}; "
                        "raise the budget or lower the input size")
    if limit is None and best[0][0] >= max(base.live):
        return None, 1  # no cut lowers the peak (it sits after every cut, or halos cost more): run plainly
    return best[1], best[2]


def patch_model(model: nn.Module, input: Sequence[int] | torch.Tensor, *, split: str | None = None,
                grid: int | None = None, budget: int | str | None = None, dtype: str = "int8",
                inplace_depthwise: bool = False, latency_repeats: int = 5, name: str = "model") -> PatchReport:
    """Patch-based execution of ``model``: a given plan (``split`` + ``grid``), or the search's.

    Args:
        model: any traceable CNN (not modified).
        input: input shape or tensor.
        split: the module whose output is assembled from tiles (it and all before it run patch-wise).
        grid: n for an n x n grid over the split output.
        budget: find the cheapest plan whose peak fits this (``256KiB``); without split/grid/budget,
            the plan with the smallest peak.
        dtype: element type of the peaks that plans are chosen by and reported in.
        inplace_depthwise, latency_repeats, name: see :func:`evaluate`.
    Returns:
        The :class:`PatchReport` of the plan.
    """
    if dtype not in DTYPE_SIZES:
        raise UserError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPE_SIZES)}")
    if (split is None) != (grid is None):
        raise UserError("give --split and --grid together (or neither, to search)")
    if split is not None and budget is not None:
        raise UserError("give either a plan (--split and --grid) or --budget, not both")
    prep = prepare_model(model, input)
    if split is None:
        split, grid = search(prep, budget=budget, dtype=dtype, inplace_depthwise=inplace_depthwise)
    return evaluate(prep, split, grid or 1, dtype=dtype, inplace_depthwise=inplace_depthwise,
                    latency_repeats=latency_repeats, name=name)
