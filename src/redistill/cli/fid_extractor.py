"""``redistill fid-extractor [--out PATH]``: train the Fashion-MNIST classifier whose features
``redistill fid`` uses (one CPU thread, seeded, a few minutes per epoch)."""

from __future__ import annotations

import argparse

from redistill.cli.memory import check_writable
from redistill.train.fid import default_features_path, train_extractor


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fid-extractor",
        help="train the feature extractor that redistill fid uses",
        description="Train the project's Fashion-MNIST classifier on the training split (padded to 32 px; one "
        "CPU thread, fixed seed) and save it as safetensors, with its provenance and test accuracy as JSON "
        "next to it.",
    )
    parser.add_argument("--out", help=f"weights file (default: {default_features_path()})")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--data-root", help="Fashion-MNIST folder, if not the default")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    check_writable(args.out)
    out = args.out or default_features_path()
    record = train_extractor(out, args.data_root, epochs=args.epochs, seed=args.seed)
    print(f"feature extractor saved to {out} (test accuracy {record['test_accuracy']:.2%}, "
          f"{record['train_seconds']:.0f} s)")
    return 0
