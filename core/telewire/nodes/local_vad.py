"""The ``local_vad`` node: barge-in from the caller's voice, detected here rather than by the model.

Depends on ``telewire.nodes.base``, ``telewire.g711`` and ``telewire.frames``; uses
``webrtcvad`` (``pip install 'telewire[vad]'``) when installed, else an energy detector.

It listens to a copy of the caller audio (an extra edge from ``tel_in.audio``), decodes it for
itself — the pass-through path stays untouched — and emits an ``InterruptFrame(source="vad")``
when the caller has spoken for ``min_speech_ms`` while the agent is talking.
"""

from __future__ import annotations

import array
import math
import time
from typing import Any, ClassVar, Literal

from pydantic import Field

from telewire.frames import AudioFrame, InterruptFrame
from telewire.g711 import ulaw_decode
from telewire.nodes.base import Node, NodeConfig

__all__ = ["LocalVAD", "SpeechDetector"]

_FRAME_MS = 20
_FRAME_BYTES = 8 * _FRAME_MS  # mu-law 8 kHz


class LocalVADConfig(NodeConfig):
    """``[nodes.vad.config]``.

    Attributes:
        backend: ``webrtcvad``, ``energy``, or ``auto`` (webrtcvad when installed).
        aggressiveness: webrtcvad's mode, 0 (least) to 3 (most aggressive at rejecting noise).
        energy_threshold_dbfs: the energy backend's speech threshold.
        min_speech_ms: speech must last this long before it interrupts.
        only_while_agent_speaks: interrupt only while agent audio is still playing.
        cooldown_ms: after an interrupt, wait this long before the next one.
    """

    backend: Literal["auto", "webrtcvad", "energy"] = "auto"
    aggressiveness: int = Field(default=2, ge=0, le=3)
    energy_threshold_dbfs: float = Field(default=-35.0, le=0)
    min_speech_ms: int = Field(default=200, ge=_FRAME_MS)
    only_while_agent_speaks: bool = True
    cooldown_ms: int = Field(default=1000, ge=0)


class SpeechDetector:
    """Per-20 ms speech decisions on mu-law audio (sans-I/O)."""

    def __init__(self, backend: str = "auto", aggressiveness: int = 2,
                 energy_threshold_dbfs: float = -35.0) -> None:
        self._vad: Any = None
        if backend in ("auto", "webrtcvad"):
            try:
                import webrtcvad

                self._vad = webrtcvad.Vad(aggressiveness)
            except ImportError:
                if backend == "webrtcvad":
                    from telewire.errors import ConfigError

                    raise ConfigError("local_vad backend 'webrtcvad' needs "
                                      "pip install 'telewire[vad]'") from None
        self.backend = "webrtcvad" if self._vad is not None else "energy"
        self._threshold = 32768.0 * 10 ** (energy_threshold_dbfs / 20.0)
        self._rest = b""

    def feed(self, ulaw: bytes) -> list[bool]:
        """Speech decisions for every whole 20 ms frame in ``ulaw`` (the rest is kept)."""
        data = self._rest + ulaw
        cut = len(data) - len(data) % _FRAME_BYTES
        self._rest = data[cut:]
        out = []
        for i in range(0, cut, _FRAME_BYTES):
            pcm = ulaw_decode(data[i:i + _FRAME_BYTES])
            if self._vad is not None:
                out.append(bool(self._vad.is_speech(pcm, 8000)))
            else:
                samples = array.array("h")
                samples.frombytes(pcm)
                rms = math.sqrt(sum(s * s for s in samples) / len(samples))
                out.append(rms >= self._threshold)
        return out


class LocalVAD(Node):
    """Interrupts the agent when the caller talks over it (decisions made on decoded copies)."""

    inputs: ClassVar = {"audio_in": (AudioFrame,), "agent_in": (AudioFrame,)}
    outputs: ClassVar = {"interrupt": (InterruptFrame,)}
    Config: ClassVar = LocalVADConfig

    def __init__(self, name: str, config: LocalVADConfig, call) -> None:  # type: ignore[no-untyped-def]
        super().__init__(name, config, call)
        self.detector = SpeechDetector(config.backend, config.aggressiveness,
                                       config.energy_threshold_dbfs)
        self._speech_ms = 0
        self._agent_until = 0.0
        self._quiet_until = 0.0
        self.interrupts = 0

    async def on_agent_in(self, frame: AudioFrame) -> None:  # type: ignore[override]
        now = time.monotonic()
        self._agent_until = max(self._agent_until, now) + frame.duration_ms / 1000.0

    async def on_audio_in(self, frame: AudioFrame) -> None:  # type: ignore[override]
        if frame.codec != "pcmu":
            return
        for speech in self.detector.feed(frame.data):
            self._speech_ms = self._speech_ms + _FRAME_MS if speech else 0
        now = time.monotonic()
        if self._speech_ms < self.config.min_speech_ms or now < self._quiet_until:
            return
        if self.config.only_while_agent_speaks and now >= self._agent_until:
            return
        self._speech_ms = 0
        self._agent_until = now
        self._quiet_until = now + self.config.cooldown_ms / 1000.0
        self.interrupts += 1
        await self.emit("interrupt", InterruptFrame(source="vad", reason="caller speech"))
