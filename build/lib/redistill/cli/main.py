"""Entry point of the ``redistill`` command.

Each command lives in its own module exposing ``add_parser(subparsers)`` (which sets
``func`` on its parser) and a plain Python function doing the work, so every command is
also callable from Python. Errors the user can fix raise :class:`UserError`: printed on
one line, exit code 2, traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from redistill.errors import UserError

# Command modules, in the order `redistill --help` lists them.
COMMANDS = [
    "redistill.cli.memory",
    "redistill.cli.models", "redistill.cli.derive",
    "redistill.cli.layers",
    "redistill.cli.train", "redistill.cli.eval", "redistill.cli.export",
    "redistill.cli.demo",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="redistill", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # --debug is accepted anywhere on the line, before or after the command.
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = debug
    try:
        rc = args.func(args)
    except UserError as err:
        if args.debug:
            raise
        print(f"redistill {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
