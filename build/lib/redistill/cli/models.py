"""``redistill models``: the model families, their stride slots and defaults."""

from __future__ import annotations

import argparse

from redistill.models import get_family, list_models


def describe_models(names: list[str] | None = None) -> str:
    """One block per family: description, slots with default strides, options.

    Args:
        names: families to show (default: all). Unknown names raise UserError.
    """
    blocks = []
    for name in names or list_models():
        family = get_family(name)
        slots = ", ".join(f"{slot}={s}" for slot, s in zip(family.slots, family.default_strides))
        options = ", ".join(f"{k}={v}" for k, v in family.all_options().items())
        digits = "".join(str(s) for s in family.default_strides[1:])
        blocks.append(
            f"{name}: {family.description}\n"
            f"  slots (default strides): {slots}\n"
            f"  authors' form: {name}-{family.default_strides[0]}-{digits}\n"
            f"  derive drops first: {', '.join(family.drop_order)}\n"
            f"  options: {options}"
        )
    return "\n".join(blocks)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list model families, their stride slots and defaults",
                       description=__doc__.replace("``", "'"))
    p.add_argument("names", nargs="*", metavar="FAMILY", help="families to show (default: all)")
    p.add_argument("--names-only", action="store_true", help="print only the family names")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.names_only:
        print("\n".join(get_family(n).name for n in args.names or list_models()))
    else:
        print(describe_models(args.names))
    return 0
