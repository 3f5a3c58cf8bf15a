"""``redistill deploy RUN_DIR|MODEL``: folded ONNX, int8, and a measured efficiency report."""

from __future__ import annotations

import argparse

from redistill.deploy import DeployOptions, deploy, table


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "deploy",
        help="fold BatchNorm, export ONNX (+ int8) and report accuracy, predicted vs measured peak memory, latency",
        description="Deploy a run's student (or any model): BatchNorm folded, ONNX export checked against "
        "PyTorch, int8 static quantization calibrated on training images, and a report (Markdown + JSON) "
        "of accuracy, predicted vs measured peak memory, size, FLOPs and CPU latency.",
    )
    parser.add_argument("ref", metavar="RUN_DIR|MODEL")
    parser.add_argument("--input", help="input shape, e.g. 1x3x224x224 (a run's or export's own by default)")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                        help="also quantize to int8 (default: on; --no-int8 for fp32 only)")
    parser.add_argument("--calib", type=int, default=256, help="calibration images from the training split (default 256)")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/deploy or deploy_out/MODEL)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency (default 1)")
    parser.add_argument("--runs", type=int, default=50, help="timed latency runs (default 50)")
    parser.add_argument("--test-limit", type=int, help="score at most this many test images")
    parser.add_argument("--no-torchao", action="store_true", help="skip the torchao PT2E int8 path")
    parser.add_argument("--data-root", help="data set folder, if not where the run found it")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    opts = DeployOptions(input=args.input, int8=args.int8, calib=args.calib, out=args.out, overwrite=args.overwrite,
                         threads=args.threads, runs=args.runs, test_limit=args.test_limit,
                         torchao=not args.no_torchao, data_root=args.data_root,
                         trust_code=getattr(args, "trust_code", False))
    report = deploy(args.ref, opts)
    print(table(report))
    print(f"wrote {report.out_dir}/ (model.onnx{', model.int8.onnx' if 'int8' in report.variants else ''}, "
          "report.md, report.json)")
    return 0
