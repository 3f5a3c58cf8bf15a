"""Export the deployed student of a run, load it back, and evaluate runs or exports.

An export directory holds exactly what ships:

- ``model.safetensors``: the deployed student's state dict (RED blocks in; no teacher, no
  training-only modules);
- ``spec.yaml``: how to rebuild that network (model spec, RED layout, classes / channels, input
  shape) and the ``data`` section of the run, so ``redistill eval`` can score it.

:func:`load_exported` turns such a directory back into an ``nn.Module``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn
import yaml

from redistill.errors import UserError
from redistill.train.build import build_model, checkpoint_file, model_from_state, red_layout_of, spec_of
from redistill.train.checkpoint import load_checkpoint, load_weights
from redistill.train.config import Config, ModelConfig, load_config
from redistill.train.data import DataInfo

EXPORT_FORMAT = "redistill-export"
WEIGHTS, SPEC = "model.safetensors", "spec.yaml"


def load_run_model(run_dir: Union[str, Path], checkpoint: str = "best") -> tuple[nn.Module, Config, DataInfo]:
    """The deployed student of a run, rebuilt from its config and checkpoint.

    Args:
        run_dir: a run directory written by ``redistill train``.
        checkpoint: "best" (default; "last" when there is no best) or "last".
    Returns:
        ``(model in eval mode, the run's config, its data description)``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    path = run_dir / f"{checkpoint}.pt"
    if not path.is_file():
        path = checkpoint_file(run_dir)
    state = load_checkpoint(path)
    if "data_info" not in state:
        raise UserError(f"checkpoint {path} lacks data_info; it was not written by this redistill")
    info = DataInfo(**state["data_info"])
    model = model_from_state(cfg.model.student, cfg.model, info, state, path)
    return model, cfg, info


def export_run(run_dir: Union[str, Path], out: Union[str, Path, None] = None, checkpoint: str = "best") -> Path:
    """Write the deployed student of a run as ``model.safetensors`` + ``spec.yaml``.

    Args:
        run_dir: the run directory.
        out: export directory (default ``<run_dir>/export``); must not exist or be empty.
        checkpoint: "best" or "last".
    Returns:
        The export directory.
    """
    from safetensors.torch import save_file

    model, cfg, info = load_run_model(run_dir, checkpoint)
    out = Path(out) if out is not None else Path(run_dir) / "export"
    if out.exists() and any(out.iterdir()):
        raise UserError(f"export directory {out} already exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    spec = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "model": spec_of(model, cfg.model.student),
        "model_config": {"num_classes": info.num_classes, "in_channels": info.in_channels, "options": cfg.model.options},
        "red_layout": red_layout_of(model),
        "input_shape": [1, info.in_channels, info.image_size, info.image_size],
        "data_info": {**dataclasses.asdict(info), "mean": list(info.mean), "std": list(info.std)},
        "data": dataclasses.asdict(cfg.data),
        "source": {"run_dir": str(run_dir), "checkpoint": checkpoint},
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": EXPORT_FORMAT})
    (out / SPEC).write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def _read_spec(path: Path) -> tuple[dict, Path]:
    folder = path if path.is_dir() else path.parent
    spec_path = folder / SPEC
    if not spec_path.is_file():
        raise UserError(f"{path} is not an export directory (no {SPEC}); create one with `redistill export RUN_DIR`")
    try:
        spec = yaml.safe_load(spec_path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{spec_path} is not valid YAML: {err}") from err
    if not isinstance(spec, dict) or spec.get("format") != EXPORT_FORMAT:
        raise UserError(f"{spec_path} is not a redistill export spec (format: {EXPORT_FORMAT} missing)")
    missing = [k for k in ("model", "model_config", "red_layout", "input_shape") if k not in spec]
    if missing:
        raise UserError(f"{spec_path} lacks {', '.join(missing)}")
    return spec, folder


def load_exported(path: Union[str, Path]) -> nn.Module:
    """Rebuild the network of an export directory (or its ``spec.yaml`` / ``model.safetensors``).

    Args:
        path: the export directory or a file inside it.
    Returns:
        The deployed student in eval mode; ``model.input_shape`` holds the (1, C, H, W) it expects.
    Raises:
        UserError: not an export, a corrupt weights file, or weights that do not fit the spec
            (the message names the keys).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    spec, folder = _read_spec(Path(path))
    shape = spec["input_shape"]
    mc = spec["model_config"]
    info = DataInfo("export", mc["num_classes"], mc["in_channels"], shape[-1], (), ())
    # A full registry spec (a mapping) already holds every option; options only complete string specs.
    options = {} if isinstance(spec["model"], dict) else (mc.get("options") or {})
    mcfg = ModelConfig(num_classes=mc["num_classes"], in_channels=mc["in_channels"], options=options)
    model = build_model(spec["model"], mcfg, info)
    if spec["red_layout"]:
        from redistill.distill.red import apply_red_layout

        apply_red_layout(model, spec["red_layout"])
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise UserError(f"export {folder} has no {WEIGHTS}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{weights} is corrupt or not a safetensors file: {err}") from err
    load_weights(model, state, weights)
    model.input_shape = tuple(shape)
    return model.eval()


def evaluate_path(
    path: Union[str, Path], split: str = "test", data_root: Optional[str] = None, device: str = "auto",
    batch_size: Optional[int] = None,
) -> dict:
    """Top-1 accuracy of a run's deployed student (best checkpoint) or of an export.

    Args:
        path: a run directory or an export directory.
        split: "test" or "val" (the validation split carved from the training set).
        data_root: override of the recorded ``data.root``.
        device: "auto", "cpu" or "cuda".
        batch_size: evaluation batch size (default: the run's).
    Returns:
        ``{"acc": percent, "loss": mean cross-entropy, "count": images, "split": split}``.
    """
    from redistill.train.data import build_datasets, eval_loader
    from redistill.train.trainer import evaluate

    if split not in ("test", "val"):
        raise UserError(f"--split must be test or val, got '{split}'")
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such run or export directory: {path}")
    if (path / "config.yaml").is_file():
        model, cfg, _ = load_run_model(path)
        data = cfg.data
    else:
        model = load_exported(path)
        spec, _ = _read_spec(path)
        data = load_config({"model": {"student": "exported"}, "data": spec.get("data") or {}}).data
    if data_root is not None:
        data.root = data_root
    if batch_size is not None:
        data.eval_batch_size = batch_size
    data.workers = min(data.workers, 2)
    splits = build_datasets(data)
    ds = splits.test if split == "test" else splits.val
    if ds is None:
        raise UserError("this run has no validation split (data.val_fraction is 0); use --split test")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    result = evaluate(model.to(dev), eval_loader(ds, data), dev)
    return {**result, "split": split}
