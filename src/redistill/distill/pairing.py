"""The pairing rule behind ``pairs: auto`` (docs/method.md s.5), from resolutions alone.

The aggressive student stem gets an output-side RED matched with the first teacher layer whose
output has the same H x W; every later student layer that still changes H x W (down- or, in a
UNet, up-sampling) gets an input- and an output-side RED matched with the teacher's layer with
the same input and output H x W. A layer whose output is the model's output (a UNet's tail) gets
only the input side: its output is the prediction the task loss trains. Both layer tables come
from one traced forward (:func:`redistill.distill.probe.layer_table`).
"""

from __future__ import annotations

from redistill.distill.pairs import Pair
from redistill.distill.probe import layer_table
from redistill.errors import UserError


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
        example_input: shape tuple (e.g. (1, 3, 128, 128)), tensor, or tuple of input tensors.
        distance, alpha, red: set on every proposed pair.
    Returns:
        The stem's output pair, then an input and an output pair for each later student layer
        that changes H x W (input only for one that produces the model's output), in call order.
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
    # The stem pair sits on the smallest module that down-samples: for a conv-BN-act stem that
    # is the conv itself, as in the authors' code, so the stem's BN re-normalises the RED output.
    pairs = [Pair(stem.name, target.name, "out", **opts)]
    for unit in s_units[1:]:
        match = next((t for t in t_units if t.in_hw == unit.in_hw and t.out_hw == unit.out_hw), None)
        if match is None:
            raise UserError(
                f"student layer '{unit.name}' goes {hw(unit.in_hw)} -> {hw(unit.out_hw)} but no teacher layer does; "
                "list the pairs by hand (`redistill layers` shows both tables)"
            )
        pairs.append(Pair(unit.name, match.name, "in", **opts))
        if not unit.is_output:
            pairs.append(Pair(unit.name, match.name, "out", **opts))
    return pairs
