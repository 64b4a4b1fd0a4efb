"""The ``carrier_in`` node: turns the carrier's media-socket messages into typed frames.

Depends on ``telewire.nodes.base``, ``telewire.frames`` and ``telewire.errors``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator

from telewire.errors import CarrierProtocolError
from telewire.frames import (
    DTMF_DIGITS,
    AudioFrame,
    DTMFFrame,
    EndFrame,
    ErrorFrame,
    InterruptFrame,
    MarkFrame,
    StartFrame,
)
from telewire.nodes.base import Node, NodeConfig

__all__ = ["CarrierIn"]


class CarrierInConfig(NodeConfig):
    """``[nodes.tel_in.config]``.

    Attributes:
        interrupt_dtmf_digit: the keypad digit that interrupts the agent (barge-in); ``""``
            disables DTMF barge-in. Other digits go out of the ``dtmf`` port.
        max_message_bytes: refuse inbound messages larger than this (default: the carrier's
            declared limit).
        max_errors: end the call after this many malformed messages (a peer that only sends
            garbage); ``0`` never ends it.
        envelope_spec: how inbound messages look, for carriers configured by envelope specs
            (``sip_bridge``): a preset name, a TOML file path, or an inline table. Compiled once
            when the graph loads.
    """

    interrupt_dtmf_digit: str = "*"
    envelope_spec: str | dict[str, Any] | None = None
    max_message_bytes: int | None = Field(default=None, gt=0)
    max_errors: int = Field(default=500, ge=0)

    @field_validator("interrupt_dtmf_digit")
    @classmethod
    def _digit(cls, v: str) -> str:
        if v and v not in DTMF_DIGITS:
            raise ValueError(f"must be one of 0-9 * # A-D or empty, not {v!r}")
        return v


class CarrierIn(Node):
    """Parses every inbound message through the carrier's hooks and emits frames by kind.

    Malformed messages are logged with the carrier's precise error and dropped; the call goes on
    unless the error is fatal (then the call ends with reason ``carrier_protocol_error``).
    """

    inputs: ClassVar = {}
    outputs: ClassVar = {
        "audio": (AudioFrame,),
        "dtmf": (DTMFFrame,),
        "marks": (MarkFrame,),
        "interrupt": (InterruptFrame,),
        "errors": (ErrorFrame,),
    }
    Config: ClassVar = CarrierInConfig

    def __init__(self, name: str, config: CarrierInConfig, call) -> None:  # type: ignore[no-untyped-def]
        super().__init__(name, config, call)
        caps = call.context.capabilities or call.carrier.capabilities
        self.max_bytes = config.max_message_bytes or caps.max_message_bytes
        self.messages = 0
        self.audio_frames = 0
        self.error_count = 0
        self._parse = call.carrier.parse_inbound
        self._ctx = call.context

    async def feed(self, message: str | bytes) -> None:
        """Handle one message received on the carrier socket."""
        self.messages += 1
        if len(message) > self.max_bytes:
            await self._error(
                f"{self.call.carrier.name}: message of {len(message)} bytes exceeds the limit "
                f"of {self.max_bytes} bytes; dropped", fatal=False)
            return
        try:
            frames = self._parse(self._ctx, message)
        except CarrierProtocolError as exc:
            await self._error(str(exc), fatal=exc.fatal, field=exc.field, event=exc.event)
            return
        for frame in frames:
            if type(frame) is AudioFrame:  # the hot path: straight to the wired handler
                self.audio_frames += 1
                await self._out["audio"](frame)
            else:
                await self.dispatch(frame)

    async def dispatch(self, frame: object) -> None:
        """Route a non-audio frame from the carrier."""
        if isinstance(frame, StartFrame):
            await self.call.start(frame)
        elif isinstance(frame, DTMFFrame):
            digit = self.config.interrupt_dtmf_digit
            if digit and frame.digit == digit:
                await self.emit("interrupt", InterruptFrame(source="dtmf", reason=f"digit {digit}"))
            else:
                await self.emit("dtmf", frame)
        elif isinstance(frame, MarkFrame):
            await self.emit("marks", frame)
        elif isinstance(frame, EndFrame):
            await self.call.end(frame.reason, frame.detail)
        elif isinstance(frame, AudioFrame):
            self.audio_frames += 1
            await self.emit("audio", frame)

    async def _error(self, message: str, *, fatal: bool, field: str | None = None,
                     event: str | None = None) -> None:
        self.error_count += 1
        self.call.log.error("{}", message)
        frame = ErrorFrame(source=self.name, message=message, fatal=fatal,
                           details={"field": field, "event": event})
        self.call.report(frame)
        await self.emit("errors", frame)
        if fatal:
            await self.call.end("carrier_protocol_error", message)
        elif self.config.max_errors and self.error_count >= self.config.max_errors:
            await self.call.end("carrier_protocol_error",
                                f"{self.error_count} malformed messages; giving up")
