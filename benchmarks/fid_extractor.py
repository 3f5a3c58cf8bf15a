"""The default FID feature extractor: its training record and a sanity table of the metrics it gives.

Trains the project's Fashion-MNIST classifier (one CPU thread, seed 0, the 60,000 training images
padded to 32 px) unless ``--features`` names an existing file, then scores sets whose answer is
known in direction: a training subset against a disjoint test subset (both real: FID near 0,
precision and recall near 1) and degraded versions of the training subset (blurred, noised,
shifted) against the same test subset (worse).

    OMP_NUM_THREADS=1 python benchmarks/fid_extractor.py [--features PATH] [--n 5000]
Writes benchmarks/results/fid_extractor.{json,md}. The weights themselves stay out of git
(default: the cache, ``$REDISTILL_CACHE`` or ``~/.cache/redistill``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF

from redistill.diffusion.features import load_fashion_features, sidecar
from redistill.diffusion.metrics import evaluate_samples, subset
from redistill.train.fid import default_features_path, fashion_mnist_32, train_extractor

RESULTS = Path(__file__).resolve().parent / "results"


def degraded(images: torch.Tensor, how: str, seed: int) -> torch.Tensor:
    """``images`` (uint8) blurred, noised or shifted: sets a good metric must score worse than the originals."""
    x = images.float()
    if how == "blur (Gaussian, sigma 1 px)":
        x = TF.gaussian_blur(x, kernel_size=[5, 5], sigma=[1.0, 1.0])
    elif how == "noise (Gaussian, std 0.1)":
        x = x + 25.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    elif how == "shift (3 px right)":
        x = torch.roll(x, shifts=3, dims=3)
    elif how == "noise (Gaussian, std 0.3)":
        x = x + 76.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x.clamp(0, 255).round().to(torch.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path, help=f"extractor file (default: {default_features_path()})")
    parser.add_argument("--retrain", action="store_true", help="train even when the file exists")
    parser.add_argument("--n", type=int, default=5000, help="images per set (default 5000)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = args.features or default_features_path()
    if args.retrain or not path.is_file():
        train_extractor(path, epochs=args.epochs)
    provenance = json.loads(sidecar(path).read_text())
    extractor = load_fashion_features(path)

    train_x, _ = fashion_mnist_32("train")
    test_x, _ = fashion_mnist_32("test")
    real = subset(test_x, args.n, 1, "test images")
    base = subset(train_x, args.n, 0, "training images")
    rows = []
    for name in ("train subset (real)", "blur (Gaussian, sigma 1 px)", "noise (Gaussian, std 0.1)",
                 "noise (Gaussian, std 0.3)", "shift (3 px right)"):
        images = base if name.startswith("train") else degraded(base, name, seed=0)
        start = time.perf_counter()
        result = evaluate_samples(images, real, extractor, seed=0)
        result["seconds"] = round(time.perf_counter() - start, 1)
        rows.append({"set": name, **result})
        print(f"{name:30} FID {result['fid']:9.3f}  KID {result['kid_mean']:.5f}  "
              f"P {result['precision']:.3f}  R {result['recall']:.3f}")

    out = {
        "extractor": {k: v for k, v in provenance.items()},
        "protocol": f"{args.n} images per set; reference: {args.n} Fashion-MNIST test images (seed 1); scored sets "
                    f"derived from {args.n} training images (seed 0); KID 100 subsets of 1000; precision/recall k=3",
        "rows": rows,
        "machine": platform.processor() or platform.machine(),
        "threads": 1,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fid_extractor.json").write_text(json.dumps(out, indent=1) + "\n")
    md = [
        "# FID feature extractor (Fashion-MNIST classifier)",
        "",
        f"Written by `benchmarks/fid_extractor.py`. Extractor: `FashionNet` {provenance['config']}, "
        f"trained {provenance['epochs']} epochs on the {provenance['data']}, seed {provenance['seed']}, "
        f"{provenance['threads']} thread, in {provenance['train_seconds']:.0f} s.",
        "",
        f"**Test accuracy: {provenance['test_accuracy']:.2%}** on the {provenance['test_images']} test images.",
        "",
        f"Sanity table: {out['protocol']}.",
        "",
        "| scored set | FID | KID (mean ± std) | precision | recall |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        md.append(f"| {r['set']} | {r['fid']:.3f} | {r['kid_mean']:.5f} ± {r['kid_std']:.5f} | "
                  f"{r['precision']:.3f} | {r['recall']:.3f} |")
    md += ["", "Real against real should sit near 0 / near 1; every degraded set should score worse."]
    (RESULTS / "fid_extractor.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
