"""Distillation: feature hooks and probes, the method contract and registry, the Distiller, RED.

Importing this package registers every built-in method (RED and the baselines).
"""

from redistill.distill.base import (
    DistillMethod,
    PreStage,
    create_method,
    list_methods,
    redo_surgery,
    register_method,
    surgery_of,
)
from redistill.distill.distiller import Distiller
from redistill.distill.hooks import capture
from redistill.distill.pairing import auto_pairs
from redistill.distill.pairs import Pair, parse_pairs, validate_pairs
from redistill.distill.probe import layer_table, probe_shapes
from redistill.distill.red import REDBlock, REDWrapped, apply_red_layout, insert_red, red_layout, red_loss
from redistill.distill.red_method import REDMethod
from redistill.distill import baselines  # noqa: E402,F401  (registers the baseline methods)  isort: skip

__all__ = [
    "DistillMethod",
    "Distiller",
    "Pair",
    "PreStage",
    "REDBlock",
    "REDMethod",
    "REDWrapped",
    "apply_red_layout",
    "auto_pairs",
    "capture",
    "create_method",
    "insert_red",
    "layer_table",
    "list_methods",
    "parse_pairs",
    "probe_shapes",
    "red_layout",
    "red_loss",
    "redo_surgery",
    "register_method",
    "surgery_of",
    "validate_pairs",
]
