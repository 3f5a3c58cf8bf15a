"""Data sets, the train / validation / test split, augmentation and loaders.

Small data sets (Fashion-MNIST, CIFAR-10, STL10, synthetic) are held as one uint8 tensor
(N, C, H, W) and augmented per image with ``torchvision.transforms.v2`` on tensors, which is far
cheaper than going through PIL on a small CPU. ImageNet-style folders go through
``torchvision.datasets.ImageFolder``. The validation split is carved from the training set with a
fixed seed (``data.split_seed``); the test set is only ever used for the final report.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.transforms import v2

from redistill.errors import UserError
from redistill.train.config import AugmentConfig, DataConfig

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # where `apt-get install dataset-fashion-mnist` puts it
_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# Per-channel statistics used for normalisation (the usual published values).
_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass
class DataInfo:
    """What the model builder and the summary need to know about a data set."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int  # side of the (square) images the network sees
    mean: tuple
    std: tuple


@dataclass
class Splits:
    train: Dataset
    val: Optional[Dataset]
    test: Dataset
    info: DataInfo


class TensorImages(Dataset):
    """Images held as a uint8 tensor (N, C, H, W) with integer targets, transformed per item."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: Optional[Callable] = None):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


# ---------------------------------------------------------------- raw data sets


def _fashion_mnist(root: Path) -> tuple[tuple, tuple]:
    """Read Fashion-MNIST from a flat folder of idx(.gz) files or a torchvision-layout root."""
    from torchvision.datasets import FashionMNIST

    def read(tv_root: Path) -> tuple[tuple, tuple]:
        train = FashionMNIST(str(tv_root), train=True, download=False)
        test = FashionMNIST(str(tv_root), train=False, download=False)
        return (train.data.unsqueeze(1), train.targets), (test.data.unsqueeze(1), test.targets)

    if all((root / "FashionMNIST" / "raw" / f).is_file() for f in _FASHION_FILES):
        return read(root)
    for folder in (root, root / "FashionMNIST" / "raw"):
        if all((folder / f).is_file() or (folder / f"{f}.gz").is_file() for f in _FASHION_FILES):
            # torchvision reads only uncompressed files under <root>/FashionMNIST/raw: unpack into a
            # throw-away folder (about 55 MB, well under a second) instead of writing next to the data.
            with tempfile.TemporaryDirectory(prefix="redistill-fmnist-") as tmp:
                raw = Path(tmp) / "FashionMNIST" / "raw"
                raw.mkdir(parents=True)
                for name in _FASHION_FILES:
                    if (folder / name).is_file():
                        (raw / name).symlink_to((folder / name).resolve())
                    else:
                        with gzip.open(folder / f"{name}.gz", "rb") as src, open(raw / name, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                return read(Path(tmp))
    hint = " (install it with `apt-get install -y dataset-fashion-mnist`)" if str(root) == FASHION_MNIST_ROOT else ""
    raise UserError(
        f"Fashion-MNIST not found in {root}: expected {', '.join(f + '.gz' for f in _FASHION_FILES)}{hint}; "
        "set data.root to the folder holding them"
    )


def load_fashion_mnist(root: Optional[Path] = None) -> tuple[tuple, tuple]:
    """Fashion-MNIST as uint8 tensors: ``((train images (60000, 1, 28, 28), labels), (test images, labels))``.

    Args:
        root: the folder holding the idx files (default: where the Debian package installs them).
    Raises:
        UserError: the folder or its files are missing (the message names the path tried).
    """
    root = Path(root).expanduser() if root is not None else Path(FASHION_MNIST_ROOT)
    if not root.exists():
        raise UserError(f"data set folder not found: {root} (install Fashion-MNIST with "
                        "`apt-get install -y dataset-fashion-mnist`, or pass its folder)")
    return _fashion_mnist(root)


def _cifar10(root: Path) -> tuple[tuple, tuple]:
    from torchvision.datasets import CIFAR10

    try:
        train, test = CIFAR10(str(root), train=True), CIFAR10(str(root), train=False)
    except RuntimeError as err:  # torchvision says "Dataset not found or corrupted"
        raise UserError(f"CIFAR-10 not found in {root} (expected {root}/cifar-10-batches-py): {err}") from err

    def as_tensors(ds) -> tuple:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    return as_tensors(train), as_tensors(test)


def _stl10(root: Path) -> tuple[tuple, tuple]:
    from torchvision.datasets import STL10

    try:
        train, test = STL10(str(root), split="train"), STL10(str(root), split="test")
    except RuntimeError as err:
        raise UserError(f"STL10 not found in {root} (expected {root}/stl10_binary): {err}") from err
    return (
        (torch.from_numpy(train.data), torch.from_numpy(train.labels).long()),
        (torch.from_numpy(test.data), torch.from_numpy(test.labels).long()),
    )


def synthetic_data(cfg: DataConfig) -> tuple[tuple, tuple]:
    """A learnable toy problem: each class is a fixed random pattern plus noise (uint8 images)."""
    s = cfg.synthetic
    gen = torch.Generator().manual_seed(1234)
    prototypes = torch.rand(s.num_classes, s.channels, s.image_size, s.image_size, generator=gen)

    def make(n: int) -> tuple:
        targets = torch.randint(0, s.num_classes, (n,), generator=gen)
        noise = torch.rand(n, s.channels, s.image_size, s.image_size, generator=gen)
        images = 0.6 * prototypes[targets] + 0.4 * noise
        return (images * 255).round().to(torch.uint8), targets

    return make(s.train_size), make(s.test_size)


def place_on_canvas(images: torch.Tensor, side: int, seed: int) -> torch.Tensor:
    """Each image of ``images`` (N, C, H, W) at a random place on a blank ``side`` x ``side`` square.

    The places are drawn once from ``seed``, so every run (and every epoch) sees the same
    translated data set, in the way "translated MNIST" is built; the background is zero, as
    Fashion-MNIST's own is.
    """
    n, c, h, w = images.shape
    if side < max(h, w):
        raise UserError(f"data.canvas={side} is smaller than the {h}x{w} images; set it to at least {max(h, w)} or null")
    gen = torch.Generator().manual_seed(seed)
    top = torch.randint(0, side - h + 1, (n,), generator=gen)
    left = torch.randint(0, side - w + 1, (n,), generator=gen)
    out = images.new_zeros(n, c, side, side)
    places, group = torch.stack([top, left], dim=1).unique(dim=0, return_inverse=True)
    for k, (dy, dx) in enumerate(places.tolist()):  # one slice assignment per place used
        sel = (group == k).nonzero().squeeze(1)
        out[sel, :, dy:dy + h, dx:dx + w] = images[sel]
    return out


# ---------------------------------------------------------------- transforms


def _transforms(aug: AugmentConfig, info: DataInfo, train: bool, native_size: int, from_pil: bool) -> v2.Compose:
    size = info.image_size
    steps: list = [v2.ToImage()] if from_pil else []
    if not train:
        if from_pil:  # folders of photos: the usual resize-then-centre-crop evaluation
            steps += [v2.Resize(int(round(size * 256 / 224)), antialias=True), v2.CenterCrop(size)]
        elif size != native_size:
            steps.append(v2.Resize(size, antialias=True))
    else:
        if aug.crop == "resized":
            steps.append(v2.RandomResizedCrop(size, antialias=True))
        else:
            if from_pil or size != native_size:
                steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
            if aug.crop == "pad" and aug.padding > 0:
                steps.append(v2.RandomCrop(size, padding=aug.padding))
        if aug.flip:
            steps.append(v2.RandomHorizontalFlip())
        if aug.randaugment_ops > 0:
            steps.append(v2.RandAugment(num_ops=aug.randaugment_ops, magnitude=aug.randaugment_magnitude))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(info.mean), list(info.std))]
    return v2.Compose(steps)


def batch_mixer(aug: AugmentConfig, num_classes: int) -> Optional[Callable]:
    """CutMix and/or MixUp applied to a whole batch (targets become soft labels), or None when off."""
    mixers = []
    if aug.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=aug.cutmix_alpha, num_classes=num_classes))
    if aug.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=aug.mixup_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


# ---------------------------------------------------------------- splits


def _split_indices(n: int, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    n_val = int(round(cfg.val_fraction * n))
    val, train = perm[:n_val], perm[n_val:]
    # A subset larger than its split would quietly train (or score) on fewer images than asked for.
    if cfg.subset is not None:
        if cfg.subset > len(train):
            raise UserError(
                f"config key 'data.subset' is {cfg.subset} but only {len(train)} training images are available "
                f"({n} minus {n_val} held out for validation); lower it or set it to null"
            )
        train = train[: cfg.subset]
    if cfg.val_subset is not None:
        if cfg.val_subset > len(val):
            raise UserError(
                f"config key 'data.val_subset' is {cfg.val_subset} but the validation split has only {len(val)} "
                f"images (data.val_fraction {cfg.val_fraction:g} of {n}); lower it or set it to null"
            )
        val = val[: cfg.val_subset]
    return train.sort().values, val.sort().values


def _test_indices(n: int, cfg: DataConfig) -> Optional[torch.Tensor]:
    if cfg.test_subset is None:
        return None
    if cfg.test_subset > n:
        raise UserError(
            f"config key 'data.test_subset' is {cfg.test_subset} but the test split has only {n} images; "
            "lower it or set it to null"
        )
    if cfg.test_subset == n:
        return None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed + 1))
    return perm[: cfg.test_subset].sort().values


def _root(cfg: DataConfig) -> Path:
    if cfg.root is not None:
        return Path(cfg.root).expanduser()
    if cfg.name == "fashion_mnist":
        return Path(FASHION_MNIST_ROOT)
    raise UserError(f"data.root is required for data.name={cfg.name} (the folder holding the data set)")


def build_datasets(cfg: DataConfig) -> Splits:
    """Load the data set named by ``cfg.name`` and split it into train / val / test.

    Args:
        cfg: the ``data`` section of a run config.
    Returns:
        :class:`Splits` with the three datasets (val is None when ``val_fraction`` is 0) and a
        :class:`DataInfo`.
    Raises:
        UserError: the data set is not where ``data.root`` says (the message names the path tried), or
            ``data.subset`` / ``val_subset`` / ``test_subset`` asks for more images than its split has.
    """
    if cfg.name == "imagefolder":
        if cfg.canvas is not None:
            raise UserError("data.canvas works for fashion_mnist, cifar10, stl10 and synthetic; set data.canvas=null")
        if cfg.pad:
            raise UserError("data.pad works for fashion_mnist, cifar10, stl10 and synthetic; set data.pad=0")
        return _imagefolder(cfg)
    if cfg.name == "synthetic":
        (train_x, train_y), (test_x, test_y) = synthetic_data(cfg)
        mean, std = (0.5,) * cfg.synthetic.channels, (0.25,) * cfg.synthetic.channels
        num_classes = cfg.synthetic.num_classes
    else:
        root = _root(cfg)
        if not root.exists():
            hint = " (install it with `apt-get install -y dataset-fashion-mnist`)" if cfg.name == "fashion_mnist" else ""
            raise UserError(f"data set folder not found: {root}{hint}; set data.root")
        loader = {"fashion_mnist": _fashion_mnist, "cifar10": _cifar10, "stl10": _stl10}[cfg.name]
        (train_x, train_y), (test_x, test_y) = loader(root)
        mean, std = _STATS[cfg.name]
        num_classes = 10
    if cfg.canvas is not None:
        train_x = place_on_canvas(train_x, cfg.canvas, cfg.split_seed)
        test_x = place_on_canvas(test_x, cfg.canvas, cfg.split_seed + 1)
    if cfg.pad:  # a blank (zero) border: Fashion-MNIST's 28 px become the 32 px a DDPM UNet takes
        border = (cfg.pad,) * 4
        train_x, test_x = torch.nn.functional.pad(train_x, border), torch.nn.functional.pad(test_x, border)
    if cfg.normalize == "symmetric":  # pixels in [-1, 1], as a denoising model expects
        mean, std = (0.5,) * train_x.shape[1], (0.5,) * train_x.shape[1]
    native = train_x.shape[-1]
    info = DataInfo(cfg.name, num_classes, train_x.shape[1], cfg.image_size or native, mean, std)
    train_idx, val_idx = _split_indices(len(train_y), cfg)
    train_tf = _transforms(cfg.augment, info, True, native, from_pil=False)
    eval_tf = _transforms(cfg.augment, info, False, native, from_pil=False)
    train = Subset(TensorImages(train_x, train_y, train_tf), train_idx.tolist())
    val = Subset(TensorImages(train_x, train_y, eval_tf), val_idx.tolist()) if len(val_idx) else None
    test: Dataset = TensorImages(test_x, test_y, eval_tf)
    test_idx = _test_indices(len(test_y), cfg)
    if test_idx is not None:
        test = Subset(test, test_idx.tolist())
    return Splits(train, val, test, info)


def _imagefolder(cfg: DataConfig) -> Splits:
    from torchvision.datasets import ImageFolder

    root = _root(cfg)
    train_dir = root / "train"
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise UserError(f"image folder {root} needs train/ and val/ (or test/) subfolders of class folders")
    size = cfg.image_size or 224
    stats = ((0.5,) * 3, (0.5,) * 3) if cfg.normalize == "symmetric" else _STATS["imagefolder"]
    info = DataInfo("imagefolder", 0, 3, size, *stats)
    train_tf = _transforms(cfg.augment, info, True, size, from_pil=True)
    eval_tf = _transforms(cfg.augment, info, False, size, from_pil=True)
    train_full = ImageFolder(str(train_dir), transform=train_tf)
    info.num_classes = len(train_full.classes)
    train_idx, val_idx = _split_indices(len(train_full), cfg)
    train = Subset(train_full, train_idx.tolist())
    val = Subset(ImageFolder(str(train_dir), transform=eval_tf), val_idx.tolist()) if len(val_idx) else None
    test: Dataset = ImageFolder(str(test_dir), transform=eval_tf)
    test_idx = _test_indices(len(test), cfg)
    if test_idx is not None:
        test = Subset(test, test_idx.tolist())
    return Splits(train, val, test, info)


# ---------------------------------------------------------------- loaders


def train_loader(
    ds: Dataset, cfg: DataConfig, seed: int, world_size: int = 1, rank: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Shuffled training loader whose order depends only on (seed, epoch): call ``set_epoch`` first.

    Each process gets ``batch_size / world_size`` images per step, so the global batch stays
    ``data.batch_size`` whatever the number of processes.
    """
    if cfg.batch_size % world_size:
        raise UserError(f"data.batch_size {cfg.batch_size} is not divisible by the {world_size} processes")
    # A sampler seeded per epoch (also with one process) makes the data order independent of how
    # much randomness the model consumed, which is what lets --resume continue exactly.
    sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size // world_size,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=True,
        pin_memory=pin_memory,
        generator=torch.Generator(),
        persistent_workers=False,
    )


def set_epoch(loader, seed: int, epoch: int) -> None:
    """Fix the shuffling and the augmentation randomness of ``loader`` for one epoch.

    With worker processes the augmentation draws from seeds the loader's generator hands out;
    without, from the global torch generator (saved in checkpoints). Preloaded batches
    (:mod:`redistill.train.preload`) draw from their own generator.
    """
    if not isinstance(loader, DataLoader):
        loader.set_epoch(seed, epoch)
        return
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(seed * 100_003 + epoch)


def eval_loader(ds: Dataset, cfg: DataConfig, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        ds, batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False, num_workers=cfg.workers, pin_memory=pin_memory
    )
