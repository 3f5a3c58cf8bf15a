"""``redistill memory MODEL --input 1x3x224x224``: peak activation memory of a model."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from redistill.errors import UserError
from redistill.memory import DTYPE_SIZES, MemoryReport, analyze_memory
from redistill.modelref import resolve_model
from redistill.util import fmt_bytes, parse_shape


def check_writable(path: str | None) -> None:
    """Fail before any work when an output file cannot be written."""
    if path is None:
        return
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise UserError(f"cannot write {p}: it is a directory; give a file name")
    if not parent.is_dir():
        raise UserError(f"cannot write {p}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"cannot write {p}: permission denied; choose a writable path")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "memory",
        help="peak activation memory of a model",
        description="Exact peak activation memory of a model (parameters excluded, reported apart). "
        "MODEL: a redistill family spec, a torchvision name (torchvision:NAME when the project has a family "
        "of that name), package.module:factory, path/to/file.py:factory or an export directory.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--input", default=None, metavar="NxCxHxW",
                   help="input shape (default: an exported model's own, else 1x3x224x224)")
    p.add_argument("--batch-size", type=int, default=None, help="override the batch dimension")
    p.add_argument("--dtype", choices=list(DTYPE_SIZES), default="fp32",
                   help="activation element type (int8: 1 byte per element)")
    p.add_argument("--convention", choices=["live", "eager", "layer"], default="live")
    p.add_argument("--inplace-depthwise", action="store_true",
                   help="depthwise convs write over their input (+ one channel)")
    p.add_argument("--inplace-add", action="store_true", help="element-wise adds overwrite a dying input")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm as separate ops")
    p.add_argument("--measure", action="store_true",
                   help="also run the model and measure (op-boundary, CPU allocator, CUDA if present)")
    p.add_argument("--fake", action="store_true",
                   help="analyse under FakeTensorMode: same shapes and lifetimes, no activation allocated "
                        "(plans inputs too large for this machine, e.g. 1x3x8192x8192; not with --measure)")
    p.add_argument("--compute-all", action="store_true",
                   help="compute every op while tracing (by default convolutions and matrix products are "
                        "allocated, not computed); only a model that reads values without an ATen op, "
                        "e.g. Tensor.tolist(), needs it")
    p.add_argument("--plot", metavar="FILE", help="write the live-memory plot (PNG)")
    p.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    p.add_argument("--compare", metavar="MODEL2", help="analyse a second model and show both")
    p.add_argument("--top", type=int, default=None, help="show only the N modules with the highest peaks")
    p.set_defaults(func=run)


def memory_reports(model: str, input: tuple[int, ...] | None, compare: str | None = None,
                   notes: list[str] | None = None, **options) -> list[MemoryReport]:
    """Analyse ``model`` (and ``compare``) with the same options.

    Args:
        model, compare: model references (:func:`redistill.modelref.resolve_model`).
        input: (N, C, H, W); None takes the shape an export records, else 1x3x224x224.
        notes: when given, one line per model saying how its reference was resolved is appended.
        **options: :func:`redistill.memory.analyze_memory` options.
    """
    reports = []
    for ref in [model] + ([compare] if compare else []):
        in_channels = input[1] if input is not None and input[1] != 3 else None
        net, info = resolve_model(ref, in_channels=in_channels)
        if notes is not None and info.resolved_as:
            notes.append(info.resolved_as)
        shape = input or info.input_shape or (1, 3, 224, 224)
        reports.append(analyze_memory(net, tuple(shape), name=ref, **options))
    return reports


def compare_table(a: MemoryReport, b: MemoryReport) -> str:
    """Both models side by side, with the reduction ratio a/b."""
    rows = [("peak " + k, a.peaks[k], b.peaks[k]) for k in ("live", "eager", "layer")]
    rows.append(("parameters", a.param_bytes, b.param_bytes))
    width = max(len(a.model), len(b.model), 12)
    out = [f"{'':<12}  {a.model:>{width}}  {b.model:>{width}}  {'ratio':>7}"]
    for label, x, y in rows:
        ratio = f"{x / y:.2f}x" if y else "-"
        out.append(f"{label:<12}  {fmt_bytes(x):>{width}}  {fmt_bytes(y):>{width}}  {ratio:>7}")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    check_writable(args.plot)
    check_writable(args.json)
    if args.batch_size is not None and args.batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
    if args.top is not None and args.top < 1:  # a negative N would slice off the last rows instead
        raise UserError(f"--top must be >= 1, got {args.top}")
    shape = parse_shape(args.input) if args.input is not None else None
    notes: list[str] = []
    reports = memory_reports(
        args.model, shape, args.compare, notes=notes, batch_size=args.batch_size, dtype=args.dtype,
        convention=args.convention, fold_bn=not args.no_fold_bn,
        inplace_depthwise=args.inplace_depthwise, inplace_add=args.inplace_add, measure=args.measure,
        fake=args.fake, compute_all=args.compute_all,
    )
    for note in notes:
        print(f"model {note}")
    for rep in reports:
        print(rep.to_table(top=args.top))
        print()
    if len(reports) == 2:
        print(compare_table(*reports))
    if args.json:
        if len(reports) == 2:
            Path(args.json).write_text(json.dumps([r.to_dict() for r in reports], indent=1))
        else:
            reports[0].to_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        reports[0].plot(args.plot, others=reports[1:], labels=[r.model for r in reports])
        print(f"wrote {args.plot}")
    return 0
