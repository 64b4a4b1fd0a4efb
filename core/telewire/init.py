"""``telewire init``: ask for (or take as flags) carrier, model provider, store, control plane and
tracing, then write the project's graph file and the ``.env`` template those choices need.

Depends on ``telewire.graph``, ``nodes``, ``settings``, ``registry``, ``stores``, ``realtime.base``,
``redact`` and ``errors``; only ``telewire.cli`` depends on it.

Run again, it changes only what it is asked to: the graph file is edited as text, key by key
(:func:`set_toml_value`), so comments, hand-added nodes and edges stay as they were, and every
edit is checked by parsing the result and comparing it with the intended document. Choices are
offered from what is installed (carriers, providers and stores are entry points), so a new
plugin shows up without a change here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from telewire.errors import ConfigError, TelewireError
from telewire.redact import is_secret_name, mask_text

__all__ = ["ENV_EXAMPLE", "GRAPH_FILE", "InitOptions", "cmd_init", "interactive_asker",
           "run_init", "set_toml_value"]

GRAPH_FILE = "telewire.toml"
ENV_EXAMPLE = ".env.example"
ENV_FILE = ".env"
#: The first line of every ``.env`` template this module writes, followed by the choices.
MARKER = "# written by telewire init:"
TRACING = ("sqlite", "otlp", "off")
_GRAPH_HEAD = (
    "# telewire.toml: the graph every call runs (docs/guide.md, \"Graph files\"). Written by\n"
    "# `telewire init`; edit it freely: a later `telewire init` changes only what it is\n"
    "# asked to.\n")


@dataclass(slots=True)
class InitOptions:
    """What ``telewire init`` was given: ``None`` for a choice not given as a flag."""

    dir: Path = Path(".")
    carrier: str | None = None
    provider: str | None = None
    store: str | None = None
    store_url: str | None = None
    control: str | None = None
    tracing: str | None = None
    yes: bool = False
    force: bool = False


@dataclass(slots=True)
class Choices:
    carrier: str = ""
    provider: str = ""
    store_url: str = ""
    control: str = "none"
    tracing: str = "sqlite"


#: Asks one question: ``(prompt, check)`` -> the checked answer. ``check`` turns the raw answer
#: (``""`` taking the default) into the value, or raises ``ValueError`` with what is wrong.
Asker = Callable[[str, Callable[[str], str]], str]


# ------------------------------------------------------------------------------ choices


@dataclass(slots=True)
class _Installed:
    carriers: list[str]
    providers: Any  # PluginSet of provider classes
    stores: dict[str, Any]
    carrier_models: dict[str, type[BaseSettings] | None] = field(default_factory=dict)


def _installed() -> _Installed:
    from telewire.realtime.base import providers
    from telewire.registry import CarrierRegistry
    from telewire.stores import store_classes

    registry = CarrierRegistry()
    models: dict[str, type[BaseSettings] | None] = {}
    for name in registry.names():
        try:
            models[name] = registry.get(name).settings_model()
        except TelewireError:
            models[name] = None
    return _Installed(registry.names(), providers(), store_classes(), models)


def _check_carrier(found: _Installed) -> Callable[[str], str]:
    def check(value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        if not names:
            raise ValueError("name a carrier")
        for n in names:
            if n not in found.carriers:
                raise ValueError(f"{n!r} is not an installed carrier; choose one of: "
                                 f"{', '.join(found.carriers) or 'none installed'}")
        return ",".join(dict.fromkeys(names))
    return check


def _check_provider(found: _Installed) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in found.providers.loaded:
            raise ValueError(found.providers.unknown("provider", value))
        return value
    return check


def _check_store(found: _Installed) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in found.stores:
            raise ValueError(f"{value!r} is not an installed store; choose one of: "
                             f"{', '.join(sorted(found.stores))}")
        return value
    return check


def _check_store_url(found: _Installed, scheme: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not value:
            example = found.stores[scheme].example_url or f"{scheme}://…"
            raise ValueError(f"a {scheme} store needs a URL, for example {example}")
        if not value.startswith(f"{scheme}://"):
            raise ValueError(f"a {scheme} store URL starts with {scheme}://")
        try:
            found.stores[scheme](value)
        except ConfigError as exc:
            raise ValueError(mask_text(str(exc))) from None
        return value
    return check


def _check_control(value: str) -> str:
    if value in ("none", "in-process"):
        return "none"
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"{mask_text(value)!r} is not a control plane: give none (in-process), "
                         "or a redis://HOST:PORT/DB URL (rediss:// for TLS)")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"{mask_text(value)!r}: the port is not a number") from None
    return value


def _check_tracing(value: str) -> str:
    if value not in TRACING:
        raise ValueError(f"{value!r} is not a tracing exporter; choose one of: "
                         f"{', '.join(TRACING)}")
    return value


def _flag(name: str, value: str, check: Callable[[str], str]) -> str:
    try:
        return check(value)
    except ValueError as exc:
        raise ConfigError(f"telewire init --{name}: {exc}") from None


# ------------------------------------------------------------------------------ graph text

_HEADER = re.compile(r"^\s*\[(?!\[)(?P<key>[^\[\]]+)\]\s*(?:#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")
_KEY_PART = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([A-Za-z0-9_-]+))\s*(\.|$)')
_ASSIGN = re.compile(r"^(?P<lead>\s*(?P<key>(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
                     r"(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=\s*)(?P<rest>.*)$")
_SIMPLE_VALUE = re.compile(r"""^(?:"(?:[^"\\]|\\.)*"|'[^'\n]*'|[-+0-9A-Za-z_.:]+)"""
                           r"(?P<tail>\s*(?:#.*)?)$")


def _key_parts(text: str) -> tuple[str, ...] | None:
    """A dotted TOML key as its parts (``nodes."rt".config`` -> ``("nodes", "rt", "config")``)."""
    parts, pos = [], 0
    while pos < len(text):
        m = _KEY_PART.match(text, pos)
        if m is None or m.end() == pos:
            return None
        parts.append(next(g for g in m.groups()[:3] if g is not None))
        pos = m.end()
        if not m.group(4):
            break
    return tuple(parts) if pos >= len(text.rstrip()) else None


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def set_toml_value(text: str, table: tuple[str, ...], key: str, value: str, *,
                   source: str) -> str:
    """``text`` (a TOML document) with ``table.key`` set to the string ``value``, every other
    line (comments, blank lines, other tables) left as it was.

    The key's line is rewritten where it is (``[table]`` ``key = …``, or a dotted
    ``key.path = …`` in a table above), keeping its trailing comment; a missing key is added
    under its table's header, and a missing table after its parent's last key.

    Raises:
        ConfigError: the document is laid out in a way this editor cannot change safely (an
            inline table, a multi-line value); the message names the file and the key to set
            by hand. Every edit is checked by parsing the result, so nothing else can change.
    """
    before = tomllib.loads(text)
    expected = copy.deepcopy(before)
    target = expected
    for part in table:
        target = target.setdefault(part, {})
    target[key] = value
    lines = text.splitlines(keepends=True)
    out = _edit_lines(lines, table, key, _toml_string(value))
    new = "".join(out) if out is not None else None
    try:
        ok = new is not None and tomllib.loads(new) == expected
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:
        where = ".".join((*table, key))
        raise ConfigError(f"{source}: cannot change {where} safely (an inline table or a "
                          f"multi-line value?); set it by hand to {mask_text(_toml_string(value))}")
    return new  # type: ignore[return-value]


def _bodies(lines: list[str]) -> list[tuple[tuple[str, ...] | None, int, int]]:
    """``(header parts, header line, end)`` for the root table (parts ``()``, header line -1)
    and each ``[table]``; ``None`` parts for an array of tables or an unparsed header."""
    starts: list[tuple[tuple[str, ...] | None, int]] = [((), -1)]
    for i, line in enumerate(lines):
        if _ANY_HEADER.match(line):
            m = _HEADER.match(line)
            starts.append((_key_parts(m.group("key")) if m else None, i))
    return [(parts, at, starts[k + 1][1] if k + 1 < len(starts) else len(lines))
            for k, (parts, at) in enumerate(starts)]


def _edit_lines(lines: list[str], table: tuple[str, ...], key: str,
                literal: str) -> list[str] | None:
    bodies = _bodies(lines)
    full = (*table, key)
    # 1. the key exists: in [table] as `key`, or in a table above as a dotted key
    for parts, at, end in bodies:
        if parts is None or full[:len(parts)] != parts or len(parts) > len(table):
            continue
        rest = full[len(parts):]
        for i in range(at + 1, end):
            m = _ASSIGN.match(lines[i].rstrip("\r\n"))
            if m is None or _key_parts(m.group("key")) != rest:
                continue
            v = _SIMPLE_VALUE.match(m.group("rest"))
            if v is None:
                return None
            newline = lines[i][len(lines[i].rstrip("\r\n")):] or "\n"
            lines = list(lines)
            lines[i] = f"{m.group('lead')}{literal}{v.group('tail')}{newline}"
            return lines
    # 2. [table] exists: add the key under its header
    for parts, at, end in bodies:
        if parts == table and at >= 0:
            return [*lines[:at + 1], f"{key} = {literal}\n", *lines[at + 1:]]
    # 3. the parent table exists: add [table] after its last key
    for parts, at, end in bodies:
        if parts == table[:-1] and at >= 0:
            last = at
            for i in range(at + 1, end):
                stripped = lines[i].strip()
                if stripped and not stripped.startswith("#"):
                    last = i
            head = lines[:last + 1]
            if head and not head[-1].endswith("\n"):
                head[-1] += "\n"
            header = "[" + ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else _toml_string(p)
                                    for p in table) + "]\n"
            return [*head, header, f"{key} = {literal}\n", *lines[last + 1:]]
    return None


# ------------------------------------------------------------------------------ .env template


def _attribute_docs(model: type) -> dict[str, str]:
    """The first sentence of each entry under ``Attributes:`` of a Google-style docstring."""
    doc = model.__doc__ or ""
    if "Attributes:" not in doc:
        return {}
    out: dict[str, str] = {}
    current: list[str] = []
    names: list[str] = []
    for line in doc.split("Attributes:", 1)[1].splitlines():
        if re.match(r"^\s*[A-Z]\w*:\s*$", line):  # the next section (Raises: …)
            break
        m = re.match(r"^ {4,8}([a-z_][\w /]*?):\s+(.*)$", line)
        if m and not line.startswith(" " * 12):
            for n in names:
                out[n] = " ".join(current)
            names = [n.strip() for n in m.group(1).split("/")]
            current = [m.group(2).strip()]
        elif line.strip() and names:
            current.append(line.strip())
    for n in names:
        out[n] = " ".join(current)
    return {n: _first_sentence(t) for n, t in out.items()}


def _first_sentence(text: str) -> str:
    text = re.sub(r"``([^`]*)``", r"\1", text).replace(":class:", "").replace(":func:", "")
    m = re.search(r"(?<!e\.g)(?<!i\.e)\.(\s|$)", text)
    return (text[:m.start()] if m else text).strip()


@dataclass(slots=True)
class _Var:
    name: str
    value: str
    comment: str
    secret: bool = False
    active: bool = True  # False: written commented out (an example, or a choice not taken)
    env_only: bool = False  # read from the process environment only, not from .env


def _model_vars(model: type[BaseSettings], what: str) -> list[_Var]:
    prefix = str(model.model_config.get("env_prefix") or "")
    docs = _attribute_docs(model)
    out = []
    for name, f in model.model_fields.items():
        secret = f.annotation is SecretStr or SecretStr in getattr(f.annotation, "__args__", ())
        default = f.default
        comment = docs.get(name) or f"{what}: {name}"
        var = f"{prefix}{name}".upper()
        if secret or default is None:
            out.append(_Var(var, "", comment, secret=secret or is_secret_name(name)))
        else:
            shown = json.dumps(default) if isinstance(default, bool) else str(default)
            out.append(_Var(var, shown, comment, active=False))
    return out


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query,
                       parts.fragment))


def _env_vars(ch: Choices, found: _Installed, *, example: bool) -> list[tuple[str, list[_Var]]]:
    """The template's sections: ``(title, variables)``."""
    sections: list[tuple[str, list[_Var]]] = []
    carriers = ch.carrier.split(",")
    serve = [
        _Var("TELEWIRE_CARRIERS", ch.carrier, "the carriers this process serves (the others' "
             "routes answer 404)"),
        _Var("TELEWIRE_PUBLIC_URL", "https://voice.example.com", "base URL carriers use to "
             "reach this server; signatures are checked against it", active=False),
        _Var("TELEWIRE_OPERATOR_TOKEN", "", "bearer token of the operator API (/api/…); empty: "
             "the operator API is off", secret=True),
    ]
    sections.append(("this server", serve))
    for name in carriers:
        model = found.carrier_models.get(name)
        if model is not None:
            sections.append((f"carrier {name}", _model_vars(model, f"{name} carrier setting")))
    cls = found.providers.loaded[ch.provider]
    key_env = cls.capabilities.key_env
    sections.append((f"model provider {ch.provider}", [
        _Var(key_env, "", f"API key of the {ch.provider} provider", secret=True)]
        if key_env else []))
    scheme = ch.store_url.split("://", 1)[0]
    store_env = getattr(found.stores[scheme], "env", {}) or {}
    sections.append((f"recording store {scheme} (the URL is in {GRAPH_FILE}: "
                     f"recorder.config.store)",
                     [_Var(n, "", c, secret=is_secret_name(n), active=False, env_only=True)
                      for n, c in store_env.items()]))
    if ch.control == "none":
        control = [_Var("TELEWIRE_CONTROL_URL", "redis://127.0.0.1:6379/0", "unset: the "
                        "control plane is in-process (one process); a redis:// URL shares live "
                        "calls and steering across processes and hosts", active=False)]
    else:
        url = _without_password(ch.control) if example else ch.control
        note = (" (its password is left out here: put it in .env only)"
                if example and url != ch.control else "")
        control = [
            _Var("TELEWIRE_CONTROL_URL", url, "the Redis control plane shared by every process"
                 + note),
            _Var("TELEWIRE_CALL_TOKEN_SECRET", "", "one key on every process, so that a call "
                 "answered by one can be served by another", secret=True)]
    sections.append(("control plane", control))
    tracing = [_Var("TELEWIRE_TRACING", "off" if ch.tracing == "off" else "on",
                    "on: export spans; off: none at all")]
    if ch.tracing != "off":
        tracing.append(_Var("TELEWIRE_SPANS_DB", "telewire-spans.db", "SQLite span store read "
                            "by telewire calls / telewire trace"))
    if ch.tracing == "otlp":
        tracing += [
            _Var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318", "the OpenTelemetry "
                 "collector (OTLP/HTTP)", env_only=True),
            _Var("OTEL_EXPORTER_OTLP_HEADERS", "", "headers the collector needs "
                 "(authorization=…), if any", secret=True, active=False, env_only=True),
            _Var("OTEL_SERVICE_NAME", "telewire", "service.name of the spans", env_only=True)]
    sections.append((f"tracing ({ch.tracing})", tracing))
    return sections


def _choice_line(ch: Choices) -> str:
    scheme = ch.store_url.split("://", 1)[0]
    control = "none" if ch.control == "none" else "redis"
    return (f"{MARKER} carrier={ch.carrier} provider={ch.provider} store={scheme} "
            f"control={control} tracing={ch.tracing}\n")


def _render_env(ch: Choices, found: _Installed, *, example: bool) -> str:
    out = [_choice_line(ch),
           "# Every variable the choices above need. telewire reads .env from the directory it\n",
           "# runs in (blank values count as unset). Fill in the empty secrets in .env; never\n",
           "# commit .env. Variables marked (environment) are read from the process\n",
           "# environment only: export them, e.g. `set -a; . ./.env; set +a`.\n"]
    for title, variables in _env_vars(ch, found, example=example):
        out.append(f"\n# --- {title}\n")
        if not variables:
            out.append("# nothing to set\n")
        for v in variables:
            flags = " (secret)" if v.secret else ""
            flags += " (environment)" if v.env_only else ""
            out.append(f"# {v.comment}{flags}\n")
            out.append(f"{'' if v.active else '# '}{v.name}={'' if v.secret else v.value}\n")
    return "".join(out)


def _parse_env(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", line)
        if m:
            value = m.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            out[m.group(1)] = value
    return out


# ------------------------------------------------------------------------------ the run


def _read_graph(path: Path, force: bool) -> tuple[str | None, dict[str, Any] | None]:
    """The existing graph file's text and parsed document, or ``(None, None)`` when there is
    none (or ``force`` replaces it)."""
    from telewire.graph import build_graph

    if not path.exists():
        return None, None
    hint = "fix it, or pass --force to replace it with a new graph"
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        if force:
            return None, None
        raise ConfigError(f"{path}: not valid TOML: {exc}; {hint}") from None
    if not isinstance(raw.get("nodes"), dict):
        if force:
            return None, None
        raise ConfigError(f"{path} exists and is not a telewire graph (no [nodes.…] tables); "
                          "move it away, or pass --force to replace it")
    try:
        build_graph(copy.deepcopy(raw), source=str(path))
    except TelewireError as exc:
        if force:
            return None, None
        raise ConfigError(f"{exc}\n{path}: the existing graph is broken; {hint}") from None
    return text, raw


def _targets(raw: dict[str, Any], source: str) -> tuple[list[str], list[str]]:
    """Names of the realtime-agent nodes and of the recorder nodes of a graph document."""
    from telewire.graph import build_graph
    from telewire.nodes.realtime_agent import RealtimeAgent
    from telewire.nodes.recorder import Recorder

    graph = build_graph(copy.deepcopy(raw), source=source)
    return graph.nodes_of_type(RealtimeAgent), graph.nodes_of_type(Recorder)


def _node_value(raw: dict[str, Any], node: str, key: str) -> Any:
    return (raw["nodes"][node].get("config") or {}).get(key)


def _current(raw: dict[str, Any] | None, env_text: str | None, source: str,
             found: _Installed, dot_env: Path | None = None) -> Choices:
    """The choices the existing files hold, else the defaults."""
    ch = Choices(carrier="twilio" if "twilio" in found.carriers else
                 (found.carriers[0] if found.carriers else ""),
                 provider="openai" if "openai" in found.providers.loaded else "echo",
                 store_url="file://./recordings")
    if raw is not None:
        agents, recorders = _targets(raw, source)
        if agents:
            ch.provider = _node_value(raw, agents[0], "provider") or "echo"
        if recorders:
            ch.store_url = _node_value(raw, recorders[0], "store") or "file://./recordings"
    if env_text:
        head = env_text.splitlines()[0][len(MARKER):]
        given = dict(p.split("=", 1) for p in head.split() if "=" in p)
        env = _parse_env(env_text)
        if given.get("carrier"):
            ch.carrier = given["carrier"]
        if given.get("tracing") in TRACING:
            ch.tracing = given["tracing"]
        if given.get("control") == "redis" and env.get("TELEWIRE_CONTROL_URL"):
            ch.control = env["TELEWIRE_CONTROL_URL"]
            # the template leaves a password out; .env may hold the whole URL
            mine = (_parse_env(dot_env.read_text(encoding="utf-8")).get("TELEWIRE_CONTROL_URL")
                    if dot_env is not None and dot_env.exists() else None)
            if mine and _without_password(mine) == ch.control:
                ch.control = mine
    return ch


def _tty_asker(stdin: TextIO, out: TextIO) -> Asker:
    def ask(prompt: str, check: Callable[[str], str]) -> str:
        while True:
            out.write(prompt)
            out.flush()
            line = stdin.readline()
            if not line:
                raise ConfigError("telewire init: no answer (end of input); nothing written")
            try:
                return check(line.strip())
            except ValueError as exc:
                out.write(f"  {exc}\n")
    return ask


def _question(title: str, choices: Iterable[str] | None, default: str) -> str:
    listed = f" ({', '.join(choices)})" if choices is not None else ""
    return f"{title}{listed} [{default}]: " if default else f"{title}{listed}: "


def _resolve(opts: InitOptions, current: Choices, found: _Installed,
             ask: Asker | None) -> Choices:
    """The choices: each flag, else the answer to its question, else the current value."""
    ch = copy.copy(current)

    def choose(flag: str, value: str | None, title: str, choices: Iterable[str] | None,
               default: str, check: Callable[[str], str]) -> str:
        if value is not None:
            return _flag(flag, value, check)
        if ask is None:
            return default
        # the prompt shows a default URL masked (a Redis password); Enter takes it whole
        return ask(_question(title, choices, mask_text(default)), lambda a: check(a or default))

    ch.carrier = choose("carrier", opts.carrier, "Carrier", found.carriers, current.carrier,
                        _check_carrier(found))
    ch.provider = choose("provider", opts.provider, "Model provider",
                         sorted(found.providers.loaded), current.provider,
                         _check_provider(found))
    cur_scheme = current.store_url.split("://", 1)[0]
    scheme_given = opts.store
    if scheme_given is None and opts.store_url is not None:
        scheme_given = opts.store_url.split("://", 1)[0] if "://" in opts.store_url else ""
    scheme = choose("store", scheme_given, "Recording store", sorted(found.stores), cur_scheme,
                    _check_store(found))
    if scheme == cur_scheme:
        url_default = current.store_url
    else:
        url_default = found.stores[scheme].example_url if scheme == "file" else ""
    check_url = _check_store_url(found, scheme)
    if opts.store_url is not None:
        ch.store_url = _flag("store-url", opts.store_url, check_url)
    elif ask is not None:
        example = found.stores[scheme].example_url
        title = f"Store URL{f' (like {example})' if example and not url_default else ''}"
        ch.store_url = ask(_question(title, None, url_default),
                           lambda a: check_url(a or url_default))
    elif url_default:
        ch.store_url = _flag("store-url", url_default, check_url)
    else:
        example = found.stores[scheme].example_url or f"{scheme}://…"
        raise ConfigError(f"telewire init --store {scheme}: give its URL too, with "
                          f"--store-url (for example {example})")
    ch.control = choose("control", opts.control,
                        "Control plane (none = in-process, or a redis://HOST:PORT/DB URL)",
                        None, current.control, _check_control)
    ch.tracing = choose("tracing", opts.tracing, "Tracing exporter", TRACING, current.tracing,
                        _check_tracing)
    return ch


def _graph_text(text: str | None, raw: dict[str, Any] | None, ch: Choices, current: Choices,
                source: str) -> str:
    from telewire.graph import default_graph_path

    fresh = text is None
    if fresh:
        template = default_graph_path().read_text(encoding="utf-8")
        lines = template.splitlines(keepends=True)
        while lines and lines[0].startswith("#"):
            lines.pop(0)
        text = _GRAPH_HEAD + "".join(lines)
        raw = tomllib.loads(text)
    assert raw is not None
    agents, recorders = _targets(raw, source)
    if fresh or ch.provider != current.provider:
        if not agents:
            raise ConfigError(f"{source}: no realtime_agent node to set the provider on")
        for node in agents:
            text = set_toml_value(text, ("nodes", node, "config"), "provider", ch.provider,
                                  source=source)
    if fresh or ch.store_url != current.store_url:
        if not recorders:
            raise ConfigError(f"{source}: no recorder node to set the store on; add one "
                              "([nodes.recorder] type = \"recorder\") or leave --store out")
        for node in recorders:
            text = set_toml_value(text, ("nodes", node, "config"), "store", ch.store_url,
                                  source=source)
    return text


def _write(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` (atomically) unless it already holds exactly that."""
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return True


def _validate_env(text: str, ch: Choices, found: _Installed, where: Path) -> None:
    """Read the settings the way ``telewire serve`` will, from this template."""
    from telewire.settings import ProviderKeys, ServerSettings, read_settings

    tmp = where.with_name(f".{where.name}.check")
    tmp.write_text(text, encoding="utf-8")
    try:
        read_settings(ServerSettings, title=f"settings in {where}", _env_file=str(tmp))
        read_settings(ProviderKeys, title=f"provider keys in {where}", _env_file=str(tmp))
        for name in ch.carrier.split(","):
            model = found.carrier_models.get(name)
            if model is not None:
                read_settings(model, title=f"{name} carrier settings in {where}",
                              _env_file=str(tmp))
    finally:
        tmp.unlink(missing_ok=True)


def run_init(opts: InitOptions, *, ask: Asker | None = None, out: TextIO = sys.stdout) -> int:
    """Ask or take the choices, write the graph and the ``.env`` template, check both by
    loading them, and say what to run next.

    Args:
        opts: the flags.
        ask: asks one question (``None``: ask nothing; missing choices keep their current
            value, or the default on a first run).
        out: where the summary goes.

    Raises:
        ConfigError: a bad flag value, a broken or unrelated existing file (without ``force``),
            a graph the choices cannot be written into; nothing is written then.
    """
    from telewire.graph import build_graph

    root = opts.dir
    root.mkdir(parents=True, exist_ok=True)
    graph_path, example_path, env_path = root / GRAPH_FILE, root / ENV_EXAMPLE, root / ENV_FILE
    found = _installed()
    text, raw = _read_graph(graph_path, opts.force)
    env_text = example_path.read_text(encoding="utf-8") if example_path.exists() else None
    if env_text is not None and not env_text.startswith(MARKER):
        if not opts.force:
            raise ConfigError(f"{example_path} exists and was not written by telewire init; "
                              "move it away, or pass --force to replace it")
        env_text = None
    current = _current(raw, env_text, str(graph_path), found, env_path)
    ch = _resolve(opts, current, found, ask)
    new_graph = _graph_text(text, raw, ch, current, str(graph_path))
    build_graph(tomllib.loads(new_graph), source=str(graph_path))
    example = _render_env(ch, found, example=True)
    _validate_env(_render_env(ch, found, example=False), ch, found, example_path)
    wrote = []
    if _write(graph_path, new_graph):
        wrote.append(GRAPH_FILE)
    if _write(example_path, example):
        wrote.append(ENV_EXAMPLE)
    env_notes: list[str] = []
    if not env_path.exists():
        _write(env_path, _render_env(ch, found, example=False))
        wrote.append(ENV_FILE)
    else:
        env_notes = _env_differences(env_path, ch, found)
    _report(out, root, ch, found, wrote, env_notes)
    return 0


def _env_differences(env_path: Path, ch: Choices, found: _Installed) -> list[str]:
    """What an existing ``.env`` (never rewritten) lacks or says otherwise, secrets unshown."""
    have = _parse_env(env_path.read_text(encoding="utf-8"))
    notes = []
    for _, variables in _env_vars(ch, found, example=False):
        for v in variables:
            if not v.active:
                continue
            if v.name not in have:
                notes.append(f"add {v.name}=" + ("" if v.secret else mask_text(v.value)))
            elif not v.secret and v.value and have[v.name] != v.value:
                if _without_password(have[v.name]) == _without_password(v.value):
                    continue
                notes.append(f"set {v.name}={mask_text(v.value)} (it says "
                             f"{mask_text(have[v.name]) if not is_secret_name(v.name) else '…'})")
    return notes


def _report(out: TextIO, root: Path, ch: Choices, found: _Installed, wrote: list[str],
            env_notes: list[str]) -> None:
    control = "in-process" if ch.control == "none" else mask_text(ch.control)
    tracing = {"sqlite": "SQLite telewire-spans.db", "otlp": "SQLite and OTLP/HTTP",
               "off": "off"}[ch.tracing]
    out.write(f"carrier {ch.carrier}, provider {ch.provider}, store {mask_text(ch.store_url)}, "
              f"control plane {control}, tracing {tracing}\n")
    out.write(f"wrote {', '.join(wrote)} in {root}\n" if wrote else
              f"{root}: nothing to change\n")
    if env_notes:
        out.write(f"{root / ENV_FILE} was left as it is; it differs from {ENV_EXAMPLE}:\n")
        for note in env_notes:
            out.write(f"  {note}\n")
    have = _parse_env((root / ENV_FILE).read_text(encoding="utf-8"))
    secrets = [v.name for _, vs in _env_vars(ch, found, example=False) for v in vs
               if v.secret and v.active and not have.get(v.name)]
    if secrets:
        out.write(f"fill in the secrets in {ENV_FILE}: {', '.join(secrets)}\n")
    cd = "" if root.resolve() == Path.cwd().resolve() else f"cd {root} && "
    out.write(f"next:\n  {cd}telewire serve --config {GRAPH_FILE}\n")


def interactive_asker(stdin: TextIO | None = None, out: TextIO | None = None) -> Asker | None:
    """An asker on the terminal, or ``None`` when stdin is not one."""
    stdin = stdin or sys.stdin
    if not stdin.isatty():
        return None
    return _tty_asker(stdin, out or sys.stdout)


def cmd_init(args: Any) -> int:
    """``telewire init``: the CLI's entry (``args`` from its argument parser)."""
    opts = InitOptions(dir=Path(args.dir), carrier=args.carrier, provider=args.provider,
                       store=args.store, store_url=args.store_url, control=args.control,
                       tracing=args.tracing, yes=args.yes, force=args.force)
    ask = None if args.yes else interactive_asker()
    return run_init(opts, ask=ask)
