"""The node base class: typed input and output ports, per-call instances, cheap dispatch.

Depends on ``telewire.frames`` and ``telewire.carrier``; every node type derives from it.

A node type declares its ports as class attributes (``inputs``/``outputs``: port name to the
frame types it carries) and its config as a pydantic model (validated once when the graph file is
loaded). For each call the graph makes one instance of every node and wires each output port to
its targets' handlers: ``await self.emit("audio_out", frame)`` is a dict lookup and direct
awaits, with no task or queue per hop. An input port ``x`` is handled by ``async def on_x``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, ClassVar, Mapping, Protocol

from pydantic import BaseModel, ConfigDict

from telewire.frames import EndFrame, ErrorFrame, Frame, StartFrame

if TYPE_CHECKING:
    from loguru import Logger

    from telewire.carrier import CallContext
    from telewire.registry import Carrier

__all__ = ["CallHandle", "Handler", "Node", "NodeConfig"]

Handler = Callable[[Frame], Awaitable[None]]


class NodeConfig(BaseModel):
    """Base of node config models: unknown keys are an error naming the key."""

    model_config = ConfigDict(extra="forbid")


class CallHandle(Protocol):
    """What a node may ask of the call it runs in (implemented by ``telewire.graph.CallGraph``)."""

    carrier: Carrier
    context: CallContext
    log: Logger

    async def send_to_carrier(self, message: str | bytes) -> None:
        """Send one message on the carrier's media socket."""

    async def end(self, reason: str, detail: str = "") -> None:
        """End the call (idempotent): every node sees one ``EndFrame``."""

    async def hang_up(self, reason: str, detail: str = "") -> None:
        """Hang up once the agent's last audio has played, through the carrier's hook."""

    async def transfer(self, target: str) -> str | None:
        """Transfer the call; ``None`` on success, else an error for the model."""

    def report(self, frame: ErrorFrame) -> None:
        """Record a non-fatal error against the call."""


async def _drop(frame: Frame) -> None:
    """Target of an output port with nothing connected."""


class Node:
    """Base of every node type.

    Class attributes:
        inputs: input port name -> tuple of frame types accepted.
        outputs: output port name -> tuple of frame types emitted.
        Config: the pydantic model of ``[nodes.<name>.config]``.
        requires: carrier capabilities the node needs (names of ``Capabilities`` fields).
        observes_all: the node sees every frame on every output port of the graph through
            :meth:`observe` (the recorder, tracing), after the frame's targets.
    """

    inputs: ClassVar[Mapping[str, tuple[type[Frame], ...]]] = {}
    outputs: ClassVar[Mapping[str, tuple[type[Frame], ...]]] = {}
    Config: ClassVar[type[NodeConfig]] = NodeConfig
    requires: ClassVar[tuple[str, ...]] = ()
    observes_all: ClassVar[bool] = False

    def __init__(self, name: str, config: Any, call: CallHandle) -> None:
        self.name = name
        self.config = config
        self.call = call
        self._out: dict[str, Handler] = {port: _drop for port in self.outputs}

    def connect(self, port: str, handler: Handler) -> None:
        """Wire output ``port`` to ``handler`` (the graph calls this once per call)."""
        self._out[port] = handler

    async def emit(self, port: str, frame: Frame) -> None:
        """Send ``frame`` out of ``port`` to every connected input and observer."""
        await self._out[port](frame)

    def handler(self, port: str) -> Handler:
        """The coroutine function handling input ``port``."""
        return getattr(self, "on_" + port)

    def observe(self, node: str, port: str, frame: Frame) -> None:
        """See a frame leaving ``node.port`` (only for ``observes_all`` nodes). Must be quick."""

    def counters(self) -> Mapping[str, float]:
        """What this node counted so far, for metrics (``telewire.metrics``): ``name`` or
        ``name:label`` -> a number. Read when metrics are scraped and when the call ends, never
        per frame; nodes keep plain counters and report them here."""
        return {}

    def samples(self) -> Mapping[str, list[float]]:
        """Histogram samples this call produced (``model_first_audio_seconds`` …), read once
        when the call ends."""
        return {}

    @classmethod
    def carrier_problem(cls, config: Any, capabilities: Any) -> str | None:
        """Why this node, so configured, cannot serve calls of a carrier with these
        :class:`~telewire.carrier.Capabilities` (``None``: it can). Checked when a server
        starts, once per carrier; a carrier with a problem has its calls refused."""
        return None

    @classmethod
    async def on_server_start(cls, name: str, config: Any) -> None:
        """A server that runs this node's graph started (once per node of the graph, before
        any call): resume work left from an earlier process here (the recorder's spool)."""

    async def on_call_start(self, frame: StartFrame) -> None:
        """The call started (every node sees it, before any other frame)."""

    async def say_goodbye(self, reason: str, detail: str) -> None:
        """The runtime is ending the call (``reason``: ``shutdown`` when the server drains):
        say a goodbye to the caller if this node can, and return once it has been said (the
        call then hangs up after the audio has played). Bounded by the caller's timeout;
        most nodes have nothing to say."""

    async def on_call_end(self, frame: EndFrame) -> None:
        """The call ended (every node sees it once; release resources here)."""
