"""Distillation: feature hooks, the method contract and registry, the Distiller, RED."""

from redistill.distill.base import DistillMethod, PreStage, create_method, list_methods, register_method
from redistill.distill.distiller import Distiller
from redistill.distill.hooks import capture
from redistill.distill.pairing import Pair, auto_pairs, layer_table, parse_pairs, validate_pairs
from redistill.distill.red import REDBlock, REDMethod, REDWrapped, apply_red_layout, insert_red, red_layout, red_loss

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
    "red_layout",
    "red_loss",
    "register_method",
    "validate_pairs",
]
