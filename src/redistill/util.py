"""Small helpers every layer shares: shape and size parsing, byte formatting, device choice, YAML.

This module sits at the bottom of the package (beside :mod:`redistill.errors`): it imports
nothing else of the package, so models, memory analysis, training and the CLI can all use it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import yaml

from redistill.errors import UserError

KIB = 1024
# Bounds on what one YAML document may expand to. A config is a few hundred nodes; these leave
# room for long pair lists while refusing "billion laughs" documents (aliases of aliases) before
# anything is expanded.
YAML_MAX_ALIASES = 1_000
YAML_MAX_NODES = 100_000
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def model_inputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The positional inputs an example forward of ``model`` takes for the image batch ``x``.

    A model whose forward needs more than the image (a diffusion UNet: ``model(x, t)``) says so
    with a method ``example_extra_inputs(x) -> tuple of tensors``; every other model gets ``(x,)``.
    Memory analysis, FLOP counts and layer probes build their inputs here, so a shape is enough.
    """
    extra = getattr(model, "example_extra_inputs", None)
    return (x, *extra(x)) if callable(extra) else (x,)


def parse_shape(text: str | tuple | list, what: str = "--input") -> tuple[int, int, int, int]:
    """``"1x3x224x224"`` -> (1, 3, 224, 224); ``"3x28x28"`` -> (1, 3, 28, 28).

    Args:
        text: ``NxCxHxW`` or ``CxHxW`` (batch 1) with positive sizes, or a sequence of ints.
        what: the option or field named in the error.
    Returns:
        The four sizes (N, C, H, W).
    Raises:
        UserError: anything else (zeros, negatives, other ranks, stray characters).
    """
    if isinstance(text, (tuple, list)):
        sizes = list(text)
        ok = len(sizes) in (3, 4) and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)
    else:
        ok = bool(re.fullmatch(r"[1-9]\d*(x[1-9]\d*){2,3}", str(text).strip().lower()))
        sizes = [int(s) for s in str(text).strip().lower().split("x")] if ok else []
    if not ok:
        raise UserError(f"{what} '{text}' must be NxCxHxW or CxHxW with positive sizes, e.g. 1x3x224x224")
    return tuple(sizes) if len(sizes) == 4 else (1, *sizes)


def parse_bytes(text: str | int) -> int:
    """``800KiB`` -> 819200, ``1.5MB`` -> 1500000, ``4096`` -> 4096.

    Raises:
        UserError: malformed size.
    """
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise UserError(
            f"malformed size '{text}': give a number with an optional unit B, kB, MB, KiB, MiB, GiB, e.g. 800KiB"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def fmt_bytes(n: int | None, unit: str = "auto", suffix: bool = True) -> str:
    """Bytes in binary units: ``3920.0 KiB``, ``9.19 MiB``; ``-`` when unknown.

    Args:
        n: bytes, or None.
        unit: "auto" (KiB below 10 MiB, else MiB) or "KiB" (always KiB, one decimal).
        suffix: False drops the unit (table columns that name it in their header).
    """
    if n is None:
        return "-"
    if unit == "KiB" or (unit == "auto" and n < 10 * KIB * KIB):
        text, name = f"{n / KIB:.1f}", "KiB"
    elif unit == "auto":
        text, name = f"{n / KIB / KIB:.2f}", "MiB"
    else:
        raise ValueError(f"unit must be auto or KiB, got {unit!r}")
    return f"{text} {name}" if suffix else text


def pick_device(name: str, local_rank: int | None = None, what: str = "run.device") -> torch.device:
    """The torch device that ``name`` asks for, checked against what this machine has.

    Args:
        name: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        local_rank: under torchrun, ``cuda`` means this process's GPU.
        what: the option or field named in errors.
    Raises:
        UserError: an unknown name, or CUDA asked for where there is none (or not that index).
    """
    text = str(name).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise UserError(f"{what} must be auto, cpu, cuda or cuda:N, got '{name}'")
    if not torch.cuda.is_available():
        raise UserError(f"{what} is {name} but no CUDA device is available; use cpu")
    if match.group(1) is None:
        return torch.device("cuda", local_rank or 0)
    index = int(match.group(1))
    if index >= torch.cuda.device_count():
        raise UserError(f"{what} is {name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


# YAML 1.2 floats: PyYAML follows YAML 1.1, where a float needs a dot ("1e-3" and "1E+5" are
# strings), which turns the usual way of writing a learning rate into a type error.
_FLOAT_12 = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)
_FLOAT_TAG = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 floats (the float resolver replaced, not added to) and
    duplicate keys refused (PyYAML keeps the last one, so a repeated section silently drops the first)."""

    yaml_implicit_resolvers = {
        first: [(tag, _FLOAT_12 if tag == _FLOAT_TAG else regexp) for tag, regexp in resolvers]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key}'", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


for _first in "-+0123456789.":  # first characters a YAML 1.2 float may start with
    if not any(tag == _FLOAT_TAG for tag, _ in _Loader.yaml_implicit_resolvers.get(_first, [])):
        _Loader.yaml_implicit_resolvers.setdefault(_first, []).insert(0, (_FLOAT_TAG, _FLOAT_12))


class _Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that resolves as :class:`_Loader` does, so it quotes a string such as
    ``"1e-3"`` that the loader would otherwise read back as a float."""

    yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers


def dump_yaml(data: Any, **options: Any) -> str:
    """``yaml.safe_dump`` whose output :func:`load_yaml` reads back as the same data.

    Args:
        data: plain YAML-able data.
        **options: ``yaml.dump`` options (``sort_keys``, ``default_flow_style``, ...).
    Raises:
        yaml.YAMLError: a value YAML cannot represent.
    """
    return yaml.dump(data, Dumper=_Dumper, **options)


def _expanded_size(node: yaml.Node, what: str) -> int:
    """Nodes ``node`` stands for once every alias is expanded, counted without expanding.

    Raises:
        UserError: an alias that refers to a node containing it (a document with no end), or a
            total over ``YAML_MAX_NODES``.
    """
    sizes: dict[int, int] = {}
    aliases = 0

    def size(n: yaml.Node, open_: set[int]) -> int:
        nonlocal aliases
        key = id(n)
        if key in sizes:  # a node met again is an alias
            aliases += 1
            if aliases > YAML_MAX_ALIASES:
                raise UserError(f"{what}: more than {YAML_MAX_ALIASES} YAML aliases; write the values out")
            return sizes[key]
        if key in open_:
            raise UserError(f"{what}: a YAML alias refers to a node that contains it; the document has no end")
        total = 1
        if isinstance(n, (yaml.SequenceNode, yaml.MappingNode)):
            open_.add(key)
            children = n.value if isinstance(n, yaml.SequenceNode) else [c for kv in n.value for c in kv]
            for child in children:
                total += size(child, open_)
                if total > YAML_MAX_NODES:
                    raise UserError(
                        f"{what}: YAML aliases expand to more than {YAML_MAX_NODES:,} values; write the values out"
                    )
            open_.discard(key)
        sizes[key] = total
        return total

    return size(node, set())


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a PyYAML error (theirs span several lines, with a caret under the place)."""
    if isinstance(err, yaml.reader.ReaderError):
        return f"character #x{err.character:04x} at offset {err.position} is not allowed ({err.reason})"
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        context = f"{err.context}, " if err.context else ""
        return f"{context}{err.problem}{where}"
    return " ".join(str(err).split())


def load_yaml(text: str, what: str) -> Any:
    """Parse one YAML document safely: plain data only, YAML 1.2 floats, bounded alias expansion.

    The one loader for configs, overrides, spec files and run directories, so all of them take
    ``1e-3`` as a float and none of them can be made to expand to gigabytes.

    Args:
        text: the document.
        what: the file or override named in errors (``config runs/a/config.yaml``).
    Returns:
        The data (None for an empty document).
    Raises:
        UserError: invalid YAML, a tag for Python objects, too many aliases or values, or nesting
            too deep to parse; one line naming ``what``.
    """
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, what)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise UserError(f"{what} is not valid YAML: {_yaml_problem(err)}") from None
    except RecursionError:
        raise UserError(f"{what} is nested too deeply to be a config") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path, what: str) -> Any:
    """:func:`load_yaml` of a file, with a one-line error when it cannot be read or is not UTF-8.

    Args:
        path: the file.
        what: what the file is, named in errors (``config``, ``model spec file``).
    Raises:
        UserError: missing or unreadable file, bytes that are not UTF-8, or :func:`load_yaml`'s errors.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory, not a YAML file") from None
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{what} {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from None
    return load_yaml(text, f"{what} {path}")
