"""What a built model is: one typed record returned with the module, never patched onto it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch.nn as nn

# Where a model came from; see redistill.modelref for how a reference picks one.
SOURCES = ("redistill", "torchvision", "factory", "export")
# What a model computes: ``model(x) -> logits`` or ``model(x, t) -> predicted noise``.
TASKS = ("classification", "diffusion")


@dataclass(frozen=True)
class ModelInfo:
    """Provenance and stride layout of a model.

    Attributes:
        source: "redistill" (this project's registry), "torchvision", "factory" (user code)
            or "export" (a directory written by ``redistill export``).
        name: family, torchvision name, factory reference or export path.
        spec: a YAML-able spec that rebuilds the architecture (None for user factories).
        slots: stride-slot module names, stem first (empty when unknown).
        strides: one stride per slot.
        drop_order: later slots a derived student sets to stride 1 first.
        num_classes, in_channels: what the model was built for (None when unknown).
        input_shape: the (1, C, H, W) an export was trained on; None otherwise.
        surgery: method surgery recorded by an export (e.g. ``{"red": [...]}``); empty otherwise.
        resolved_as: how the reference was read, one line for the user (precedence shown).
        task: "classification" (``model(x)`` returns logits) or "diffusion" (``model(x, t)``
            returns the predicted noise, shaped like ``x``; ``num_classes`` is None).
    """

    source: str
    name: str
    spec: dict[str, Any] | None = None
    slots: tuple[str, ...] = ()
    strides: tuple[int, ...] = ()
    drop_order: tuple[str, ...] = ()
    num_classes: int | None = None
    in_channels: int | None = None
    input_shape: tuple[int, ...] | None = None
    surgery: dict[str, Any] = field(default_factory=dict)
    resolved_as: str = ""
    task: str = "classification"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"ModelInfo.source must be one of {SOURCES}, got {self.source!r}")
        if self.task not in TASKS:
            raise ValueError(f"ModelInfo.task must be one of {TASKS}, got {self.task!r}")

    def with_strides(self, strides: list[int] | tuple[int, ...]) -> ModelInfo:
        """The same record for the model with other strides (spec updated too)."""
        spec = None if self.spec is None else {**self.spec, "strides": list(strides)}
        return replace(self, strides=tuple(strides), spec=spec)

    def label(self) -> str:
        """Short name for tables: ``cifar_resnet20 [4,1,1,1]``."""
        if self.strides:
            return f"{self.name} [{','.join(map(str, self.strides))}]"
        return self.name


class Built(NamedTuple):
    """A module with its record: ``model, info = resolve_model(...)``."""

    module: nn.Module
    info: ModelInfo
