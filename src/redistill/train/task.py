"""What a task is to the trainer: what a batch holds, the student's task loss, its metrics and
its evaluation. Classification is the first; a denoising task plugs in the same way.

The trainer never looks inside a batch: it asks the task to move it to the device
(:meth:`Task.prepare`), to augment it, for the loss the Distiller adds as the task term, for
per-batch training metrics and for the evaluation that picks the best checkpoint.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class Task:
    """The contract; subclasses fill in every method.

    Attributes:
        term: name of the task's loss term in the logs (``"ce"``).
        metric: the validation metric that chooses the best checkpoint.
        higher_is_better: whether a larger :attr:`metric` is a better model (accuracy: yes;
            a loss: no).
        ema_decay: when set, the trainer keeps an EMA of the student's weights with this decay,
            and that average is what is validated, checkpointed as the shipped model and exported.
    """

    term: str = "loss"
    metric: str = "score"
    higher_is_better: bool = True
    ema_decay: Optional[float] = None  # an EMA of the weights is what gets evaluated and shipped

    def better(self, value: float, best: float) -> bool:
        """Whether a validation ``value`` beats the ``best`` so far."""
        return value > best if self.higher_is_better else value < best

    def worst(self) -> float:
        """The starting ``best`` that any finite value beats."""
        return -math.inf if self.higher_is_better else math.inf

    def example_input(self, in_channels: int, image_size: int, batch: int = 2) -> Any:
        """A random network input (what method setup probes shapes with); drawn from a private
        generator, so the training RNG is untouched."""
        gen = torch.Generator().manual_seed(0)
        return torch.randn(batch, in_channels, image_size, image_size, generator=gen)

    def prepare(self, batch: Any, device: torch.device, channels_last: bool = False) -> tuple[Any, torch.Tensor]:
        """``(inputs, targets)`` of a loader batch, on ``device``."""
        raise NotImplementedError

    def augment(self, inputs: Any, targets: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Batch-level augmentation of a training batch (none by default)."""
        return inputs, targets

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The student's unweighted task loss."""
        raise NotImplementedError

    def batch_size(self, targets: torch.Tensor) -> int:
        """Samples in a batch (the weight of its means in epoch averages)."""
        return len(targets)

    def train_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-batch *sums* of training metrics (the trainer divides by the samples seen)."""
        return {}

    def evaluate(self, model: nn.Module, loader, device: torch.device, amp: bool = False,
                 channels_last: bool = False) -> dict[str, float]:
        """Metrics of ``model`` on ``loader``; must include :attr:`metric` and ``count``."""
        raise NotImplementedError


def _labels(targets: torch.Tensor) -> torch.Tensor:
    # Soft targets (CutMix / MixUp) count their largest class.
    return targets.argmax(dim=1) if targets.ndim == 2 else targets


class ClassificationTask(Task):
    """Images and class labels; cross-entropy; top-1 accuracy in percent.

    Args:
        label_smoothing: of the training cross-entropy.
        mixer: ``mixer(images, targets) -> (images, soft targets)`` (CutMix / MixUp), or None.
    """

    term = "ce"
    metric = "acc"

    def __init__(self, label_smoothing: float = 0.0, mixer: Optional[Callable] = None) -> None:
        self.label_smoothing = float(label_smoothing)
        self.mixer = mixer

    def prepare(self, batch, device, channels_last=False):
        images, targets = batch
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets

    def augment(self, inputs, targets):
        return (inputs, targets) if self.mixer is None else self.mixer(inputs, targets)

    def loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def train_metrics(self, outputs, targets):
        return {"acc": 100.0 * (outputs.detach().argmax(dim=1) == _labels(targets)).sum()}

    @torch.no_grad()
    def evaluate(self, model, loader, device, amp=False, channels_last=False):
        """Top-1 accuracy (percent), mean cross-entropy and the image count of ``model`` on ``loader``."""
        was_training = model.training
        model.eval()
        correct, total, loss = 0, 0, 0.0
        autocast = torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext()
        for batch in loader:
            images, targets = self.prepare(batch, device, channels_last)
            with autocast:
                logits = model(images)
            loss += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
            correct += int((logits.argmax(dim=1) == _labels(targets)).sum())
            total += len(targets)
        model.train(was_training)
        return {"acc": 100.0 * correct / max(total, 1), "loss": loss / max(total, 1), "count": total}
