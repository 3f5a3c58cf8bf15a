"""Small helpers every layer shares: shape and size parsing, byte formatting, device choice.

This module sits at the bottom of the package (beside :mod:`redistill.errors`): it imports
nothing else of the package, so models, memory analysis, training and the CLI can all use it.
"""

from __future__ import annotations

import re

import torch

from redistill.errors import UserError

KIB = 1024
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


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
