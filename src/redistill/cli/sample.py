"""``redistill sample RUN_DIR --n N [--sampler ddim --steps 100] [--seed S] --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from redistill.errors import UserError
from redistill.train.sampling import sample_run


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sample",
        help="draw images from a diffusion run (its EMA denoiser): DDPM or DDIM",
        description="Draw N images from the EMA denoiser of a run trained with task: diffusion and write "
        "grid.png, samples.pt (a uint8 N x C x H x W tensor), samples.json (how they were drawn) and "
        "images/NNNNN.png into a new directory (RUN_DIR/samples is where `redistill fid RUN_DIR` looks). "
        "Image k of a seed is the same whatever --n and --batch-size.",
    )
    parser.add_argument("run_dir", type=Path, help="a diffusion run directory")
    parser.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm",
                        help="ddpm: all T steps (default); ddim: --steps steps")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="images denoised at once (default 64)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    result = sample_run(
        args.run_dir, args.out, n=args.n, sampler=args.sampler, steps=args.steps, seed=args.seed,
        batch_size=args.batch_size, device=args.device, progress=not args.no_progress,
        checkpoint=args.checkpoint, trust_code=getattr(args, "trust_code", False),
    )
    print(f"{result.n} images ({result.sampler}, {result.steps} steps) in {result.seconds:.1f} s "
          f"({result.seconds_per_image:.3f} s/image) -> {result.out / 'grid.png'}")
    return 0
