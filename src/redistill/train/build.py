"""Build what a run trains from its config: the networks, the teacher's weights, the Distiller."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from redistill.errors import UserError
from redistill.train.checkpoint import load_checkpoint, load_weights
from redistill.train.config import Config, ModelConfig
from redistill.train.data import DataInfo


def build_model(spec: Union[str, dict], mcfg: ModelConfig, info: DataInfo) -> nn.Module:
    """Build one network from a model spec, sized for the data set.

    Project specs (``cifar_resnet20:strides=4,1,1,1`` or a dict) get ``num_classes``,
    ``in_channels`` and ``model.options``; torchvision names get ``num_classes``;
    ``module:factory`` references are built as they are.

    Args:
        spec: model spec string or dict.
        mcfg: the ``model`` config section (class / channel overrides, options).
        info: the data set's classes, channels and image size.
    Returns:
        The model (in train mode).
    """
    from redistill.modelref import resolve_model

    num_classes = mcfg.num_classes or info.num_classes
    in_channels = mcfg.in_channels or info.in_channels
    try:
        from redistill.models import create_model, is_model_spec
    except ImportError:  # the model registry is optional for torchvision / factory models
        create_model = is_model_spec = None
    if isinstance(spec, dict):
        if create_model is None:
            raise UserError("model specs given as mappings need redistill.models")
        spec = dict(spec)
        spec.setdefault("num_classes", num_classes)
        if spec.get("source") != "torchvision":
            spec.setdefault("in_channels", in_channels)
        model = create_model({**spec, **mcfg.options})
    elif is_model_spec is not None and is_model_spec(spec):
        model = create_model(spec, num_classes=num_classes, in_channels=in_channels, **mcfg.options)
    elif ":" in spec and not spec.split(":", 1)[1].startswith("strides="):
        model = resolve_model(spec)
    else:
        if in_channels != 3:
            raise UserError(
                f"torchvision model '{spec}' takes 3-channel images but {info.name} has {in_channels}; "
                "use a redistill model spec (e.g. cifar_resnet20) or a module:factory reference"
            )
        model = resolve_model(spec, num_classes=num_classes, **mcfg.options)
    return model.train()


def spec_of(model: nn.Module, spec: Union[str, dict]) -> Union[str, dict]:
    """The YAML-able spec that rebuilds ``model`` (the registry's full spec when it has one)."""
    try:
        from redistill.models import model_spec

        return model_spec(model)
    except (ImportError, UserError):
        return spec


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


def load_teacher(cfg: Config, info: DataInfo) -> Optional[nn.Module]:
    """The frozen teacher a distillation run needs, with its trained weights, or None.

    ``model.teacher_checkpoint`` may be a checkpoint file, a run directory (its best checkpoint)
    or an export directory. The teacher is rebuilt with the model options of the run that
    trained it (recorded in its checkpoint); ``model.teacher`` may then be left out. A method
    run without a checkpoint is refused: a random teacher teaches nothing.
    """
    if cfg.distill.method is None:
        return None
    ref = cfg.model.teacher_checkpoint
    if ref is None:
        raise UserError(
            f"distill.method '{cfg.distill.method}' needs model.teacher_checkpoint "
            "(a trained teacher's run directory, checkpoint or export)"
        )
    if Path(ref).is_dir() and (Path(ref) / "spec.yaml").is_file():
        from redistill.train.export import load_exported

        return load_exported(ref)
    path = checkpoint_file(ref)
    state = load_checkpoint(path)
    spec, mcfg = cfg.model.teacher, cfg.model
    trained_by = (state.get("config") or {}).get("model") or {}
    if trained_by:
        trained_spec = trained_by.get("student")
        mcfg = ModelConfig(
            num_classes=trained_by.get("num_classes"),
            in_channels=trained_by.get("in_channels"),
            options=dict(trained_by.get("options") or {}),
        )
        if spec is None:
            spec = trained_spec
        elif trained_spec is not None and spec != trained_spec:
            # Strides change no weight shape, so another spec's teacher could load these weights silently.
            given, trained = (spec_of(build_model(s, mcfg, info), s) for s in (spec, trained_spec))
            if given != trained:
                raise UserError(
                    f"model.teacher {spec} is not the network the checkpoint {path} was trained as "
                    f"({trained_spec}); set model.teacher to that spec or leave it out"
                )
    if spec is None:
        raise UserError(f"distill.method '{cfg.distill.method}' needs model.teacher (the teacher's model spec)")
    return model_from_state(spec, mcfg, info, state, path, what="teacher")


def red_layout_of(model: nn.Module) -> list[dict]:
    """The RED surgery in ``model`` as plain data (empty for a model without RED blocks)."""
    from redistill.distill.red import red_layout

    return red_layout(model)


def model_from_state(
    spec: Union[str, dict], mcfg: ModelConfig, info: DataInfo, state: dict, source, what: str = "model"
) -> nn.Module:
    """Rebuild a trained network from its spec, the RED layout and the weights of a checkpoint."""
    model = build_model(spec, mcfg, info)
    layout = state.get("red_layout") or []
    if layout:
        from redistill.distill.red import apply_red_layout

        apply_red_layout(model, layout)
    load_weights(model, state["model"], source, what=what)
    return model.eval()


def pairs_to_data(method) -> Optional[list[dict[str, Any]]]:
    """The pairs a method resolved (``auto`` included), as plain dicts; None if it has none."""
    pairs = getattr(method, "pairs", None)
    if not isinstance(pairs, (list, tuple)) or not pairs or not all(hasattr(p, "to_dict") for p in pairs):
        return None
    return [p.to_dict() for p in pairs]


def build_distiller(cfg: Config, info: DataInfo, teacher: Optional[nn.Module] = None):
    """The student (after the method's setup / surgery) wrapped in a Distiller.

    Args:
        cfg: the run config.
        info: data set description (classes, channels, image size).
        teacher: the frozen teacher (see :func:`load_teacher`); None without distillation.
    Returns:
        The Distiller (its ``method`` holds the resolved pairs, if any).
    """
    from redistill.distill.distiller import Distiller

    student = build_model(cfg.model.student, cfg.model, info)
    method = None
    if cfg.distill.method is not None:
        from redistill.distill.base import create_method

        # Shapes are all setup needs; a private generator leaves the training RNG untouched.
        gen = torch.Generator().manual_seed(0)
        example = torch.randn(2, info.in_channels, info.image_size, info.image_size, generator=gen)
        options = dict(cfg.distill.options)
        if cfg.distill.pairs is not None:
            if "pairs" in options:
                raise UserError("pairs are set twice: in distill.pairs and in distill.options.pairs; keep one")
            options["pairs"] = cfg.distill.pairs
        method = create_method(cfg.distill.method, **options)
        student.eval()  # setup may run the student; its BN statistics must not learn from noise
        student = method.setup(student, teacher, example).train()
    return Distiller(
        student, teacher, method, task_weight=cfg.distill.task_weight, label_smoothing=cfg.optim.label_smoothing
    )
