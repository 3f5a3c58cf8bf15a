"""The package layers strictly: every import of the package's own modules (top-level or inside a
function) points down the stack below, and the module graph has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "redistill"

# Lowest first. A module may import modules of lower layers and of its own unit (a subpackage or
# a top-level module); a unit never imports another unit of its own layer or of a higher one.
LAYERS: list[set[str]] = [
    {"redistill", "redistill.errors"},
    {"redistill.util"},
    {"redistill.models", "redistill.memory", "redistill.flops", "redistill.checkpoint", "redistill.results"},
    {"redistill.distill", "redistill.plan", "redistill.diffusion", "redistill.patch"},
    {"redistill.artifact"},
    {"redistill.modelref"},
    {"redistill.train"},
    {"redistill.deploy"},
    {"redistill.demo"},
    {"redistill.demo_diffusion"},  # builds on the classification demo's run handling
    {"redistill.cli"},
    {"redistill.__main__"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _unit(module: str) -> str:
    """The layer unit a module belongs to: ``redistill.distill.red`` -> ``redistill.distill``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _layer(module: str) -> int:
    unit = _unit(module)
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"{module} belongs to no layer: add {unit} to LAYERS in {__file__}")


def _imports_in(source: str, package: str = PACKAGE) -> set[str]:
    """The package's own modules that ``source`` imports, anywhere (functions included).

    ``package`` is the package the source belongs to, against which relative imports resolve.
    """
    tree = ast.parse(source)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = node.module or ""
            if node.level:  # `from ..train import x` inside redistill.cli -> redistill.train
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            # `from pkg import sub` imports the submodule when there is one, else names of pkg.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out |= {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}
    return out


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


GRAPH = {m: _imports_in(p.read_text(), _package_of(m, p)) - {m} for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    for module in MODULES:
        _layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = _layer(module)
    for target in sorted(GRAPH[module]):
        if _unit(target) == _unit(module):
            continue
        assert _layer(target) < mine, (
            f"{module} (layer {mine}) imports {target} (layer {_layer(target)}): the dependency points up or "
            "sideways; move the shared code down or the caller up"
        )


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if target not in MODULES:
                continue
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [module, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if state.get(target) is None:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_function_level_imports_and_submodules():
    # An import hidden in a function is the usual way to dodge a cycle: the walk must find it.
    code = "import torch\n\ndef f():\n    from redistill.train import trainer\n    import redistill.cli.main\n" \
           "    from redistill.models import create_model\n"
    assert _imports_in(code) == {"redistill.train.trainer", "redistill.cli.main", "redistill.models"}
    # Relative imports resolve against the importing module's package.
    assert _imports_in("from ..train import trainer\nfrom . import main\n", "redistill.cli") == {
        "redistill.train.trainer", "redistill.cli.main"}
    assert _imports_in("from .red import REDBlock\n", "redistill.distill") == {"redistill.distill.red"}
