"""What moves RED on Fashion-MNIST: one seed, a short schedule, choices read on validation.

Each variant is a 28 px Fashion-MNIST config (``configs/fashion_mnist/``: 20,000 training images, 5 epochs,
batch 128) with a few overrides, distilled from one finished teacher run. Accuracy is read on
the full 6,000-image validation split, which is where choices are made (the alpha, the student
layout); test accuracy is recorded in the JSON but not used. Runs are reused when they exist
with the same config, so the table can be rebuilt for free and extended one variant at a time.

Variants:
    x4 student ``cifar_resnet20:strides=4,1,1,1`` (one RED pair: conv1 <-> teacher layer3.0):
    vanilla; RED alpha 0 (blocks, no loss), 10 (the configs') and 50; RED with the MSE
    distance; RED with w_task = w_distill = 1; KD; RED + KD. The same x4 student with a 5x5 stem
    (a 3x3 stem at stride 4 never reads 8 of the 28 rows and columns). The x2 student
    ``strides=2,1,2,1`` (same 4x peak cut, three RED pairs).

    python benchmarks/fashion_mnist_variants.py --teacher runs/compare_fashion_mnist/teacher/best.pt \\
        --data-root data/fashion-mnist --jobs 2

Writes ``benchmarks/results/fashion_mnist_variants.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
X4 = "cifar_resnet20:strides=4,1,1,1"
X4_K5 = X4 + ":stem_kernel=5"
X2 = "cifar_resnet20:strides=2,1,2,1"

# name -> (config file, description, the vanilla run it is compared with, overrides).
# "{teacher}" is replaced by the teacher checkpoint.
VARIANTS: dict[str, tuple[str, str, str, list[str]]] = {
    "v": ("student_vanilla", "x4, vanilla", "v", []),
    "r0": ("student_red", "x4, RED blocks, alpha 0 (no RED loss)", "v", ["distill.options.alpha=0"]),
    "r10": ("student_red", "x4, RED alpha 10", "v", []),
    "r50": ("student_red", "x4, RED alpha 50", "v", ["distill.options.alpha=50"]),
    "rmse": ("student_red", "x4, RED alpha 10, MSE distance", "v", ["distill.options.distance=mse"]),
    "rw1": ("student_red", "x4, RED alpha 10, w_task = w_distill = 1", "v",
            ["distill.options.w_task=1", "distill.options.w_distill=1", "distill.options.alpha=10"]),
    "kd": ("student_vanilla", "x4, KD (ce 0.1 / kd 0.9, T 4)", "v",
           ["distill.method=kd", "model.teacher=cifar_resnet20"]),
    "rkd": ("student_red", "x4, RED alpha 10 + KD (kd 0.5, T 4)", "v", ["distill.method=red_kd"]),
    "v5": ("student_vanilla", "x4 with 5x5 stem, vanilla", "v5", [f"model.student={X4_K5}"]),
    "r10k5": ("student_red", "x4 with 5x5 stem, RED alpha 10", "v5", [f"model.student={X4_K5}"]),
    "vx2": ("student_vanilla", "x2 [2,1,2,1], vanilla", "vx2", [f"model.student={X2}"]),
    "rx2": ("student_red", "x2 [2,1,2,1], RED alpha 10 (3 pairs)", "vx2", [f"model.student={X2}"]),
}


def overrides(args: argparse.Namespace, name: str) -> list[str]:
    config, _, _, extra = VARIANTS[name]
    ov = ["data.val_subset=null", f"run.device={args.device}", "run.progress=false"]
    if args.data_root:
        ov.append(f"data.root={args.data_root}")
    if not name.startswith("v"):  # every non-vanilla variant distils from the teacher
        ov.append(f"model.teacher_checkpoint={args.teacher}")
    return ov + extra


def write_results(args: argparse.Namespace, summaries: dict[str, dict], teacher: dict, wall_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from redistill import results as report

    t_val = teacher["val_acc"]
    rows = []
    for name, (_, desc, base, _) in VARIANTS.items():
        s, v = summaries[name], summaries[base]
        share = None if name == base else report.gap_recovered(t_val, v["val_acc"], s["val_acc"])
        rows.append({"name": name, "variant": desc, "val_acc": s["val_acc"], "test_acc": s["test_acc"],
                     "vanilla": base, "gap_recovered_val": share, "peak_bytes_live": s["peak_bytes_live"],
                     "params": s["params"], "pairs": s.get("pairs"), "train_time_s": s["train_time_s"]})
    args.results.mkdir(parents=True, exist_ok=True)
    data = {"command": ["python", "benchmarks/fashion_mnist_variants.py", *args.argv], "teacher": teacher,
            "teacher_checkpoint": str(args.teacher), "wall_s": wall_s, "rows": rows}
    (args.results / "fashion_mnist_variants.json").write_text(json.dumps(data, indent=2) + "\n")

    lines = [
        "# Fashion-MNIST: what moves RED (one seed, short schedule, validation accuracy)",
        "",
        f"`python benchmarks/fashion_mnist_variants.py {' '.join(args.argv)}`".replace(" `", "`"),
        "",
        f"Configs `configs/fashion_mnist/` (20,000 training images, 5 epochs, batch 128, seed 0), teacher "
        f"`{args.teacher}` (validation {t_val:.2f}%, test {teacher['test_acc']:.2f}%). Accuracy on the full "
        "6,000-image validation split; the gap share is (variant - its vanilla) / (teacher - its vanilla), "
        "all on validation. One seed: differences under about 1 point are within seed noise "
        "(benchmarks/results/fashion_mnist.md gives the spread over 3 seeds).",
        "",
        "| run | variant | val acc % | gap recovered (val) | peak live KiB | params |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = "(baseline)" if r["gap_recovered_val"] is None else f"{100 * r['gap_recovered_val']:.0f}%"
        lines.append(f"| {r['name']} | {r['variant']} | {r['val_acc']:.2f} | {share} | "
                     f"{r['peak_bytes_live'] / 1024:.1f} | {r['params'] / 1e3:.2f}K |")
    lines += ["", "![validation accuracy per variant](fashion_mnist_variants.png)", ""]
    (args.results / "fashion_mnist_variants.md").write_text("\n".join(lines))

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = ["tab:gray" if r["gap_recovered_val"] is None else "tab:blue" for r in rows]
    ax.barh([r["variant"] for r in rows], [r["val_acc"] for r in rows], color=colors)
    ax.axvline(t_val, color="tab:red", linestyle="--", label=f"teacher {t_val:.2f}%")
    lo = min(r["val_acc"] for r in rows) - 2
    ax.set_xlim(lo, t_val + 1)
    ax.invert_yaxis()
    ax.set_xlabel("validation accuracy % (seed 0, 5 epochs, 20k images)")
    ax.legend(loc="lower right")
    ax.set_title("Fashion-MNIST variants (grey: vanilla students)")
    fig.tight_layout()
    fig.savefig(args.results / "fashion_mnist_variants.png", dpi=120)
    plt.close(fig)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint (a finished run's best.pt)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--only", nargs="+", choices=list(VARIANTS), default=None, help="train only these variants")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "exp")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from fashion_mnist import _run_one  # the sibling script's worker: train or reuse one run

    from redistill.errors import UserError

    teacher_summary = args.teacher.parent / "summary.json"
    if not teacher_summary.is_file():
        print(f"fashion_mnist_variants.py: error: no summary.json next to {args.teacher}; "
              "give the best.pt of a finished teacher run", file=sys.stderr)
        return 2
    names = args.only or list(VARIANTS)
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    configs = REPO / "configs" / "fashion_mnist"
    start = time.perf_counter()
    summaries = {}
    try:
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_run_one, str(configs / f"{VARIANTS[n][0]}.yaml"), overrides(args, n),
                                   str(args.out / n), threads) for n in names]
            for fut in futures:
                run_dir, summary, status, _ = fut.result()
                summaries[Path(run_dir).name] = summary
                print(f"{Path(run_dir).name}: {status}, val acc {summary['val_acc']:.2f}%", flush=True)
    except UserError as err:
        print(f"fashion_mnist_variants.py: error: {err}", file=sys.stderr)
        return 2
    if args.only:
        return 0
    write_results(args, summaries, json.loads(teacher_summary.read_text()), time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
