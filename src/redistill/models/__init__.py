"""This project's model families with explicit stride slots, and ReDistill student derivation.

``create_model("resnext18-4-11221")`` builds a family member from a spec; ``derive_student``
moves down-sampling to the stem (see :mod:`redistill.models.derive`).
"""

from redistill.models.registry import (
    create_model,
    get_family,
    is_model_spec,
    list_models,
    model_spec,
    parse_spec,
    register_model,
)

# Importing the family modules registers them.
from redistill.models import cifar_resnet, mobilenet, resnet  # noqa: E402,F401  isort: skip
from redistill.models.derive import derive_student, model_slots, plan_strides  # noqa: E402

__all__ = [
    "create_model",
    "derive_student",
    "get_family",
    "is_model_spec",
    "list_models",
    "model_slots",
    "model_spec",
    "parse_spec",
    "plan_strides",
    "register_model",
]
