"""``redistill fid (DIR | FILE.pt | RUN_DIR) [--ref fashion-mnist|DIR] [--n N] [--features PATH | --inception PATH]``:
FID, KID and precision / recall of generated images, offline."""

from __future__ import annotations

import argparse

from redistill.cli.memory import check_writable
from redistill.train.fid import FASHION_REF, default_features_path, fid_report, format_report


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fid",
        help="FID, KID, precision and recall of generated images (offline)",
        description="Score a folder of sample PNGs (or one holding samples.pt), a samples .pt file, or a run "
        "directory's samples/ folder against Fashion-MNIST's test split padded to 32 px (or another image "
        "folder). Features: the project's Fashion-MNIST classifier (trained once into the cache on first use), "
        "a file of it (--features), or torchvision's Inception-v3 from a local weights file (--inception).",
    )
    parser.add_argument("source", metavar="DIR|FILE.pt|RUN_DIR")
    parser.add_argument("--ref", default=FASHION_REF,
                        help="reference images: fashion-mnist (default: the test split) or a folder / .pt file")
    parser.add_argument("--n", type=int, help="images per set (default: every sample; the reference is drawn to match)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--features", help=f"feature extractor file (default: {default_features_path()}, "
                                           "trained there when missing)")
    which.add_argument("--inception", help="torchvision inception_v3 state-dict file (.pth or .safetensors)")
    parser.add_argument("--k", type=int, default=3, help="neighbours for precision / recall (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets drawn (default: 0)")
    parser.add_argument("--data-root", help="Fashion-MNIST folder, if not the default")
    parser.add_argument("--out", metavar="FILE.json", help="also write the result as JSON")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    check_writable(args.out)
    result = fid_report(args.source, ref=args.ref, n=args.n, features=args.features, inception=args.inception,
                        out=args.out, data_root=args.data_root, seed=args.seed, k=args.k)
    print(format_report(result))
    return 0
