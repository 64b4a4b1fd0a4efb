"""The local VAD node: speech decisions on decoded copies, interrupts only over the agent."""

from __future__ import annotations

import asyncio
import random
import struct

import pytest

from telewire.frames import AudioFrame, InterruptFrame
from telewire.g711 import ulaw_encode
from telewire.nodes.local_vad import LocalVAD, LocalVADConfig, SpeechDetector
from telewire.wav import read_ulaw
from telewire.graph import default_graph_path

SILENCE = ulaw_encode(b"\x00\x00" * 1600)  # 200 ms


def noise(ms: int, amplitude: int = 8000, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    pcm = struct.pack(f"<{8 * ms}h", *(rng.randint(-amplitude, amplitude) for _ in range(8 * ms)))
    return ulaw_encode(pcm)


def test_energy_detector_separates_silence_from_loud_audio():
    det = SpeechDetector("energy", energy_threshold_dbfs=-35)
    assert det.feed(SILENCE) == [False] * 10
    assert all(det.feed(noise(100)))
    assert det.feed(b"\xff" * 100) == [] and det.feed(b"\xff" * 60) == [False]  # keeps partial frames


def test_webrtcvad_detector_hears_the_voiced_demo_and_not_silence():
    det = SpeechDetector("webrtcvad", aggressiveness=1)
    assert det.backend == "webrtcvad"
    assert not any(det.feed(SILENCE))
    demo = read_ulaw(default_graph_path().parent / "demo.wav")
    decisions = det.feed(demo[:8000 * 2])
    assert sum(decisions) > len(decisions) // 3


class _Call:
    log = None


async def _run(agent_playing: bool, caller: bytes) -> list[InterruptFrame]:
    node = LocalVAD("vad", LocalVADConfig(backend="energy", min_speech_ms=100), _Call())
    out: list[InterruptFrame] = []

    async def collect(frame):
        out.append(frame)

    node.connect("interrupt", collect)
    if agent_playing:
        await node.on_agent_in(AudioFrame(payload=b"\xff" * 8000, track="outbound"))  # 1 s
    for i in range(0, len(caller), 160):
        await node.on_audio_in(AudioFrame(payload=caller[i:i + 160]))
    return out


def test_caller_speech_over_the_agent_interrupts_once():
    out = asyncio.run(_run(True, noise(400)))
    assert [f.source for f in out] == ["vad"]


@pytest.mark.parametrize("playing, audio", [(False, noise(400)), (True, SILENCE * 2)])
def test_no_interrupt_without_both_speech_and_agent_audio(playing, audio):
    assert asyncio.run(_run(playing, audio)) == []
