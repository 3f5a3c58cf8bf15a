"""The one place where a model reference becomes a model.

Accepted references, in the order a bare string is tried:

1. an export directory (or its ``spec.yaml``), written by ``redistill export``, or a YAML file
   holding one spec mapping (``redistill derive --out student.yaml`` writes one);
2. ``redistill:SPEC`` / ``torchvision:NAME``: an explicit namespace;
3. a spec of this project's registry (``resnet18``, ``resnext18-4-11221``,
   ``cifar_resnet20:strides=4,1,1,1:stem_kernel=5``); a name that is also a torchvision model
   resolves to the project's family, and the result says so;
4. ``package.module:factory`` or ``path/to/file.py:factory``: user code (a callable returning an
   ``nn.Module``), only where code is trusted (``trust_code``);
5. a torchvision classification model name (``mobilenet_v2``), with random weights.

A mapping is a rebuildable spec (a family, or ``{"source": "torchvision", ...}``).
Every form returns ``(module, info)``: :class:`redistill.models.ModelInfo` says what was built.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch.nn as nn

from redistill.artifact import is_export, load_export
from redistill.errors import UserError, did_you_mean
from redistill.models import Built, ModelInfo, build_family, create_torchvision, is_model_spec, list_models
from redistill.models.factory import build_spec
from redistill.util import read_yaml

PREFIXES = ("redistill:", "torchvision:")
_AUTHORS_FORM = re.compile(r"[A-Za-z_]\w*-\d+-\d+")


def torchvision_names() -> list[str]:
    """torchvision's classification model names, sorted."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def _family(ref: str, kwargs: dict[str, Any]) -> Built:
    module, info = build_family(ref, **kwargs)
    name = ref.split(":", 1)[0]
    note = f"{ref}: redistill family {info.label()}"
    if name in torchvision_names():
        note += f" (the project's {name}; torchvision's is torchvision:{name})"
    return Built(module, _with_note(info, note))


def _torchvision(name: str, kwargs: dict[str, Any]) -> Built:
    channels = kwargs.pop("in_channels", None)
    if channels not in (None, 3):
        raise UserError(
            f"torchvision model '{name}' takes 3-channel images but {channels} were asked for; "
            "use a redistill family (e.g. cifar_resnet20) or a module:factory reference"
        )
    module, info = create_torchvision({"name": name, **kwargs})
    note = f"{name}: torchvision {name}"
    if is_model_spec(name):
        note += f" (the project's family is redistill:{name})"
    return Built(module, _with_note(info, note))


def _with_note(info: ModelInfo, note: str) -> ModelInfo:
    return replace(info, resolved_as=note)


def _load_factory(ref: str) -> Any:
    target, _, attr = ref.rpartition(":")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise UserError(f"model file not found: {path} (give path/to/file.py:factory)")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # the user's file failed to import: their error, in one line
            raise UserError(f"could not import {path}: {type(err).__name__}: {err}") from err
    else:
        try:
            module = importlib.import_module(target)
        except Exception as err:
            raise UserError(f"cannot import module '{target}' for model '{ref}': {type(err).__name__}: {err}") from err
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise UserError(f"'{target}' has no attribute '{attr}'{did_you_mean(attr, names)}")
    return getattr(module, attr)


def _factory(ref: str, kwargs: dict[str, Any]) -> Built:
    made = _load_factory(ref)
    if isinstance(made, nn.Module):
        if kwargs:
            raise UserError(f"'{ref}' is a module instance, so it cannot be built with {', '.join(sorted(kwargs))}; "
                            "point at a factory function that takes them")
        module = made
    elif callable(made):
        try:
            params = inspect.signature(made).parameters
        except (TypeError, ValueError):
            params = {}
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        missing = [k for k in kwargs if not takes_any and k not in params]
        if missing:
            # Building without them would silently give a network of another shape.
            raise UserError(
                f"factory '{ref}' takes no parameter '{missing[0]}' but this use needs "
                f"{missing[0]}={kwargs[missing[0]]}; add the parameter to the factory"
            )
        try:
            module = made(**kwargs)
        except Exception as err:  # the user's factory failed: their error, in one line
            raise UserError(f"factory '{ref}' raised {type(err).__name__}: {err}") from err
    else:
        raise UserError(f"'{ref}' is neither an nn.Module nor a callable returning one")
    if not isinstance(module, nn.Module):
        raise UserError(f"'{ref}' did not give an nn.Module but {type(module).__name__}")
    info = ModelInfo(
        source="factory", name=ref, num_classes=kwargs.get("num_classes"), in_channels=kwargs.get("in_channels"),
        resolved_as=f"{ref}: user factory",
    )
    return Built(module, info)


def resolve_model(
    ref: str | Mapping[str, Any],
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    options: Mapping[str, Any] | None = None,
    trust_code: bool = True,
) -> Built:
    """Build the model ``ref`` names (see the module docstring), in eval mode.

    Args:
        ref: the model reference.
        num_classes: classifier outputs; None keeps the model's default.
        in_channels: input channels; None keeps the model's default.
        options: family or builder options (``width``, ``dropout``, ...).
        trust_code: whether a ``module:factory`` / ``file.py:factory`` reference may be imported
            and called. False where the reference was read from an artifact.
    Returns:
        ``(module, info)``.
    Raises:
        UserError: unknown name (with the closest names in both namespaces), a reference to code
            where code is not trusted, or a builder / user factory that fails.
    """
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels)) if v is not None}
    kwargs.update(options or {})
    if isinstance(ref, Mapping):
        module, info = build_spec(ref, **kwargs)
        return Built(module.eval(), info)
    if not isinstance(ref, str) or not ref.strip():
        raise UserError(f"a model reference must be a non-empty string or a spec mapping, got {ref!r}")
    ref = ref.strip()
    if ref.startswith("torchvision:"):
        return _eval(_torchvision(ref.split(":", 1)[1], kwargs))
    if ref.startswith("redistill:"):
        return _eval(_family(ref.split(":", 1)[1], kwargs))
    path = Path(ref)
    if is_export(path):
        if options:
            raise UserError(f"{ref} is an export: its architecture is fixed, so model options do not apply")
        built = load_export(path)
        for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            have = getattr(built.info, key)
            if value is not None and value != have:
                raise UserError(f"export {ref} has {key}={have}, but {value} is needed here")
        return built
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return resolve_model(_spec_file(path), num_classes=num_classes, in_channels=in_channels, options=options)
    if is_model_spec(ref):
        return _eval(_family(ref, kwargs))
    if ":" in ref:
        if not trust_code:
            raise UserError(
                f"model '{ref}' names code to import, and it was read from an artifact; only registered and "
                "torchvision models are rebuilt from artifacts (pass --trust-code if you wrote it)"
            )
        return _eval(_factory(ref, kwargs))
    names = torchvision_names()
    if ref in names:
        return _eval(_torchvision(ref, kwargs))
    if _AUTHORS_FORM.fullmatch(ref):  # the authors' form of an unknown family: the registry's error
        build_family(ref)
    # Names are looked up before paths are refused, so a folder that happens to be called like a
    # model (a run directory `--out resnet18`) cannot hide the model.
    if path.is_dir():
        raise UserError(f"{ref} is a directory but not an export (no spec.yaml); `redistill export RUN_DIR` makes one")
    if path.suffix in (".yaml", ".yml", ".py") or "/" in ref:
        raise UserError(f"model file not found: {ref} (relative paths start from the current directory)")
    known = sorted(set(names) | set(list_models()))
    raise UserError(
        f"unknown model '{ref}'{did_you_mean(ref, known)}; give a family (`redistill models`), a torchvision "
        "name, package.module:factory, path/to/file.py:factory or an export directory"
    )


def _spec_file(path: Path) -> dict[str, Any]:
    """The spec mapping a YAML file holds (never code: only families and torchvision specs build)."""
    spec = read_yaml(path, "model spec file")
    if not isinstance(spec, dict) or "name" not in spec:
        raise UserError(f"model spec file {path} must hold one spec mapping with a 'name' (as `redistill derive --out` writes)")
    return spec


def _eval(built: Built) -> Built:
    return Built(built.module.eval(), built.info)
