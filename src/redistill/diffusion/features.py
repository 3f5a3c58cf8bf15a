"""Feature extractors for FID, KID and precision / recall, all offline.

Every extractor follows the contract ``torchmetrics`` sets for a custom feature model: ``forward``
takes a batch of images as ``uint8`` ``(N, C, H, W)`` in ``[0, 255]`` and returns ``(N, num_features)``
floats, and the module carries ``num_features``. Two exist:

- :class:`FashionFeatures` (the default): the penultimate layer (128 values) of a small
  Fashion-MNIST classifier that this project trains itself (:func:`train_fashion_net`), the usual
  practice for MNIST-like data, where ImageNet features say little. Input ``(N, 1, 32, 32)``:
  Fashion-MNIST padded to 32 px, the diffusion models' layout.
- :class:`InceptionFeatures`: torchvision's Inception-v3 architecture with weights read from a
  file the user supplies (2048 pooled features; images are resized to 299 px, 1 channel repeated
  to 3). Nothing is downloaded: the network is built with ``weights=None``.

Weight files are read with ``safetensors`` or ``torch.load(weights_only=True)``, never unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from redistill.checkpoint import load_weights
from redistill.errors import UserError

SIDE = 32  # the default extractor's input: 1 x 32 x 32 (Fashion-MNIST 28 px padded by 2)
FORMAT = "redistill-fid-features"
# Fashion-MNIST's pixel statistics (of the 28 px images), fixed so that features do not depend on the set scored.
_MEAN, _STD = 0.2860, 0.3530


class FeatureExtractor(nn.Module):
    """Base of the extractors: images ``uint8 (N, C, H, W)`` -> features ``(N, num_features)``.

    Attributes:
        name: what the features are, for reports.
        num_features: feature size (read by torchmetrics).
        channels: channel counts the extractor accepts.
        side: required image side in pixels, or None for any (the image is resized).
    """

    name: str
    num_features: int
    channels: tuple[int, ...]
    side: Optional[int]

    def check(self, shape: tuple[int, ...], what: str) -> None:
        """Refuse a batch layout this extractor cannot read.

        Raises:
            UserError: not 4-D, wrong channel count or wrong side (the message names both layouts).
        """
        check_layout(shape, self.channels, self.side, self.name, what)


def check_layout(shape: tuple[int, ...], channels: tuple[int, ...], side: Optional[int], name: str, what: str) -> None:
    """The shape test of :meth:`FeatureExtractor.check`, usable before an extractor is loaded."""
    want = f"{'|'.join(map(str, channels))} x {side if side else 'H'} x {side if side else 'W'}"
    if len(shape) != 4:
        raise UserError(f"{what} must be a batch of images (N, C, H, W), got shape {tuple(shape)}")
    n, c, h, w = shape
    if c not in channels or (side is not None and (h, w) != (side, side)):
        hint = " (pad 28 px Fashion-MNIST by 2 px on each side)" if side == SIDE and (h, w) == (28, 28) else ""
        raise UserError(f"{what} are {c} x {h} x {w} images, but the {name} features need {want}{hint}")


# ---------------------------------------------------------------- the project's Fashion-MNIST classifier


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class FashionNet(nn.Module):
    """A small CNN classifier of 1 x 32 x 32 images; :meth:`embed` is its penultimate layer.

    3x3 conv-BN-ReLU blocks: one of ``width`` channels at 32 px, two of 2x at 16 px, two of 4x at 8 px,
    global average pooling, a ``num_features``-wide ReLU layer (the features), then the classifier.
    """

    def __init__(self, width: int = 16, num_features: int = 128, num_classes: int = 10):
        super().__init__()
        self.config = {"width": width, "num_features": num_features, "num_classes": num_classes}
        w = width
        self.body = nn.Sequential(
            _block(1, w), nn.MaxPool2d(2),  # (B, w, 16, 16)
            _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, 8, 8)
            _block(2 * w, 4 * w), _block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 4w)
        )
        self.embedding = nn.Sequential(nn.Linear(4 * w, num_features), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(num_features, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float images (B, 1, 32, 32) -> features (B, num_features)."""
        return self.embedding(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255.0 - _MEAN) / _STD


class FashionFeatures(FeatureExtractor):
    """The default extractor: :class:`FashionNet`'s penultimate layer on uint8 (N, 1, 32, 32)."""

    def __init__(self, net: FashionNet, source: str = "untrained"):
        super().__init__()
        self.net = net.eval()
        self.name = f"fashion-mnist classifier ({source})"
        self.num_features = net.config["num_features"]
        self.channels, self.side = (1,), SIDE

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.embed(_normalise(images))


def train_fashion_net(
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    width: int = 16,
    progress: Optional[Callable[[int, int, float], None]] = None,
) -> tuple[FashionNet, float]:
    """Train :class:`FashionNet` on uint8 (N, 1, 32, 32) images; returns it (eval mode) and its test accuracy.

    Deterministic for a given seed and thread count: the initialisation and the shuffling draw from
    ``seed`` (the global generator is restored afterwards). Adam with a cosine-decayed rate,
    random +-2 px shifts as the only augmentation.

    Args:
        progress: called as ``progress(step, total_steps, loss)`` after each step.
    """
    if len(images) < batch_size:
        raise UserError(f"the feature extractor needs at least one batch of {batch_size} training images, got {len(images)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FashionNet(width=width)
        gen = torch.Generator().manual_seed(seed)
        steps = epochs * (len(images) // batch_size)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
        step = 0
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=gen)
            for i in range(len(images) // batch_size):
                idx = order[i * batch_size:(i + 1) * batch_size]
                x = _shift(_normalise(images[idx]), gen)
                loss = F.cross_entropy(net(x), labels[idx].long())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if progress is not None:
                    progress(step, steps, float(loss))
    net.eval()
    return net, accuracy(net, test_images, test_labels)


def _shift(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Each image moved by the same random offset of up to ``pad`` px (one per batch: cheap, enough here)."""
    dy, dx = torch.randint(-pad, pad + 1, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@torch.no_grad()
def accuracy(net: FashionNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy (0..1) of ``net`` on uint8 images."""
    net.eval()
    right = sum(int((net(_normalise(images[i:i + batch_size])).argmax(1) == labels[i:i + batch_size]).sum())
                for i in range(0, len(images), batch_size))
    return right / max(1, len(images))


def sidecar(path: Union[str, Path]) -> Path:
    """The JSON provenance file that goes with a features file: ``x.safetensors`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


def save_fashion_net(net: FashionNet, path: Union[str, Path], provenance: dict) -> None:
    """Write ``net`` to ``path`` (safetensors) and its provenance to :func:`sidecar` (JSON), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "architecture": "FashionNet", "config": json.dumps(net.config)}
    record = {**meta, "config": net.config, **provenance}
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        weights, info = Path(tmp) / "w", Path(tmp) / "j"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights), metadata=meta)
        info.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(info, sidecar(path))  # the provenance first: a weights file is never left without one
        os.replace(weights, path)


def load_fashion_features(path: Union[str, Path]) -> FashionFeatures:
    """The default extractor from a file written by :func:`save_fashion_net`.

    Raises:
        UserError: the file is missing, not safetensors, not a redistill features file, or its tensors
            do not fit the architecture (the keys are named).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"features file not found: {path}")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"features file {path} is not a safetensors file ({_first(err)}); pass a file written by "
                        "`redistill fid-extractor`") from err
    if meta.get("format") != FORMAT or meta.get("architecture") != "FashionNet":
        raise UserError(f"features file {path} is not a redistill Fashion-MNIST extractor (no '{FORMAT}' metadata); "
                        "for Inception weights use --inception")
    try:
        config = json.loads(meta.get("config", "{}"))
        net = FashionNet(**config)
    except (ValueError, TypeError) as err:
        raise UserError(f"features file {path} has an unreadable architecture config: {_first(err)}") from err
    load_weights(net, state, path, what="feature extractor")
    info = sidecar(path)
    acc = ""
    if info.is_file():
        try:
            acc = f", test accuracy {json.loads(info.read_text())['test_accuracy']:.2%}"
        except (ValueError, KeyError, TypeError):
            acc = ""
    return FashionFeatures(net, source=f"{path.name}{acc}")


# ---------------------------------------------------------------- Inception-v3 from a local file


class InceptionFeatures(FeatureExtractor):
    """torchvision's Inception-v3 pool features (2048) on uint8 images of 1 or 3 channels, any size."""

    def __init__(self, net: nn.Module, source: str):
        super().__init__()
        net.fc = nn.Identity()  # the 2048-d average-pooled layer is the output
        self.net = net.eval()
        self.name = f"inception-v3 ({source})"
        self.num_features = 2048
        self.channels, self.side = (1, 3), None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        # torchvision's ImageNet Inception weights expect inputs in [-1, 1] (what transform_input produces).
        return self.net(x * 2.0 - 1.0)


def read_state_dict(path: Union[str, Path], what: str) -> dict[str, torch.Tensor]:
    """A plain state dict from ``.safetensors`` or a ``torch.save`` file, without running any code.

    Raises:
        UserError: missing file, unreadable file, or content that is not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated or an unsafe pickle: all mean "not a weights file"
        raise UserError(f"{what} file {path} is not a readable state dict ({_first(err)})") from err
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what} file {path} is not a state dict (a mapping of parameter names to tensors)")
    return state


def load_inception_features(path: Union[str, Path]) -> InceptionFeatures:
    """Inception-v3 features from a state-dict file of torchvision's ``inception_v3`` layout.

    The file may hold the auxiliary classifier (``AuxLogits.*``, as torchvision's published file does)
    or not; it is built to match. Nothing is downloaded.

    Raises:
        UserError: see :func:`read_state_dict`; tensors that do not fit Inception-v3 (the keys are named).
    """
    from torchvision.models import inception_v3

    state = read_state_dict(path, "inception weights")
    aux = any(k.startswith("AuxLogits.") for k in state)
    classes = state["fc.weight"].shape[0] if "fc.weight" in state and state["fc.weight"].dim() == 2 else 1000
    net = inception_v3(weights=None, aux_logits=aux, init_weights=False, num_classes=classes)
    load_weights(net, state, path, what="inception-v3")
    return InceptionFeatures(net, source=Path(path).name)


def _first(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
