"""``redistill export RUN_DIR [--out DIR]``: the deployed student alone (safetensors + spec.yaml)."""

from __future__ import annotations

import argparse

from redistill.train.export import export_run


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="write a run's deployed student (RED blocks in, teacher out) as safetensors + spec.yaml",
        description="Write the deployed student of RUN_DIR (RED blocks in; teacher and training-only "
        "modules out) as model.safetensors + spec.yaml; `redistill eval` and `redistill memory` accept "
        "the result.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--out", help="export directory (default: RUN_DIR/export)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint (default: best)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    out = export_run(args.run_dir, args.out, args.checkpoint, trust_code=getattr(args, "trust_code", False))
    print(f"exported {args.run_dir} ({args.checkpoint} checkpoint) to {out}")
    return 0
