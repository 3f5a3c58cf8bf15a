"""Patch-based inference on torchvision CNNs and on the Fashion-MNIST teacher and RED student.

1. torchvision mobilenet_v2, mnasnet1_0, resnet18, resnet50, efficientnet_b0 (random init, 1x3x224x224,
   int8): the plan with the smallest peak, the peak before / after, FLOPs and CPU latency overhead,
   exactness.
2. MCUNetV2's check: MobileNetV2 224 px int8, the first five blocks (features.0-4) patch-wise on a
   4x4 grid, depthwise convs in place (their runtime's), peak with and without the input image.
3. Fashion-MNIST (56 px canvas): the teacher, the RED x4 student, the patch-based teacher and the
   patched student: peak, FLOPs, latency, test accuracy (the patched ones evaluated with the patch
   executor on the whole test split), in one table and one plot.

    python benchmarks/patch.py [--runs runs/fm56_canvas] [--skip-torchvision]
Writes benchmarks/results/patch.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torchvision

from redistill.memory.liveness import plan_live
from redistill.patch.executor import locate_split
from redistill.patch.plan import evaluate, patch_model, prepare_model, search, trace_patched
from redistill.train.data import build_datasets, eval_loader
from redistill.train.export import load_run_model

RESULTS = Path(__file__).resolve().parent / "results"
TORCHVISION = ["mobilenet_v2", "mnasnet1_0", "resnet18", "resnet50", "efficientnet_b0"]
MCUNET = {"before_kb": 1372, "after_kb": 172, "split": "features.4", "grid": 4}  # kB = 1024 B in their figure
KIB = 1024


def _row(name: str, r) -> dict:
    d = r.to_dict()
    d.pop("timeline_before"), d.pop("timeline_after")
    d["model"] = name
    return d


def torchvision_rows(repeats: int) -> list[dict]:
    rows = []
    for name in TORCHVISION:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        report = patch_model(model, (1, 3, 224, 224), dtype="int8", latency_repeats=repeats, name=name)
        rows.append(_row(name, report))
        print(report.to_table(), flush=True)
    return rows


def mcunet_check(repeats: int) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None).eval()
    prep = prepare_model(model, (1, 3, 224, 224))
    r = evaluate(prep, MCUNET["split"], MCUNET["grid"], dtype="int8", inplace_depthwise=True,
                 latency_repeats=repeats, name="mobilenet_v2")
    # Where the patched peak sits: in the tiles or in the unchanged rest of the network.
    cut = locate_split(prep.trace, MCUNET["split"])
    base = plan_live(prep.trace, 1, inplace_depthwise=True)
    suffix_ops = len(prep.trace.ops) - cut.last - 1
    rest_peak = max(base.live[cut.last + 1:])
    tiles_peak = max(r.timeline_after[:-suffix_ops])
    _, ptrace, _ = trace_patched(prep, MCUNET["split"], MCUNET["grid"])
    p = plan_live(ptrace, 1, inplace_depthwise=True)
    at = max(range(len(p.live) - suffix_ops), key=p.live.__getitem__)
    d = _row("mobilenet_v2", r)
    d.update(rest_peak=rest_peak, tiles_peak=tiles_peak, tiles_peak_op=ptrace.ops[at].name.removeprefix("aten."),
             split_bytes=base.buffers[base.buffer_of[cut.vid]].nbytes, theirs=MCUNET)
    print(r.to_table(), flush=True)
    return d


def _accuracy(model, patched_plan, ds, data_cfg) -> tuple[float, float]:
    """Test accuracy of the plain model and of its patched execution (compiled per batch size)."""
    cache, plain_ok, patched_ok, total = {}, 0, 0, 0
    with torch.no_grad():
        for images, targets in eval_loader(ds, data_cfg):
            plain = model(images).argmax(1)
            if patched_plan is not None:
                n = images.shape[0]
                if n not in cache:
                    cache[n] = trace_patched(prepare_model(model, images), *patched_plan)[0]
                patched_ok += (cache[n](images).argmax(1) == targets).sum().item()
            plain_ok += (plain == targets).sum().item()
            total += images.shape[0]
    plain_acc = 100 * plain_ok / total
    return plain_acc, 100 * patched_ok / total if patched_plan else plain_acc  # no plan: it runs plainly


def _load_run(run: Path):
    model, cfg, info, _ = load_run_model(run)
    return model, cfg, (1, info.in_channels, info.image_size, info.image_size)


def fashion_mnist(runs: Path, repeats: int) -> list[dict]:
    rows = []
    for label, run in (("teacher", "teacher_s0"), ("RED x4 student", "red_s0")):
        model, cfg, shape = _load_run(runs / run)
        prep = prepare_model(model, shape)
        plan = search(prep, dtype="fp32")
        plain = evaluate(prep, None, 1, dtype="fp32", latency_repeats=repeats, name=label)
        patched = evaluate(prep, *plan, dtype="fp32", latency_repeats=repeats, name=f"patched {label}")
        splits = build_datasets(cfg.data)
        # (None, 1) when no plan lowers the peak: the "patch-based" row is then the plain model
        acc_plain, acc_patched = _accuracy(prep.model, plan if plan[0] is not None else None, splits.test, cfg.data)
        for name, r, acc in ((label, plain, acc_plain), (f"patch-based {label}", patched, acc_patched)):
            d = _row(name, r)
            d.update(run=str(runs / run), test_acc=acc, test_count=len(splits.test))
            rows.append(d)
        print(patched.to_table(), f"\naccuracy plain {acc_plain:.2f} patched {acc_patched:.2f}", flush=True)
    return rows


def _kib(n: int) -> str:
    return f"{n / KIB:.1f}"


def write(tv: list[dict], mcu: dict | None, fm: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "patch.json").write_text(json.dumps({"torchvision": tv, "mcunetv2": mcu, "fashion_mnist": fm},
                                                   indent=1))
    lines = ["# Patch-based inference (`redistill patch`)", "",
             "Peaks: live convention, BN folded, per image, parameters excluded; the patched peak is the "
             "analyzer's on the patch executor's own op sequence. FLOPs: torch.utils.flop_counter. Latency: "
             "median CPU wall time of one forward (shared machine; indicative only). Exact: max |patched - plain| "
             "/ max |plain| <= 1e-5.", ""]
    if tv:
        lines += ["## torchvision models, 1x3x224x224, int8, plan with the smallest peak", "",
                  "| model | plan | peak before (KiB) | peak after (KiB) | reduction | FLOPs overhead | "
                  "latency overhead | max abs diff | exact |", "|---|---|---|---|---|---|---|---|---|"]
        for r in tv:
            lat = r["latency_after_s"] / r["latency_before_s"] - 1 if r["latency_before_s"] else float("nan")
            plan = f"{r['split']} {r['grid']}x{r['grid']}" if r["split"] else "none lowers the peak"
            lines.append(f"| {r['model']} | {plan} | {_kib(r['peak_before']['int8'])} | "
                         f"{_kib(r['peak_after']['int8'])} | {r['reduction']:.2f}x | {100 * r['flops_overhead']:+.1f}% | "
                         f"{100 * lat:+.0f}% | {r['max_abs_diff']:.2g} | {'yes' if r['exact'] else 'NO'} |")
        lines.append("")
    if mcu:
        lines += ["## MCUNetV2's MobileNetV2 figure", "",
                  f"Same plan as theirs: the first five blocks (through `{mcu['split']}`, output "
                  f"{mcu['split_shape']}) patch-wise, {mcu['grid']}x{mcu['grid']} patches, int8, depthwise in place.",
                  "", "| | before (kB) | after (kB) | after, input image left out (kB) |", "|---|---|---|---|",
                  f"| MCUNetV2 (paper) | {mcu['theirs']['before_kb']} | - | {mcu['theirs']['after_kb']} |",
                  f"| redistill patch | {_kib(mcu['peak_before']['int8'])} | {_kib(mcu['peak_after']['int8'])} | "
                  f"{_kib(mcu['peak_after_no_input']['int8'])} |", "",
                  f"Where our patched peak sits: the rest of the network (unchanged) peaks at "
                  f"{_kib(mcu['rest_peak'])} kB (block 5's input plus its expanded map); the tiles peak at "
                  f"{_kib(mcu['tiles_peak'])} kB at `{mcu['tiles_peak_op']}` (the {_kib(mcu['split_bytes'])} kB "
                  "split buffer, the input image while tiles remain, and one tile's intermediates with their halo). "
                  f"FLOPs overhead {100 * mcu['flops_overhead']:+.1f}% (theirs: about +10% MACs). "
                  "Differences from their 172 kB: the input image (147 kB) counts here until the last tile has "
                  "read it; halos grow through 4 stride-2 stages, so a tile of the 28x28 output needs a "
                  "much larger region of the 112x112 maps; border tiles pad with an explicit copy; their "
                  "runtime may also reuse buffers inside a tile in ways the live convention does not.", ""]
    if fm:
        lines += ["## Fashion-MNIST (56 px canvas): RED student vs patch-based inference", "",
                  "| model | plan | peak fp32 (KiB) | peak int8 (KiB) | MFLOPs | latency (ms) | test acc (%) | exact |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in fm:
            plan = (f"{r['split']} {r['grid']}x{r['grid']}" if r["split"] else
                    "none lowers the peak: plain" if r["model"].startswith("patch-based") else "plain")
            lines.append(f"| {r['model']} | {plan} | {_kib(r['peak_after']['fp32'])} | {_kib(r['peak_after']['int8'])} | "
                         f"{r['flops_after'] / 1e6:.1f} | {1e3 * r['latency_after_s']:.1f} | {r['test_acc']:.2f} | "
                         f"{'yes' if r['exact'] else 'NO'} |")
        lines += ["", f"Test split: {fm[0]['test_count']} images; patched accuracies are measured with the patch "
                  "executor, not copied. Runs: " + ", ".join(sorted({r['run'] for r in fm})) + ".", "",
                  "![peak vs accuracy](patch.png)", ""]
        _plot(fm)
    (RESULTS / "patch.md").write_text("\n".join(lines))
    print("\n".join(lines))


def _plot(fm: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in fm:
        x, y = r["peak_after"]["fp32"] / KIB, r["test_acc"]
        ax.scatter([x], [y], s=40 + r["flops_after"] / 1e6)
        below = r["model"].startswith("patch-based")  # a plan may not move the point: keep both labels legible
        ax.annotate(f"{r['model']}\n{r['flops_after'] / 1e6:.0f} MFLOPs", (x, y), textcoords="offset points",
                    xytext=(6, -22 if below else 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("peak activation memory, fp32, per image (KiB, log)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title("RED student vs patch-based inference (marker size ~ FLOPs)")
    fig.tight_layout()
    fig.savefig(RESULTS / "patch.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/fm56_canvas"),
                        help="folder holding teacher_s0 and red_s0 (read only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-torchvision", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tv = [] if args.skip_torchvision else torchvision_rows(args.repeats)
    mcu = None if args.skip_torchvision else mcunet_check(args.repeats)
    fm = fashion_mnist(args.runs, args.repeats) if (args.runs / "teacher_s0").is_dir() else []
    if not fm:
        print(f"no runs under {args.runs}: the Fashion-MNIST comparison is skipped", file=sys.stderr)
    write(tv, mcu, fm)


if __name__ == "__main__":
    main()
