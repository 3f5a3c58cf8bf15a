"""Model registry: families with stride slots, spec parsing and the ``create_model`` factory.

A *spec* names a family and its stride slots. Accepted forms (all build the same model):

- ``resnet18``: the family with its default strides;
- ``resnext18-4-11221``: the authors' naming, ``<family>-<stem stride>-<one digit per later slot>``;
- ``resnet18:strides=8,1,1,2,2,1`` (command line; more ``:key=value`` options may follow);
- ``{"name": "resnet18", "strides": [8, 1, 1, 2, 2, 1], "num_classes": 10}`` (YAML / dict).
"""

from __future__ import annotations

import copy
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from redistill.errors import UserError, did_you_mean
from redistill.models.info import Built, ModelInfo

SPEC_FORMS = "'family', 'family-<stem>-<digits>' (e.g. resnext18-4-11221) or 'family:strides=8,1,1,2,2,1'"
# Options every family of a task accepts, besides its own.
COMMON_OPTIONS = {"num_classes": 1000, "in_channels": 3}
TASK_OPTIONS = {"classification": COMMON_OPTIONS, "diffusion": {"in_channels": 3}}

# (slots, default strides, drop order) of a family member, from its resolved options.
Layout = tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]


@dataclass(frozen=True)
class Family:
    """One registered model family.

    Attributes:
        name: registry name (``resnet18``).
        builder: ``builder(strides=[...], num_classes=..., in_channels=..., **options) -> nn.Module``.
        slots: stride-slot module names, stem first.
        default_strides: one stride per slot.
        drop_order: slots that ``derive_student`` sets from 2 to 1 first (the authors' choice).
        options: the family's own options and their defaults (besides the task's common ones).
        description: one line for ``redistill models``.
        task: "classification" (``model(x) -> logits``) or "diffusion" (``model(x, t) -> noise``).
        layout_fn: for families whose slot names depend on options (the UNet's depth), the
            layout of a member from its options; ``slots`` etc. are then those of the defaults.
    """

    name: str
    builder: Callable[..., nn.Module]
    slots: tuple[str, ...]
    default_strides: tuple[int, ...]
    drop_order: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    task: str = "classification"
    layout_fn: Callable[[Mapping[str, Any]], Layout] | None = None

    def all_options(self) -> dict[str, Any]:
        """Defaults of every option this family accepts (common ones included)."""
        return {**TASK_OPTIONS[self.task], **self.options}

    def layout(self, options: Mapping[str, Any]) -> Layout:
        """Slots, default strides and drop order of the member built with ``options``."""
        if self.layout_fn is None:
            return self.slots, self.default_strides, self.drop_order
        return self.layout_fn(options)


_FAMILIES: dict[str, Family] = {}


def register_model(
    name: str,
    *,
    slots: list[str] | tuple[str, ...],
    default_strides: list[int] | tuple[int, ...],
    drop_order: list[str] | tuple[str, ...],
    options: Mapping[str, Any] | None = None,
    description: str = "",
    task: str = "classification",
    layout: Callable[[Mapping[str, Any]], Layout] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a family builder under ``name``.

    Args:
        name: family name; must be new (duplicates raise ``ValueError``).
        slots: stride-slot module names, stem first.
        default_strides: one default stride per slot.
        drop_order: later slots ``derive_student`` sets to stride 1 first.
        options: the family's own options with their defaults.
        description: one line shown by ``redistill models``.
        task: what the model computes, see :class:`Family`.
        layout: slots/strides/drop order from the options, when they depend on them.
    Returns:
        The decorator (it returns the builder unchanged).
    """
    if task not in TASK_OPTIONS:
        raise ValueError(f"{name}: task must be one of {', '.join(TASK_OPTIONS)}, got {task!r}")
    if len(slots) != len(default_strides):
        raise ValueError(f"{name}: {len(slots)} slots but {len(default_strides)} default strides")
    if not set(drop_order) <= set(slots[1:]):
        raise ValueError(f"{name}: drop_order names slots that are not later slots: {drop_order}")

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FAMILIES:
            raise ValueError(f"model family '{name}' is already registered")
        _FAMILIES[name] = Family(
            name, builder, tuple(slots), tuple(default_strides), tuple(drop_order),
            dict(options or {}), description, task, layout,
        )
        return builder

    return wrap


def list_models() -> list[str]:
    """Registered family names, sorted."""
    return sorted(_FAMILIES)


def get_family(name: str) -> Family:
    """The registered family ``name``.

    Raises:
        UserError: unknown family, with the closest names and the accepted spec forms.
    """
    if name not in _FAMILIES:
        raise UserError(
            f"unknown model family '{name}'{did_you_mean(name, _FAMILIES)}; "
            f"give {SPEC_FORMS}; `redistill models` lists the families"
        )
    return _FAMILIES[name]


_AUTHORS = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)-(?P<stem>\d+)-(?P<digits>\d+)$")


def _family_name(text: str) -> str:
    """The family part of a string spec (before '-<stem>-' or ':')."""
    head = text.split(":", 1)[0]
    match = _AUTHORS.match(head)
    return match.group("name") if match else head


def is_model_spec(text: Any) -> bool:
    """Whether ``text`` names a family of this registry (cheap; never raises).

    A known family with malformed strides still counts, so that building it gives
    the precise error (slot names, lengths) rather than 'unknown model'.
    """
    try:
        return isinstance(text, str) and _family_name(text.strip()) in _FAMILIES
    except Exception:  # contract: never raise, whatever the input
        return False


def _parse_value(text: str) -> Any:
    if "," in text:
        return [_parse_value(t) for t in text.split(",") if t != ""]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_spec(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """Normalise a spec into ``{"name": ..., "strides": [...] | None, **options}``.

    Args:
        spec: any accepted form (see module docstring).
    Returns:
        A new dict; ``strides`` is None when the spec does not give them.
    Raises:
        UserError: malformed spec or unknown family.
    """
    if isinstance(spec, Mapping):
        out = dict(spec)
        if "name" not in out:
            raise UserError(f"model spec {dict(spec)} has no 'name'; give {SPEC_FORMS} as 'name'")
        inner = parse_spec(str(out.pop("name")))
        inner.update({k: v for k, v in out.items() if v is not None or k != "strides"})
        return inner
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"model spec must be a non-empty string or mapping, not {spec!r}; give {SPEC_FORMS}")
    head, *items = spec.strip().split(":")
    out: dict[str, Any] = {"strides": None}
    match = _AUTHORS.match(head)
    if match:
        out["name"] = match.group("name")
        out["strides"] = [int(match.group("stem"))] + [int(d) for d in match.group("digits")]
    elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", head):
        out["name"] = head
    else:
        close = did_you_mean(_family_name(head), _FAMILIES)
        raise UserError(f"malformed model spec '{spec}'{close}; give {SPEC_FORMS}")
    get_family(out["name"])
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(
                f"malformed option '{item}' in model spec '{spec}'; give key=value, e.g. strides=8,1,1,2,2,1"
            )
        out[key.strip()] = _parse_value(value.strip())
    return out


def _option_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def spec_string(spec: dict[str, Any]) -> str:
    """Command-line form of a project spec: ``resnet18:strides=8,1,1,2,2,1``, then every family
    option that differs from its default (``ddpm_unet:strides=2,2,2,1:ch=8``); the task's common
    options (``num_classes``, ``in_channels``) are left to the context, as on the command line.
    """
    text = f"{spec['name']}:strides={','.join(str(s) for s in spec['strides'])}"
    family = _FAMILIES.get(spec["name"])
    for key, default in (family.options.items() if family else ()):
        if key in spec and spec[key] != default and key not in TASK_OPTIONS[family.task]:
            text += f":{key}={_option_text(spec[key])}"
    return text


def check_strides(family: Family, strides: Any, slots: tuple[str, ...] | None = None) -> list[int]:
    """Validate a stride list for ``family`` (``slots``: the member's, default the family's).

    Raises:
        UserError: wrong length (naming the slots), a stem that is not a power of two,
            or a later slot other than 1 or 2.
    """
    slots = family.slots if slots is None else slots
    if isinstance(strides, int):
        strides = [strides]
    try:
        strides = list(strides)
    except TypeError:
        raise UserError(f"{family.name}: strides must be integers, got {strides!r}") from None
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in strides):
        raise UserError(f"{family.name}: strides must be integers, got {strides!r}")
    strides = [int(s) for s in strides]
    if len(strides) != len(slots):
        raise UserError(
            f"{family.name} has {len(slots)} stride slots ({', '.join(slots)}) "
            f"but {len(strides)} strides were given: {strides}"
        )
    stem = strides[0]
    if stem < 1 or stem & (stem - 1):
        raise UserError(f"{family.name}: stem stride ({slots[0]}) must be a power of two, got {stem}")
    for slot, s in zip(slots[1:], strides[1:]):
        if s not in (1, 2):
            raise UserError(f"{family.name}: slot {slot} takes stride 1 or 2 (only the stem takes 4/8), got {s}")
    return strides


def _check_option_type(family: str, key: str, value: Any, default: Any) -> None:
    """An option must have its default's type (an int where a float is expected is fine);
    counts are integers, whatever their default."""
    if key in ("num_classes", "in_channels"):
        ok = value is None and default is None or isinstance(value, numbers.Integral) and not isinstance(value, bool)
        want = "an integer"
    elif default is None:
        return
    elif isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, numbers.Integral):
        ok, want = isinstance(value, numbers.Integral) and not isinstance(value, bool), "an integer"
    elif isinstance(default, numbers.Real):
        ok, want = isinstance(value, numbers.Real) and not isinstance(value, bool), "a number"
    elif isinstance(default, (list, tuple)):
        # `attn=` (empty) in a spec string is the empty list
        ok = value == "" or isinstance(value, (list, tuple, numbers.Integral)) and not isinstance(value, bool)
        want = "a list"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "a string"
    else:
        return
    if not ok:
        raise UserError(f"{family}: option {key} must be {want}, got {value!r}")


def build_family(spec: str | Mapping[str, Any], **kwargs: Any) -> Built:
    """Build a model of this project's registry, with its record.

    Args:
        spec: a spec in any accepted form (see module docstring).
        **kwargs: options overriding the spec's (``num_classes``, ``in_channels``,
            ``strides``, family options such as ``width`` or ``dropout``).
    Returns:
        ``(module, info)``; ``info.spec`` rebuilds the architecture with every option spelled out.
    Raises:
        UserError: unknown family, malformed spec, bad strides or unknown options.
    """
    parsed = parse_spec(spec)
    parsed.update(kwargs)
    family = get_family(parsed.pop("name"))
    strides = parsed.pop("strides", None)
    accepted = family.all_options()
    unknown = [k for k in parsed if k not in accepted]
    if unknown:
        raise UserError(
            f"{family.name} has no option '{unknown[0]}'{did_you_mean(unknown[0], accepted)}; "
            f"its options are strides, {', '.join(accepted)}"
        )
    for key, value in parsed.items():
        _check_option_type(family.name, key, value, accepted[key])
    options = {**copy.deepcopy(accepted), **parsed}  # list defaults must not be shared with specs
    for key in ("width", "num_classes", "in_channels"):  # sizes every family reads the same way
        value = options.get(key)
        if key in options and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise UserError(f"{family.name}: option {key} must be > 0, got {value!r}")
    slots, default_strides, drop_order = family.layout(options)
    strides = check_strides(family, default_strides if strides is None else strides, slots)
    model = family.builder(strides=strides, **options)
    info = ModelInfo(
        source="redistill", name=family.name, spec={"name": family.name, "strides": list(strides), **options},
        slots=slots, strides=tuple(strides), drop_order=drop_order,
        num_classes=options.get("num_classes"), in_channels=options["in_channels"], task=family.task,
    )
    return Built(model, info)


def create_model(spec: str | Mapping[str, Any], **kwargs: Any) -> nn.Module:
    """Build a model of this project's registry (the module only; :func:`build_family` adds its record)."""
    return build_family(spec, **kwargs).module
