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
from redistill.models.info import Built
from redistill.models.registry import build_family
from redistill.models.tv_slots import is_torchvision_supported, set_tv_stride, tv_info, tv_slots


@dataclass(frozen=True)
class Slots:
    """The stride slots of a model: names (stem first), strides and the default drop order."""

    names: list[str]
    strides: list[int]
    drop_order: list[str]

    def max_factor(self) -> int:
        """The largest factor the later slots can absorb (2 ** number of stride-2 later slots)."""
        return 2 ** sum(1 for s in self.strides[1:] if s == 2)


def as_built(model: Built | nn.Module) -> Built:
    """A torchvision-structured module without a record gets one read from its structure."""
    if isinstance(model, Built):
        return model
    if is_torchvision_supported(model):
        return Built(model, tv_info(model, type(model).__name__.lower()))
    raise UserError(
        f"cannot derive a student from {type(model).__name__}: it has no known stride slots; build it with "
        "redistill.modelref.resolve_model (this project's families, `redistill models`) or use torchvision "
        "resnet*, mobilenet_v2, mobilenet_v3_*, efficientnet_*"
    )


def model_slots(model: Built | nn.Module) -> Slots:
    """Stride slots of a built model (its record) or of a supported torchvision module.

    Raises:
        UserError: the model has no known stride slots.
    """
    built = as_built(model)
    if not built.info.slots:
        as_built(built.module)  # torchvision models without slots: the same error
    info = built.info
    if info.source == "torchvision":  # strides may have been edited in place: read them back
        return Slots(*tv_slots(built.module))
    return Slots(list(info.slots), list(info.strides), list(info.drop_order))


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


def derive_student(teacher: Built | nn.Module, factor: int, drop: Sequence[str] | None = None) -> Built:
    """A new student: stem stride x ``factor``, later stride-2 slots set to 1 (teacher untouched).

    Project models are rebuilt from their spec with the new strides; torchvision models are
    edited on a deep copy (stem conv, strided convs/pools and matching shortcut convs). In both
    cases the teacher's weights are carried over wherever names and shapes agree.

    Args:
        teacher: a built model (``resolve_model`` / ``build_family``) or a supported torchvision module.
        factor: stem stride multiplier (2, 4, 8, ...).
        drop: later slots to set to stride 1 (default: the authors' choice for the family).
    Returns:
        ``(student, its info)``; the student is in the teacher's train/eval mode.
    Raises:
        UserError: unsupported model, bad factor or bad ``drop``.
    """
    built = as_built(teacher)
    module, info = built
    slots = model_slots(built)
    strides, _ = plan_strides(slots, factor, drop)
    # By the kind of spec, not where the model came from: an export of a family is a family.
    if info.spec is not None and info.spec.get("source") != "torchvision":
        student, student_info = build_family({**info.spec, "strides": strides})
        param = next(module.parameters(), None)
        if param is not None:  # same device and dtype as the teacher
            student = student.to(device=param.device, dtype=param.dtype)
        own = student.state_dict()
        carried = {k: v for k, v in module.state_dict().items() if k in own and own[k].shape == v.shape}
        student.load_state_dict(carried, strict=False)
    else:
        student = copy.deepcopy(module)
        for name, old, new in zip(slots.names, slots.strides, strides):
            if old != new:
                set_tv_stride(student, name, new)
        student_info = info.with_strides(strides)
    return Built(student.train(module.training), student_info)
