"""The ``carrier_in`` node: turns the carrier's media-socket messages into typed frames.

Depends on ``telewire.nodes.base``, ``telewire.frames`` and ``telewire.errors``.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from pydantic import Field, field_validator

from telewire.errors import CarrierProtocolError
from telewire.frames import (
    DTMF_DIGITS,
    AnsweredByFrame,
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
        max_messages_per_s / message_burst: a token bucket on every inbound message of this
            connection, checked before it is parsed (media arrives near 50 a second, marks echo
            about one a second); messages over it are dropped and counted.
        max_dtmf_per_s / dtmf_burst: the same for DTMF digits (people press a few a second).
        max_dropped: end the call once this many messages were dropped over the bucket (a
            flood, which would otherwise keep the event loop parsing for the other calls);
            ``0`` never does.
        log_errors: how many malformed-message errors are logged one by one; after that, one
            line every ``log_every_s`` seconds says how many more there were.
    """

    interrupt_dtmf_digit: str = "*"
    envelope_spec: str | dict[str, Any] | None = None
    max_message_bytes: int | None = Field(default=None, gt=0)
    max_errors: int = Field(default=500, ge=0)
    max_messages_per_s: float = Field(default=100.0, gt=0)
    message_burst: int = Field(default=500, gt=0)
    max_dtmf_per_s: float = Field(default=5.0, gt=0)
    dtmf_burst: int = Field(default=10, gt=0)
    max_dropped: int = Field(default=2000, ge=0)
    log_errors: int = Field(default=20, ge=0)
    log_every_s: float = Field(default=10.0, gt=0)

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
    Messages and DTMF digits beyond their token buckets are dropped before they cost a parse;
    both floods and malformed input are logged a bounded number of times per call.
    """

    inputs: ClassVar = {}
    outputs: ClassVar = {
        "audio": (AudioFrame,),
        "dtmf": (DTMFFrame,),
        "marks": (MarkFrame,),
        "interrupt": (InterruptFrame,),
        "errors": (ErrorFrame,),
        "answered_by": (AnsweredByFrame,),
    }
    Config: ClassVar = CarrierInConfig

    def __init__(self, name: str, config: CarrierInConfig, call) -> None:  # type: ignore[no-untyped-def]
        super().__init__(name, config, call)
        caps = call.context.capabilities or call.carrier.capabilities
        self.max_bytes = config.max_message_bytes or caps.max_message_bytes
        self.messages = 0
        self.audio_frames = 0
        self.error_count = 0
        self.dropped_messages = 0
        self.dropped_dtmf = 0
        self._parse = call.carrier.parse_inbound
        self._ctx = call.context
        now = time.monotonic()
        self._rate, self._burst = config.max_messages_per_s, float(config.message_burst)
        self._tokens, self._filled = self._burst, now
        self._dtmf_tokens, self._dtmf_filled = float(config.dtmf_burst), now
        self._quiet_until = 0.0
        self._suppressed = 0

    async def feed(self, message: str | bytes) -> None:
        """Handle one message received on the carrier socket."""
        self.messages += 1
        now = time.monotonic()
        tokens = self._tokens + (now - self._filled) * self._rate
        self._filled = now
        if tokens < 1.0:
            self._tokens = tokens
            self.dropped_messages += 1
            if self.dropped_messages == self.config.max_dropped:  # a flood, not a burst
                await self._error(f"{self.call.carrier.name}: {self.dropped_messages} inbound "
                                  f"messages over {self._rate:g} a second dropped; ending the "
                                  "call (tel_in.config.max_dropped)", fatal=True)
                return
            self._log_limited(now, "inbound messages over {:g} a second (burst {:g}); {} dropped "
                              "so far", self._rate, self._burst, self.dropped_messages)
            return
        self._tokens = (tokens if tokens < self._burst else self._burst) - 1.0
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
            if not self._take_dtmf():
                return
            digit = self.config.interrupt_dtmf_digit
            if digit and frame.digit == digit:
                await self.emit("interrupt", InterruptFrame(source="dtmf", reason=f"digit {digit}"))
            else:
                await self.emit("dtmf", frame)
        elif isinstance(frame, MarkFrame):
            await self.emit("marks", frame)
        elif isinstance(frame, AnsweredByFrame):
            self.call.log.info("answered by: {}", frame.result)
            await self.emit("answered_by", frame)
        elif isinstance(frame, EndFrame):
            await self.call.end(frame.reason, frame.detail)
        elif isinstance(frame, AudioFrame):
            self.audio_frames += 1
            await self.emit("audio", frame)

    def counters(self) -> dict[str, float]:
        return {"frames_in": self.audio_frames,
                "dropped_frames:rate_limit": self.dropped_messages,
                "dropped_frames:dtmf_rate_limit": self.dropped_dtmf,
                "dropped_frames:malformed": self.error_count}

    def _take_dtmf(self) -> bool:
        """One DTMF digit from its bucket; ``False`` (dropped, counted) when it is empty."""
        cfg = self.config
        now = time.monotonic()
        tokens = min(float(cfg.dtmf_burst),
                     self._dtmf_tokens + (now - self._dtmf_filled) * cfg.max_dtmf_per_s)
        self._dtmf_filled = now
        if tokens < 1.0:
            self._dtmf_tokens = tokens
            self.dropped_dtmf += 1
            self._log_limited(now, "DTMF digits over {:g} a second; {} dropped so far",
                              cfg.max_dtmf_per_s, self.dropped_dtmf)
            return False
        self._dtmf_tokens = tokens - 1.0
        return True

    def _log_limited(self, now: float, fmt: str, *args: Any) -> None:
        """A warning about this call's input, at most one per ``log_every_s``."""
        if now < self._quiet_until:
            self._suppressed += 1
            return
        self._quiet_until = now + self.config.log_every_s
        more = f" (+{self._suppressed} similar lines suppressed)" if self._suppressed else ""
        self._suppressed = 0
        self.call.log.warning(fmt + "{}", *args, more)

    async def _error(self, message: str, *, fatal: bool, field: str | None = None,
                     event: str | None = None) -> None:
        self.error_count += 1
        if fatal or self.error_count <= self.config.log_errors:
            self.call.log.error("{}", message)
        else:
            self._log_limited(time.monotonic(), "{} malformed messages so far; latest: {}",
                              self.error_count, message)
        frame = ErrorFrame(source=self.name, message=message, fatal=fatal,
                           details={"field": field, "event": event})
        self.call.report(frame)
        await self.emit("errors", frame)
        if fatal:
            await self.call.end("carrier_protocol_error", message)
        elif self.config.max_errors and self.error_count >= self.config.max_errors:
            await self.call.end("carrier_protocol_error",
                                f"{self.error_count} malformed messages; giving up")
