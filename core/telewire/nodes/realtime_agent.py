"""The ``realtime_agent`` node (``rt``): connects the call to a realtime speech-to-speech model.

Depends on ``telewire.nodes.base``, ``telewire.realtime`` and ``telewire.frames``.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from pydantic import ConfigDict, Field

from telewire.errors import ConfigError, ProviderError
from telewire.frames import (
    AudioFrame,
    DTMFFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptFrame,
    StartFrame,
    SteerFrame,
    TranscriptFrame,
    UsageFrame,
)
from telewire.nodes.base import Node
from telewire.realtime.base import ProviderConfig, RealtimeSession, create_session
from telewire.tools import ToolBox

__all__ = ["RealtimeAgent"]


class RealtimeAgentConfig(ProviderConfig):
    """``[nodes.rt.config]``: the provider settings plus how the node buffers.

    Attributes:
        max_pending_ms: caller audio kept while the model connection opens; older audio is
            dropped (and counted) beyond this.
    """

    model_config = ConfigDict(extra="forbid")
    max_pending_ms: int = Field(default=10_000, gt=0)


class RealtimeAgent(Node):
    """Feeds caller audio to the model and emits what the model says."""

    inputs: ClassVar = {
        "audio_in": (AudioFrame,),
        "dtmf_in": (DTMFFrame,),
        "interrupt_in": (InterruptFrame,),
        "steer_in": (SteerFrame,),
    }
    outputs: ClassVar = {
        "audio_out": (AudioFrame,),
        "transcript": (TranscriptFrame,),
        "usage": (UsageFrame,),
        "interrupt": (InterruptFrame,),
        "errors": (ErrorFrame,),
    }
    Config: ClassVar = RealtimeAgentConfig

    def __init__(self, name: str, config: RealtimeAgentConfig, call) -> None:  # type: ignore[no-untyped-def]
        super().__init__(name, config, call)
        self.session: RealtimeSession | None = None
        self._ready = False
        self._pending: list[AudioFrame] = []
        self._pending_ms = 0.0
        self.dropped_frames = 0
        self._connect: asyncio.Task[None] | None = None
        self._routes = {
            AudioFrame: "audio_out",
            TranscriptFrame: "transcript",
            UsageFrame: "usage",
            InterruptFrame: "interrupt",
            ErrorFrame: "errors",
        }

    async def on_call_start(self, frame: StartFrame) -> None:
        try:
            kwargs: dict[str, Any] = {}
            if self.config.provider != "echo":
                kwargs["log"] = self.call.log
                kwargs["tools"] = ToolBox(self.config.tools, self.config.builtin_tools, self.call,
                                          transfer_targets=self.config.transfer_targets)
            self.session = create_session(self.config, self._from_model, **kwargs)
        except ConfigError as exc:
            self.call.log.error("{}", exc)
            await self.call.end("config_error", str(exc))
            return
        self._connect = asyncio.create_task(self._open(frame), name=f"{self.name}-connect")

    async def _open(self, frame: StartFrame) -> None:
        assert self.session is not None
        try:
            await self.session.start(frame)
        except (ProviderError, ConfigError, OSError, asyncio.TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            self.call.log.error("realtime provider {!r} failed to start: {}",
                                self.config.provider, detail)
            await self.call.end("provider_error", detail)
            return
        self._ready = True
        pending, self._pending = self._pending, []
        for f in pending:
            await self.session.send_audio(f)

    async def _from_model(self, frame: Frame) -> None:
        """The session's sink: route model output to our ports (agent audio first: it is most
        of what the model sends)."""
        if type(frame) is AudioFrame:
            await self._out["audio_out"](frame)
            return
        port = self._routes.get(type(frame))
        if port is not None:
            if port == "errors":
                self.call.report(frame)  # type: ignore[arg-type]
            await self.emit(port, frame)
        elif isinstance(frame, EndFrame):
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(self.call.end(frame.reason, frame.detail)))

    async def on_audio_in(self, frame: AudioFrame) -> None:  # type: ignore[override]
        if self._ready:
            await self.session.send_audio(frame)  # type: ignore[union-attr]
            return
        if self.session is None:
            return
        self._pending.append(frame)
        self._pending_ms += frame.duration_ms
        while self._pending_ms > self.config.max_pending_ms and self._pending:
            old = self._pending.pop(0)
            self._pending_ms -= old.duration_ms
            self.dropped_frames += 1

    async def on_dtmf_in(self, frame: DTMFFrame) -> None:  # type: ignore[override]
        if self._ready:
            await self.session.send_dtmf(frame)  # type: ignore[union-attr]

    async def on_interrupt_in(self, frame: InterruptFrame) -> None:  # type: ignore[override]
        if self._ready:
            await self.session.interrupt(frame)  # type: ignore[union-attr]

    async def on_steer_in(self, frame: SteerFrame) -> None:  # type: ignore[override]
        if self._ready:
            await self.session.steer(frame)  # type: ignore[union-attr]

    async def on_call_end(self, frame: EndFrame) -> None:
        if self._connect is not None and not self._connect.done():
            self._connect.cancel()
            try:
                await self._connect
            except (asyncio.CancelledError, Exception):
                pass
        if self.session is not None:
            await self.session.close()
        self._ready = False
        counts = self.counters()
        if any(counts.values()):
            self.call.log.info("{}: {}", self.name,
                               ", ".join(f"{k} {v}" for k, v in counts.items() if v))

    def counters(self) -> dict[str, int]:
        """Caller frames dropped while the model connection opened, plus the session's own
        counters (reconnects, handovers, bad audio deltas, history items dropped …)."""
        counts = {"caller_frames_dropped": self.dropped_frames}
        if self.session is not None:
            counts.update(self.session.counters())
        return counts
