"""The export format: a deployed model as ``model.safetensors`` + ``spec.yaml``.

An export directory holds exactly what ships:

- ``model.safetensors``: the deployed network's state dict (method surgery such as RED blocks
  in; no teacher, no training-only modules);
- ``spec.yaml``: how to rebuild that network: a model spec this project can rebuild (a family
  or a torchvision spec, never user code), the method surgery by method name (each method
  redoes its own, :func:`redistill.distill.redo_surgery`), classes / channels, the input shape,
  and optionally the data description of the run that trained it.

Training, evaluation, ``redistill memory`` and deployment all read exports through
:func:`load_export`; :func:`write_export` is the only writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from redistill.checkpoint import load_weights
from redistill.distill import redo_surgery
from redistill.errors import UserError
from redistill.models import Built, ModelInfo
from redistill.models.factory import build_spec
from redistill.util import dump_yaml, read_yaml

EXPORT_FORMAT = "redistill-export"
VERSION = 2
WEIGHTS, SPEC = "model.safetensors", "spec.yaml"
_REQUIRED = ("model", "num_classes", "in_channels", "input_shape", "surgery")


@dataclass
class ExportSpec:
    """The content of ``spec.yaml``.

    Attributes:
        model: the rebuildable architecture spec (family or torchvision spec mapping).
        num_classes, in_channels: what the network was built for.
        input_shape: the (1, C, H, W) it was trained on.
        surgery: method surgery by method name (``{"red": [...]}``), empty for none.
        data_info: the training data's description (name, classes, channels, size, mean, std), if any.
        data: the ``data`` config section of the run, so ``redistill eval`` can rebuild its test split.
        source: where the export came from (run directory, checkpoint).
    """

    model: dict[str, Any]
    num_classes: int | None  # None for a diffusion model
    in_channels: int
    input_shape: list[int]
    surgery: dict[str, list] = field(default_factory=dict)
    data_info: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": EXPORT_FORMAT, "version": VERSION, **self.__dict__}


def is_export(path: Union[str, Path]) -> bool:
    """Whether ``path`` is an export directory or a file inside one (cheap; never raises)."""
    try:
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        return (folder / SPEC).is_file() and (path.is_dir() or path.name in (SPEC, WEIGHTS))
    except OSError:
        return False


def read_export_spec(path: Union[str, Path]) -> tuple[ExportSpec, Path]:
    """Parse and check ``spec.yaml`` of an export (the directory or a file inside it).

    Returns:
        ``(spec, export directory)``.
    Raises:
        UserError: not an export, invalid YAML, another format, or missing fields.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    spec_path = folder / SPEC
    if not spec_path.is_file():
        raise UserError(f"{path} is not an export directory (no {SPEC}); create one with `redistill export RUN_DIR`")
    data = read_yaml(spec_path, "export spec")
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise UserError(f"{spec_path} is not a redistill export spec (format: {EXPORT_FORMAT} missing)")
    if data.get("version") != VERSION:
        raise UserError(
            f"{spec_path} is export format version {data.get('version')}, this redistill reads version {VERSION}; "
            "export the run again with this version"
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise UserError(f"{spec_path} lacks {', '.join(missing)}")
    if not isinstance(data["model"], dict):
        raise UserError(f"{spec_path}: 'model' must be a spec mapping, got {type(data['model']).__name__}")
    fields_ = {k: data[k] for k in ExportSpec.__dataclass_fields__ if k in data}
    return ExportSpec(**fields_), folder


def load_export(path: Union[str, Path]) -> Built:
    """Rebuild the network of an export directory (or of its ``spec.yaml`` / ``model.safetensors``).

    Only specs this project can rebuild are accepted (families, torchvision); an export never
    names code to run.

    Returns:
        ``(deployed model in eval mode, info)``; ``info.input_shape`` is the shape it expects.
    Raises:
        UserError: not an export, a corrupt weights file, or weights that do not fit the spec
            (the message names the keys).
    """
    spec, folder = read_export_spec(path)
    # A diffusion UNet has no classes (num_classes None), and its family takes no such option.
    kwargs = {"num_classes": spec.num_classes} if spec.num_classes is not None else {}
    if spec.model.get("source") != "torchvision":
        kwargs["in_channels"] = spec.in_channels
    model, info = build_spec(spec.model, **kwargs)
    redo_surgery(model, spec.surgery, source=folder / SPEC)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise UserError(f"export {folder} has no {WEIGHTS}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{weights} is corrupt or not a safetensors file: {err}") from err
    load_weights(model, state, weights)
    info = ModelInfo(
        source="export", name=str(folder), spec=info.spec, slots=info.slots, strides=info.strides,
        drop_order=info.drop_order, num_classes=spec.num_classes, in_channels=spec.in_channels,
        input_shape=tuple(spec.input_shape), surgery=dict(spec.surgery),
        resolved_as=f"{folder}: export of {info.label()}", task=info.task,
    )
    return Built(model.eval(), info)


def write_export(out: Union[str, Path], model: nn.Module, spec: ExportSpec) -> Path:
    """Write ``model``'s weights and ``spec`` as an export directory.

    Args:
        out: the directory; it must not exist or be empty.
        model: the deployed network (its state dict is saved on the CPU).
        spec: what rebuilds it.
    Returns:
        The directory.
    Raises:
        UserError: ``out`` exists and is not empty, or is not a directory.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"export directory {out} already exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": EXPORT_FORMAT})
    tmp = out / f".{SPEC}.tmp"
    tmp.write_text(dump_yaml(spec.to_dict(), sort_keys=False))
    tmp.replace(out / SPEC)  # the spec last: a directory with a spec is a complete export
    return out
