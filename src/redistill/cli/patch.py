"""``redistill patch MODEL --input 1x3x224x224 [--split NAME --grid N | --budget 256KiB]``: run the
memory-heavy prefix of a CNN patch by patch (no retraining, same outputs) and report the plan, the
peak before and after, the FLOPs and latency overhead and the exactness check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from redistill.cli.memory import check_writable
from redistill.errors import UserError
from redistill.memory import DTYPE_SIZES
from redistill.modelref import resolve_model
from redistill.patch.plan import PatchReport, patch_model
from redistill.util import parse_shape


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "patch",
        help="patch-based inference: cut the peak without retraining",
        description=__doc__.replace("``", "'") + " Without --split/--grid or --budget, the plan with the "
        "smallest peak is searched. MODEL: as for `redistill memory`.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--input", default=None, metavar="NxCxHxW",
                   help="input shape (default: an exported model's own, else 1x3x224x224)")
    p.add_argument("--split", metavar="NAME",
                   help="module whose output is assembled from patches (it and everything before it run patch-wise)")
    p.add_argument("--grid", type=int, metavar="N", help="N x N patches over the split output")
    p.add_argument("--budget", help="peak budget (e.g. 256KiB): the plan with the fewest FLOPs that fits")
    p.add_argument("--dtype", choices=list(DTYPE_SIZES), default="int8",
                   help="activation element type of the peaks (default: int8, as on a microcontroller)")
    p.add_argument("--inplace-depthwise", action="store_true",
                   help="depthwise convs write over their input (+ one channel), in both executions")
    p.add_argument("--repeats", type=int, default=5, help="timed runs for the CPU latency (0: skip)")
    p.add_argument("--plot", metavar="PNG", help="write the footprint of both executions on one figure")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.set_defaults(func=run)


def patch(model: str, input: tuple[int, ...] | None = None, **options) -> PatchReport:
    """Resolve ``model`` (:func:`redistill.modelref.resolve_model`) and patch it (:func:`patch_model`)."""
    in_channels = input[1] if input is not None and input[1] != 3 else None
    net, info = resolve_model(model, in_channels=in_channels)
    shape = input or info.input_shape or (1, 3, 224, 224)
    return patch_model(net, tuple(shape), name=model, **options)


def run(args: argparse.Namespace) -> int:
    check_writable(args.plot)
    check_writable(args.json)
    if args.grid is not None and args.grid < 1:
        raise UserError(f"--grid must be >= 1, got {args.grid}")
    if args.repeats < 0:
        raise UserError(f"--repeats must be >= 0, got {args.repeats}")
    shape = parse_shape(args.input) if args.input is not None else None
    report = patch(args.model, shape, split=args.split, grid=args.grid, budget=args.budget, dtype=args.dtype,
                   inplace_depthwise=args.inplace_depthwise, latency_repeats=args.repeats)
    print(report.to_table())
    if args.json:
        d = report.to_dict()
        d.pop("timeline_before"), d.pop("timeline_after")
        Path(args.json).write_text(json.dumps(d, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        report.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0
