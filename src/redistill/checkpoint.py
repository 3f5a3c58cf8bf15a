"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain Python values (``torch.save``), loaded with
``torch.load(weights_only=True)``. Random number generator states (torch, CUDA, NumPy, Python) are
stored as tensors / lists so that safe loading accepts them and ``--resume`` continues exactly.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn as nn

from redistill.errors import UserError

FORMAT = "redistill-checkpoint"
VERSION = 1


def save_checkpoint(path: Union[str, Path], state: dict) -> None:
    """Write ``state`` to ``path`` atomically: a reader sees the old file or the new one, never half.

    Args:
        path: destination file.
        state: tensors and plain Python values only.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
        with open(tmp, "rb") as f:  # the data must be on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (full disk) leaves the old file and no debris
        raise


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        UserError: missing file, a file that is not a readable checkpoint, or one from another tool.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated / corrupt / unsafe pickle: all mean "not our checkpoint"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {path} is corrupt or not a redistill checkpoint: {first}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a redistill checkpoint (no '{FORMAT}' marker)")
    if state.get("version") != VERSION:
        raise UserError(f"checkpoint {path} has format version {state.get('version')}, this redistill reads {VERSION}")
    return state


def load_weights(module: nn.Module, state_dict: dict, source: Union[str, Path], what: str = "model") -> None:
    """``module.load_state_dict(state_dict)`` with a one-line error naming the offending keys.

    Raises:
        UserError: missing, unexpected or wrongly shaped keys (the architecture does not match).
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch (file vs model) {_few(shapes)}")
    if problems:
        raise UserError(f"{what} weights in {source} do not fit the {what}: {'; '.join(problems)}")
    module.load_state_dict(state_dict)


def _few(items: list[str], n: int = 4) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def rng_state() -> dict[str, Any]:
    """Every random number generator state the training loop touches, in a safe-loadable form."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
