"""``data.preload``: the whole data set as one tensor on the training device, augmented a batch at
a time with tensor ops.

Per-image transforms cost a few hundred microseconds of Python each, which starves a GPU (and
dominates small CPU runs); random pad-and-crop, RandomResizedCrop and flips of a whole batch are a
handful of tensor ops. Randomness comes from a CPU generator seeded with (seed, epoch), so the batches
depend only on the epoch and a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from torchvision.transforms.v2 import functional as TF

from redistill.errors import UserError
from redistill.train.config import AugmentConfig, DataConfig
from redistill.train.data import DataInfo, Splits, TensorImages


def _tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(ds, Subset) and isinstance(ds.dataset, TensorImages):
        index = torch.as_tensor(ds.indices, dtype=torch.long)
        return ds.dataset.images[index], ds.dataset.targets[index]
    if isinstance(ds, TensorImages):
        return ds.images, ds.targets
    raise UserError("data.preload works for fashion_mnist, cifar10, stl10 and synthetic; set data.preload=false")


def check_preload(cfg: DataConfig) -> None:
    """Refuse the augmentations that only the per-image pipeline implements."""
    if cfg.augment.randaugment_ops > 0:
        raise UserError("data.preload does not support augment.randaugment_ops; set data.preload=false")


_RESIZE_CHUNK = 2048  # images resized at a time: bounds the working copies of a large set


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square uint8 images (N, C, H, H) resized to (N, C, size, size), still uint8.

    The per-image pipeline's resize (bilinear, antialiased; torchvision's uint8 kernel), applied
    to whole chunks at once, so preloaded images equal the per-image ones pixel for pixel (a float
    ``F.interpolate`` rounded back to uint8 differs by one level in about a quarter of the pixels).
    Done once when the tensor is built, after ``data.canvas`` placed the native images (the order
    of :func:`~redistill.train.data.build_datasets`), so a resized run costs no more per step.
    """
    n, c, h, w = images.shape
    if h != w:
        raise UserError(f"data.preload resizes square images only, got {h}x{w}; set data.preload=false")
    if h == size:
        return images
    out = images.new_empty(n, c, size, size)
    for start in range(0, n, _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK]
        out[start : start + _RESIZE_CHUNK] = TF.resize(chunk, [size, size], antialias=True)
    return out


def resized_crop_boxes(
    n: int, height: int, width: int, generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10,
) -> torch.Tensor:
    """``n`` RandomResizedCrop boxes (top, left, h, w) drawn as torchvision's ``get_params`` draws one.

    Each box takes the first of ``tries`` (area share, log aspect) draws that fits in the image, at a
    uniform place; a box with no fitting draw is torchvision's fallback, the central crop of the
    image clamped to ``ratio``. Returns an (n, 4) float tensor on the CPU.
    """
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=generator))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, tries, generator=generator))
    w, h = (target * aspect).sqrt().round(), (target / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # the first try that fits (0 when none does)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    top = (torch.rand(n, generator=generator) * (height - h + 1)).floor()
    left = (torch.rand(n, generator=generator) * (width - w + 1)).floor()
    in_ratio = width / height
    fw, fh = float(width), float(height)
    if in_ratio < ratio[0]:
        fh = float(round(fw / ratio[0]))
    elif in_ratio > ratio[1]:
        fw = float(round(fh * ratio[1]))
    found = fits.any(1)
    box = torch.stack([top, left, h, w], dim=1)
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw])
    return torch.where(found[:, None], box, fallback)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W) cut to its box (top, left, h, w) and resized to ``size`` x ``size``.

    Bilinear, sampling the box's pixel grid as ``F.interpolate(align_corners=False)`` samples a cut-out
    crop (the outermost output pixels may blend in the pixel next to the box); returns float pixels.
    """
    b, c, height, width = x.shape
    top, left, h, w = boxes.to(x.device, torch.float32).unbind(1)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = w / width, (2 * left + w) / width - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / height, (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


class TensorBatches:
    """Batches of a preloaded tensor data set, on ``device``; a drop-in for a DataLoader here.

    Args:
        images: uint8 (N, C, H, W); targets: (N,) class indices.
        batch_size: global batch size (training) or evaluation batch size.
        info: normalisation statistics.
        device: where the tensors live and batches are made.
        augment: augmentation config for training; None for evaluation (fixed order, all images).
        world_size, rank: each process takes every ``world_size``-th image of the epoch's order.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        info: DataInfo,
        device: torch.device,
        augment: AugmentConfig | None = None,
        world_size: int = 1,
        rank: int = 0,
    ):
        self.images, self.targets = images.to(device), targets.to(device)
        self.device, self.augment = device, augment
        self.world_size, self.rank = world_size, rank
        self.batch_size = batch_size // world_size if augment is not None else batch_size
        self.mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std, device=device).view(1, -1, 1, 1)
        self.generator = torch.Generator()

    def set_epoch(self, seed: int, epoch: int) -> None:
        self.generator.manual_seed(seed * 100_003 + epoch)

    def __len__(self) -> int:
        if self.augment is None:
            return math.ceil(len(self.targets) / self.batch_size)
        return (len(self.targets) // self.world_size) // self.batch_size

    def _order(self) -> torch.Tensor:
        if self.augment is None:
            return torch.arange(len(self.targets))
        perm = torch.randperm(len(self.targets), generator=self.generator)
        usable = (len(perm) // self.world_size) * self.world_size
        return perm[:usable][self.rank :: self.world_size]

    def _augment(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) uint8 (float after a resized crop)
        aug, gen = self.augment, self.generator
        b, _, h, w = x.shape
        if aug.crop == "pad" and aug.padding > 0:
            p = aug.padding
            padded = F.pad(x, (p, p, p, p))  # zero padding, as the per-image RandomCrop does
            dy = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(self.device)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(self.device)
            rows = (dy[:, None] + torch.arange(h, device=self.device))[:, None, :, None]  # (B, 1, H, 1)
            cols = (dx[:, None] + torch.arange(w, device=self.device))[:, None, None, :]  # (B, 1, 1, W)
            batch = torch.arange(b, device=self.device)[:, None, None, None]
            chans = torch.arange(x.shape[1], device=self.device)[None, :, None, None]
            x = padded[batch, chans, rows, cols]
        elif aug.crop == "resized":  # the images were resized to the run's size when the tensor was built
            x = resized_crop(x, resized_crop_boxes(b, h, w, gen), h)
        if aug.flip:
            flip = (torch.rand(b, generator=gen) < 0.5).to(self.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order().to(self.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            images, targets = self.images[index], self.targets[index]
            if self.augment is not None:
                images = self._augment(images)
            yield (images.float() / 255.0 - self.mean) / self.std, targets


def preloaded_loaders(
    splits: Splits, cfg: DataConfig, device: torch.device, world_size: int = 1, rank: int = 0
) -> tuple[TensorBatches, TensorBatches | None, TensorBatches]:
    """Train / val / test batch iterators over tensors held on ``device``.

    Images whose side differs from ``data.image_size`` are resized once, here, for all three
    splits alike (only the images a split uses: a subset is resized after it is taken).
    """
    check_preload(cfg)
    if cfg.batch_size % world_size:
        raise UserError(f"data.batch_size {cfg.batch_size} is not divisible by the {world_size} processes")
    size = splits.info.image_size

    def tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = _tensors(ds)
        return resize_images(images, size), targets

    eval_bs = cfg.eval_batch_size or cfg.batch_size
    train = TensorBatches(*tensors(splits.train), cfg.batch_size, splits.info, device, cfg.augment, world_size, rank)
    val = None
    if splits.val is not None:
        val = TensorBatches(*tensors(splits.val), eval_bs, splits.info, device)
    test = TensorBatches(*tensors(splits.test), eval_bs, splits.info, device)
    return train, val, test
