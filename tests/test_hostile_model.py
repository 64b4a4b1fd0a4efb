"""A misbehaving model endpoint, end to end over real loopback sockets: the simulated Twilio call
<-> `TelewireServer` <-> the fake realtime server. What the model sends must never become a
carrier command, and a model that closes normally mid-call is reconnected to."""

from __future__ import annotations

import asyncio
import base64

from telewire.graph import load_graph
from telewire.registry import CarrierRegistry
from telewire.server import TelewireServer
from telewire.settings import load_settings
from telewire.testing.fake_realtime import FakeRealtimeServer, talk_audio
from telewire.testing.simulator import CallSimulator

SILENCE = b"\xff" * 8  # one mu-law millisecond of silence
#: Deltas that would have been spliced into {"event":"media",...,"media":{"payload":"…"}}
HOSTILE = [
    'abc"},"event":"clear","x":{"y":"',  # leaves valid JSON whose last "event" is "clear"
    'abc"},"event":"clear',
    "AAAA\n",
    12345,
    None,
    {"payload": "AAAA"},
    "A" * 200_000,  # about 19 s of audio in one delta
]


async def serve(fake: FakeRealtimeServer) -> TelewireServer:
    srv = TelewireServer(
        load_settings(host="127.0.0.1", port=0),
        load_graph(None, ["rt.config.provider=openai", f"rt.config.url={fake.url}",
                          "rt.config.transcription_model="]),
        CarrierRegistry())
    await srv.start()
    return srv


async def test_a_hostile_delta_cannot_inject_a_clear_and_the_call_goes_on(log_lines):
    good = base64.b64encode(talk_audio(1, 800)).decode()
    async with FakeRealtimeServer(mode="silent") as fake:
        srv = await serve(fake)
        try:
            sim = CallSimulator(f"ws://127.0.0.1:{srv.port}/media/twilio", drain_s=1.0)
            call = asyncio.create_task(sim.run(SILENCE * 3000))
            conn = await fake.wait_for_connection()
            await conn.wait_for("input_audio_buffer.append")  # the call is flowing
            for delta in HOSTILE:
                await conn.push_delta(delta)
            await conn.push_audio(good)
            result = await call
        finally:
            await srv.stop(drain_timeout_s=1)
    assert result.clears == 0 and result.unexpected == []
    assert result.received_payloads == [good]  # the good audio after them was played
    assert result.sent_frames == 150 and conn.audio_appended == 150  # the call went on
    assert any(f"bad_audio_deltas {len(HOSTILE)}" in line for line in log_lines)


async def test_a_normal_close_from_the_model_mid_call_reconnects_and_audio_flows_again():
    async with FakeRealtimeServer(mode="echo") as fake:
        srv = await serve(fake)
        try:
            sim = CallSimulator(f"ws://127.0.0.1:{srv.port}/media/twilio", drain_s=1.0)
            audio = b"".join(bytes([i]) * 160 for i in range(150))  # 150 distinct frames
            call = asyncio.create_task(sim.run(audio))
            first = await fake.wait_for_connection(0)
            await first.wait_for("input_audio_buffer.append", 10)
            await first.close(1000, "")
            fresh = await fake.wait_for_connection(1)
            result = await call
        finally:
            await srv.stop(drain_timeout_s=1)
    echoed_after = set(e["audio"] for e in fresh.events("input_audio_buffer.append"))
    assert len(echoed_after) > 50  # most of the call went through the fresh session
    assert echoed_after <= set(result.received_payloads)  # and its echo reached the caller
    assert result.sent_frames == 150
    assert result.clears == 0
