"""``redistill layers TEACHER STUDENT --input 1x3x128x128``: layer tables and proposed RED pairs."""

from __future__ import annotations

import argparse

from redistill.errors import UserError


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x3x128x128" -> (1, 3, 128, 128)``.

    Raises:
        UserError: not four positive integers joined by 'x'.
    """
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise UserError(f"--input '{text}' must be four positive sizes BxCxHxW, e.g. 1x3x128x128")
    return shape


def _model(ref: str, in_channels: int):
    from redistill.modelref import resolve_model

    kwargs = {}
    if in_channels != 3:
        try:
            from redistill.models import is_model_spec
        except ImportError:
            is_model_spec = None
        if is_model_spec is None or not is_model_spec(ref):
            raise UserError(f"--input has {in_channels} channels; only this project's models take in_channels ({ref})")
        kwargs["in_channels"] = in_channels
    return resolve_model(ref, **kwargs)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "layers",
        help="list teacher and student layers (C x H x W) and the RED pairs `pairs: auto` proposes",
        description="Print the layer tables of TEACHER and STUDENT (name, type, input and output "
        "C x H x W; 'down' marks the layers that change H x W) and the pairs `pairs: auto` proposes.",
    )
    parser.add_argument("teacher", help="teacher model (e.g. resnext18-1-21222)")
    parser.add_argument("student", help="student model (e.g. resnext18-4-11221)")
    parser.add_argument("--input", default="1x3x224x224", help="input shape BxCxHxW (default 1x3x224x224)")
    parser.add_argument("--down", action="store_true", help="list only the layers that change H x W")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from redistill.distill.pairing import layers_report

    shape = parse_shape(args.input)
    teacher, student = _model(args.teacher, shape[1]), _model(args.student, shape[1])
    print(layers_report(teacher, student, shape, downsampling_only=args.down))
    return 0
