"""The paper's own setting: ResNeXt-18 x4 with five RED pairs on the authors' STL10 recipe.

Teacher ``resnext18-1-21222``, student ``resnext18-4-11221`` (stem stride 4, two later stride-2
stages kept), ``pairs: auto`` (five pairs: the stem output, then each later down-sampling block on
its input and output side), alpha 50, trained on the authors' STL10 recipe as the shipped
``configs/stl10/resnext18_*.yaml`` write it (SGD lr 0.01, momentum 0.9, weight decay 0, batch 8,
lr x0.2 at epochs 180 / 240 / 270 of 300, RandomResizedCrop + flip, CutMix / MixUp alpha 0.2;
docs/method.md s.6). Arms: teacher, vanilla student, student+ (RED blocks, same loss weights, every
alpha 0), RED and plain logit KD, 3 seeds, run and reported with the machinery of
``benchmarks/fashion_mnist.py`` (process pool, finished runs reused, interrupted ones resumed,
paired differences RED - vanilla, RED - student+, student+ - vanilla).

Data (5,000 training images, the 6,000 held-out images for validation, the 10,000 test images):

- ``--variant canvas`` (default): Fashion-MNIST, each 28 px image enlarged to 64 px at a fixed random
  place on a blank 128 px canvas (``data.canvas=56 data.image_size=128``: placed on a 56 px square,
  which is then resized to 128). The stem's x4 leaves the garment 16 px wide: detail is lost.
- ``--variant resize128``: Fashion-MNIST resized from 28 to 128 px. At a stem stride of 4 the 32 px
  maps still hold every source pixel, so the vanilla student may not trail the teacher at all.
- ``--data stl10 --data-root DIR``: the paper's data (96 px resized to 128), where a user has it.

``--budget``: 64 px (every size halved), batch 64, lr scaled linearly with the batch from the
recipe's 8 (0.08), 100 epochs with the milestones scaled alike (60 / 80 / 90), 8 runs side by side
(``--jobs``; teachers and vanilla students first, the distilled students once their teacher is done),
meant for one GPU (about ten minutes on an H200: an estimate, not a measurement). ``--quick``: a tiny
smoke run (1 epoch, 300 images, 32 px, width 32, seeds 0 1), not a result. Every run holds its images
on the training device (``data.preload``: resized once, then RandomResizedCrop and flips a batch at a
time), so the per-image Python cost of the loaders does not set the pace.

Results: ``benchmarks/results/paper_regime[_<variant>][_budget][_quick].{json,md,png}`` (no variant
suffix for STL10).

    python benchmarks/paper_regime.py --quick --device cpu              # smoke run (CPU, minutes)
    python benchmarks/paper_regime.py --budget --device cuda --jobs 8   # the GPU budget form
    python benchmarks/paper_regime.py --budget --device cuda --variant resize128
    python benchmarks/paper_regime.py --device cuda --jobs 5 --data stl10 --data-root /data/stl10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_mnist as fm  # noqa: E402  (the protocol machinery this script reuses)

REPO = fm.REPO
CONFIGS = REPO / "configs" / "stl10"
TEACHER = "resnext18-1-21222"
STUDENT = "resnext18-4-11221"
ALPHA = 50.0  # the authors' STL10 alpha_RED (docs/method.md s.6)
CONFIG_FILES = {"teacher": "resnext18_teacher.yaml", "vanilla": "resnext18_x4_vanilla.yaml",
                "kd": "resnext18_x4_vanilla.yaml", "red": "resnext18_x4_red.yaml",
                "student_plus": "resnext18_x4_red.yaml"}
SIZE, BUDGET_SIZE, QUICK_SIZE = 128, 64, 32
BUDGET = {"batch_size": 64, "epochs": 100, "jobs": 8}
QUICK_SIZES = (300, 100, 200)  # --quick: training, validation and test images
QUICK_WIDTH = 32  # the narrowest ResNeXt-18: its grouped convs have 32 groups
SUBSET = 5000  # training images: STL10's training-set size
STL10_TRAIN = 5000
CANVAS = 56  # 28 px on a 56 px square, resized to the side: the garment fills half of it
VARIANTS = {
    "canvas": "Fashion-MNIST, each 28 px image enlarged to {half} px at a fixed random place on a blank {size} px "
              "canvas (`data.canvas=56 data.image_size={size}`: placed on a 56 px square, then resized)",
    "resize128": "Fashion-MNIST resized from 28 to {size} px (`data.image_size={size}`)",
    "stl10": "STL10 resized from 96 to {size} px (the paper's data)",
}
GAP_NEEDED = 3.0  # teacher - vanilla points below which a setting tests nothing


def recipe():
    """The authors' STL10 recipe, as the shipped teacher config writes it."""
    from redistill.train import load_config

    return load_config(CONFIGS / CONFIG_FILES["teacher"])


def arm_overrides(args: argparse.Namespace, kind: str, seed: int) -> list[str]:
    """The paper-regime settings of one run, then the protocol's own (sizes, seed, device, teacher, student+)."""
    ov = [f"data.name={args.data}", f"data.image_size={args.image_size}",
          f"data.canvas={CANVAS if args.variant == 'canvas' else 'null'}",
          f"schedule.milestones=[{', '.join(map(str, args.milestones))}]", "data.preload=true"]
    if args.data == "fashion_mnist":
        ov.append("data.root=null")  # the installed set unless --data-root (added below) names one
    if args.quick:
        ov.append(f"model.options.width={QUICK_WIDTH}")
    if kind in fm.WITH_BLOCKS:  # RED and student+ (which fm.protocol_overrides then sets to alpha 0)
        ov += ["distill.pairs=auto", f"distill.options.alpha={ALPHA:g}"]
    return ov + fm.protocol_overrides(args, kind, seed)


def results_stem(args: argparse.Namespace) -> str:
    return ("paper_regime" + ("" if args.data == "stl10" else f"_{args.variant}") + ("_budget" if args.budget else "")
            + ("_quick" if args.quick else ""))


def budget_command(args: argparse.Namespace) -> str:
    """The budget form of this call, on a GPU."""
    cmd = ["python", "benchmarks/paper_regime.py", "--budget", "--device", "cuda", "--jobs", str(BUDGET["jobs"])]
    cmd += ["--data", "stl10"] if args.data == "stl10" else ["--variant", args.variant]
    if args.data_root or args.data == "stl10":
        cmd += ["--data-root", args.data_root or "DIR"]
    return " ".join(cmd)


def write_results(args: argparse.Namespace, agg: dict, summaries: dict, wall_s: float) -> list[Path]:
    """benchmarks/results/<stem>.{json,md,png}."""
    from redistill import results as report

    stem = results_stem(args)
    args.results.mkdir(parents=True, exist_ok=True)
    rows = fm._rows(agg)
    setting = VARIANTS[args.variant].format(size=args.image_size, half=args.image_size // 2)
    png = report.plot_accuracy_vs_memory(
        rows, args.results / f"{stem}.png",
        title=f"ResNeXt-18 x4, {args.variant}{', budget' if args.budget else ''}: mean ± std over {len(args.seeds)} seeds")
    devices = sorted({s.get("device", "?") for s in summaries.values()})
    train_images = QUICK_SIZES[0] if args.quick else args.subset or round(STL10_TRAIN * 0.9)
    settings = {
        "script": "benchmarks/paper_regime.py", "setting": f"paper regime ({args.variant})", "argv": args.argv,
        "quick": args.quick, "budget": args.budget, "data": args.data, "variant": args.variant,
        "image_size": args.image_size, "seeds": args.seeds, "batch_size": args.batch_size, "lr": args.lr,
        "milestones": args.milestones, "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
        "teacher": None, "teacher_model": TEACHER, "student": STUDENT, "alpha": ALPHA,
        "subset": args.subset, "train_images": train_images, "red_weights": None,
        "overrides": args.overrides, "jobs": args.jobs, "device": args.device, "devices": devices, "wall_s": wall_s,
    }
    js = args.results / f"{stem}.json"
    js.write_text(json.dumps({"settings": settings, **agg, "runs": summaries}, indent=2) + "\n")

    g = agg["groups"]
    gap = g["teacher"]["test_acc_mean"] - g["vanilla"]["test_acc_mean"]
    pairs = g["red"]["pairs"] or []
    on_gpu = any(d.startswith("cuda") for d in devices)
    lines = [
        f"# Paper regime: ResNeXt-18 x4, 5 RED pairs, the authors' STL10 recipe"
        + (" (budget form)" if args.budget else "") + (" (QUICK smoke run, not a result)" if args.quick else ""),
        "",
        f"`python benchmarks/paper_regime.py {' '.join(args.argv)}`".replace(" `", "`"),
        "",
        f"Teacher `{TEACHER}`, student `{STUDENT}`, `pairs: auto`, alpha {ALPHA:g}, loss 0.5 CE + 0.5 mean(alpha L). "
        f"Data: {setting}; {train_images:,} training images"
        + ("" if args.quick else ", the held-out validation images, the full test set")
        + f". Recipe (configs/stl10/resnext18_*.yaml): SGD lr {args.lr:g}, momentum 0.9, weight decay 0, batch "
        f"{args.batch_size}, {args.teacher_epochs} epochs, lr x0.2 at epochs {', '.join(map(str, args.milestones))}, "
        "RandomResizedCrop + flip, CutMix / MixUp alpha 0.2"
        + (" (--budget: 64 px, batch 64 with the lr scaled linearly from the recipe's 8, 100 epochs, milestones "
           "scaled alike)" if args.budget else "")
        + (f" (--quick: width {QUICK_WIDTH}, {args.image_size} px)" if args.quick else "")
        + f". Arms: teacher, vanilla, student+, RED, KD; seeds {', '.join(map(str, args.seeds))}, the distilled "
        "students of seed s learn from teacher seed s"
        + (f"; every run also takes {', '.join(f'`{o}`' for o in args.overrides)}" if args.overrides else "") + ".",
        "",
        f"Ran on: {', '.join(devices)} (--device {args.device}); wall time of this call {wall_s / 60:.1f} min "
        "(reused runs cost nothing).",
    ]
    if not on_gpu:
        lines.append(f"No GPU ran this call: the budget form has not been run on a GPU here. With one: "
                     f"`{budget_command(args)}`.")
    lines.append("")
    lines += fm.result_lines(agg, summaries, args.seeds, rows)
    lines += [
        f"- Teacher - vanilla gap: {gap:.2f} points; a setting tests RED only with a gap of at least "
        f"{GAP_NEEDED:g}: **{'yes' if gap >= GAP_NEEDED else 'no'}**.",
        f"- RED pairs ({len(pairs)}, alpha {', '.join(sorted({format(p['alpha'], 'g') for p in pairs}))}): "
        + ", ".join(f"{p['student']} ({p['side']}) -> {p['teacher']}" for p in pairs) + ".",
    ]
    return [js, fm.write_markdown(args.results / f"{stem}.md", lines, png), png]


def scaled_milestones(milestones: list[int], factor: float) -> list[int]:
    """The recipe's milestones scaled to another length, kept positive and increasing (a milestone that
    would fall on the one before moves an epoch later: short runs keep every lr step)."""
    out: list[int] = []
    for m in milestones:
        out.append(max(round(m * factor), out[-1] + 1 if out else 1))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("fashion_mnist", "stl10"), default="fashion_mnist")
    p.add_argument("--data-root", default=None, help="data set folder (default: the installed Fashion-MNIST; "
                                                     "STL10: the configs' data/stl10)")
    p.add_argument("--variant", choices=("canvas", "resize128"), default=None,
                   help="Fashion-MNIST variant (default: canvas)")
    p.add_argument("--budget", action="store_true", help="64 px, batch 64, 100 epochs, 8 jobs: the GPU form")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 300 images, 32 px, width 32, seeds 0 1")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every run (milestones scaled alike)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (--quick: 0 1)")
    p.add_argument("--jobs", type=int, default=None, help="runs trained at the same time (default 1; --budget 8)")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes per run")
    p.add_argument("--out", type=Path, default=None, help="run directories (default: runs/<results name>)")
    p.add_argument("--results", type=Path, default=fm.RESULTS, help="folder of the results files")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="more config overrides for every run")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.data == "stl10" and args.variant is not None:
        p.error("--variant picks a Fashion-MNIST variant; STL10 is resized from 96 px")
    args.variant = "stl10" if args.data == "stl10" else args.variant or "canvas"
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be >= 1")
    base = recipe()
    args.batch_size = BUDGET["batch_size"] if args.budget else base.data.batch_size
    epochs = args.epochs or (1 if args.quick else BUDGET["epochs"] if args.budget else base.run.epochs)
    args.milestones = scaled_milestones(base.schedule.milestones, epochs / base.run.epochs)
    args.lr = base.optim.lr * args.batch_size / base.data.batch_size  # linear scaling from the recipe's batch
    args.image_size = QUICK_SIZE if args.quick else BUDGET_SIZE if args.budget else SIZE
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    args.jobs = args.jobs or (BUDGET["jobs"] if args.budget else 1)
    args.workers = fm.default_workers(args.jobs) if args.workers is None else args.workers
    args.out = args.out or REPO / "runs" / results_stem(args)
    # What fm.protocol_overrides and fm.run_protocol read: one teacher per seed, student+ and KD, no sweep.
    args.subset = None if args.data == "stl10" else SUBSET
    args.quick_sizes = QUICK_SIZES
    args.teacher_epochs = args.student_epochs = epochs
    args.teacher, args.teachers, args.alphas, args.student, args.red_weights = None, None, None, None, None
    args.teacher_model, args.student_plus, args.kd, args.red_kd = TEACHER, True, True, False
    args.configs = CONFIGS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from redistill.errors import UserError

    start = time.perf_counter()
    try:
        summaries, _ = fm.run_protocol(args, CONFIG_FILES, arm_overrides)
    except UserError as err:
        print(f"paper_regime.py: error: {err}", file=sys.stderr)
        return 2
    agg = fm.aggregate(summaries, args.seeds, fm.kinds(args))
    write_results(args, agg, summaries, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
