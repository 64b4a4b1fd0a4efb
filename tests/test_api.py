"""The public surface: a curated __all__, module docstrings, one-way dependencies."""

from __future__ import annotations

import ast
from pathlib import Path

import telewire

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core" / "telewire"
PLUGINS = ROOT / "plugins"

#: module -> telewire modules it must never import (the direction is one-way).
LAYERS = {
    "errors": {"frames", "carrier", "hookspecs", "registry", "envelope", "nodes", "graph", "server", "cli"},
    "frames": {"carrier", "hookspecs", "registry", "envelope", "nodes", "graph", "server", "cli"},
    "carrier": {"hookspecs", "registry", "envelope", "nodes", "graph", "server", "cli"},
    "hookspecs": {"registry", "envelope", "nodes", "graph", "server", "cli"},
    "registry": {"envelope", "nodes", "graph", "server", "cli"},
    "envelope": {"registry", "nodes", "graph", "server", "cli"},
    "graph": {"server", "cli"},
    "server": {"cli"},
}
PUBLIC_FOR_PLUGINS = {"telewire", "telewire.carrier", "telewire.envelope", "telewire.errors",
                      "telewire.frames", "telewire.hookspecs", "telewire.testing",
                      "telewire.testing.conformance", "telewire.testing.provider_kit",
                      "telewire.realtime.common"}


def imports_of(path: Path) -> set[str]:
    """Modules imported at run time (imports under ``if TYPE_CHECKING:`` only serve annotations)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_all_is_curated_and_importable():
    names = telewire.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(telewire, name), name
    assert not [n for n in names if n.startswith("_") and n != "__version__"]


def test_every_module_opens_with_a_docstring_saying_what_it_is_for():
    for path in sorted(CORE.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc.strip().splitlines()[0]) > 10, f"{path} has no opening docstring"


def test_dependencies_point_one_way():
    for module, forbidden in LAYERS.items():
        path = CORE / f"{module}.py"
        bad = {m for m in imports_of(path) if m.startswith("telewire.")
               and m.split(".")[1] in forbidden}
        assert not bad, f"telewire.{module} must not import {sorted(bad)}"


def test_plugins_import_only_the_public_api():
    for path in sorted(PLUGINS.glob("*/telewire_*/**/*.py")):
        used = {m for m in imports_of(path) if m == "telewire" or m.startswith("telewire.")}
        assert used <= PUBLIC_FOR_PLUGINS, f"{path} imports internals: {sorted(used - PUBLIC_FOR_PLUGINS)}"


def test_the_core_never_imports_a_plugin_by_name():
    for path in sorted(CORE.rglob("*.py")):
        assert not {m for m in imports_of(path) if m.startswith("telewire_")}, path
