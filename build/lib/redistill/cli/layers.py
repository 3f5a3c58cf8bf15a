"""``redistill layers TEACHER STUDENT --input 1x3x128x128``: layer tables and proposed RED pairs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch.nn as nn

from redistill.distill.pairing import auto_pairs
from redistill.distill.pairs import Pair, validate_pairs
from redistill.distill.probe import LayerInfo, chw, layer_table
from redistill.errors import UserError
from redistill.modelref import resolve_model
from redistill.util import parse_shape


def format_layer_table(rows: Sequence[LayerInfo], downsampling_only: bool = False) -> str:
    """Plain-text table: name, type, input and output C x H x W, down-sampling mark."""
    shown = [r for r in rows if r.downsampling or not downsampling_only]
    header = ("layer", "type", "in C x H x W", "out C x H x W", "")
    body = [(r.name, r.kind, chw(r.in_shape), chw(r.out_shape), "down" if r.downsampling else "") for r in shown]
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
            line += f"  student {chw(s[1:])}, teacher {chw(t[1:])}"
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


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "layers",
        help="list teacher and student layers (C x H x W) and the RED pairs `pairs: auto` proposes",
        description="Print the layer tables of TEACHER and STUDENT (name, type, input and output "
        "C x H x W; 'down' marks the layers that change H x W) and the pairs `pairs: auto` proposes.",
    )
    parser.add_argument("teacher", help="teacher model reference (e.g. resnext18-1-21222)")
    parser.add_argument("student", help="student model reference (e.g. resnext18-4-11221)")
    parser.add_argument("--input", default="1x3x224x224", help="input shape NxCxHxW or CxHxW (default 1x3x224x224)")
    parser.add_argument("--down", action="store_true", help="list only the layers that change H x W")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    shape = parse_shape(args.input)
    channels = shape[1] if shape[1] != 3 else None  # 3 is every builder's default
    teacher, t_info = resolve_model(args.teacher, in_channels=channels)
    student, s_info = resolve_model(args.student, in_channels=channels)
    for info in (t_info, s_info):
        if info.resolved_as:
            print(f"model {info.resolved_as}")
    print(layers_report(teacher, student, shape, downsampling_only=args.down))
    return 0
