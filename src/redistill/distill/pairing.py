"""Student/teacher feature pairs for RED: config parsing, validation and the auto rule.

docs/method.md s.5: the aggressive student stem gets an output-side RED matched with the
first teacher layer whose output has the same H x W; every later student layer that
still down-samples gets an input- and an output-side RED matched with the teacher's
down-sampling layer with the same input and output H x W. Everything here is read
from one traced forward, so the pairing follows from resolutions alone.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn

from redistill.distill.hooks import SIDES, capture, find_module, make_ref, parse_ref
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


# --- tracing -----------------------------------------------------------------------


def _example(model: nn.Module, example_input) -> torch.Tensor:
    like = next(iter(model.parameters()), None)
    device = like.device if like is not None else torch.device("cpu")
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    if isinstance(example_input, torch.Tensor):
        return example_input[:1].to(device=device, dtype=dtype)  # shapes need one image only
    return torch.zeros(tuple(example_input), device=device, dtype=dtype)


class _eval_no_grad:
    """Run a probe forward in eval mode (BN statistics must not move) and restore modes."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.grad = torch.is_grad_enabled()
        self.model.eval()
        torch.set_grad_enabled(False)

    def __exit__(self, *exc) -> None:
        torch.set_grad_enabled(self.grad)
        for module, mode in self.modes:
            module.training = mode


def probe_shapes(model: nn.Module, refs: Sequence[str], example_input, what: str = "model") -> dict[str, tuple]:
    """Shapes of the features named by ``refs`` for one image of ``example_input``.

    Args:
        model: the model (its train/eval flags and BN statistics are left as they were).
        refs: feature refs (``"layer"`` / ``"layer:in"``).
        example_input: a shape tuple or a tensor (its first image is used).
        what: name of the model in error messages.
    Returns:
        ``{ref: shape}`` with batch size 1.
    """
    x = _example(model, example_input)
    with _eval_no_grad(model), capture(model, refs, what) as feats:
        model(x)
    missing = [r for r in refs if r not in feats]
    if missing:
        raise UserError(f"layer '{missing[0]}' of the {what} is never called in forward; pick a layer that runs")
    return {ref: tuple(feats[ref].shape) for ref in refs}


@dataclass
class _Call:
    name: str
    inp: torch.Tensor | None
    out: torch.Tensor | None = None
    children: list[_Call] = field(default_factory=list)


def _tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _trace(model: nn.Module, example_input) -> tuple[_Call, list[_Call]]:
    """One forward recording every module call: (root call, first calls in start order)."""
    x = _example(model, example_input)
    root_frame = _Call("<top>", None)
    stack = [root_frame]
    started: list[_Call] = []
    handles = []

    def pre(name: str):
        def hook(_m, args):
            call = _Call(name, _tensor(args))
            stack.append(call)
            started.append(call)

        return hook

    def post(name: str):
        def hook(_m, _args, output):
            call = stack.pop()
            call.out = _tensor(output)
            stack[-1].children.append(call)

        return hook

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(pre(name)))
            handles.append(module.register_forward_hook(post(name)))
        with _eval_no_grad(model):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    first: dict[str, _Call] = {}
    for call in started:
        first.setdefault(call.name, call)
    return root_frame.children[0], list(first.values())


def _is_map(t: torch.Tensor | None) -> bool:
    return t is not None and t.dim() == 4


def _changes(call: _Call) -> bool:
    return _is_map(call.inp) and _is_map(call.out) and call.inp.shape[-2:] != call.out.shape[-2:]


def _is_chain(call: _Call) -> bool:
    # A module is a plain chain when its children run one after another on each other's
    # outputs (Sequential, an inverted residual without skip). Then the down-sampling
    # happens in one child and we look inside; with a skip or parallel branch the
    # module itself is the down-sampling layer (a ResNet block).
    kids = call.children
    if not kids or kids[0].inp is not call.inp or kids[-1].out is not call.out:
        return False
    return all(kids[i].inp is kids[i - 1].out for i in range(1, len(kids)))


def _downsampling(call: _Call, is_root: bool) -> list[str]:
    # Global pooling (output 1 x 1) ends the feature maps; it is no layer to align.
    own = [call.name] if _changes(call) and tuple(call.out.shape[-2:]) != (1, 1) else []
    if not is_root and (not _changes(call) or not _is_chain(call)):
        return own
    found: list[str] = []
    for kid in call.children:
        if _changes(kid):
            found += _downsampling(kid, False)
    if not found and not is_root:
        return own  # the down-sampling happens in functional code of this module
    return list(dict.fromkeys(found))  # a module called twice is still one layer


@dataclass
class LayerInfo:
    """One row of a layer table: a module whose input and output are feature maps."""

    name: str
    kind: str
    in_shape: tuple[int, int, int]  # (C, H, W)
    out_shape: tuple[int, int, int]
    downsampling: bool = False

    @property
    def in_hw(self) -> tuple[int, int]:
        return self.in_shape[1:]

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.out_shape[1:]


def layer_table(model: nn.Module, example_input) -> list[LayerInfo]:
    """Every module with feature-map input and output, in call order, with its shapes.

    ``downsampling`` marks the layers the pairing rule works with: the smallest modules
    that change H x W, where a block with a skip or parallel branch counts as one layer
    (``layer2.0`` of a ResNet) and a plain chain is looked into (``features.4.conv.3``,
    the depthwise conv of a MobileNetV2 block).

    Args:
        model: the model (not modified; BN statistics untouched).
        example_input: shape tuple such as (1, 3, 128, 128), or a tensor.
    Returns:
        The rows, in the order the modules are first called.
    """
    root, calls = _trace(model, example_input)
    units = set(_downsampling(root, True))
    rows = []
    for call in calls:
        if call.name and _is_map(call.inp) and _is_map(call.out):
            module = model.get_submodule(call.name)
            rows.append(
                LayerInfo(
                    call.name,
                    type(module).__name__,
                    tuple(call.inp.shape[1:]),
                    tuple(call.out.shape[1:]),
                    call.name in units,
                )
            )
    return rows


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
                f"{_chw(s[1:])} but teacher '{pair.teacher_ref}' is {_chw(t[1:])} (C x H x W); "
                "pick layers with equal H x W (`redistill layers TEACHER STUDENT` lists them)"
            )
        result.append((s, t))
    return result


def _chw(shape: Sequence[int]) -> str:
    return " x ".join(str(int(v)) for v in shape)


def _stem_name(model: nn.Module, unit: LayerInfo, rows: list[LayerInfo]) -> str:
    # Models of this project declare their stride slots; the stem slot (e.g. MobileNetV2's
    # conv-bn-relu6 `features.0`) is "the stem" of docs/method.md, not just the conv inside it.
    slots = getattr(model, "stride_slots", None)
    if slots:
        stem = slots[0]
        if unit.name.startswith(stem + "."):
            row = next((r for r in rows if r.name == stem), None)
            if row is not None and row.out_hw == unit.out_hw:
                return stem
    return unit.name


def auto_pairs(
    student: nn.Module,
    teacher: nn.Module,
    example_input,
    distance: str = "cosine",
    alpha: float = 1.0,
    red: dict | None = None,
) -> list[Pair]:
    """Propose pairs by the rule of docs/method.md s.5, from resolutions alone.

    Args:
        student, teacher: the two models.
        example_input: shape tuple (e.g. (1, 3, 128, 128)) or tensor.
        distance, alpha, red: set on every proposed pair.
    Returns:
        The stem's output pair, then an input and an output pair for each later
        student down-sampling layer, in call order.
    Raises:
        UserError: the student does not down-sample, or a student layer has no teacher
            layer with the same resolutions (write the pairs by hand then).
    """
    s_rows, t_rows = layer_table(student, example_input), layer_table(teacher, example_input)
    s_units = [r for r in s_rows if r.downsampling]
    t_units = [r for r in t_rows if r.downsampling]
    if not s_units:
        raise UserError("the student never changes H x W, so there is nothing for `pairs: auto` to pair")
    opts = {"distance": distance, "alpha": alpha, "red": dict(red or {})}
    hw = lambda v: f"{v[0]} x {v[1]}"  # noqa: E731
    stem = s_units[0]
    target = next((t for t in t_units if t.out_hw == stem.out_hw), None)
    if target is None:
        raise UserError(
            f"no teacher layer down-samples to the student stem's {hw(stem.out_hw)} "
            f"(teacher: {', '.join(hw(t.out_hw) for t in t_units) or 'none'}); list the pairs by hand"
        )
    pairs = [Pair(_stem_name(student, stem, s_rows), target.name, "out", **opts)]
    for unit in s_units[1:]:
        match = next((t for t in t_units if t.in_hw == unit.in_hw and t.out_hw == unit.out_hw), None)
        if match is None:
            raise UserError(
                f"student layer '{unit.name}' goes {hw(unit.in_hw)} -> {hw(unit.out_hw)} but no teacher layer does; "
                "list the pairs by hand (`redistill layers` shows both tables)"
            )
        pairs.append(Pair(unit.name, match.name, "in", **opts))
        pairs.append(Pair(unit.name, match.name, "out", **opts))
    return pairs


def format_layer_table(rows: Sequence[LayerInfo], downsampling_only: bool = False) -> str:
    """Plain-text table: name, type, input and output C x H x W, down-sampling mark."""
    shown = [r for r in rows if r.downsampling or not downsampling_only]
    header = ("layer", "type", "in C x H x W", "out C x H x W", "")
    body = [(r.name, r.kind, _chw(r.in_shape), _chw(r.out_shape), "down" if r.downsampling else "") for r in shown]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *body]]
    return "\n".join(lines)


def format_pairs(pairs: Sequence[Pair], shapes: Sequence[tuple[tuple, tuple]] | None = None) -> str:
    """One line per pair: student ref, teacher ref, and their C x H x W when known."""
    lines = []
    for i, pair in enumerate(pairs):
        line = f"{pair.student_ref:<24} <-> {pair.teacher_ref:<24} side={pair.side:<3} {pair.distance} alpha={pair.alpha:g}"
        if shapes is not None:
            s, t = shapes[i]
            line += f"  student {_chw(s[1:])}, teacher {_chw(t[1:])}"
        lines.append(line)
    return "\n".join(lines)


def layers_report(teacher: nn.Module, student: nn.Module, example_input, downsampling_only: bool = False) -> str:
    """Both layer tables and the pairs ``pairs: auto`` would propose, as text.

    Args:
        teacher, student: the two models.
        example_input: shape tuple such as (1, 3, 128, 128), or a tensor.
        downsampling_only: list only the layers that change H x W.
    Returns:
        The report; when no pairing can be proposed it says why instead of the pairs.
    """
    parts = []
    for title, model in (("teacher", teacher), ("student", student)):
        parts += [f"{title} layers:", format_layer_table(layer_table(model, example_input), downsampling_only), ""]
    try:
        pairs = auto_pairs(student, teacher, example_input)
    except UserError as err:
        parts += ["proposed pairs (pairs: auto): none", f"  {err}"]
    else:
        shapes = validate_pairs(student, teacher, pairs, example_input)
        parts += ["proposed pairs (pairs: auto):", format_pairs(pairs, shapes)]
    return "\n".join(parts)
