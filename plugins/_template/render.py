"""Render this template into a new carrier distribution: ``python render.py acme --dest plugins/acme``.

Depends only on the standard library (it runs before anything is installed); it is not copied.

Every file and path under this folder, except this script and build leftovers, is copied with
four placeholders replaced (each is a valid identifier, so the template stays importable and
lintable as it is):

=====================  ==============================  ====================
placeholder            becomes                          for ``sip_bridge``
=====================  ==============================  ====================
``__carrier__``        the carrier name                 ``sip_bridge``
``__carrier_dist__``   the name in the distribution     ``sip-bridge``
``__Carrier__``        the name in class names          ``SipBridge``
``__CARRIER__``        the name in environment names    ``SIP_BRIDGE``
=====================  ==============================  ====================

so ``telewire___carrier__/`` becomes the package ``telewire_sip_bridge``, the distribution is
``telewire-sip-bridge``, the entry point ``sip_bridge``, the settings prefix
``TELEWIRE_SIP_BRIDGE_``. A future ``telewire new-carrier NAME`` command calls :func:`render`.
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Sequence

__all__ = ["TEMPLATE", "TemplateError", "check_name", "placeholders", "render"]

#: This folder: the template itself.
TEMPLATE = Path(__file__).resolve().parent
CARRIER_GROUP = "telewire.carriers"
_NAME_RE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
_MAX_NAME = 32
#: Left behind by builds, editors and test runs; never part of a rendered carrier.
_SKIP_NAMES = frozenset({"render.py", "__pycache__", "build", "dist", ".pytest_cache",
                         ".mypy_cache", ".ruff_cache"})
_LEFTOVER_RE = re.compile(r"__carrier|__Carrier|__CARRIER")


class TemplateError(Exception):
    """The template cannot be rendered as asked; the message says what to change."""


def check_name(name: str, *, plugins_dir: Path | None = None) -> None:
    """Refuse a carrier name that cannot be one, or that is taken.

    A name is lower-case ``snake_case`` starting with a letter (it is a Python identifier, an
    entry-point name and part of URLs and environment variable names), at most 32 characters,
    not a Python keyword, and not already a carrier: neither installed (entry point in group
    ``telewire.carriers`` of this interpreter) nor a folder beside the template.

    Args:
        name: the proposed carrier name.
        plugins_dir: the folder holding carrier folders (default: the template's parent).

    Raises:
        TemplateError: naming the rule the name breaks.
    """
    if not _NAME_RE.fullmatch(name):
        raise TemplateError(
            f"carrier name {name!r} must be lower-case snake_case starting with a letter "
            "(letters, digits, single underscores between words), e.g. 'acme' or 'acme_voice'")
    if len(name) > _MAX_NAME:
        raise TemplateError(f"carrier name {name!r} is {len(name)} characters; keep it to "
                            f"{_MAX_NAME} (it appears in graphs, URLs and variable names)")
    if keyword.iskeyword(name):
        raise TemplateError(f"carrier name {name!r} is a Python keyword")
    for ep in metadata.entry_points(group=CARRIER_GROUP, name=name):
        dist = getattr(ep, "dist", None)
        owner = f"distribution {dist.metadata['Name']!r}" if dist is not None else ep.value
        raise TemplateError(f"carrier name {name!r} is taken: {owner} is installed with entry "
                            f"point {name!r} in group {CARRIER_GROUP!r}")
    folder = (plugins_dir if plugins_dir is not None else TEMPLATE.parent) / name
    if folder.exists():
        raise TemplateError(f"carrier name {name!r} is taken: {folder} already exists")


def placeholders(name: str) -> dict[str, str]:
    """The placeholder → text table for carrier ``name``, longest placeholder first."""
    return {
        "__carrier_dist__": name.replace("_", "-"),
        "__Carrier__": "".join(part.capitalize() for part in name.split("_")),
        "__CARRIER__": name.upper(),
        "__carrier__": name,
    }


def _fill(text: str, table: dict[str, str]) -> str:
    for token, value in table.items():
        text = text.replace(token, value)
    return text


def _template_files(template: Path) -> list[Path]:
    files = []
    for path in sorted(template.rglob("*")):
        rel = path.relative_to(template)
        if any(part in _SKIP_NAMES or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file() and path.suffix not in (".pyc", ".pyo"):
            files.append(path)
    return files


def render(name: str, dest: str | Path, *, template: Path = TEMPLATE) -> list[Path]:
    """Write a new carrier distribution named ``name`` into ``dest``.

    Args:
        name: the carrier name (see :func:`check_name`).
        dest: the folder to create; it must not exist, or be empty.
        template: the template folder (default: this one); carrier folders are its siblings.

    Returns:
        The files written, in order.

    Raises:
        TemplateError: a bad or taken name, a ``dest`` that is not empty, or a placeholder the
            template uses that this renderer does not know (named with its file).
    """
    dest = Path(dest)
    check_name(name, plugins_dir=template.parent)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise TemplateError(f"destination {dest} exists and is not an empty folder")
    table = placeholders(name)
    written: list[Path] = []
    plan: list[tuple[Path, Path, str | bytes]] = []
    for source in _template_files(template):
        rel = Path(_fill(str(source.relative_to(template)), table))
        raw = source.read_bytes()
        try:
            content: str | bytes = _fill(raw.decode("utf-8"), table)
        except UnicodeDecodeError:
            content = raw  # binary data files are copied as they are
        leftover = _LEFTOVER_RE.search(content if isinstance(content, str) else "") or \
            _LEFTOVER_RE.search(str(rel))
        if leftover:
            raise TemplateError(f"{source}: unknown placeholder starting {leftover.group()!r}; "
                                f"known: {', '.join(table)}")
        plan.append((source, dest / rel, content))
    for source, target, content in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8")
        else:
            target.write_bytes(content)
        target.chmod(source.stat().st_mode & 0o777)
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``render.py NAME [--dest DIR]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="render.py", description="Render telewire's carrier template into a new carrier.")
    parser.add_argument("name", help="the carrier name, lower-case snake_case (e.g. acme_voice)")
    parser.add_argument("--dest", type=Path,
                        help="folder to create (default: plugins/NAME beside the template)")
    args = parser.parse_args(argv)
    dest = args.dest if args.dest is not None else TEMPLATE.parent / args.name
    try:
        written = render(args.name, dest)
    except TemplateError as exc:
        print(f"render.py: error: {exc}", file=sys.stderr)
        return 2
    dist = placeholders(args.name)["__carrier_dist__"]
    print(f"wrote {len(written)} files to {dest}: distribution telewire-{dist}, package "
          f"telewire_{args.name}, entry point {args.name!r}.\n"
          f"Next: read {dest / 'README.md'}, then  pip install -e {dest}  and  "
          f"pytest {dest / 'tests'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
