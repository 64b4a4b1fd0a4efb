"""The ``echo`` provider: plays the caller's audio straight back, for testing carriers with no model.

Depends on ``telewire.realtime.base`` and ``telewire.frames``.
"""

from __future__ import annotations

from telewire.frames import AudioFrame, StartFrame
from telewire.realtime.base import RealtimeSession

__all__ = ["EchoSession"]


class EchoSession(RealtimeSession):
    """Returns each caller audio frame as agent audio, payload untouched, in order."""

    name = "echo"
    _open = False

    async def start(self, start: StartFrame) -> None:
        self._open = True

    async def send_audio(self, frame: AudioFrame) -> None:
        if self._open:
            await self.sink(AudioFrame(payload=frame.payload, codec=frame.codec,
                                       sample_rate=frame.sample_rate, track="outbound",
                                       item_id="echo"))

    async def close(self) -> None:
        self._open = False
