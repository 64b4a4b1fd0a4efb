"""One entry-point loader for every plugin group: carriers, nodes, providers, tools, stores.

Depends on ``stevedore`` and ``loguru`` only, so every module that finds plugins can use it.

stevedore finds the entry points of a group; each is imported, checked (a class of the expected
base, or whatever the group's ``check`` accepts) and recorded with its distribution and version.
A plugin that fails to import, fails the check, or claims a name another distribution also claims
is recorded as a :class:`LoadFailure` with its error, logged once, and left out; the others load.
``telewire plugins`` prints both lists the same way for every group.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Generic, TypeVar

from loguru import logger
from stevedore import ExtensionManager

__all__ = [
    "GROUPS",
    "LoadFailure",
    "PluginInfo",
    "PluginSet",
    "entry_point_origin",
    "load_group",
]

T = TypeVar("T")

#: Every entry-point group telewire reads, with the word ``telewire plugins`` uses for it.
GROUPS: dict[str, str] = {
    "telewire.carriers": "carrier",
    "telewire.nodes": "node",
    "telewire.providers": "provider",
    "telewire.stores": "store",
    "telewire.tools": "tool",
}


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """A plugin that could not be loaded: its entry point, distribution and error."""

    name: str
    entry_point: str
    distribution: str
    error: str
    group: str = ""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """An installed plugin (carrier, node type, provider, store …) for ``telewire plugins``."""

    group: str
    name: str
    entry_point: str
    distribution: str
    version: str


@dataclass(slots=True)
class PluginSet(Generic[T]):
    """What one group's entry points yielded: the loaded objects by name, and the failures."""

    group: str
    loaded: dict[str, T] = field(default_factory=dict)
    infos: dict[str, PluginInfo] = field(default_factory=dict)
    failures: list[LoadFailure] = field(default_factory=list)

    def failure(self, name: str) -> LoadFailure | None:
        """The failure recorded for ``name``, if it failed to load."""
        return next((f for f in self.failures if f.name == name), None)

    def unknown(self, kind: str, name: str) -> str:
        """The message for a name nobody provides: the installed names, and ``name``'s load
        error when it is installed but broken."""
        msg = f"unknown {kind} {name!r}; installed: {', '.join(sorted(self.loaded)) or 'none'}"
        broken = self.failure(name)
        if broken is not None:
            msg += f"; {name!r} is installed but failed to load: {broken.error}"
        return msg


def entry_point_origin(group: str, name: str, value: str = "") -> tuple[str, str]:
    """The ``(distribution, version)`` that provides entry point ``name`` in ``group``.

    stevedore's cached entry points do not carry their distribution, so it is looked up here.
    Returns empty strings when it cannot be found (a plugin registered by hand).
    """
    for ep in metadata.entry_points(group=group, name=name):
        if value and ep.value != value:
            continue
        dist = getattr(ep, "dist", None)
        if dist is not None:
            return dist.metadata["Name"] or "", dist.version or ""
    return "", ""


_cache: dict[str, PluginSet[Any]] = {}
_lock = threading.Lock()


def load_group(group: str, *, base: type | None = None,
               check: Callable[[str, Any], str | None] | None = None,
               cached: bool = True) -> PluginSet[Any]:
    """Load every entry point of ``group``.

    Args:
        group: the entry-point group (``telewire.providers``).
        base: when given, each plugin must be a subclass of it.
        check: called with ``(name, plugin)`` after the base check; returns an error text to
            refuse the plugin, ``None`` to accept it.
        cached: reuse the result of an earlier load of the same group in this process
            (entry points do not change while it runs); ``False`` loads again.
    """
    if cached and group in _cache:
        return _cache[group]
    with _lock:
        if cached and group in _cache:
            return _cache[group]
        found: PluginSet[Any] = PluginSet(group)
        kind = GROUPS.get(group, "plugin")

        def fail(name: str, value: str, error: str) -> None:
            dist, _ = entry_point_origin(group, name, value)
            found.failures.append(LoadFailure(name, value, dist, error, group))
            logger.error("{} plugin {!r} ({}) failed to load: {}", kind, name, value, error)

        def on_failure(_mgr: Any, ep: metadata.EntryPoint, err: BaseException) -> None:
            fail(ep.name, ep.value, f"{type(err).__name__}: {err}")

        mgr = ExtensionManager(namespace=group, invoke_on_load=False,
                               on_load_failure_callback=on_failure)
        claimed: dict[str, str] = {}
        for ext in mgr.extensions:
            name, value, plugin = ext.name, ext.entry_point.value, ext.plugin
            if name in claimed:
                if claimed[name] != value:
                    fail(name, value, f"ConflictError: {kind} name {name!r} is also claimed by "
                                      f"{claimed[name]}; neither is loaded")
                    found.loaded.pop(name, None)
                    found.infos.pop(name, None)
                continue
            claimed[name] = value
            error = None
            if base is not None and not (isinstance(plugin, type) and issubclass(plugin, base)):
                error = f"TypeError: {value} is not a {base.__module__}.{base.__qualname__} subclass"
            elif check is not None:
                error = check(name, plugin)
            if error is not None:
                fail(name, value, error)
                continue
            dist, version = entry_point_origin(group, name, value)
            found.loaded[name] = plugin
            found.infos[name] = PluginInfo(group, name, value, dist, version)
        if cached:
            _cache[group] = found
        return found
