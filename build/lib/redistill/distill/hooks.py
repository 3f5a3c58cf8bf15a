"""Scoped capture of intermediate features by module name.

A *ref* names one tensor inside a model: ``"layer2.0"`` is the output of module
``layer2.0``; ``"layer2.0:in"`` is its input (first positional argument). Hooks live
only inside the ``with`` block, so a model never keeps observers it did not ask for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn

from redistill.errors import UserError, did_you_mean

SIDES = ("out", "in")


def parse_ref(ref: str) -> tuple[str, str]:
    """Split a ref into ``(module_name, side)``, side being ``"out"`` or ``"in"``.

    Raises:
        UserError: a suffix other than ``:in`` / ``:out``.
    """
    name, sep, side = ref.partition(":")
    if not sep:
        return name, "out"
    if side not in SIDES:
        raise UserError(f"bad feature ref '{ref}': write 'layer' for its output or 'layer:in' for its input")
    return name, side


def make_ref(name: str, side: str) -> str:
    """Inverse of :func:`parse_ref`: ``("layer2.0", "in") -> "layer2.0:in"``."""
    return f"{name}:in" if side == "in" else name


def find_module(model: nn.Module, name: str, what: str = "model") -> nn.Module:
    """Return ``model``'s submodule called ``name``.

    Raises:
        UserError: no such module; the message lists the closest valid names.
    """
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        names = [n for n in modules if n]
        hint = did_you_mean(name, names)
        if not hint:  # nothing close: show where the names start
            top = [n for n in names if "." not in n]
            hint = f" (its top-level layers: {', '.join(top[:8])}{', ...' if len(top) > 8 else ''})"
        raise UserError(f"no layer '{name}' in the {what}{hint}; `redistill layers` lists the valid names")
    return modules[name]


def _first_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"expected a tensor, got {type(value).__name__}")


@contextmanager
def capture(model: nn.Module, refs: Sequence[str], what: str = "model") -> Iterator[dict[str, torch.Tensor]]:
    """Record the tensors named by ``refs`` during forwards run inside the block.

    Args:
        model: the model to observe (not modified).
        refs: ``"name"`` (module output) or ``"name:in"`` (module input).
        what: how error messages call the model ("student", "teacher").
    Yields:
        A dict ``ref -> tensor`` filled by each forward (a later forward overwrites);
        tensors keep their autograd graph.
    Raises:
        UserError: an unknown module name (with the closest valid names).
    """
    targets = [(ref, *parse_ref(ref)) for ref in refs]
    # Resolve every name before registering anything, so a bad ref leaves no hook behind.
    modules = {name: find_module(model, name, what) for _, name, _ in targets}
    feats: dict[str, torch.Tensor] = {}
    handles = []

    def out_hook(ref: str):
        def hook(_module, _args, output):
            feats[ref] = _first_tensor(output)

        return hook

    def in_hook(ref: str):
        def hook(_module, args):
            feats[ref] = _first_tensor(args)

        return hook

    try:
        for ref, name, side in targets:
            if side == "in":
                handles.append(modules[name].register_forward_pre_hook(in_hook(ref)))
            else:
                handles.append(modules[name].register_forward_hook(out_hook(ref)))
        yield feats
    finally:
        for handle in handles:
            handle.remove()
