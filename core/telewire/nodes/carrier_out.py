"""The ``carrier_out`` node: wraps agent audio in the carrier's envelopes and sends it.

Depends on ``telewire.nodes.base`` and ``telewire.frames``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from telewire.frames import AudioFrame, InterruptFrame, MarkFrame, StartFrame
from telewire.nodes.base import Node, NodeConfig

__all__ = ["CarrierOut"]


class CarrierOutConfig(NodeConfig):
    """``[nodes.tel_out.config]``.

    Attributes:
        mark_items: after the last audio of each agent item, send a mark (when the carrier has
            marks) so its playback can be confirmed.
        response_envelope_spec: how outbound messages look, for carriers configured by envelope
            specs: a preset name, a TOML file path, or an inline table. Defaults to the response
            spec of the preset or file named by ``tel_in.config.envelope_spec``.
    """

    mark_items: bool = True
    response_envelope_spec: str | dict[str, Any] | None = None


class CarrierOut(Node):
    """Sends agent audio to the carrier untouched (payload in its wire form), clears on interrupt,
    and marks the end of each agent item."""

    inputs: ClassVar = {
        "audio_in": (AudioFrame,),
        "interrupt_in": (InterruptFrame,),
        "marks_in": (MarkFrame,),
    }
    outputs: ClassVar = {"played": (MarkFrame,)}
    Config: ClassVar = CarrierOutConfig

    def __init__(self, name: str, config: CarrierOutConfig, call) -> None:  # type: ignore[no-untyped-def]
        super().__init__(name, config, call)
        self._carrier = call.carrier
        self._ctx = call.context
        self._send = call.send_to_carrier
        self._marks = config.mark_items and self._carrier.capabilities.marks
        self._item: str | None = None
        self._mark_seq = 0
        self.pending_marks: dict[str, str | None] = {}
        self.frames_sent = 0
        self.clears_sent = 0

    async def on_call_start(self, frame: StartFrame) -> None:
        self._item = None

    async def on_audio_in(self, frame: AudioFrame) -> None:  # type: ignore[override]
        if not self._ctx.started:
            return
        if self._marks and frame.item_id != self._item and self._item is not None:
            await self._mark_item()
        self._item = frame.item_id
        await self._send(self._carrier.wrap_audio(self._ctx, frame))
        self.frames_sent += 1

    async def _mark_item(self) -> None:
        self._mark_seq += 1
        name = f"item-{self._mark_seq}"
        msg = self._carrier.build_mark(self._ctx, name)
        if msg is not None:
            self.pending_marks[name] = self._item
            await self._send(msg)

    async def on_interrupt_in(self, frame: InterruptFrame) -> None:  # type: ignore[override]
        if not self._ctx.started:
            return
        msg = self._carrier.build_clear(self._ctx)
        if msg is not None:
            self.clears_sent += 1
            await self._send(msg)
        self._item = None

    async def on_marks_in(self, frame: MarkFrame) -> None:  # type: ignore[override]
        if self.pending_marks.pop(frame.name, False) is not False:
            await self.emit("played", frame)
        else:
            self.call.log.debug("mark {!r} acknowledged but not ours or already seen", frame.name)
