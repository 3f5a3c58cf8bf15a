"""A run directory's deployed student: rebuild it, export it (:mod:`redistill.artifact`), score it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Union

import torch.nn as nn

from redistill.artifact import ExportSpec, is_export, load_export, read_export_spec, write_export
from redistill.checkpoint import load_checkpoint
from redistill.distill import surgery_of
from redistill.errors import UserError
from redistill.train.build import checkpoint_file, model_from_state, shipped_state
from redistill.train.config import Config, load_config
from redistill.train.data import DataInfo, build_datasets, eval_loader
from redistill.train.diffusion_task import DiffusionTask
from redistill.train.task import ClassificationTask, Task
from redistill.util import pick_device

__all__ = ["evaluate_path", "export_run", "load_export", "load_run_model"]


def load_run_model(
    run_dir: Union[str, Path], checkpoint: str = "best", trust_code: bool = False
) -> tuple[nn.Module, Config, DataInfo, object]:
    """The deployed student of a run, rebuilt from its config and checkpoint.

    Args:
        run_dir: a run directory written by ``redistill train``.
        checkpoint: "best" (default; "last" when there is no best) or "last".
        trust_code: whether a model spec naming user code (``file.py:factory``) may be imported.
    Returns:
        ``(model in eval mode, the run's config, its data description, the model's ModelInfo)``;
        for a run that keeps an EMA of its weights (diffusion), the model holds the EMA weights.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    path = run_dir / f"{checkpoint}.pt"
    if not path.is_file():
        if checkpoint != "best":  # only the default may fall back: an export must say what it holds
            raise UserError(f"{path} does not exist; use --checkpoint best")
        path = checkpoint_file(run_dir)
    state = load_checkpoint(path)
    if not isinstance(state.get("data_info"), dict):
        raise UserError(f"checkpoint {path} lacks data_info; it was not written by this redistill")
    try:
        info = DataInfo(**state["data_info"])
    except TypeError as err:
        raise UserError(f"checkpoint {path} has a data_info this redistill cannot read ({err})") from err
    state = shipped_state(state)  # a run that keeps an EMA ships the average
    model, model_info = model_from_state(cfg.model.student, cfg.model, info, state, path, trust_code=trust_code,
                                         task=cfg.task)
    return model, cfg, info, model_info


def export_run(
    run_dir: Union[str, Path], out: Union[str, Path, None] = None, checkpoint: str = "best", trust_code: bool = False
) -> Path:
    """Write the deployed student of a run as ``model.safetensors`` + ``spec.yaml``.

    Args:
        run_dir: the run directory.
        out: export directory (default ``<run_dir>/export``); must not exist or be empty.
        checkpoint: "best" or "last".
        trust_code: whether the run's model spec may name user code (``file.py:factory``).
    Returns:
        The export directory.
    Raises:
        UserError: the run's model has no rebuildable spec (a user factory), or ``out`` is taken.
    """
    model, cfg, info, model_info = load_run_model(run_dir, checkpoint, trust_code=trust_code)
    if model_info.spec is None:
        raise UserError(f"{run_dir} trains a user factory ({model_info.name}); exports hold only rebuildable specs")
    spec = ExportSpec(
        model=model_info.spec,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        input_shape=[1, info.in_channels, info.image_size, info.image_size],
        surgery=surgery_of(model),
        data_info={**dataclasses.asdict(info), "mean": list(info.mean), "std": list(info.std)},
        data=dataclasses.asdict(cfg.data),
        source={"run_dir": str(run_dir), "checkpoint": checkpoint},
    )
    return write_export(Path(out) if out is not None else Path(run_dir) / "export", model, spec)


def evaluate_path(
    path: Union[str, Path], split: str = "test", data_root: Optional[str] = None, device: str = "auto",
    batch_size: Optional[int] = None, trust_code: bool = False,
) -> dict:
    """Top-1 accuracy of a run's deployed student (best checkpoint) or of an export.

    Args:
        path: a run directory or an export directory.
        split: "test" or "val" (the validation split carved from the training set).
        data_root: override of the recorded ``data.root``.
        device: "auto", "cpu", "cuda" or "cuda:N".
        batch_size: evaluation batch size (default: the run's).
        trust_code: whether a run's model spec may name user code (``file.py:factory``).
    Returns:
        ``{"acc": percent, "loss": mean cross-entropy, "count": images, "split": split}``; for a
        diffusion run ``{"loss": denoising MSE, "count", "split"}``.
    """
    if split not in ("test", "val"):
        raise UserError(f"--split must be test or val, got '{split}'")
    path = Path(path)
    if not path.exists():
        raise UserError(f"no such run or export directory: {path}")
    dev = pick_device(device, what="--device")
    task: Task = ClassificationTask()
    if (path / "config.yaml").is_file():
        model, cfg, _, _ = load_run_model(path, trust_code=trust_code)
        data = cfg.data
        if cfg.task == "diffusion":  # the denoising MSE of the EMA network (fixed timesteps and noise)
            task = DiffusionTask(cfg.diffusion)
    elif is_export(path):
        model = load_export(path).module
        spec, _ = read_export_spec(path)
        if not spec.data:
            raise UserError(f"export {path} records no data set, so it cannot be evaluated; export it from a run")
        data = load_config({"model": {"student": "exported"}, "data": spec.data}).data
    else:
        raise UserError(f"{path} is neither a run directory (config.yaml) nor an export (spec.yaml)")
    if data_root is not None:
        data.root = data_root
    if batch_size is not None:
        data.eval_batch_size = batch_size
    data.workers = min(data.workers, 2)
    splits = build_datasets(data)
    ds = splits.test if split == "test" else splits.val
    if ds is None:
        raise UserError("this run has no validation split (data.val_fraction is 0); use --split test")
    result = task.evaluate(model.to(dev), eval_loader(ds, data), dev)
    return {**result, "split": split}
