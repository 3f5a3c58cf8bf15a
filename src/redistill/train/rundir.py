"""The run directory as one crash-consistent unit: marker, lock, config, metrics, clean-up.

A run directory holds ``.redistill-run`` (written first: only a directory with this marker is a
run directory, so ``--overwrite`` never empties anything else), ``.lock`` (held while a process
trains into it), ``config.yaml`` (the resolved config, written atomically), ``metrics.jsonl``
(one line per epoch), ``tb/``, ``best.pt`` / ``last.pt`` and, at the end, ``summary.json``.

Write order keeps what ``last.pt`` records on disk: ``best.pt`` is written before ``last.pt``, so a
kill between the two leaves the previous ``last.pt`` (its epoch is redone on resume, exactly). A
resumed run trusts the config stored in ``last.pt``, not ``config.yaml``.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from redistill.checkpoint import load_checkpoint
from redistill.errors import UserError
from redistill.train.config import Config, config_differences
from redistill.util import read_yaml

MARKER, LOCK_FILE, CONFIG, METRICS = ".redistill-run", ".lock", "config.yaml", "metrics.jsonl"
_KEEP = {MARKER, LOCK_FILE}
_HELD: set[int] = set()  # lock descriptors of this process, closed in forked children


def _close_inherited_locks() -> None:
    # A forked data worker shares the lock's open file description; if it kept the descriptor,
    # the lock would outlive a SIGKILL of the trainer until every worker died.
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (creating it) for as long as the block runs.

    The lock is an ``flock`` on ``run_dir/.lock``: the kernel releases it when the process ends,
    however it ends, and forked children do not keep it. Where ``fcntl`` does not exist (not
    POSIX) no lock is taken.

    Raises:
        UserError: another process holds the lock (it is training into this directory).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    _HELD.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"run directory {run_dir} is in use by another training process; wait for it to end "
                "(or stop it) or train into another directory"
            ) from None
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # closing the descriptor releases the lock


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` carries the marker this project writes into every run directory."""
    return (Path(path) / MARKER).is_file()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old content or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove the ``.<name>.tmp`` files a killed writer left behind; returns them."""
    stale = [p for p in run_dir.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink()
    return stale


def _stored_config(run_dir: Path) -> Optional[dict]:
    """The config a resume must match: the one in ``last.pt`` (written with the weights), else
    ``config.yaml`` when no epoch finished."""
    last = run_dir / "last.pt"
    if last.is_file():
        return load_checkpoint(last).get("config") or {}
    try:
        data = read_yaml(run_dir / CONFIG, "run config") if (run_dir / CONFIG).is_file() else None
    except UserError:  # torn by a kill: without last.pt there is nothing it must agree with
        data = None
    return data if isinstance(data, dict) and data else None


def prepare_run_dir(run_dir: Path, cfg: Config, resume: bool, overwrite: bool) -> None:
    """Make ``run_dir`` ready for this run (the caller holds its lock).

    Raises:
        UserError: a used directory without ``--resume`` / ``--overwrite``; ``--overwrite`` or
            ``--resume`` on a directory that is not a run directory (no marker); a resume whose
            config differs from the stored one (the keys are named).
    """
    entries = [p for p in run_dir.iterdir() if p.name not in _KEEP] if run_dir.exists() else []
    marked = is_run_dir(run_dir)
    if marked and entries and not any((run_dir / n).exists() for n in ("last.pt", "best.pt", "summary.json")):
        overwrite, resume = True, False  # a run that failed before its first checkpoint: nothing to keep
    if entries and not (resume or overwrite):
        raise UserError(f"run directory {run_dir} already exists: pass --resume to continue it or --overwrite to start over")
    if entries and not marked:
        raise UserError(
            f"{run_dir} is not a redistill run directory (no {MARKER} marker); refusing to "
            f"{'delete' if overwrite else 'resume'} it: choose another --out"
        )
    if entries and overwrite:
        for entry in entries:  # the marker and the lock stay: this process holds the lock
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / MARKER, json.dumps({"format": "redistill-run", "version": 1}) + "\n")
    clean_leftovers(run_dir)
    if entries and resume:
        old = _stored_config(run_dir)
        if old is not None:
            changed = [d.split(":", 1)[0] for d in config_differences(cfg.to_dict(), old)]
            if changed:
                raise UserError(
                    f"cannot resume {run_dir}: the config differs in {', '.join(changed[:5])}; "
                    "use the run's config.yaml or --overwrite"
                )
    write_atomic(run_dir / CONFIG, cfg.to_yaml())


@contextmanager
def writing(path: Path, last: Path) -> Iterator[None]:
    """Turn an OSError while writing run files (a full disk, lost permissions) into one line that
    names the file and says what is still safe."""
    try:
        yield
    except OSError as err:
        kept = f"the last good checkpoint {last} is intact" if last.is_file() else "no checkpoint was written yet"
        raise UserError(
            f"cannot write {err.filename or path}: {err.strerror or err}; {kept}; free space or fix "
            "permissions, then --resume"
        ) from err


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a torn line (a kill mid-write) is dropped with a warning."""
    records = []
    if not path.is_file():
        return records
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}: line {number} is torn (an interrupted write); dropped", stacklevel=2)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_metrics(path: Path, record: Optional[dict] = None, keep_up_to: Optional[int] = None) -> None:
    """Append ``record``; with ``keep_up_to``, first rewrite the file keeping the epochs up to it
    (a resumed run drops the lines of epochs it is about to redo, and any torn line)."""
    if keep_up_to is not None:
        kept = [r for r in read_metrics(path) if r.get("epoch", 0) <= keep_up_to]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    if record is not None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
