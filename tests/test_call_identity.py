"""Call identity over real loopback sockets: a start whose ids could be a path, a query or a
forged log line is refused and its socket closed, while another call on the server goes on."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from telewire.testing.simulator import CallSimulator

GUARD_S = 10  # a guard against hanging, never a timing assertion
AUDIO = bytes(range(256)) * 40  # 10240 bytes: 64 frames of 20 ms, every byte value


def start(stream_sid: str, call_sid: str, account_sid: str = "AC" + "0" * 32) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
        "start": {"accountSid": account_sid, "streamSid": stream_sid, "callSid": call_sid,
                  "tracks": ["inbound"], "customParameters": {},
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                  "channels": 1}}})


async def wait_until(predicate, what: str) -> None:
    async with asyncio.timeout(GUARD_S):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("field, bad", [
    ("callSid", "CA0123456789abcdef0123456789abcdef/../../x"),
    ("callSid", "CA0123456789abcdef0123456789abcd?x=1"),
    ("callSid", ".."),
    ("callSid", "CA0123456789abcdef0123456789abcdef\n2026-01-01 | INFO | forged"),
    ("callSid", "CA1"),                                  # safe, but not a Twilio SID
    ("streamSid", "MZ0123456789abcdef0123456789abcdef/x"),
    ("accountSid", "AC/../other-account"),
])
async def test_a_start_with_an_unsafe_id_is_refused_and_another_call_is_unaffected(
        telewire_server, log_lines, field, bad):
    srv = await telewire_server()
    url = f"ws://127.0.0.1:{srv.port}/media/twilio"
    good = CallSimulator(url, pace=1.0, expect_echo=True, drain_s=3.0)
    good_call = asyncio.create_task(good.run(AUDIO))
    await wait_until(lambda: any(c.context.started for c in srv.calls), "the good call started")

    ids = {"streamSid": "MZ" + uuid.uuid4().hex, "callSid": "CA" + uuid.uuid4().hex,
           "accountSid": "AC" + "0" * 32}
    ids[field] = bad
    async with connect(url, open_timeout=GUARD_S) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(start(ids["streamSid"], ids["callSid"], ids["accountSid"]))
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(GUARD_S):
                while True:  # nothing but the close may come back
                    message = await ws.recv()
                    assert "media" not in message, f"the refused call got {message[:80]!r}"
    await wait_until(lambda: len(srv.calls) == 1, "the refused call ended")
    assert not any(bad in (c.context.call_id, c.context.stream_id, c.context.account_id)
                   for c in srv.calls)

    result = await asyncio.wait_for(good_call, GUARD_S * 3)
    assert result.close_code == 1000
    assert result.received_audio == AUDIO, "the other call's echo was disturbed"
    refusal = [line for line in log_lines if "'start' event" in line and f"start.{field}" in line]
    assert refusal, "the refusal was not logged"
    assert not any("\n" in line for line in refusal), "the refused id broke a log line"
