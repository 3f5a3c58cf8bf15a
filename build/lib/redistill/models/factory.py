"""Build a model from a rebuildable spec: this project's families or a torchvision spec.

These are the only specs an artifact (run directory, checkpoint, export) may carry: none of
them runs code that the project does not ship. User code (``module:factory``) is resolved in
:mod:`redistill.modelref`, never from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redistill.errors import UserError
from redistill.models.info import Built
from redistill.models.registry import SPEC_FORMS, build_family, is_model_spec
from redistill.models.tv_slots import create_torchvision


def build_spec(spec: str | Mapping[str, Any], **kwargs: Any) -> Built:
    """Build a family spec (``"resnet18:strides=8,1,1,2,2,1"``, ``{"name": ...}``) or a torchvision
    spec mapping (``{"source": "torchvision", "name": "mobilenet_v2", "strides": [...]}``).

    Args:
        spec: the spec.
        **kwargs: options over the spec's (``num_classes``; ``in_channels`` for families only).
    Returns:
        ``(module, info)``.
    Raises:
        UserError: anything else, naming the accepted forms.
    """
    if isinstance(spec, Mapping) and spec.get("source") == "torchvision":
        channels = kwargs.pop("in_channels", None)
        if channels not in (None, 3):
            raise UserError(f"torchvision {spec.get('name')} takes 3-channel images, not {channels}")
        return create_torchvision({**spec, **kwargs})
    if isinstance(spec, Mapping) or is_model_spec(spec):
        return build_family(spec, **kwargs)
    raise UserError(f"'{spec}' is not a model spec this project can rebuild; give {SPEC_FORMS} or a torchvision spec")
