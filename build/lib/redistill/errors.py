"""User-facing errors: one clear line, exit code 2 from the CLI."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user (config, name, shape, path, checkpoint).

    The CLI prints the message on one line and exits with code 2; the message must
    name the problem and what would fix it.
    """


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` entries of ``choices`` that look most like ``name``."""
    choices = list(choices)
    found = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not found:
        lowered = name.lower()
        found = [c for c in choices if lowered in c.lower() or c.lower() in lowered][:n]
    return found


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean a, b?)' suffix, or '' when nothing is close."""
    found = closest(name, choices)
    return f" (did you mean {', '.join(found)}?)" if found else ""
