"""Regenerate docs/reference/hooks.md from core/telewire/hookspecs.py (tests/test_docs.py checks it).

Run: .venv/bin/python scripts/gen_hooks_doc.py
"""

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = (ROOT / "core" / "telewire" / "hookspecs.py").read_text()
INTRO = """# Carrier hook reference

Every hook a carrier plugin implements, with its literal signature and its contract. The source
of truth is `core/telewire/hookspecs.py`; a test checks that this page lists every hook there
with the same signature (regenerate with `scripts/gen_hooks_doc.py`).

Implement hooks as plain functions in your plugin module (or methods of a plugin object), marked
with `telewire.hookimpl`. Carrier hooks are sans-I/O and synchronous. The registry calls them
by keyword, and only on your own plugin, so "first result" means your answer. Required:
`telewire_carrier_capabilities`, `telewire_parse_inbound`, `telewire_wrap_audio`. For the
others, returning `None` means "this carrier does not do that".
"""


def signature(node: ast.FunctionDef) -> str:
    """The hook's literal signature, as the docs print it and the test compares it."""
    return f"def {node.name}({ast.unparse(node.args)}) -> {ast.unparse(node.returns)}"


def main() -> None:
    lines = SOURCE.splitlines()
    out = [INTRO]
    phase = None
    for node in ast.parse(SOURCE).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        banner = next(lines[i][2:].strip() for i in range(node.lineno - 2, 0, -1)
                      if lines[i].startswith("# ") and not lines[i].startswith("# ---"))
        if banner != phase:
            out.append(f"## {banner.capitalize()}\n")
            phase = banner
        out.append(f"### `{node.name}`\n\n```python\n@{ast.unparse(node.decorator_list[0])}\n"
                   f"{signature(node)}\n```\n\n{textwrap.dedent(ast.get_docstring(node) or '')}\n")
    (ROOT / "docs" / "reference" / "hooks.md").write_text("\n".join(out).rstrip() + "\n")


if __name__ == "__main__":
    main()
