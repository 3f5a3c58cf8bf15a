"""Entry point of the ``redistill`` command.

Each command lives in its own module exposing ``add_parser(subparsers)`` (which sets
``func`` on its parser) and a plain Python function doing the work, so every command is
also callable from Python. Errors the user can fix raise :class:`UserError`: printed on
one line, exit code 2, traceback only with ``--debug``. What else goes wrong while a command
builds or runs (a file that cannot be written, memory that cannot be had, a model that torch
refuses to run) is reported the same way, naming the command and the cause. Warnings raised
during a command are printed after it, one line each, and not at all when it fails.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from redistill.errors import UserError

# Command modules, in the order `redistill --help` lists them.
COMMANDS = [
    "redistill.cli.memory", "redistill.cli.patch",
    "redistill.cli.models", "redistill.cli.derive",
    "redistill.cli.layers",
    "redistill.cli.train", "redistill.cli.eval", "redistill.cli.export", "redistill.cli.sample",
    "redistill.cli.deploy",
    "redistill.cli.demo",
    "redistill.cli.fid", "redistill.cli.fid_extractor",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="redistill", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and warnings as they happen")
    parser.add_argument(
        "--trust-code", action="store_true",
        help="let a model spec read from a run directory or checkpoint import user code (file.py:factory)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # --debug and --trust-code are accepted anywhere on the line, before or after the command.
    flags = {f: f in argv for f in ("--debug", "--trust-code")}
    argv = [a for a in argv if a not in flags]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug, args.trust_code = flags["--debug"], flags["--trust-code"]
    if args.debug:
        return int(args.func(args) or 0)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            rc = args.func(args)
    except UserError as err:
        print(f"redistill {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, MemoryError, RuntimeError, ValueError) as err:
        cause = f"{type(err).__name__}: {_one_line(err) or 'no message'}"
        print(f"redistill {args.command}: error: {cause} (rerun with --debug for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for w in caught:
        print(f"redistill {args.command}: warning: {_one_line(w.message)}", file=sys.stderr)
    return int(rc or 0)


def _one_line(err: object) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else ""


if __name__ == "__main__":
    sys.exit(main())
