"""Typed run configuration: dataclasses loaded from YAML, with dotted ``key=value`` overrides.

A config names its ``task`` (classification | diffusion) and has seven sections; every field has a
default, so a YAML file only names what differs. ``configs/example.yaml`` documents each field with
a comment.

- ``model``: ``student`` (the network this run trains: a teacher run names the teacher here),
  ``teacher`` and ``teacher_checkpoint`` (needed only with distillation), ``num_classes`` /
  ``in_channels`` (default: the dataset's), ``options`` (extra builder arguments, e.g. dropout).
- ``data``: ``name`` (fashion_mnist | cifar10 | stl10 | imagefolder | synthetic), ``root``, ``image_size``,
  ``canvas`` (a translated variant: each image at a fixed random place on a blank square of this side),
  ``subset`` (number of training images), ``val_fraction`` / ``val_subset`` / ``test_subset``,
  ``split_seed``, ``batch_size``, ``eval_batch_size``, ``workers``, ``preload`` (hold the data on
  the training device and augment whole batches there), ``augment`` (crop, flip, RandAugment,
  CutMix / MixUp), ``synthetic`` (sizes of the synthetic data set), ``pad`` (a blank border around
  each image), ``normalize`` (dataset mean / std, or symmetric: pixels scaled to [-1, 1]).
- ``optim``: ``name`` (sgd | adam | adamw), ``lr``, ``momentum``, ``nesterov``, ``weight_decay``,
  ``betas``, ``label_smoothing``, ``grad_clip``.
- ``schedule``: ``name`` (cosine | multistep | constant), ``warmup_epochs`` (linear warm-up),
  ``milestones`` and ``gamma`` (multistep), ``min_lr`` (cosine floor).
- ``distill``: ``method`` (a registered method name or null for plain training), ``options``,
  ``pairs`` (a list of pair dicts, ``auto`` or null), ``task_weight`` (CE weight; null = method's).
- ``diffusion`` (``task: diffusion`` only): the DDPM noise schedule (``timesteps``, ``beta_start``,
  ``beta_end``, ``beta_schedule``, ``variance``, ``clip_sample``), ``ema_decay`` and ``eval_seed``
  (the fixed timesteps and noise of the validation loss).
- ``run``: ``epochs``, ``seed``, ``deterministic``, ``device`` (auto | cpu | cuda | cuda:N), ``amp`` (used
  on CUDA only), ``channels_last`` (the models' and batches' memory format, on every device; on the CPU NCHW where a
  oneDNN bug forbids it, see ``trainer.channels_last_cpu_hazard``), ``log_every``,
  ``progress``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from redistill.errors import UserError, did_you_mean
from redistill.util import dump_yaml, load_yaml, read_yaml


@dataclass
class ModelConfig:
    student: Union[str, dict, None] = None
    teacher: Union[str, dict, None] = None
    teacher_checkpoint: Union[str, None] = None
    num_classes: Union[int, None] = None
    in_channels: Union[int, None] = None
    options: dict = field(default_factory=dict)


@dataclass
class AugmentConfig:
    crop: str = "pad"  # pad | resized | none
    padding: int = 4
    flip: bool = True
    randaugment_ops: int = 0  # 0 = off; the ImageNet recipe uses 2 ops of magnitude 10
    randaugment_magnitude: int = 9
    cutmix_alpha: float = 0.0  # 0 = off
    mixup_alpha: float = 0.0


@dataclass
class SyntheticConfig:
    train_size: int = 256
    test_size: int = 64
    num_classes: int = 4
    channels: int = 1
    image_size: int = 16


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    root: Union[str, None] = None
    image_size: Union[int, None] = None
    canvas: Union[int, None] = None
    subset: Union[int, None] = None
    val_fraction: float = 0.1
    val_subset: Union[int, None] = None
    test_subset: Union[int, None] = None
    split_seed: int = 0
    batch_size: int = 128
    eval_batch_size: Union[int, None] = None
    workers: int = 2
    preload: bool = False
    pad: int = 0
    normalize: str = "dataset"  # dataset | symmetric
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    label_smoothing: float = 0.0
    grad_clip: Union[float, None] = None


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr: float = 0.0


@dataclass
class DistillConfig:
    method: Union[str, None] = None
    options: dict = field(default_factory=dict)
    pairs: Union[list, str, None] = None
    task_weight: Union[float, None] = None


@dataclass
class DiffusionConfig:
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    variance: str = "fixed_large"
    clip_sample: bool = True
    ema_decay: float = 0.9999
    eval_seed: int = 0


@dataclass
class RunConfig:
    epochs: int = 10
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    log_every: int = 50
    progress: bool = True


@dataclass
class Config:
    task: str = "classification"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        """The config as plain YAML-able data."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict(), sort_keys=False)


_CHOICES = {
    "task": ("classification", "diffusion"),
    "data.normalize": ("dataset", "symmetric"),
    "diffusion.beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
    "diffusion.variance": ("fixed_large", "fixed_small"),
    "data.name": ("fashion_mnist", "cifar10", "stl10", "imagefolder", "synthetic"),
    "data.augment.crop": ("pad", "resized", "none"),
    "optim.name": ("sgd", "adam", "adamw"),
    "schedule.name": ("cosine", "multistep", "constant"),
}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {dict: "mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widened to floats)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key)
            except UserError:
                continue
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, key)
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp) or (Any,)
            return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    elif tp is Any:
        return value
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    shown = f"{type(value).__name__} {value!r}" if value is not None else "null"
    raise UserError(f"config key '{key}' expects {_type_name(tp)}, got {shown}")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in names:
            full = [f"{prefix}.{n}" if prefix else n for n in names]
            raise UserError(f"unknown config key '{key}'{did_you_mean(key, full)}")
        kwargs[name] = _convert(value, hints[name], key)
        if key in _CHOICES and kwargs[name] not in _CHOICES[key]:
            raise UserError(
                f"config key '{key}' must be one of {', '.join(_CHOICES[key])}, got '{kwargs[name]}'"
                f"{did_you_mean(str(kwargs[name]), _CHOICES[key])}"
            )
    return cls(**kwargs)


def _set_dotted(data: dict, override: str) -> None:
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"override '{override}' is not key=value (e.g. optim.lr=0.05)")
    value = load_yaml(raw, f"override '{override}': the value") if raw.strip() else None
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            section = ".".join(parts[: i + 1])
            raise UserError(f"override '{override}': '{section}' is not a section")
        node = child
    node[parts[-1]] = value


# Keys that change how a run executes or is shown, not what it computes: a run may be resumed
# ("can I continue it?") or reused ("is it already done?") when only these differ.
EXECUTION_KEYS = frozenset({"run.device", "run.progress", "run.log_every", "data.workers", "data.eval_batch_size"})


def flatten_config(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; free-form ``options`` mappings stay whole."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "options":
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_differences(wanted: dict, found: dict) -> list[str]:
    """Keys whose values differ between two config dicts, execution-only keys ignored.

    The one test behind both "can this run be resumed?" (trainer) and "can this finished run
    be reused?" (demo, benchmarks), so the two never answer differently.

    Args:
        wanted: the resolved config about to be trained.
        found: the resolved config stored in an existing run directory.
    Returns:
        ``"key: found -> wanted"`` strings, sorted by key; empty when the two agree.
    """
    a, b = flatten_config(wanted), flatten_config(found)
    return [
        f"{key}: {b.get(key)!r} -> {a.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if key not in EXECUTION_KEYS and a.get(key) != b.get(key)
    ]


def _defaults_dict() -> dict:
    return Config().to_dict()


def _merge(base: dict, extra: dict) -> dict:
    """Fill ``extra`` into ``base`` for sections only (so unknown keys still reach validation)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "options":
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def load_config(source: Union[str, Path, dict, Config], overrides: list[str] = []) -> Config:  # noqa: B006
    """Load a run config from a YAML file or a dict and apply dotted overrides.

    Args:
        source: path to a YAML file, a mapping with the config sections, or a Config.
        overrides: ``key=value`` strings (``optim.lr=0.05``, ``distill.method=null``); values are
            parsed as YAML, so numbers, ``null`` and ``[1, 2]`` lists work.
    Returns:
        The validated :class:`Config`.
    Raises:
        UserError: missing or unreadable file, bad YAML, unknown key (with the closest names), wrong
            type (with the expected type), a value outside the allowed choices or out of range
            (:data:`RANGES`).
    """
    if isinstance(source, Config):
        data = source.to_dict()
    elif isinstance(source, dict):
        try:  # a deep copy that also rejects non-YAML values (and keeps shared values shared)
            text = dump_yaml(source)
        except yaml.YAMLError as err:
            raise UserError(f"config mapping holds a value YAML cannot write: {' '.join(str(err).split())}") from None
        data = load_yaml(text, "config mapping")
    else:
        data = read_yaml(source, "config file")
        data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"config must be a mapping of sections, got {type(data).__name__}")
    for override in overrides:
        _set_dotted(data, override)
    cfg = _build(Config, _merge(_defaults_dict(), data), "")
    _check_values(cfg)
    return cfg


# ---------------------------------------------------------------- value ranges

Check = tuple[Callable[[Any], bool], str]  # (is the value valid?, the valid range in words)


def _above(low: float) -> Check:
    return (lambda v: math.isfinite(v) and v > low), f"> {low:g}"


def _at_least(low: float) -> Check:
    return (lambda v: math.isfinite(v) and v >= low), f">= {low:g}"


def _between(low: float, high: float, high_open: bool = True) -> Check:
    if high_open:
        return (lambda v: low <= v < high), f"in [{low:g}, {high:g})"
    return (lambda v: low <= v <= high), f"in [{low:g}, {high:g}]"


_POSITIVE_INCREASING: Check = (
    lambda v: all(m > 0 for m in v) and all(a < b for a, b in zip(v, v[1:])),
    "positive and increasing (epochs, e.g. [30, 60])",
)
_BETAS: Check = (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two values, each in [0, 1)")

# Every field with a range, checked at load time (after the types): a negative grad_clip would turn
# training into gradient ascent, a negative subset would silently take all but the last images,
# others reach torch as tracebacks. Null passes where the field may be null; the message says so.
RANGES: dict[str, Check] = {
    "model.num_classes": _at_least(1),
    "model.in_channels": _at_least(1),
    "data.image_size": _at_least(1),
    "data.canvas": _at_least(1),
    "data.subset": _at_least(1),
    "data.val_fraction": _between(0, 1),
    "data.val_subset": _at_least(1),
    "data.test_subset": _at_least(1),
    "data.split_seed": _at_least(0),
    "data.batch_size": _at_least(1),
    "data.eval_batch_size": _at_least(1),
    "data.workers": _at_least(0),
    "data.pad": _at_least(0),
    "data.augment.padding": _at_least(0),
    "data.augment.randaugment_ops": _at_least(0),
    # torchvision's RandAugment has 31 magnitude bins (0..30); 31 fails inside a worker.
    "data.augment.randaugment_magnitude": _between(0, 30, high_open=False),
    "data.augment.cutmix_alpha": _at_least(0),
    "data.augment.mixup_alpha": _at_least(0),
    "data.synthetic.train_size": _at_least(1),
    "data.synthetic.test_size": _at_least(1),
    "data.synthetic.num_classes": _at_least(1),
    "data.synthetic.channels": _at_least(1),
    "data.synthetic.image_size": _at_least(1),
    "optim.lr": _above(0),
    "optim.momentum": _between(0, 1),
    "optim.weight_decay": _at_least(0),
    "optim.betas": _BETAS,
    "optim.label_smoothing": _between(0, 1),
    "optim.grad_clip": _above(0),
    "schedule.warmup_epochs": _at_least(0),
    "schedule.milestones": _POSITIVE_INCREASING,
    "schedule.gamma": _above(0),
    "schedule.min_lr": _at_least(0),
    "distill.task_weight": _at_least(0),
    "diffusion.timesteps": _at_least(1),
    "diffusion.beta_start": _between(0, 1),
    "diffusion.beta_end": _between(0, 1),
    "diffusion.ema_decay": _between(0, 1),
    "diffusion.eval_seed": _at_least(0),
    "run.epochs": _at_least(1),
    "run.seed": _at_least(0),
    "run.log_every": _at_least(1),
}


def _field(cfg: Config, key: str) -> tuple[Any, bool]:
    """The value at dotted ``key`` and whether the field may be null."""
    *sections, name = key.split(".")
    owner = cfg
    for section in sections:
        owner = getattr(owner, section)
    hint = typing.get_type_hints(type(owner))[name]
    return getattr(owner, name), type(None) in typing.get_args(hint)


def _check_ranges(cfg: Config) -> None:
    for key, (ok, valid) in RANGES.items():
        value, nullable = _field(cfg, key)
        if value is not None and not ok(value):
            raise UserError(f"config key '{key}' must be {valid}{' (or null)' if nullable else ''}, got {value}")


def _check_values(cfg: Config) -> None:
    if cfg.model.student is None:
        raise UserError("config key 'model.student' is required: the network this run trains")
    _check_ranges(cfg)
    if cfg.distill.method is not None and cfg.model.teacher is None and cfg.model.teacher_checkpoint is None:
        raise UserError(f"distill.method '{cfg.distill.method}' needs model.teacher and model.teacher_checkpoint")
    if isinstance(cfg.distill.pairs, str) and cfg.distill.pairs != "auto":
        raise UserError(f"config key 'distill.pairs' must be a list of pairs, 'auto' or null, got '{cfg.distill.pairs}'")
    if cfg.task == "diffusion":
        _check_diffusion(cfg)
    if cfg.schedule.name == "multistep" and not cfg.schedule.milestones:
        raise UserError("schedule.name multistep needs schedule.milestones (epochs), e.g. [30, 60]")


def _check_diffusion(cfg: Config) -> None:
    d = cfg.diffusion
    if not d.beta_start < d.beta_end:
        raise UserError(f"diffusion.beta_start ({d.beta_start:g}) must be below diffusion.beta_end ({d.beta_end:g})")
    if cfg.data.normalize != "symmetric":
        raise UserError("task diffusion denoises images in [-1, 1]: set data.normalize=symmetric")
    if cfg.data.augment.cutmix_alpha > 0 or cfg.data.augment.mixup_alpha > 0:
        raise UserError("task diffusion has no labels to mix: set data.augment.cutmix_alpha=0 and mixup_alpha=0")
