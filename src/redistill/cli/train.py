"""``redistill train CONFIG [key=value ...]``: train a teacher, a vanilla or a distilled student."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from redistill.errors import UserError
from redistill.train import load_config, run_training
from redistill.util import fmt_bytes


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train a model as a config describes (teacher, vanilla or distilled student)",
        description="Train a model as CONFIG describes; key=value arguments override config fields "
        "(e.g. optim.lr=0.05 run.epochs=2 distill.method=null). Works under torchrun for DDP.",
    )
    parser.add_argument("config", help="YAML run config (see configs/example.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    parser.add_argument("--out", help="run directory (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="empty an existing run directory first (only one this project marked as a run)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if args.resume and not (out.is_dir() and any(out.iterdir())):
        # A mistyped --out would otherwise start a new run from scratch without a word.
        raise UserError(f"nothing to resume in {out}: it does not exist or is empty; check --out, "
                        "or drop --resume to start a new run")
    summary = run_training(cfg, out, resume=args.resume, overwrite=args.overwrite,
                           trust_code=getattr(args, "trust_code", False))
    if summary:  # only the main process of a torchrun job gets the summary printed
        if int(os.environ.get("RANK", "0")) == 0:
            print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    """A few lines for the terminal: accuracy (or the denoising loss), peak memory, size."""

    metric = summary.get("metric", "acc")
    val = summary.get(f"val_{metric}")
    if metric == "acc":
        scores = (f"val acc (best, epoch {summary['best_epoch']}): {'n/a' if val is None else f'{val:.2f}%'}"
                  f"   test acc: {summary['test_acc']:.2f}%")
    else:  # a loss (diffusion: the denoising MSE of the EMA model); lower is better
        scores = (f"val {metric} (best, epoch {summary['best_epoch']}): {'n/a' if val is None else f'{val:.4f}'}"
                  f"   test {metric}: {summary[f'test_{metric}']:.4f}")
    lines = [
        f"run: {summary['run_dir']}",
        scores,
        f"peak memory per image (fp32): live {fmt_bytes(summary.get('peak_bytes_live'), unit='KiB')}, "
        f"layer {fmt_bytes(summary.get('peak_bytes_layer'), unit='KiB')}",
        f"params: {summary['params']:,}   FLOPs: {summary['flops']:,}   train time: {summary['train_time_s']:.1f} s"
        if summary.get("flops") is not None
        else f"params: {summary['params']:,}   train time: {summary['train_time_s']:.1f} s",
    ]
    return "\n".join(lines)
