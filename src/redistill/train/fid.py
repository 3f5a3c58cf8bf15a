"""``redistill fid``'s work: sample sets and Fashion-MNIST reference images in, FID / KID / precision /
recall out, with the project's feature extractor trained once on first use.

The metrics themselves live in :mod:`redistill.diffusion.metrics`; this module finds the images
(a sample folder, a ``samples.pt``, a run directory's ``samples/``; the Fashion-MNIST test split
padded to 32 px as the default reference) and the extractor (``--features``, ``--inception``, or
the cached default, trained here when missing).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch

from redistill.diffusion.features import (
    SIDE, FeatureExtractor, check_layout, load_fashion_features, load_inception_features, save_fashion_net,
    train_fashion_net,
)
from redistill.diffusion.metrics import evaluate_samples, load_samples, pad_to, subset
from redistill.errors import UserError
from redistill.train.data import load_fashion_mnist
from redistill.train.rundir import is_run_dir, write_atomic

FASHION_REF = "fashion-mnist"
DEFAULT_FEATURES = "fid_fashion_mnist.safetensors"
BATCH, LR = 128, 2e-3  # the extractor's training batch and peak learning rate
RUN_SAMPLES = "samples"  # a run directory's sample folder, as `redistill sample RUN_DIR --out RUN_DIR/samples` writes


def cache_dir() -> Path:
    """Where downloads-free artefacts of this project are kept: ``$REDISTILL_CACHE`` or ``~/.cache/redistill``."""
    return Path(os.environ.get("REDISTILL_CACHE") or Path.home() / ".cache" / "redistill").expanduser()


def default_features_path() -> Path:
    return cache_dir() / DEFAULT_FEATURES


def fashion_mnist_32(split: str, data_root: Optional[Union[str, Path]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``split`` ("train" or "test") as uint8 (N, 1, 32, 32) images (zero-padded) and labels."""
    (train_x, train_y), (test_x, test_y) = load_fashion_mnist(Path(data_root) if data_root else None)
    images, labels = (train_x, train_y) if split == "train" else (test_x, test_y)
    return pad_to(images, SIDE), labels


def train_extractor(
    path: Optional[Union[str, Path]] = None,
    data_root: Optional[Union[str, Path]] = None,
    epochs: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the default feature extractor on the Fashion-MNIST training split and save it.

    One CPU thread (the result depends on the thread count, so it is fixed), ``seed`` for the
    initialisation and the order; a few minutes per epoch. The weights go to ``path`` (default:
    :func:`default_features_path`) as safetensors, the provenance next to them as JSON.

    Returns:
        the provenance record (it holds ``test_accuracy`` on the 10,000 test images).
    """
    from tqdm import tqdm

    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    path = Path(path) if path is not None else default_features_path()
    train_x, train_y = fashion_mnist_32("train", data_root)
    test_x, test_y = fashion_mnist_32("test", data_root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bar = tqdm(total=epochs * (len(train_x) // BATCH), desc="feature extractor", unit="step", disable=not progress,
               file=sys.stderr)

    def report(step: int, total: int, loss: float) -> None:
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3f}")

    start = time.perf_counter()
    try:
        net, acc = train_fashion_net(train_x, train_y, test_x, test_y, epochs=epochs, batch_size=BATCH, lr=LR, seed=seed,
                                     progress=report)
    finally:
        bar.close()
        torch.set_num_threads(threads)
    record = {
        "data": f"fashion-mnist train split ({len(train_x)} images, 28 px zero-padded to {SIDE})",
        "data_root": str(data_root) if data_root else None,
        "epochs": epochs, "batch_size": BATCH, "optimizer": f"Adam, one-cycle, peak lr {LR:g}",
        "augment": "random shift of up to 2 px", "seed": seed, "threads": 1,
        "test_accuracy": acc, "test_images": len(test_x),
        "train_seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    save_fashion_net(net, path, record)
    return record


def load_extractor(
    features: Optional[Union[str, Path]] = None,
    inception: Optional[Union[str, Path]] = None,
    data_root: Optional[Union[str, Path]] = None,
    train_missing: bool = True,
) -> FeatureExtractor:
    """The extractor ``redistill fid`` uses: Inception from ``inception``, the project's classifier from
    ``features``, else the cached default (trained first, with a message, when missing)."""
    if inception is not None:
        return load_inception_features(inception)
    if features is not None:
        return load_fashion_features(features)
    path = default_features_path()
    if not path.is_file():
        if not train_missing:
            raise UserError(f"no feature extractor at {path}; train one with `redistill fid-extractor` or pass --features")
        print(f"no feature extractor at {path}: training one on the Fashion-MNIST training split "
              "(once; a few minutes per epoch on one CPU thread; set $REDISTILL_CACHE to keep it elsewhere)",
              file=sys.stderr)
        record = train_extractor(path, data_root)
        print(f"feature extractor saved to {path} (test accuracy {record['test_accuracy']:.2%})", file=sys.stderr)
    return load_fashion_features(path)


def _layout_of(inception: Optional[Union[str, Path]]) -> tuple[tuple[int, ...], Optional[int], str]:
    return ((1, 3), None, "inception-v3") if inception is not None else ((1,), SIDE, "fashion-mnist classifier")


def resolve_images(source: Union[str, Path]) -> tuple[torch.Tensor, str]:
    """Images of a sample folder, a tensor file, or a run directory's ``samples/`` folder."""
    source = Path(source)
    if source.is_dir() and is_run_dir(source):
        if not (source / RUN_SAMPLES).exists():
            raise UserError(f"run directory {source} has no {RUN_SAMPLES}/ folder: sample it first with "
                            f"`redistill sample {source} --out {source / RUN_SAMPLES}`")
        source = source / RUN_SAMPLES
    return load_samples(source), str(source)


def fid_report(
    source: Union[str, Path],
    ref: Union[str, Path] = FASHION_REF,
    n: Optional[int] = None,
    features: Optional[Union[str, Path]] = None,
    inception: Optional[Union[str, Path]] = None,
    out: Optional[Union[str, Path]] = None,
    data_root: Optional[Union[str, Path]] = None,
    seed: int = 0,
    k: int = 3,
) -> dict[str, Any]:
    """FID, KID, precision and recall of a sample set against a reference set.

    Args:
        source: a folder of PNG samples or with ``samples.pt``, a ``.pt`` tensor file, or a run directory
            holding ``samples/``.
        ref: ``"fashion-mnist"`` (the test split, padded to 32 px) or a folder / file as ``source``.
        n: images per set (default: all samples; the reference is drawn, with ``seed``, to the same count).
        features, inception: the extractor (see :func:`load_extractor`).
        out: write the result as JSON here.
    Returns:
        the :func:`~redistill.diffusion.metrics.evaluate_samples` record plus ``samples`` and ``reference``.
    """
    if n is not None and n < 2:
        raise UserError(f"--n must be >= 2 (FID needs two images per set), got {n}")
    if k < 1:
        raise UserError(f"--k must be >= 1, got {k}")
    if features is not None and inception is not None:
        raise UserError("pass --features or --inception, not both")
    channels, side, name = _layout_of(inception)
    samples, where = resolve_images(source)
    check_layout(tuple(samples.shape), channels, side, name, f"the samples in {where}")
    samples = subset(samples, n, seed, "samples")
    if str(ref) == FASHION_REF:
        pool, _ = fashion_mnist_32("test", data_root)
        ref_name = f"fashion-mnist test split, zero-padded to {SIDE} px"
    else:
        pool, ref_name = resolve_images(ref)
        check_layout(tuple(pool.shape), channels, side, name, f"the reference images in {ref_name}")
    if n is not None and n > len(pool):
        raise UserError(f"--n {n} is more than the {len(pool)} reference images available; lower --n")
    reference = subset(pool, min(len(samples), len(pool)), seed + 1, "reference images")
    extractor = load_extractor(features, inception, data_root)
    result = evaluate_samples(samples, reference, extractor, k=k, seed=seed)
    result = {"samples": where, "reference": ref_name, "reference_pool": len(pool), "seed": seed, **result}
    if out is not None:
        write_atomic(Path(out), json.dumps(result, indent=2) + "\n")
    return result


def format_report(result: dict[str, Any]) -> str:
    """The lines ``redistill fid`` prints."""
    return "\n".join([
        f"samples    {result['samples']} ({result['n_fake']} images)",
        f"reference  {result['reference']} ({result['n_real']} of {result['reference_pool']} images)",
        f"features   {result['features']}, {result['num_features']}-d",
        f"FID        {result['fid']:.3f}",
        f"KID        {result['kid_mean']:.5f} ± {result['kid_std']:.5f} "
        f"({result['kid_subsets']} subsets of {result['kid_subset_size']})",
        f"precision  {result['precision']:.3f} (k={result['k']})",
        f"recall     {result['recall']:.3f}",
    ])
