"""Function tools the model may call: user tools from the graph and telewire's built-ins.

Depends on ``telewire.realtime.base`` (``ToolSpec``), ``telewire.transfer``, ``telewire.errors``
and ``stevedore``; the ``realtime_agent`` node builds a :class:`ToolBox` per call and hands it to
the session.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Sequence

from telewire import transfer
from telewire.errors import ConfigError
from telewire.realtime.base import ToolSpec

if TYPE_CHECKING:
    from telewire.nodes.base import CallHandle

__all__ = ["BUILTIN_TOOLS", "TOOL_GROUP", "ToolBox", "ToolOutcome", "resolve_function"]

TOOL_GROUP = "telewire.tools"

#: telewire's own tools, as the model sees them.
BUILTIN_TOOLS: dict[str, dict[str, Any]] = {
    "end_call": {
        "description": "End the phone call. Use it after you have said goodbye; the call ends "
                       "once the caller has heard everything you said.",
        "parameters": {"type": "object", "properties": {
            "reason": {"type": "string", "description": "Why the call is ending."}}},
    },
    "transfer_call": {
        "description": "Transfer the caller to another phone number or SIP address. Only the "
                       "numbers this line is configured to transfer to are accepted.",
        "parameters": {"type": "object", "properties": {
            "target": {"type": "string", "description": "E.164 number or sip: URI."}},
            "required": ["target"]},
    },
}


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a tool call produced: the output for the model, and whether the model should answer."""

    output: str
    respond: bool = True


def resolve_function(ref: str, *, where: str) -> Callable[..., Any]:
    """Find a tool function by ``"module:attr"`` or by entry point name in ``telewire.tools``.

    Raises:
        ConfigError: naming ``where`` and what could not be found.
    """
    if ":" in ref:
        module_name, _, attr = ref.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"{where}: cannot import {module_name!r}: {exc}") from None
        fn = getattr(module, attr, None)
    else:
        from telewire.plugins import load_group

        found = load_group(TOOL_GROUP, check=lambda _n, fn: None if callable(fn) else
                           f"TypeError: {type(fn).__name__} object is not callable")
        fn = found.loaded.get(ref)
        if fn is None:
            raise ConfigError(f"{where}: {ref!r} is neither 'module:function' nor a tool entry "
                              f"point: {found.unknown('tool', ref)}")
    if not callable(fn):
        raise ConfigError(f"{where}: {ref!r} is not callable")
    return fn


class ToolBox:
    """The tools of one call, and the code that runs them with a timeout.

    Args:
        specs: user tools from ``rt.config.tools``.
        builtins: names of built-in tools to offer.
        call: the call the tools act on (hang-up, transfer).
        transfer_targets: the patterns ``transfer_call`` may dial (``rt.config.transfer_targets``,
            see :mod:`telewire.transfer`); empty refuses every transfer.
    """

    def __init__(self, specs: Iterable[ToolSpec], builtins: Iterable[str], call: CallHandle,
                 *, transfer_targets: Sequence[str] = ()) -> None:
        self.call = call
        try:
            self.transfer_targets = transfer.check_patterns(transfer_targets)
        except ValueError as exc:
            raise ConfigError(f"rt.config.transfer_targets: {exc}") from None
        self._specs = {s.name: s for s in specs}
        self._functions = {s.name: resolve_function(s.function, where=f"rt.config.tools[{s.name}]")
                           for s in self._specs.values()}
        caps = call.context.capabilities or call.carrier.capabilities
        self._builtins = [b for b in builtins
                          if b != "transfer_call" or getattr(caps, "transfer", False)]
        clash = set(self._builtins) & set(self._specs)
        if clash:
            raise ConfigError(f"rt.config.tools: {sorted(clash)} clash with built-in tools")
        self.hangups = 0

    def __bool__(self) -> bool:
        return bool(self._specs or self._builtins)

    def definitions(self) -> list[dict[str, Any]]:
        """The GA ``tools`` list for ``session.update``."""
        out = [{"type": "function", "name": name, **BUILTIN_TOOLS[name]} for name in self._builtins]
        out += [{"type": "function", "name": s.name, "description": s.description,
                 "parameters": s.parameters} for s in self._specs.values()]
        return out

    async def run(self, name: str, arguments: str) -> ToolOutcome:
        """Run tool ``name`` with the model's JSON ``arguments``. Never raises: failures become
        an output the model can read."""
        try:
            args = json.loads(arguments) if arguments else {}
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as exc:
            return ToolOutcome(json.dumps({"error": f"invalid arguments: {exc}"}))
        if name == "end_call" and name in self._builtins:
            self.hangups += 1
            reason = str(args.get("reason") or "the agent ended the call")
            asyncio.ensure_future(self.call.hang_up("end_call", reason))
            return ToolOutcome(json.dumps({"status": "ending the call"}), respond=False)
        if name == "transfer_call" and name in self._builtins:
            why, target = transfer.refusal(args.get("target"), self.transfer_targets)
            if why is not None:
                self.call.log.warning("transfer_call to {} refused: {}", target, why)
                return ToolOutcome(json.dumps({"error": f"transfer refused: {why}"}))
            error = await self.call.transfer(target)
            if error is None:
                return ToolOutcome(json.dumps({"status": "transferred"}), respond=False)
            return ToolOutcome(json.dumps({"error": error}))
        spec = self._specs.get(name)
        if spec is None:
            return ToolOutcome(json.dumps({"error": f"no tool named {name!r}"}))
        fn = self._functions[name]
        try:
            async with asyncio.timeout(spec.timeout_s):
                if inspect.iscoroutinefunction(fn):
                    result = await fn(**args)
                else:
                    result = await asyncio.to_thread(fn, **args)
        except TimeoutError:
            self.call.log.warning("tool {} timed out after {:g} s", name, spec.timeout_s)
            return ToolOutcome(json.dumps({"error": f"{name} timed out after {spec.timeout_s:g} s"}))
        except Exception as exc:  # the tool's failure is the model's information, not a crash
            self.call.log.warning("tool {} failed: {}: {}", name, type(exc).__name__, exc)
            return ToolOutcome(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        try:
            return ToolOutcome(result if isinstance(result, str) else json.dumps(result))
        except (TypeError, ValueError) as exc:
            return ToolOutcome(json.dumps({"error": f"result is not JSON-serialisable: {exc}"}))


ToolRunner = Callable[[str, str], Awaitable[ToolOutcome]]
