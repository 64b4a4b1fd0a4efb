"""The ``carrier_out`` node: wraps agent audio in the carrier's envelopes, tracks what was heard.

Depends on ``telewire.nodes.base``, ``telewire.playback`` and ``telewire.frames``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

from pydantic import Field

from telewire.frames import AudioFrame, EndFrame, InterruptFrame, MarkFrame
from telewire.nodes.base import Node, NodeConfig
from telewire.playback import PlaybackLedger

__all__ = ["CarrierOut"]

#: interrupt sources counted by name; any other is counted as ``other`` (a label set that a
#: misbehaving node cannot grow)
_SOURCES = frozenset({"dtmf", "vad", "model", "operator", "tool"})


class CarrierOutConfig(NodeConfig):
    """``[nodes.tel_out.config]``.

    Attributes:
        mark_interval_ms: place a playback mark after at least this much agent audio, when the
            carrier has marks (besides a mark after the first audio of every item, whose echo
            anchors the playout clock, and one at every item boundary). Between marks the heard
            position is interpolated at the playout rate; later marks only correct for audio the
            carrier did not play on time. Smaller corrects sooner but costs a message each way
            per mark: at 250 ms, about 8% more messages than the audio itself.
        mark_jitter: stretch each mark interval by a random fraction up to this (0.5: marks
            every 1 to 1.5 ``mark_interval_ms``), so that calls that started together do not all
            mark in the same instant. 0 marks at exact intervals.
        drain_timeout_s: how long a hang-up waits for the last agent audio to play.
        response_envelope_spec: how outbound messages look, for carriers configured by envelope
            specs: a preset name, a TOML file path, or an inline table. Defaults to the response
            spec of the preset or file named by ``tel_in.config.envelope_spec``.
    """

    mark_interval_ms: float = Field(default=1000.0, gt=0)
    mark_jitter: float = Field(default=0.5, ge=0, le=10)
    drain_timeout_s: float = Field(default=10.0, ge=0)
    response_envelope_spec: str | dict[str, Any] | None = None


class CarrierOut(Node):
    """Sends agent audio to the carrier untouched (payload in its wire form) and keeps the playout
    ledger: on an interrupt it clears the carrier and passes the interrupt on with the item that
    was playing and how much of it the caller heard (port ``heard``)."""

    inputs: ClassVar = {
        "audio_in": (AudioFrame,),
        "interrupt_in": (InterruptFrame,),
        "marks_in": (MarkFrame,),
    }
    outputs: ClassVar = {"heard": (InterruptFrame,), "played": (MarkFrame,)}
    Config: ClassVar = CarrierOutConfig

    def __init__(self, name: str, config: CarrierOutConfig, call) -> None:  # type: ignore[no-untyped-def]
        super().__init__(name, config, call)
        self._carrier = call.carrier
        self._ctx = call.context
        self._send = call.send_to_carrier
        caps = call.context.capabilities or self._carrier.capabilities
        self.ledger = PlaybackLedger(marks=caps.marks, mark_interval_ms=config.mark_interval_ms,
                                     mark_jitter=config.mark_jitter,
                                     bytes_per_ms=caps.media_format.sample_rate
                                     * (2 if caps.media_format.codec == "l16" else 1) / 1000.0)
        self._clock = time.monotonic
        self._acked = asyncio.Event()
        self.frames_sent = 0
        self.clears_sent = 0
        self.interrupts: dict[str, int] = {}
        self.reactions_s: list[float] = []  # interrupt raised -> clear sent, per barge-in

    async def _mark(self, name: str | None) -> None:
        if name is not None:
            msg = self._carrier.build_mark(self._ctx, name)
            if msg is not None:
                await self._send(msg)

    async def on_audio_in(self, frame: AudioFrame) -> None:  # type: ignore[override]
        if not self._ctx.started:
            return
        ledger = self.ledger
        now = self._clock()
        mark = ledger.before_audio(frame.item_id, now)
        if mark is not None:
            await self._mark(mark)
        await self._send(self._carrier.wrap_audio(self._ctx, frame))
        self.frames_sent += 1
        mark = ledger.after_audio(frame.byte_length, now)
        if mark is not None:
            await self._mark(mark)

    async def on_interrupt_in(self, frame: InterruptFrame) -> None:  # type: ignore[override]
        if not self._ctx.started:
            return
        now = self._clock()
        if not self.ledger.drained(now):  # something may still be playing: drop it
            msg = self._carrier.build_clear(self._ctx)
            if msg is not None:
                self.clears_sent += 1
                await self._send(msg)
                if len(self.reactions_s) < 1000:
                    self.reactions_s.append(self._clock() - frame.raised_at)
        source = frame.source if frame.source in _SOURCES else "other"
        self.interrupts[source] = self.interrupts.get(source, 0) + 1
        heard = self.ledger.clear(now)
        self.call.log.info("barge-in ({}): {}", frame.source,
                           f"item {heard.item_id} heard {heard.heard_ms:.0f} of "
                           f"{heard.sent_ms:.0f} ms" if heard else "nothing was playing")
        await self.emit("heard", InterruptFrame(
            source=frame.source, reason=frame.reason,
            item_id=heard.item_id if heard else None,
            heard_ms=heard.heard_ms if heard else None, raised_at=frame.raised_at))

    def counters(self) -> dict[str, float]:
        out: dict[str, float] = {"frames_out": self.frames_sent}
        for source, n in self.interrupts.items():
            out["interrupts:" + source] = n
        return out

    def samples(self) -> dict[str, list[float]]:
        return {"barge_in_reaction_seconds": self.reactions_s}

    async def on_marks_in(self, frame: MarkFrame) -> None:  # type: ignore[override]
        if self.ledger.acknowledged(frame.name, self._clock()):
            self._acked.set()
            await self.emit("played", frame)
        else:
            self.call.log.debug("mark {!r} flushed by a clear, repeated, or not ours", frame.name)

    async def drain(self) -> bool:
        """Wait until the agent audio sent so far has played (at most ``drain_timeout_s``).

        Returns ``True`` when it has, ``False`` on timeout.
        """
        await self._mark(self.ledger.final_mark())
        clock = self._clock
        deadline = clock() + self.config.drain_timeout_s
        while not self.ledger.drained(clock()):
            left = deadline - clock()
            if left <= 0:
                return False
            if self.ledger.marks:
                self._acked.clear()
                try:
                    await asyncio.wait_for(self._acked.wait(), timeout=left)
                except asyncio.TimeoutError:
                    return False
            else:
                unplayed = self.ledger.total_sent - self.ledger.position(clock())
                await asyncio.sleep(min(left, max(0.005, unplayed / self.ledger.rate / 1000.0)))
        return True

    async def on_call_end(self, frame: EndFrame) -> None:
        self._acked.set()
