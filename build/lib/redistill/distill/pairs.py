"""RED pairs as configured: the :class:`Pair` record, parsing from config values, and the
check that both features of every pair exist and share H x W.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch.nn as nn

from redistill.distill.hooks import SIDES, find_module, make_ref, parse_ref
from redistill.distill.probe import chw, probe_shapes
from redistill.distill.red import DISTANCES, RED_OPTIONS
from redistill.errors import UserError, did_you_mean


@dataclass
class Pair:
    """One RED pair: a RED block on ``side`` of the student ``student`` layer, matched with
    the same side of the teacher ``teacher`` layer.

    Attributes:
        student: student module name (as in the model before surgery).
        teacher: teacher module name.
        side: "out" (layer outputs) or "in" (layer inputs).
        distance: "cosine" or "mse".
        alpha: weight alpha_k of this pair's loss.
        red: :class:`~redistill.distill.red.REDBlock` options for this block.
    """

    student: str
    teacher: str
    side: str = "out"
    distance: str = "cosine"
    alpha: float = 1.0
    red: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("student", "teacher"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise UserError(f"pair {key} must be a layer name (a non-empty string), got {value!r}")
        if self.side not in SIDES:
            raise UserError(f"pair {self.student} -> {self.teacher}: side must be 'out' or 'in', got {self.side!r}")
        if self.distance not in DISTANCES:
            raise UserError(
                f"pair {self.student} -> {self.teacher}: distance must be one of {', '.join(DISTANCES)}, "
                f"got {self.distance!r}"
            )
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, numbers.Real) or self.alpha < 0:
            raise UserError(f"pair {self.student} -> {self.teacher}: alpha must be a number >= 0, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if not isinstance(self.red, dict):
            raise UserError(f"pair {self.student} -> {self.teacher}: red must be a mapping of RED options")
        for key in self.red:
            if key not in RED_OPTIONS:
                raise UserError(
                    f"unknown RED option '{key}'{did_you_mean(key, RED_OPTIONS)}; valid: {', '.join(RED_OPTIONS)}"
                )

    @property
    def student_ref(self) -> str:
        """Capture ref of the student feature before surgery (``"layer"`` or ``"layer:in"``)."""
        return make_ref(self.student, self.side)

    @property
    def teacher_ref(self) -> str:
        """Capture ref of the matching teacher feature."""
        return make_ref(self.teacher, self.side)

    @property
    def term_name(self) -> str:
        """Loss term name, ``"red/<student layer>[:in]"``."""
        return f"red/{self.student_ref}"

    def to_dict(self) -> dict:
        """A YAML-able dict that :func:`parse_pairs` reads back."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_PAIR_KEYS = tuple(f.name for f in fields(Pair))


def _pair_from_str(text: str, defaults: dict) -> Pair:
    student, arrow, teacher = text.partition("->")
    if not arrow:
        raise UserError(f"bad pair '{text}': write 'student_layer -> teacher_layer' (add ':in' on both for inputs)")
    (s_name, s_side), (t_name, t_side) = parse_ref(student.strip()), parse_ref(teacher.strip())
    if s_side != t_side:
        raise UserError(f"bad pair '{text}': both layers must be on the same side (both ':in' or neither)")
    return Pair(s_name, t_name, s_side, defaults["distance"], defaults["alpha"], dict(defaults["red"]))


def parse_pairs(spec, distance: str = "cosine", alpha: float = 1.0, red: dict | None = None) -> list[Pair]:
    """Read pairs from a config value.

    Args:
        spec: a list whose items are :class:`Pair`, dicts (keys student, teacher, side,
            distance, alpha, red) or strings ``"conv1 -> layer2.0"`` / ``"layer2.0:in -> layer3.0:in"``.
        distance, alpha, red: defaults for the items that do not set them (a dict's own
            ``red`` options are merged over ``red``).
    Returns:
        The pairs, in order.
    Raises:
        UserError: not a list, unknown key, missing layer name, bad value.
    """
    defaults = {"distance": distance, "alpha": alpha, "red": dict(red or {})}
    if isinstance(spec, (str, dict)) or not isinstance(spec, Sequence):
        raise UserError(f"pairs must be 'auto' or a list of pairs, got {spec!r}")
    pairs = []
    for i, item in enumerate(spec):
        if isinstance(item, Pair):
            pairs.append(item)
        elif isinstance(item, str):
            pairs.append(_pair_from_str(item, defaults))
        elif isinstance(item, dict):
            for key in item:
                if key not in _PAIR_KEYS:
                    raise UserError(
                        f"pairs[{i}]: unknown key '{key}'{did_you_mean(str(key), _PAIR_KEYS)}; "
                        f"valid keys: {', '.join(_PAIR_KEYS)}"
                    )
            missing = [k for k in ("student", "teacher") if k not in item]
            if missing:
                raise UserError(f"pairs[{i}]: missing '{missing[0]}' (the {missing[0]} layer name)")
            merged = {**defaults, **item}
            merged["red"] = {**defaults["red"], **(item.get("red") or {})}
            pairs.append(Pair(**merged))
        else:
            raise UserError(f"pairs[{i}] must be a mapping or 'student -> teacher', got {item!r}")
    if not pairs:
        raise UserError("pairs is an empty list: give at least one pair or 'auto'")
    return pairs


def validate_pairs(
    student: nn.Module, teacher: nn.Module, pairs: Sequence[Pair], example_input
) -> list[tuple[tuple, tuple]]:
    """Check every pair names real layers whose features have the same H x W.

    Args:
        student, teacher: the two models (before RED surgery).
        pairs: the pairs to check.
        example_input: shape tuple or tensor.
    Returns:
        ``[(student_shape, teacher_shape), ...]`` per pair, batch size 1.
    Raises:
        UserError: unknown layer (with the closest names), a feature that is not a
            (B, C, H, W) map, or different H x W (both shapes given).
    """
    for pair in pairs:
        find_module(student, pair.student, "student")
        find_module(teacher, pair.teacher, "teacher")
    s_shapes = probe_shapes(student, [p.student_ref for p in pairs], example_input, "student")
    t_shapes = probe_shapes(teacher, [p.teacher_ref for p in pairs], example_input, "teacher")
    result = []
    for pair in pairs:
        s, t = s_shapes[pair.student_ref], t_shapes[pair.teacher_ref]
        for who, ref, shape in (("student", pair.student_ref, s), ("teacher", pair.teacher_ref, t)):
            if len(shape) != 4:
                raise UserError(
                    f"pair {pair.student_ref} -> {pair.teacher_ref}: {who} feature '{ref}' has shape {shape}, "
                    "RED needs a (B, C, H, W) feature map"
                )
        if s[-2:] != t[-2:]:
            raise UserError(
                f"pair {pair.student_ref} -> {pair.teacher_ref}: H x W differ: student '{pair.student_ref}' is "
                f"{chw(s[1:])} but teacher '{pair.teacher_ref}' is {chw(t[1:])} (C x H x W); "
                "pick layers with equal H x W (`redistill layers TEACHER STUDENT` lists them)"
            )
        result.append((s, t))
    return result
