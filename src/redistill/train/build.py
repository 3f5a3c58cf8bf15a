"""Build what a run trains from its config: the networks, the teacher's weights, the Distiller."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch.nn as nn

from redistill.artifact import is_export, load_export
from redistill.checkpoint import load_checkpoint, load_weights
from redistill.diffusion import ema_weights
from redistill.distill import Distiller, create_method, redo_surgery, surgery_of
from redistill.errors import UserError
from redistill.modelref import resolve_model
from redistill.models import Built, spec_string
from redistill.train.config import Config, ModelConfig
from redistill.train.data import DataInfo
from redistill.train.task import Task


def build_model(
    spec: Union[str, dict], mcfg: ModelConfig, info: DataInfo, trust_code: bool = True, task: str = "classification"
) -> Built:
    """Build one network from a model reference, sized for the data set.

    Args:
        spec: model reference or spec mapping (see :func:`redistill.modelref.resolve_model`).
        mcfg: the ``model`` config section (class / channel overrides, options).
        info: the data set's classes, channels and image size.
        trust_code: False when ``spec`` was read from an artifact (no user code is imported then).
        task: the run's task; a denoiser (diffusion) is built without a class count.
    Returns:
        ``(model in train mode, its info)``.
    """
    sized = [("in_channels", info.in_channels, "channel")]
    if task == "classification":
        sized.insert(0, ("num_classes", info.num_classes, "classes"))
    elif mcfg.num_classes is not None:
        raise UserError(f"model.num_classes does not apply to task {task} (a denoiser has no classes); leave it out")
    for key, have, unit in sized:
        wanted = getattr(mcfg, key)
        if wanted is not None and wanted != have:
            raise UserError(
                f"model.{key} is {wanted} but {info.name} has {have} {unit}{'s' if have != 1 else ''}; "
                f"set model.{key}={have} or leave it out (it defaults to the data's)"
            )
    for key in ("num_classes", "in_channels"):
        if key in (mcfg.options or {}):  # would bypass the check against the data above
            raise UserError(f"model.options.{key} is not an option: set model.{key} (it defaults to the data's)")
    built = resolve_model(
        spec,
        num_classes=(mcfg.num_classes or info.num_classes) if task == "classification" else None,
        in_channels=mcfg.in_channels or info.in_channels,
        options=mcfg.options,
        trust_code=trust_code,
    )
    return Built(built.module.train(), built.info)


def checkpoint_file(path: Union[str, Path]) -> Path:
    """The checkpoint a path names: a file as is, a run directory's ``best.pt`` (else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise UserError(f"no best.pt or last.pt in run directory {path}")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


def load_teacher(cfg: Config, info: DataInfo, trust_code: bool = False) -> Optional[nn.Module]:
    """The frozen teacher a distillation run needs, with its trained weights, or None.

    ``model.teacher_checkpoint`` may be a checkpoint file, a run directory (its best checkpoint)
    or an export directory. The teacher is rebuilt with the model options of the run that
    trained it (recorded in its checkpoint); ``model.teacher`` may then be left out, and the
    recorded spec is then trusted only if it names no user code. A method run without a
    checkpoint is refused: a random teacher teaches nothing.
    """
    if cfg.distill.method is None:
        return None
    ref = cfg.model.teacher_checkpoint
    if ref is None:
        raise UserError(
            f"distill.method '{cfg.distill.method}' needs model.teacher_checkpoint "
            "(a trained teacher's run directory, checkpoint or export)"
        )
    if is_export(ref):  # checked against the data like any other model
        classes = info.num_classes if cfg.task == "classification" else None  # a denoiser has none
        return resolve_model(str(ref), num_classes=classes, in_channels=info.in_channels).module
    path = checkpoint_file(ref)
    state = shipped_state(load_checkpoint(path))
    spec, mcfg, trusted = cfg.model.teacher, cfg.model, True
    trained_by = (state.get("config") or {}).get("model") or {}
    if trained_by:
        trusted = spec is not None or trust_code  # a spec the user wrote, not one read from the checkpoint
        spec = spec if spec is not None else trained_by.get("student")
        mcfg = ModelConfig(
            num_classes=trained_by.get("num_classes"),
            in_channels=trained_by.get("in_channels"),
            options=dict(trained_by.get("options") or {}),
        )
    if spec is None:
        raise UserError(f"distill.method '{cfg.distill.method}' needs model.teacher (the teacher's model spec)")
    return model_from_state(spec, mcfg, info, state, path, what="teacher", trust_code=trusted, task=cfg.task).module


def shipped_state(state: dict) -> dict:
    """A checkpoint whose ``model`` is the network that ships: the EMA weights when the run kept an
    EMA (diffusion), else the training weights."""
    if "ema" in state:
        return {**state, "model": ema_weights(state["ema"])}
    return state


def model_from_state(
    spec: Union[str, dict], mcfg: ModelConfig, info: DataInfo, state: dict, source, what: str = "model",
    trust_code: bool = True, task: str = "classification",
) -> Built:
    """Rebuild a trained network from its spec, the method surgery and the weights of a checkpoint.

    Raises:
        UserError: ``spec`` builds another architecture than the one the checkpoint records
            (other strides load the same weight shapes, so the weights alone cannot tell).
    """
    model, model_info = build_model(spec, mcfg, info, trust_code=trust_code, task=task)
    recorded = state.get("arch")
    if recorded is not None and model_info.spec is not None and model_info.spec != recorded:
        raise UserError(
            f"{what} {_spec_text(spec)} is not the network {source} was trained as ({_spec_text(recorded)}); "
            f"give that spec or leave the {what}'s spec out"
        )
    surgery = state.get("surgery") or {}
    if not surgery and state.get("red_layout"):  # checkpoints of redistill 0.1 before `surgery`
        surgery = {"red": state["red_layout"]}
    # A model built from an export already carries its blocks; the record then describes them.
    if surgery and surgery_of(model) != surgery:
        redo_surgery(model, surgery, source=source)
    load_weights(model, state["model"], source, what=what)
    return Built(model.eval(), model_info)


def _spec_text(spec) -> str:
    if isinstance(spec, dict) and "strides" in spec and spec.get("source") != "torchvision":
        return spec_string(spec)
    return str(spec)


def pairs_to_data(method) -> Optional[list[dict[str, Any]]]:
    """The pairs a method resolved (``auto`` included), as plain dicts; None if it has none."""
    pairs = getattr(method, "pairs", None)
    if not isinstance(pairs, (list, tuple)) or not pairs or not all(hasattr(p, "to_dict") for p in pairs):
        return None
    return [p.to_dict() for p in pairs]


def build_distiller(cfg: Config, info: DataInfo, task: Task, teacher: Optional[nn.Module] = None) -> tuple[Distiller, Any]:
    """The student (after the method's setup / surgery) wrapped in a Distiller.

    Args:
        cfg: the run config.
        info: data set description (classes, channels, image size).
        task: the run's task; its loss is the Distiller's task term (see :mod:`redistill.train.task`).
        teacher: the frozen teacher (see :func:`load_teacher`); None without distillation.
    Returns:
        ``(distiller, the student's ModelInfo)``; the distiller's ``method`` holds the resolved pairs.
    """
    student, student_info = build_model(cfg.model.student, cfg.model, info, task=cfg.task)
    method = None
    if cfg.distill.method is not None:
        # Shapes are all setup needs (drawn from a private generator: the training RNG is untouched).
        example = task.example_input(info.in_channels, info.image_size)
        options = dict(cfg.distill.options)
        if cfg.distill.pairs is not None:
            if "pairs" in options:
                raise UserError("pairs are set twice: in distill.pairs and in distill.options.pairs; keep one")
            options["pairs"] = cfg.distill.pairs
        method = create_method(cfg.distill.method, **options)
        student.eval()  # setup may run the student; its BN statistics must not learn from noise
        student = method.setup(student, teacher, example).train()
    distiller = Distiller(
        student, teacher, method, task_loss=task.loss, task_term=task.term, task_weight=cfg.distill.task_weight
    )
    return distiller, student_info
