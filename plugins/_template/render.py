"""Render a template into a new plugin distribution: ``python render.py acme --dest plugins/acme``
for a carrier, ``python render.py --kind provider acme`` for a realtime-model provider.

Depends only on the standard library (it runs before anything is installed); it is not copied.

Each kind of plugin has its template folder (:data:`KINDS`): ``plugins/_template`` (this folder)
for a carrier, ``plugins/_provider_template`` for a provider. Every file and path under it,
except this script and build leftovers, is copied with four placeholders replaced. Each is a
valid identifier, so a template stays importable and lintable as it is. For a carrier:

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
``TELEWIRE_SIP_BRIDGE_``. A provider's placeholders are the same with ``provider`` for
``carrier`` (``__provider__``, ``__provider_dist__``, ``__Provider__``, ``__PROVIDER__``).
A future ``telewire new-carrier NAME`` command calls :func:`render`.
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import NamedTuple, Sequence

__all__ = ["KINDS", "Kind", "TEMPLATE", "TemplateError", "check_name", "placeholders", "render"]

#: This folder: the carrier template.
TEMPLATE = Path(__file__).resolve().parent
CARRIER_GROUP = "telewire.carriers"


class Kind(NamedTuple):
    """One kind of plugin the renderer makes (a named tuple: this script may be loaded from its
    file, outside ``sys.modules``, where a dataclass cannot be made).

    Attributes:
        template: its template folder.
        stem: the word its placeholders are made of (``carrier``: ``__carrier__`` …) and that
            messages call a plugin of this kind.
        group: the entry-point group its plugins register in; a name installed there is taken.
    """

    template: Path
    stem: str
    group: str


#: Every kind of plugin, by the name ``--kind`` takes.
KINDS: dict[str, Kind] = {
    "carrier": Kind(TEMPLATE, "carrier", CARRIER_GROUP),
    "provider": Kind(TEMPLATE.parent / "_provider_template", "provider", "telewire.providers"),
}
_NAME_RE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
_MAX_NAME = 32
#: Left behind by builds, editors and test runs; never part of a rendered plugin.
_SKIP_NAMES = frozenset({"render.py", "__pycache__", "build", "dist", ".pytest_cache",
                         ".mypy_cache", ".ruff_cache"})


class TemplateError(Exception):
    """The template cannot be rendered as asked; the message says what to change."""


def _kind(kind: str) -> Kind:
    try:
        return KINDS[kind]
    except KeyError:
        raise TemplateError(f"unknown kind of plugin {kind!r}; known: {', '.join(KINDS)}") from None


def check_name(name: str, *, kind: str = "carrier", plugins_dir: Path | None = None) -> None:
    """Refuse a plugin name that cannot be one, or that is taken.

    A name is lower-case ``snake_case`` starting with a letter (it is a Python identifier, an
    entry-point name and part of URLs and environment variable names), at most 32 characters,
    not a Python keyword, and not already a plugin of its kind: neither installed (entry point
    in the kind's group, ``telewire.carriers`` or ``telewire.providers``, of this interpreter)
    nor a folder beside the template.

    Args:
        name: the proposed name.
        kind: ``"carrier"`` or ``"provider"`` (see :data:`KINDS`).
        plugins_dir: the folder holding plugin folders (default: the templates' parent).

    Raises:
        TemplateError: naming the rule the name breaks.
    """
    what = _kind(kind)
    word, group = what.stem, what.group
    if not _NAME_RE.fullmatch(name):
        raise TemplateError(
            f"{word} name {name!r} must be lower-case snake_case starting with a letter "
            "(letters, digits, single underscores between words), e.g. 'acme' or 'acme_voice'")
    if len(name) > _MAX_NAME:
        raise TemplateError(f"{word} name {name!r} is {len(name)} characters; keep it to "
                            f"{_MAX_NAME} (it appears in graphs, URLs and variable names)")
    if keyword.iskeyword(name):
        raise TemplateError(f"{word} name {name!r} is a Python keyword")
    for ep in metadata.entry_points(group=group, name=name):
        dist = getattr(ep, "dist", None)
        owner = f"distribution {dist.metadata['Name']!r}" if dist is not None else ep.value
        raise TemplateError(f"{word} name {name!r} is taken: {owner} is installed with entry "
                            f"point {name!r} in group {group!r}")
    folder = (plugins_dir if plugins_dir is not None else TEMPLATE.parent) / name
    if folder.exists():
        raise TemplateError(f"{word} name {name!r} is taken: {folder} already exists")


def placeholders(name: str, kind: str = "carrier") -> dict[str, str]:
    """The placeholder → text table for plugin ``name`` of ``kind``, longest placeholder
    first."""
    stem = _kind(kind).stem
    return {
        f"__{stem}_dist__": name.replace("_", "-"),
        f"__{stem.capitalize()}__": "".join(part.capitalize() for part in name.split("_")),
        f"__{stem.upper()}__": name.upper(),
        f"__{stem}__": name,
    }


def _leftover_re(kind: str) -> re.Pattern[str]:
    """What a placeholder of ``kind`` starts with: any of it left after filling is unknown."""
    stem = _kind(kind).stem
    return re.compile("|".join(re.escape(f"__{s}") for s in
                               (stem, stem.capitalize(), stem.upper())))


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


def render(name: str, dest: str | Path, *, kind: str = "carrier",
           template: Path | None = None) -> list[Path]:
    """Write a new plugin distribution of ``kind`` named ``name`` into ``dest``.

    Args:
        name: the plugin name (see :func:`check_name`).
        dest: the folder to create; it must not exist, or be empty.
        kind: ``"carrier"`` or ``"provider"`` (see :data:`KINDS`).
        template: the template folder (default: the kind's); plugin folders are its siblings.

    Returns:
        The files written, in order.

    Raises:
        TemplateError: a bad or taken name, a ``dest`` that is not empty, or a placeholder the
            template uses that this renderer does not know (named with its file).
    """
    dest = Path(dest)
    if template is None:
        template = _kind(kind).template
    check_name(name, kind=kind, plugins_dir=template.parent)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise TemplateError(f"destination {dest} exists and is not an empty folder")
    table = placeholders(name, kind)
    leftover_re = _leftover_re(kind)
    written: list[Path] = []
    plan: list[tuple[Path, Path, str | bytes]] = []
    for source in _template_files(template):
        rel = Path(_fill(str(source.relative_to(template)), table))
        raw = source.read_bytes()
        try:
            content: str | bytes = _fill(raw.decode("utf-8"), table)
        except UnicodeDecodeError:
            content = raw  # binary data files are copied as they are
        leftover = leftover_re.search(content if isinstance(content, str) else "") or \
            leftover_re.search(str(rel))
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
    """The command line: ``render.py [--kind provider] NAME [--dest DIR]``; returns the exit
    status."""
    parser = argparse.ArgumentParser(
        prog="render.py", description="Render one of telewire's plugin templates into a new "
        "plugin: a carrier (the default) or a realtime-model provider.")
    parser.add_argument("name", help="the plugin name, lower-case snake_case (e.g. acme_voice)")
    parser.add_argument("--kind", choices=sorted(KINDS), default="carrier",
                        help="what to make (default: carrier)")
    parser.add_argument("--dest", type=Path,
                        help="folder to create (default: plugins/NAME beside the template)")
    args = parser.parse_args(argv)
    what = KINDS[args.kind]
    dest = args.dest if args.dest is not None else what.template.parent / args.name
    try:
        written = render(args.name, dest, kind=args.kind)
    except TemplateError as exc:
        print(f"render.py: error: {exc}", file=sys.stderr)
        return 2
    dist = placeholders(args.name, args.kind)[f"__{what.stem}_dist__"]
    print(f"wrote {len(written)} files to {dest}: distribution telewire-{dist}, package "
          f"telewire_{args.name}, entry point {args.name!r} in group {what.group}.\n"
          f"Next: read {dest / 'README.md'}, then  pip install -e {dest}  and  "
          f"pytest {dest / 'tests'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
