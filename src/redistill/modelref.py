"""Turn a MODEL argument into an ``nn.Module``.

Accepted forms:
- a family spec of this project's model registry (``resnet18``, ``resnext18-4-11221``,
  ``resnet18:strides=8,1,1,2,2,1``), when :mod:`redistill.models` knows it;
- a torchvision classification model name (``mobilenet_v2``), built with random weights;
- ``package.module:factory`` or ``path/to/file.py:factory`` (a callable returning a module);
- a directory written by ``redistill export`` (or its ``spec.yaml``): the deployed student.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import torch.nn as nn

from redistill.errors import UserError, did_you_mean


def torchvision_names() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def _from_factory(ref: str) -> nn.Module:
    target, _, attr = ref.rpartition(":")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise UserError(f"model file not found: {path} (give path/to/file.py:factory)")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # the user's file failed to import
            raise UserError(f"could not import {path}: {type(err).__name__}: {err}") from err
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise UserError(f"cannot import module '{target}' for model '{ref}': {err}") from err
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise UserError(f"'{target}' has no attribute '{attr}'{did_you_mean(attr, names)}")
    made = getattr(module, attr)
    made = made() if callable(made) and not isinstance(made, nn.Module) else made
    if not isinstance(made, nn.Module):
        raise UserError(f"'{ref}' did not give an nn.Module but {type(made).__name__}")
    return made


def resolve_model(ref: str, **kwargs) -> nn.Module:
    """Build the model named by ``ref`` (see module docstring), in eval mode.

    Args:
        ref: the MODEL argument.
        **kwargs: forwarded to the model builder (e.g. ``num_classes``).
    Raises:
        UserError: unknown name (with the closest names) or a factory that fails.
    """
    path = Path(ref)
    if path.is_dir() or (path.suffix in (".yaml", ".yml") and path.is_file()):
        from redistill.train.export import load_exported

        return load_exported(path).eval()
    from redistill.models import create_model, is_model_spec, list_models

    if is_model_spec(ref):  # this project's families, with any spec options
        return create_model(ref, **kwargs).eval()
    if ":" in ref:
        return _from_factory(ref).eval()
    from torchvision import models

    names = torchvision_names()
    if ref not in names:
        if re.fullmatch(r"[A-Za-z_]\w*-\d+-\d+", ref):  # authors' form of an unknown family
            return create_model(ref, **kwargs)  # the registry's error names the closest family
        known = sorted(set(names) | set(list_models()))
        raise UserError(
            f"unknown model '{ref}'{did_you_mean(ref, known)}; give a model name, "
            "package.module:factory or path/to/file.py:factory"
        )
    return models.get_model(ref, weights=None, **kwargs).eval()
