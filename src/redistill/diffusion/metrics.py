"""Generative metrics on one feature space: FID, KID, and k-NN precision / recall.

Image layout (what :func:`load_samples` returns and every metric reads): ``uint8`` tensors
``(N, C, H, W)`` in ``[0, 255]``; for the default extractor ``C = 1`` and ``H = W = 32``
(Fashion-MNIST padded by 2 px). Model outputs (floats in ``[-1, 1]``, the diffusion convention, or
``[0, 1]``) go through :func:`to_uint8` first, the same rounding a PNG file applies, so a sample
set scores the same whether it arrives as a tensor or as PNG files.

Features are computed once per set and shared by the three metrics. FID and KID are
``torchmetrics``' implementations, fed the precomputed features through a pass-through module
(the custom-model contract: ``num_features`` and ``(N, num_features)`` outputs). Precision and
recall follow Kynkaanniemi et al. 2019 ("Improved precision and recall metric for assessing
generative models"): each set's manifold is the union of balls around its points, each ball's
radius the distance to the point's k-th nearest neighbour in its own set; precision is the share
of generated points inside the real manifold, recall the share of real points inside the
generated one.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from redistill.diffusion.features import FeatureExtractor
from redistill.errors import UserError

SAMPLES_FILE = "samples.pt"  # a sample folder's tensor file; PNG files are read when it is absent


# ---------------------------------------------------------------- images in


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Images as uint8 in [0, 255]: uint8 is kept, floats are clamped to ``value_range`` and scaled.

    Raises:
        UserError: a dtype that is neither uint8 nor floating point.
    """
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise UserError(f"images must be uint8 in [0, 255] or floats in {list(value_range)}, got {images.dtype}")
    low, high = value_range
    x = (images.detach().float().clamp(low, high) - low) / (high - low)  # clamped as a PNG writer would
    return (x * 255.0).round().to(torch.uint8)


def pad_to(images: torch.Tensor, side: int) -> torch.Tensor:
    """Zero-pad (N, C, H, W) images evenly to ``side`` x ``side`` (28 px Fashion-MNIST -> 32 px)."""
    h, w = images.shape[-2:]
    if h > side or w > side:
        raise UserError(f"images of {h}x{w} px do not fit in {side}x{side}")
    top, left = (side - h) // 2, (side - w) // 2
    return nn.functional.pad(images, (left, side - w - left, top, side - h - top))


def load_samples(path: Union[str, Path]) -> torch.Tensor:
    """A set of images from disk, as uint8 (N, C, H, W).

    ``path`` is a ``.pt`` tensor file, or a folder holding ``samples.pt`` or, failing that, one PNG
    per image (``*.png`` directly inside, read in name order, all of one size). A tensor file holds
    one tensor ``(N, C, H, W)``: uint8 in [0, 255] or floats in [-1, 1].

    Raises:
        UserError: a missing path, a folder with neither, a file that is not a tensor of images, PNG
            files of differing sizes (the odd one is named).
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise UserError(f"no such sample file or folder: {path}")
    if path.is_dir() and (path / SAMPLES_FILE).is_file():
        path = path / SAMPLES_FILE
    if path.is_file():
        try:
            images = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt or an unsafe pickle: not a samples file either way
            raise UserError(f"{path} is not a tensor file ({_first(err)}); expected a torch.save'd (N, C, H, W) tensor") from err
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            what = f"shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise UserError(f"{path} must hold one (N, C, H, W) image tensor, got {what}")
        if len(images) == 0:
            raise UserError(f"{path} holds no images")
        return to_uint8(images)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise UserError(f"sample folder {path} holds neither {SAMPLES_FILE} nor PNG files")
    images = []
    for f in files:
        try:
            with Image.open(f) as png:
                if png.mode not in ("L", "RGB"):
                    raise UserError(f"{f} is a {png.mode} image; sample PNGs must be 8-bit grayscale (L) or RGB")
                pixels = np.array(png)
        except (OSError, UnidentifiedImageError) as err:
            raise UserError(f"cannot read {f} as an image: {_first(err)}") from err
        image = torch.from_numpy(pixels).unsqueeze(0) if pixels.ndim == 2 else torch.from_numpy(pixels).permute(2, 0, 1)
        if images and image.shape != images[0].shape:
            raise UserError(f"{f} is {_layout(image.shape)} but {files[0].name} is {_layout(images[0].shape)}: "
                            "a sample folder holds images of one size only (keep sample grids elsewhere)")
        images.append(image)
    return torch.stack(images)


def _layout(shape: tuple) -> str:
    return "x".join(map(str, shape))


# ---------------------------------------------------------------- features and metrics


@torch.no_grad()
def extract_features(images: torch.Tensor, extractor: FeatureExtractor, batch_size: int = 250) -> torch.Tensor:
    """``extractor`` over uint8 ``images`` in batches, in eval mode; returns (N, num_features) float64."""
    extractor.check(tuple(images.shape), "the images")
    extractor.eval()
    device = next(extractor.parameters(), torch.empty(0)).device
    out = [extractor(images[i:i + batch_size].to(device)).double().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


class _Precomputed(nn.Module):
    """Hands features computed once to torchmetrics' FID / KID (its custom-model contract)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def kth_neighbour_radii(points: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each point to its ``k``-th nearest other point of the same set."""
    if len(points) <= k:
        raise UserError(f"precision / recall with k={k} needs more than {k} points per set, got {len(points)}")
    radii = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i:i + chunk], points)  # (chunk, N); the point itself is at distance 0
        radii.append(d.kthvalue(k + 1, dim=1).values)  # k + 1: skip the point itself
    return torch.cat(radii)


def _inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Whether each query lies in at least one ball (centre, radius)."""
    hits = [(torch.cdist(queries[i:i + chunk], centres) <= radii[None, :]).any(dim=1)
            for i in range(0, len(queries), chunk)]
    return torch.cat(hits)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """k-NN manifold precision and recall (Kynkaanniemi et al. 2019) of feature sets (N, D).

    Returns:
        ``(precision, recall)``: the share of ``fake`` inside the real manifold, and of ``real`` inside
        the fake one.
    """
    real, fake = real.double(), fake.double()
    precision = _inside(fake, real, kth_neighbour_radii(real, k)).double().mean().item()
    recall = _inside(real, fake, kth_neighbour_radii(fake, k)).double().mean().item()
    return precision, recall


def feature_metrics(
    real: torch.Tensor,
    fake: torch.Tensor,
    k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """FID, KID and precision / recall of two feature sets (N, D).

    KID draws ``kid_subsets`` random subsets of ``min(kid_subset_size, min(N_real, N_fake) // 2)`` from
    each set with ``seed`` (the global generator is left as it was).

    Returns:
        ``{"fid", "kid_mean", "kid_std", "precision", "recall", "k", "kid_subsets", "kid_subset_size",
        "n_real", "n_fake", "num_features"}``.
    Raises:
        UserError: fewer than two points in a set, sets of different feature sizes.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise UserError(f"feature sets must be (N, D) of one D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if min(len(real), len(fake)) < 2:
        raise UserError(f"FID needs at least 2 images per set, got {len(real)} reference and {len(fake)} samples")
    dim = real.shape[1]
    real, fake = real.double(), fake.double()
    fid = FrechetInceptionDistance(feature=_Precomputed(dim))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    # Subsets as large as the sets would all be the same draw (a spread of 0): at most half of the smaller set.
    size = max(2, min(kid_subset_size, min(len(real), len(fake)) // 2))
    with warnings.catch_warnings():  # its note that features are buffered: these are, by design
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        kid = KernelInceptionDistance(feature=_Precomputed(dim), subsets=kid_subsets, subset_size=size)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # KID's subsets come from the global generator
        kid_mean, kid_std = kid.compute()
    precision, recall = precision_recall(real, fake, k)
    return {
        # eigenvalues of a near-singular product can leave a tiny negative distance: it means 0
        "fid": max(0.0, float(fid.compute())),
        "kid_mean": float(kid_mean), "kid_std": float(kid_std),
        "precision": precision, "recall": recall,
        "k": k, "kid_subsets": kid_subsets, "kid_subset_size": size,
        "n_real": len(real), "n_fake": len(fake), "num_features": dim,
    }


def evaluate_samples(
    samples: torch.Tensor,
    reference: torch.Tensor,
    extractor: FeatureExtractor,
    value_range: tuple[float, float] = (-1.0, 1.0),
    k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    batch_size: int = 250,
) -> dict[str, Any]:
    """FID, KID, precision and recall of generated ``samples`` against ``reference`` images.

    Args:
        samples, reference: (N, C, H, W) image batches, uint8 in [0, 255] or floats in ``value_range``
            (floats are clamped and rounded as :func:`to_uint8` does); the layout the extractor needs,
            (N, 1, 32, 32) for the default one.
        extractor: a :class:`FeatureExtractor` (``load_fashion_features`` / ``load_inception_features``).
        k: neighbours for precision / recall.
        kid_subsets, kid_subset_size, seed: KID's random subsets.
    Returns:
        the :func:`feature_metrics` record plus ``"features"`` (the extractor's name).
    Raises:
        UserError: images of a layout the extractor cannot read, too few images.
    """
    fake = to_uint8(samples, value_range)
    real = to_uint8(reference, value_range)
    extractor.check(tuple(fake.shape), "the samples")
    extractor.check(tuple(real.shape), "the reference images")
    result = feature_metrics(
        extract_features(real, extractor, batch_size), extract_features(fake, extractor, batch_size),
        k=k, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed,
    )
    return {**result, "features": extractor.name}


def subset(images: torch.Tensor, n: Optional[int], seed: int, what: str) -> torch.Tensor:
    """``n`` images of ``images`` drawn without replacement with ``seed`` (all of them when ``n`` is None).

    Raises:
        UserError: ``n`` larger than the set.
    """
    if n is None or n == len(images):
        return images
    if n > len(images):
        raise UserError(f"--n {n} is more than the {len(images)} {what} available; lower --n")
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[index.sort().values]


def _first(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
