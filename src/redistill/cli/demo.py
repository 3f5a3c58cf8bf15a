"""``redistill demo``: the main job on Fashion-MNIST (teacher, student with its down-sampling in the stem,
RED student)."""

from __future__ import annotations

import argparse
from pathlib import Path

from redistill.demo import DemoOptions, run_demo
from redistill.demo_diffusion import run_diffusion_demo
from redistill.errors import UserError


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="train teacher, vanilla student and RED student on Fashion-MNIST; write a report",
        description=(
            "Train a cifar_resnet20 teacher (strides 1,2,2,2) and its student with the down-sampling moved into "
            "the stem (strides 4,1,2,1; 8x lower peak) without distillation and with RED on Fashion-MNIST "
            "resized to 56 px (one seed of a reduced schedule: ~15 minutes on a 2-core CPU), "
            "then print a table and write a Markdown report with plots. With --task diffusion: a tiny "
            "DDPM UNet teacher, its x2 student and RED x2 student, with sample grids side by side. "
            "Finished runs in the output directory are reused; an interrupted run is resumed."
        ),
    )
    parser.add_argument("--task", choices=("classification", "diffusion"), default="classification",
                        help="classification (default) or diffusion (DDPM UNet, sample grids)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: demo_out, or demo_diffusion_out with --task diffusion)")
    parser.add_argument(
        "--configs", type=Path, default=None,
        help="directory with teacher.yaml, student_vanilla.yaml, student_red.yaml "
        "(default: configs/demo, or configs/demo_diffusion with --task diffusion)",
    )
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST directory (default: the installed one)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the configs')")
    parser.add_argument("--overwrite", action="store_true", help="retrain all runs instead of reusing them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads (default: all cores; 1 is faster on a machine busy with other jobs)",
    )
    parser.add_argument("--deploy-calib", type=int, default=256, help="training images calibrating int8 (default 256)")
    parser.add_argument("--no-deploy", action="store_true", help="skip deploying the RED student (ONNX + int8)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="config overrides applied to all three runs, e.g. run.epochs=2 data.subset=5000",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.device:
        overrides.append(f"run.device={args.device}")
    diffusion = args.task == "diffusion"
    out = args.out if args.out is not None else Path("demo_diffusion_out" if diffusion else "demo_out")
    opts = DemoOptions(
        out=out,
        config_dir=args.configs,
        overrides=overrides,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        threads=args.threads,
        deploy=not args.no_deploy,
        deploy_calib=args.deploy_calib,
    )
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if diffusion:
        result = run_diffusion_demo(opts)
        print()
        print(result.table)
        print()
        print(f"report: {result.report_path} ({result.seconds / 60:.1f} min; reused: {', '.join(result.reused) or 'none'})")
        return 0
    result = run_demo(opts)
    print()
    print(result.table)
    print()
    if result.gap_recovered is not None:
        print(f"RED recovers {100 * result.gap_recovered:.0f}% of the teacher / vanilla-student accuracy gap.")
    if result.deploy_table is not None:
        print()
        scored = (f"; test accuracy on {result.deploy_test_images} test images, the table above on the whole "
                  "test split" if result.deploy_test_images else "")
        print(f"deployed RED student ({result.deploy_dir}/report.md{scored}):")
        print(result.deploy_table)
    print(f"report: {result.report_path} ({result.seconds / 60:.1f} min; reused: {', '.join(result.reused) or 'none'})")
    return 0
