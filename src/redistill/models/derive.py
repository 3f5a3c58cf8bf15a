"""Student derivation by stride relocation (docs/method.md section 2).

The student multiplies the stem stride by ``factor`` and sets log2(factor) later stride-2
slots to 1, so the total reduction (and the classifier input) is unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn as nn

from redistill.errors import UserError, did_you_mean
from redistill.models.registry import create_model, get_family, model_spec
from redistill.models.tv_slots import is_torchvision_supported, set_tv_stride, tv_slots


@dataclass(frozen=True)
class Slots:
    """The stride slots of a model: names (stem first), strides and the default drop order."""

    names: list[str]
    strides: list[int]
    drop_order: list[str]

    def max_factor(self) -> int:
        """The largest factor the later slots can absorb (2 ** number of stride-2 later slots)."""
        return 2 ** sum(1 for s in self.strides[1:] if s == 2)


def model_slots(model: nn.Module) -> Slots:
    """Stride slots of a project model or a supported torchvision model.

    Raises:
        UserError: the model has no known stride slots.
    """
    spec = getattr(model, "_redistill_spec", None)
    if spec is not None and spec.get("source") != "torchvision":
        family = get_family(spec["name"])
        return Slots(list(family.slots), list(spec["strides"]), list(family.drop_order))
    if not is_torchvision_supported(model):
        raise UserError(
            f"cannot derive a student from {type(model).__name__}: it has no stride slots; use one of this "
            "project's families (`redistill models`) or torchvision resnet*, mobilenet_v2, mobilenet_v3_*, "
            "efficientnet_*"
        )
    return Slots(*tv_slots(model))


def plan_strides(slots: Slots, factor: int, drop: Sequence[str] | None = None) -> tuple[list[int], list[str]]:
    """The student's strides and the slots set from 2 to 1.

    Args:
        slots: the teacher's slots.
        factor: stem stride multiplier, a power of two >= 2.
        drop: later slots to set to 1 (default: the first stride-2 slots of the drop order).
    Returns:
        (student strides, dropped slot names).
    Raises:
        UserError: factor not a power of two, too large for the model, or a bad ``drop`` list.
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2 or factor & (factor - 1):
        raise UserError(f"factor must be a power of two >= 2 (2, 4, 8), got {factor!r}")
    need = factor.bit_length() - 1
    stride_of = dict(zip(slots.names, slots.strides))
    twos = [n for n in slots.names[1:] if stride_of[n] == 2]
    if need > len(twos):
        raise UserError(
            f"factor {factor} needs {need} later stride-2 slots to set to 1 but the model has only "
            f"{len(twos)} ({', '.join(twos) or 'none'}); the largest factor it can absorb is {slots.max_factor()}"
        )
    if drop is None:
        drop = [n for n in slots.drop_order if stride_of[n] == 2][:need]
    else:
        drop = list(drop)
        for name in drop:
            if name not in stride_of or name == slots.names[0]:
                raise UserError(f"'{name}' is not a later stride slot{did_you_mean(name, slots.names[1:])}")
            if stride_of[name] != 2:
                raise UserError(f"slot '{name}' has stride {stride_of[name]}, not 2, so it cannot be dropped; "
                                f"stride-2 slots: {', '.join(twos)}")
        if len(set(drop)) != need:
            raise UserError(f"factor {factor} needs exactly {need} distinct slots to drop, got {drop}")
    strides = [slots.strides[0] * factor] + [1 if n in drop else stride_of[n] for n in slots.names[1:]]
    return strides, drop


def derive_student(teacher: nn.Module, factor: int, drop: Sequence[str] | None = None) -> nn.Module:
    """A new student: stem stride x ``factor``, later stride-2 slots set to 1 (teacher untouched).

    Project models are rebuilt from their spec with the new strides; torchvision models are
    edited on a deep copy (stem conv, strided convs/pools and matching shortcut convs). In both
    cases the teacher's weights are carried over wherever names and shapes agree.

    Args:
        teacher: a model of this project's registry or a supported torchvision model.
        factor: stem stride multiplier (2, 4, 8, ...).
        drop: later slots to set to stride 1 (default: the authors' choice for the family).
    Returns:
        The student model (same mode as the teacher).
    Raises:
        UserError: unsupported model, bad factor or bad ``drop``.
    """
    slots = model_slots(teacher)
    strides, _ = plan_strides(slots, factor, drop)
    spec = getattr(teacher, "_redistill_spec", None)
    if spec is not None and spec.get("source") != "torchvision":
        student = create_model({**model_spec(teacher), "strides": strides})
        param = next(teacher.parameters(), None)
        if param is not None:  # same device and dtype as the teacher
            student = student.to(device=param.device, dtype=param.dtype)
        own = student.state_dict()
        carried = {k: v for k, v in teacher.state_dict().items() if k in own and own[k].shape == v.shape}
        student.load_state_dict(carried, strict=False)
    else:
        student = copy.deepcopy(teacher)
        for name, old, new in zip(slots.names, slots.strides, strides):
            if old != new:
                set_tv_stride(student, name, new)
        student.stride_slots, student.strides = list(slots.names), strides
        if spec is not None:
            student._redistill_spec = {**spec, "strides": strides}
    return student.train(teacher.training)
