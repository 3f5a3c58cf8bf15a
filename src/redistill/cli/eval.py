"""``redistill eval (RUN_DIR | EXPORT_DIR) [--split test|val]``: accuracy of a trained model."""

from __future__ import annotations

import argparse

from redistill.errors import UserError
from redistill.train.export import evaluate_path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="top-1 accuracy of a run's deployed student or of an export",
        description="Score a run directory (its best checkpoint) or an export directory on the test "
        "split or the validation split carved from the training set.",
    )
    parser.add_argument("path", metavar="RUN_DIR|EXPORT_DIR")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--data-root", help="data set folder, if not where the run found it")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default: the run's)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.batch_size is not None and args.batch_size < 1:  # 0 would silently mean "the run's"
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    result = evaluate_path(args.path, args.split, args.data_root, args.device, args.batch_size,
                           trust_code=getattr(args, "trust_code", False))
    if "acc" not in result:  # a diffusion run: its denoising loss
        print(f"{args.path}: {result['split']} denoising MSE {result['loss']:.4f} on {result['count']} images")
        return 0
    print(f"{args.path}: {result['split']} accuracy {result['acc']:.2f}% on {result['count']} images "
          f"(cross-entropy {result['loss']:.4f})")
    return 0
