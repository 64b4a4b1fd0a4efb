"""The central promise, end to end: `telewire serve` with the openai provider against a GA fake
server returns every payload byte-identical and in order, with audio/pcmu both ways."""

from __future__ import annotations

import asyncio
import base64
import random

from conftest import ServeProcess
from openai_ga import assert_ga

from telewire.testing.fake_realtime import FakeRealtimeServer
from telewire.testing.simulator import CallSimulator


async def test_serve_openai_against_fake_is_byte_identical():
    rng = random.Random(7)
    audio = bytes(rng.randrange(256) for _ in range(160 * 150))  # 3 s, every value, no repeats
    async with FakeRealtimeServer(mode="echo") as fake:
        serve = await asyncio.to_thread(
            ServeProcess, "--set", "rt.config.provider=openai", "--set", f"rt.config.url={fake.url}",
            env={"OPENAI_API_KEY": "sk-local-placeholder"})
        try:
            result = await CallSimulator(serve.url, pace=4.0, expect_echo=True, drain_s=10).run(audio)
        finally:
            log = await asyncio.to_thread(serve.stop)
        conn = await fake.wait_for_connection()
    assert result.sent_frames == 150 and result.received_frames == 150, log
    sent = [base64.b64encode(audio[i:i + 160]).decode() for i in range(0, len(audio), 160)]
    assert result.received_payloads == sent  # every payload string, in order, untouched
    assert result.received_audio == audio

    appends = conn.events("input_audio_buffer.append")
    assert [e["audio"] for e in appends] == sent
    [update] = conn.events("session.update")
    fmt = update["session"]["audio"]
    assert fmt["input"]["format"] == {"type": "audio/pcmu"}
    assert fmt["output"]["format"] == {"type": "audio/pcmu"}
    assert update["session"]["type"] == "realtime"
    for event in conn.received:
        assert_ga(event, side="client")
    assert "sk-local-placeholder" not in log
