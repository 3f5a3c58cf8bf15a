"""``redistill derive MODEL --input 1x3x224x224 (--factor 4 | --budget 800KiB)``: a ReDistill
student (down-sampling moved to the stem), with its peak memory and FLOPs next to the teacher's."""

from __future__ import annotations

import argparse
from pathlib import Path

from redistill.cli.memory import check_writable
from redistill.errors import UserError
from redistill.memory import plot_reports
from redistill.modelref import resolve_model
from redistill.models import spec_string
from redistill.plan import DeriveResult, derive_for
from redistill.util import dump_yaml, fmt_bytes, parse_bytes, parse_shape


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "derive",
        help="derive a student with the down-sampling moved to the stem",
        description=__doc__.replace("``", "'"),
    )
    p.add_argument("model", metavar="MODEL",
                   help="family spec (resnet18, resnext18-1-21222, resnet18:strides=2,2,1,2,2,2) or torchvision "
                        "resnet*/mobilenet_v2/mobilenet_v3_*/efficientnet_b* name")
    p.add_argument("--input", required=True, help="input shape NxCxHxW or CxHxW, e.g. 1x3x224x224")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--factor", type=int, help="stem stride multiplier: 2, 4 or 8")
    how.add_argument("--budget", help="peak-memory budget (e.g. 800KiB, 1.5MB): the smallest factor meeting it")
    p.add_argument("--convention", choices=["live", "layer"], default="live",
                   help="convention the budget applies to (default: live)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "int8"], default="fp32",
                   help="activation dtype for the memory figures (default: fp32)")
    p.add_argument("--drop", help="comma-separated slots to set to stride 1 (default: the authors' choice)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the family's)")
    p.add_argument("--out", help="write the student spec (YAML) here")
    p.add_argument("--plot", help="write a teacher-vs-student live-memory plot (PNG) here")
    p.set_defaults(func=run)


def format_result(result: DeriveResult, teacher_name: str) -> str:
    """Human-readable comparison of teacher and student."""
    info = result.student_info
    spec = info.spec
    strides = ",".join(map(str, info.strides))
    if spec is None or spec.get("source") == "torchvision":
        student_name = f"{teacher_name} with strides {strides}"
    else:
        student_name = spec_string(spec)
    rows = [
        f"teacher  {teacher_name}",
        f"student  {student_name}   (stem stride x{result.factor})",
        "changed  " + ", ".join(f"{n} {a}->{b}" for n, a, b in result.changed),
        f"input {'x'.join(map(str, result.input_shape))}, {result.dtype}, BN folded",
        f"{'':16}{'teacher':>14}{'student':>14}{'ratio':>9}",
    ]
    t, s = result.teacher, result.student
    for conv in ("layer", "live"):
        rows.append(f"{'peak (' + conv + ')':16}{fmt_bytes(t.peaks[conv]):>14}{fmt_bytes(s.peaks[conv]):>14}"
                    f"{result.ratio(conv):>8.2f}x")
    rows.append(f"{'GFLOPs':16}{t.flops / 1e9:>14.3f}{s.flops / 1e9:>14.3f}{t.flops / max(1, s.flops):>8.2f}x")
    rows.append(f"{'params (M)':16}{t.params / 1e6:>14.3f}{s.params / 1e6:>14.3f}")
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    check_writable(args.out)
    check_writable(args.plot)
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {args.num_classes}")
    shape = parse_shape(args.input)
    teacher = resolve_model(args.model, in_channels=shape[1] if shape[1] != 3 else None,
                            num_classes=args.num_classes)
    if teacher.info.resolved_as:
        print(f"model {teacher.info.resolved_as}")
    if args.out and teacher.info.spec is None:
        raise UserError(f"--out needs a rebuildable model, but '{args.model}' is a factory; "
                        "use a family spec or a torchvision name")
    drop = [d.strip() for d in args.drop.split(",") if d.strip()] if args.drop else None
    result = derive_for(teacher, shape, factor=args.factor, budget=args.budget,
                        convention=args.convention, dtype=args.dtype, drop=drop)
    print(format_result(result, args.model))
    if result.student_info is not None and all(st == 1 for st in result.student_info.strides[1:]):
        print("note: this student does all of its down-sampling in the stem, so `pairs: auto` gives it one RED "
              "pair; the paper's students keep later stride-2 slots (docs/results.md section 2b): a smaller "
              "--factor, or a teacher with more stride-2 slots, keeps some")
    if args.budget and result.teacher.peaks[args.convention] <= parse_bytes(args.budget):
        print(f"note: the teacher already meets the budget ({args.convention} peak "
              f"{fmt_bytes(result.teacher.peaks[args.convention])})")
    if args.out:
        Path(args.out).write_text(dump_yaml(result.student_spec(), sort_keys=False, default_flow_style=None))
        print(f"wrote {args.out}")
    if args.plot:
        plot_reports([result.teacher.report, result.student.report], ["teacher", "student"], args.plot)
        print(f"wrote {args.plot}")
    return 0
