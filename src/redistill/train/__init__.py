"""Training pipeline: typed configs, data, the training loop, checkpoints, export.

Python API: ``cfg = load_config(path_or_dict, overrides)`` then
``summary = run_training(cfg, run_dir, resume=False, overwrite=False)``;
``load_exported(export_dir)`` rebuilds an exported deployed student.
"""

from redistill.train.config import Config, load_config
from redistill.train.export import load_exported
from redistill.train.trainer import run_training

__all__ = ["Config", "load_config", "load_exported", "run_training"]
