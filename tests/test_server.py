"""The server over real loopback sockets: pass-through, bad input, isolation, webhooks, limits."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from telewire.registry import CarrierRegistry
from telewire.server import TelewireServer
from telewire.settings import load_settings
from telewire.testing.simulator import CallSimulator

AUDIO = bytes(range(256)) * 25  # 6400 bytes = 40 frames, every byte value


@pytest.fixture
def server(monkeypatch, telewire_server):
    monkeypatch.delenv("TELEWIRE_TWILIO_AUTH_TOKEN", raising=False)
    return telewire_server


def url(srv: TelewireServer) -> str:
    return f"ws://127.0.0.1:{srv.port}/media/twilio"


def twilio_sid(prefix: str, name: str) -> str:
    """A Twilio-shaped SID (``prefix`` + 32 hex digits), the same for the same ``name``: Twilio's
    plugin refuses a start whose ids are not."""
    return prefix + hashlib.sha256(name.encode()).hexdigest()[:32]


STREAM = twilio_sid("MZ", "1")


def start_msg(sid: str = STREAM) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid,
                       "start": {"streamSid": sid, "callSid": "CA" + sid[2:],
                                 "accountSid": "AC" + "0" * 32,
                                 "tracks": ["inbound"], "customParameters": {},
                                 "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                                 "channels": 1}}})


def media_msg(payload: bytes, sid: str = STREAM) -> str:
    return json.dumps({"event": "media", "streamSid": sid,
                       "media": {"track": "inbound", "chunk": "1", "timestamp": "0",
                                 "payload": base64.b64encode(payload).decode()}})


async def recv_media(ws) -> dict:
    """The next ``media`` message from the server (the marks in between are skipped)."""
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if msg["event"] == "media":
            return msg
        assert msg["event"] == "mark", msg


async def test_echo_call_is_byte_identical_and_in_order(server):
    srv = await server()
    result = await CallSimulator(url(srv), pace=0, expect_echo=True).run(AUDIO)
    assert result.sent_frames == 40 and result.received_frames == 40
    assert result.received_audio == AUDIO
    assert result.close_code == 1000


BAD_INPUTS = [
    ("not json", "not JSON"),
    ('{"event":"bogus","streamSid":"' + STREAM + '"}', "unknown event 'bogus'"),
    ('{"event":"media","streamSid":"' + STREAM + '","media":{}}', "missing field 'media.payload'"),
    ('{"event":"media","streamSid":"' + STREAM + '","media":{"payload":"%%%%"}}',
     "'media.payload' is not valid base64"),
    ('{"event":"dtmf","streamSid":"' + STREAM + '","dtmf":{"digit":"X"}}', "DTMF digit"),
    ("x" * (1024 * 1024), "message of 1048576 bytes exceeds the limit of 65536 bytes"),
]


@pytest.mark.parametrize("bad, fragment", BAD_INPUTS, ids=[f for _, f in BAD_INPUTS])
async def test_bad_input_is_logged_precisely_and_the_call_goes_on(server, log_lines, bad, fragment):
    srv = await server()
    other = asyncio.create_task(CallSimulator(url(srv), pace=2.0, expect_echo=True).run(AUDIO))
    async with connect(url(srv), max_size=None) as ws:
        await ws.send(start_msg())
        await ws.send(media_msg(b"\x01" * 160))
        first = await recv_media(ws)
        await ws.send(bad)
        await ws.send(media_msg(b"\x02" * 160))  # received after the bad one: still relayed
        second = await recv_media(ws)
        assert base64.b64decode(first["media"]["payload"]) == b"\x01" * 160
        assert base64.b64decode(second["media"]["payload"]) == b"\x02" * 160
    errors = [line for line in log_lines if line.startswith("ERROR")]
    assert any(fragment in line for line in errors), errors
    result = await other
    assert result.received_audio == AUDIO and result.close_code == 1000


async def test_media_before_start_is_reported_and_the_call_then_works(server, log_lines):
    srv = await server()
    async with connect(url(srv)) as ws:
        await ws.send(media_msg(b"\x05" * 160))
        await ws.send(start_msg())
        await ws.send(media_msg(b"\x06" * 160))
        msg = await recv_media(ws)
        assert base64.b64decode(msg["media"]["payload"]) == b"\x06" * 160
    assert any("media received before the start event" in line for line in log_lines)


async def test_fatal_start_ends_only_that_call(server, log_lines):
    srv = await server()
    other = asyncio.create_task(CallSimulator(url(srv), pace=2.0, expect_echo=True).run(AUDIO))
    async with connect(url(srv)) as ws:
        await ws.send('{"event":"start","start":{"callSid":"CA1"}}')
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1000
    assert any("missing or empty field 'start.streamSid'" in line for line in log_lines)
    assert any("call ended: carrier_protocol_error" in line for line in log_lines)
    result = await other
    assert result.received_audio == AUDIO


async def test_message_over_the_hard_limit_closes_that_socket_only(server):
    srv = await server(ws_max_message_bytes=256 * 1024)
    other = asyncio.create_task(CallSimulator(url(srv), pace=2.0, expect_echo=True).run(AUDIO))
    async with connect(url(srv), max_size=None) as ws:
        await ws.send(start_msg())
        await ws.send("y" * (512 * 1024))
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1009
    assert (await other).received_audio == AUDIO
    assert len(srv.calls) == 0


async def test_socket_dropped_without_stop_ends_the_call(server, log_lines):
    srv = await server()
    ws = await connect(url(srv))
    await ws.send(start_msg(twilio_sid("MZ", "drop")))
    await ws.send(media_msg(b"\x01" * 160, twilio_sid("MZ", "drop")))
    await asyncio.wait_for(ws.recv(), 5)
    ws.transport.abort()
    for _ in range(100):
        if not srv.calls:
            break
        await asyncio.sleep(0.02)
    assert not srv.calls
    assert any("call ended: socket_closed" in line for line in log_lines)


async def test_probes_and_capacity(server):
    srv = await server(max_calls=1)
    base = f"http://127.0.0.1:{srv.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/livez") as r:
            assert r.status == 200 and await r.json() == {"status": "ok"}
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 200 and (await r.json())["ready"] is True
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 404
        async with connect(url(srv)) as ws:
            await ws.send(start_msg())
            await ws.send(media_msg(b"\x01" * 160))
            await asyncio.wait_for(ws.recv(), 5)
            with pytest.raises(InvalidStatus) as info:
                async with connect(url(srv)):
                    pass
            assert info.value.response.status_code == 503
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503 and (await r.json())["why"] == "at capacity"
        srv.draining = True
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 503 and (await r.json())["why"] == "draining"
        async with http.get(f"{base}/livez") as r:
            assert r.status == 200


async def test_unknown_carrier_is_404(server):
    srv = await server()
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://127.0.0.1:{srv.port}/media/nosuch"):
            pass
    assert info.value.response.status_code == 404
    assert b"unknown carrier 'nosuch'" in info.value.response.body


async def test_answer_webhook_returns_twiml_pointing_at_media_socket(server):
    srv = await server(answer_parameters={"tenant": "acme"})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{srv.port}/answer/twilio",
                             data={"CallSid": "CA1", "From": "+15550001"}) as r:
            text = await r.text()
    assert r.status == 200 and r.content_type == "application/xml"
    assert f'url="ws://127.0.0.1:{srv.port}/media/twilio"' in text
    assert '<Parameter name="tenant" value="acme"' in text


async def test_signatures_are_enforced_when_the_token_is_set(server, monkeypatch, log_lines):
    from twilio.request_validator import RequestValidator

    monkeypatch.setenv("TELEWIRE_TWILIO_AUTH_TOKEN", "s3cret-token")
    srv = await server(public_url="https://voice.example.com")
    answer = f"http://127.0.0.1:{srv.port}/answer/twilio"
    params = {"CallSid": "CA1", "From": "+15550001", "To": "+15550002"}
    public = "https://voice.example.com/answer/twilio"
    good = RequestValidator("s3cret-token").compute_signature(public, params)
    async with aiohttp.ClientSession() as http:
        async with http.post(answer, data=params) as r:
            assert r.status == 403
        async with http.post(answer, data=params, headers={"X-Twilio-Signature": good}) as r:
            assert r.status == 200
            twiml = await r.text()
            assert 'url="wss://voice.example.com/media/twilio"' in twiml
    token = re.search(r'name="telewire_call_token" value="([^"]+)"', twiml).group(1)
    with pytest.raises(InvalidStatus) as info:
        await CallSimulator(url(srv), auth_token="wrong").run(AUDIO[:160])
    assert info.value.response.status_code == 403
    ok = await CallSimulator(url(srv), auth_token="s3cret-token", pace=0, expect_echo=True,
                             custom_parameters={"telewire_call_token": token},
                             signature_url="wss://voice.example.com/media/twilio").run(AUDIO)
    assert ok.received_audio == AUDIO
    assert not any("s3cret-token" in line for line in log_lines)


async def test_provider_that_cannot_connect_ends_the_call_cleanly(server, log_lines, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    srv = await server("rt.config.provider=openai", "rt.config.url=ws://127.0.0.1:9/v1/realtime",
                       "rt.config.connect_timeout_s=2")
    async with connect(url(srv)) as ws:
        await ws.send(start_msg())
        await ws.send(media_msg(b"\x01" * 160))
        await asyncio.wait_for(ws.wait_closed(), 10)
    assert any("call ended: provider_error" in line for line in log_lines)
    assert not any("sk-test-not-real" in line for line in log_lines)


async def test_a_carrier_lacking_a_capability_the_graph_needs_is_refused_by_name(log_lines):
    from typing import ClassVar

    from telewire.frames import MarkFrame
    from telewire.graph import NodeTypeInfo, build_graph, default_graph_path, node_types
    from telewire.nodes.base import Node

    class MarkCounter(Node):
        inputs: ClassVar = {"marks_in": (MarkFrame,)}
        requires: ClassVar = ("marks",)

        async def on_marks_in(self, frame):
            return None

    import tomllib

    raw = tomllib.loads(default_graph_path().read_text())
    raw["nodes"]["counter"] = {"type": "mark_counter"}
    raw["edges"].append("tel_in.marks -> counter.marks_in")
    types = {**node_types(), "mark_counter": NodeTypeInfo("mark_counter", MarkCounter, "", "", "")}
    graph = build_graph(raw, source="marks.toml", types=types)
    srv = TelewireServer(load_settings(host="127.0.0.1", port=0), graph, CarrierRegistry())
    await srv.start()
    try:
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{srv.port}/media/bandwidth"):
                pass
        assert info.value.response.status_code == 501
        body = info.value.response.body.decode()
        assert "node 'counter'" in body and "capability 'marks'" in body and "'bandwidth'" in body
        result = await CallSimulator(url(srv), pace=0, expect_echo=True).run(AUDIO)  # twilio has marks
        assert result.received_audio == AUDIO
    finally:
        await srv.stop(drain_timeout_s=1)
