"""Derive a student for a factor or a memory budget and compare it with its teacher
(peak memory in the layer and live conventions, FLOPs, parameters): the work behind
``redistill derive``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from redistill.errors import UserError
from redistill.flops import count_flops, count_params
from redistill.memory import analyze_memory
from redistill.models import Built, ModelInfo, as_built, derive_student, model_slots, plan_strides
from redistill.util import fmt_bytes, parse_bytes

@dataclass
class Side:
    """Figures of one model: peaks by convention, FLOPs, parameters, and its live-memory report."""

    peaks: dict[str, int]
    flops: int
    params: int
    report: Any = field(repr=False, default=None)


@dataclass
class DeriveResult:
    """A derived student next to its teacher.

    Attributes:
        factor: the stem stride multiplier used.
        changed: (slot, teacher stride, student stride) for every slot that changed.
        teacher, student: their figures.
        student_model: the derived model.
        dtype, input_shape: the analysis settings.
    """

    factor: int
    changed: list[tuple[str, int, int]]
    teacher: Side
    student: Side
    student_model: nn.Module = field(repr=False)
    student_info: ModelInfo | None = field(repr=False, default=None)
    dtype: str = "fp32"
    input_shape: tuple[int, ...] = ()

    def ratio(self, convention: str = "live") -> float:
        """Teacher peak / student peak under ``convention``."""
        return self.teacher.peaks[convention] / max(1, self.student.peaks[convention])

    def student_spec(self) -> dict[str, Any]:
        """The YAML-able spec of the student.

        Raises:
            UserError: the teacher came from user code, so the student has no rebuildable spec.
        """
        if self.student_info is None or self.student_info.spec is None:
            raise UserError("this student was derived from a user factory, so it has no rebuildable spec")
        return self.student_info.spec


def measure(model: nn.Module, input_shape: Sequence[int], dtype: str = "fp32", flops: bool = True) -> Side:
    """Peaks (layer, live; BN folded), FLOPs (0 when ``flops`` is False) and parameters of ``model``."""
    report = analyze_memory(model, tuple(input_shape), dtype=dtype, convention="live")
    peaks = {k: report.peaks[k] for k in ("layer", "live")}
    return Side(peaks, count_flops(model, input_shape) if flops else 0, count_params(model), report)


def _result(teacher: Built, t: Side, factor: int, drop, input_shape, dtype, flops: bool = True) -> DeriveResult:
    student = derive_student(teacher, factor, drop)
    before, after = model_slots(teacher), model_slots(student)
    changed = [(n, a, b) for n, a, b in zip(before.names, before.strides, after.strides) if a != b]
    side = measure(student.module, input_shape, dtype, flops)
    return DeriveResult(factor, changed, t, side, student.module, student.info, dtype, tuple(input_shape))


def derive_for(
    teacher: Built | nn.Module,
    input_shape: Sequence[int],
    *,
    factor: int | None = None,
    budget: int | str | None = None,
    convention: str = "live",
    dtype: str = "fp32",
    drop: Sequence[str] | None = None,
) -> DeriveResult:
    """Derive a student for a factor, or the smallest factor whose peak fits a budget.

    Args:
        teacher: a built model (``resolve_model``) or a supported torchvision module (not modified).
        input_shape: NxCxHxW used for memory and FLOPs.
        factor: stem stride multiplier (exclusive with ``budget``).
        budget: peak-memory budget in bytes or as text (``800KiB``).
        convention: the convention the budget applies to (``live`` or ``layer``).
        dtype: activation dtype for the memory analysis.
        drop: slots to set to stride 1 (only with ``factor``).
    Returns:
        A :class:`DeriveResult`.
    Raises:
        UserError: neither or both of factor/budget, a bad factor, or no factor meets the budget
            (the message gives the best reachable peak).
    """
    if (factor is None) == (budget is None):
        raise UserError("give exactly one of a factor (e.g. --factor 4) or a budget (e.g. --budget 800KiB)")
    if convention not in ("live", "layer"):
        raise UserError(f"unknown convention '{convention}' for the budget; use live or layer")
    if factor is not None:
        plan_strides(model_slots(teacher), factor, drop)  # a bad factor fails before any analysis
    teacher = as_built(teacher)
    t = measure(teacher.module, input_shape, dtype, flops=factor is not None)
    if factor is not None:
        return _result(teacher, t, factor, drop, input_shape, dtype)
    if drop is not None:
        raise UserError("--drop names the slots for one factor; give it with --factor, not --budget")
    limit = parse_bytes(budget)
    best = None
    factor, most = 2, model_slots(teacher).max_factor()
    if most < 2:
        raise UserError("the model has no later stride-2 slot, so no student can be derived for any budget")
    while factor <= most:
        best = _result(teacher, t, factor, None, input_shape, dtype, flops=False)
        if best.student.peaks[convention] <= limit:
            # FLOPs only for the pair that is reported.
            t.flops = count_flops(teacher.module, input_shape)
            best.student.flops = count_flops(best.student_model, input_shape)
            return best
        factor *= 2
    raise UserError(
        f"no factor meets the budget {fmt_bytes(limit)} ({convention}, {dtype}): the best reachable is "
        f"x{best.factor} with a peak of {fmt_bytes(best.student.peaks[convention])} "
        f"(teacher {fmt_bytes(t.peaks[convention])}); raise the budget or lower the input size"
    )
