"""Training pipeline: typed configs, data, tasks, the training loop, run export and evaluation.

Python API: ``cfg = load_config(path_or_dict, overrides)`` then
``summary = run_training(cfg, run_dir, resume=False, overwrite=False)``;
``export_run(run_dir)`` writes the deployed student (:mod:`redistill.artifact`).
"""

from redistill.train.config import Config, load_config
from redistill.train.export import evaluate_path, export_run, load_run_model
from redistill.train.trainer import run_training

__all__ = ["Config", "evaluate_path", "export_run", "load_config", "load_run_model", "run_training"]
