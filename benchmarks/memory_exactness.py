"""Predicted vs measured peak activation memory on torchvision models and a small UNet.

For each model (1x3x224x224, fp32, BN folded): the predicted peaks (live, eager, layer), the
measured op-boundary peaks (live replay and eager run), the CPU allocator peak from the
torch.profiler memory records and its excess over the prediction, and with CUDA
torch.cuda.max_memory_allocated during a CUDA replay.

    python benchmarks/memory_exactness.py [--size 224] [--suffix _cuda]
Writes benchmarks/results/memory_exactness{suffix}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torchvision

from redistill.memory import analyze_memory
from redistill.models.toy import SmallUNet

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "densenet121", "efficientnet_b0",
          "shufflenet_v2_x1_0", "regnet_y_400mf", "squeezenet1_0", "mnasnet0_5", "googlenet", "small_unet"]


def build(name: str) -> torch.nn.Module:
    if name == "small_unet":
        return SmallUNet().eval()
    kw = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    return torchvision.models.get_model(name, weights=None, **kw).eval()


def kib(n):
    return "-" if n is None else f"{n / 1024:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--suffix", default="")
    parser.add_argument("--models", nargs="*", default=MODELS)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        rep = analyze_memory(build(name), (1, 3, args.size, args.size), measure=True, name=name)
        m = rep.measured
        row = {
            "model": name,
            "pred_live": rep.peaks["live"], "meas_live": m["live_boundary_peak"],
            "pred_eager": rep.peaks["eager"], "meas_eager": m["eager_boundary_peak"],
            "pred_layer": rep.peaks["layer"],
            "cpu_allocator": m["cpu_allocator_peak"], "cpu_excess": m["cpu_allocator_excess"],
            "cuda_max_allocated": m["cuda_peak"],
            "live_exact": m["live_boundary_peak"] == rep.peaks["live"]
            and m["live_boundary"] == [e.live_bytes for e in rep.timeline],
            "eager_exact": m["eager_boundary_peak"] == rep.peaks["eager"],
            "peak_module": rep.peak_module,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    RESULTS.mkdir(exist_ok=True)
    stem = f"memory_exactness{args.suffix}"
    meta = {"input": f"1x3x{args.size}x{args.size}", "dtype": "fp32", "fold_bn": True,
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    head = ("| model | live pred | live meas | eager pred | eager meas | layer | CPU allocator | excess over live pred |"
            " CUDA max alloc | exact |")
    md = [f"Input {meta['input']}, fp32, BN folded, KiB. torch {meta['torch']}"
          + (f", {meta['cuda']}" if meta["cuda"] else "") + ".", "", head, "|" + "---|" * 10]
    for r in rows:
        exact = "yes" if r["live_exact"] and r["eager_exact"] else "NO"
        md.append(f"| {r['model']} | {kib(r['pred_live'])} | {kib(r['meas_live'])} | {kib(r['pred_eager'])} | "
                  f"{kib(r['meas_eager'])} | {kib(r['pred_layer'])} | {kib(r['cpu_allocator'])} | "
                  f"{kib(r['cpu_excess'])} | {kib(r['cuda_max_allocated'])} | {exact} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
