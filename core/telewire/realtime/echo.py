"""The ``echo`` provider: plays the caller's audio straight back, for testing carriers with no model.

Depends on ``telewire.realtime.base`` and ``telewire.frames``.
"""

from __future__ import annotations

from telewire.frames import AudioFrame, StartFrame, audio_frame
from telewire.realtime.base import ProviderCapabilities, RealtimeSession

__all__ = ["EchoSession"]


class EchoSession(RealtimeSession):
    """Returns each caller audio frame as agent audio, payload untouched, in order."""

    name = "echo"
    #: mu-law and linear PCM at any rate pass back as they came; nothing else is possible
    capabilities = ProviderCapabilities(
        audio_formats=frozenset((codec, rate) for codec in ("pcmu", "pcma", "l16")
                                for rate in (8000, 16000, 24000)),
        turn_model="full_duplex", billing="none")
    _open = False

    async def start(self, start: StartFrame) -> None:
        self._open = True

    async def send_audio(self, frame: AudioFrame) -> None:
        if self._open:
            await self.sink(audio_frame(frame.payload, frame.codec, frame.sample_rate, None, None,
                                        "outbound", "echo"))

    async def close(self) -> None:
        self._open = False
