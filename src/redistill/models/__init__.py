"""This project's model families with explicit stride slots, and ReDistill student derivation.

``build_family("resnext18-4-11221")`` builds a family member from a spec and returns it with its
record (:class:`ModelInfo`); ``derive_student`` moves down-sampling to the stem (see
:mod:`redistill.models.derive`). Any model reference (torchvision names, user factories, exports)
becomes a model in :func:`redistill.modelref.resolve_model`.
"""

from redistill.models.info import Built, ModelInfo
from redistill.models.registry import (
    build_family,
    create_model,
    get_family,
    is_model_spec,
    list_models,
    parse_spec,
    register_model,
    spec_string,
)

# Importing the family modules registers them.
from redistill.models import cifar_resnet, mobilenet, resnet, unet  # noqa: E402,F401  isort: skip
from redistill.models.derive import as_built, derive_student, model_slots, plan_strides  # noqa: E402
from redistill.models.tv_slots import create_torchvision, tv_info  # noqa: E402

__all__ = [
    "Built",
    "ModelInfo",
    "as_built",
    "build_family",
    "create_model",
    "create_torchvision",
    "derive_student",
    "get_family",
    "is_model_spec",
    "list_models",
    "model_slots",
    "parse_spec",
    "plan_strides",
    "register_model",
    "spec_string",
    "tv_info",
]
