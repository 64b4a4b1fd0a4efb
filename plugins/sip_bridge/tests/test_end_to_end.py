"""sip_bridge calls configured only by envelope_spec presets, end to end over loopback sockets.

A real TelewireServer runs in-process with the default graph (echo model) and one override,
``tel_in.config.envelope_spec=<preset>``; a websockets client speaks the bridge's protocol.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from websockets.asyncio.client import ClientConnection, connect

from telewire.g711 import ulaw_decode, ulaw_encode
from telewire.server import TelewireServer

_rng = random.Random(7)
ULAW = bytes(range(256)) * 5  # 1280 bytes = 8 frames of 160, every byte value
PCM = b"".join(_rng.randrange(-32768, 32768).to_bytes(2, "little", signed=True)
               for _ in range(1280))  # 8 frames of 20 ms L16 8 kHz
GUARD_S = 5  # a guard against hanging, never a timing assertion


@pytest.fixture
def server(telewire_server):
    return telewire_server


def media_url(srv: TelewireServer) -> str:
    return f"ws://127.0.0.1:{srv.port}/media/sip_bridge"


async def receive_audio(ws: ClientConnection, size: int, texts: list[str] | None = None) -> bytes:
    """Binary messages until ``size`` bytes have come back; text messages (the playback marks
    carrier_out interleaves) are collected in ``texts``."""
    got = bytearray()
    while len(got) < size:
        msg = await asyncio.wait_for(ws.recv(), GUARD_S)
        if isinstance(msg, str):
            if texts is not None:
                texts.append(msg)
            continue
        got += msg
    return bytes(got)


async def receive_command(ws: ClientConnection, skip: set[str]) -> dict:
    """The next text command whose name (``command``/``type``) is not in ``skip``, skipping
    audio still arriving."""
    while True:
        msg = await asyncio.wait_for(ws.recv(), GUARD_S)
        if isinstance(msg, str):
            doc = json.loads(msg)
            if doc.get("command", doc.get("type")) not in skip:
                return doc


async def test_asterisk_chan_websocket_mulaw_echo_is_byte_identical_and_dtmf_star_flushes(server):
    srv = await server("tel_in.config.envelope_spec=asterisk_chan_websocket")
    async with connect(media_url(srv)) as ws:
        await ws.send(json.dumps({
            "event": "MEDIA_START", "connection_id": "e226e283-c90a", "channel":
            "WebSocket/telewire/0x1", "channel_id": "pbx1-1700000000.42", "format": "ulaw",
            "optimal_frame_size": 160, "ptime": 20, "channel_variables": {"TENANT": "acme"}}))
        for i in range(0, len(ULAW), 160):
            await ws.send(ULAW[i:i + 160])
        texts: list[str] = []
        assert await receive_audio(ws, len(ULAW), texts) == ULAW
        assert all(json.loads(t)["command"] == "MARK_MEDIA" for t in texts), texts
        [call] = srv.calls
        assert (call.context.stream_id, call.context.call_id) == ("e226e283-c90a",
                                                                   "pbx1-1700000000.42")
        assert dict(call.context.custom_parameters) == {"TENANT": "acme"}
        await ws.send(json.dumps({"event": "DTMF_END", "channel_id": "pbx1-1700000000.42",
                                  "digit": "*"}))
        assert await receive_command(ws, skip={"MARK_MEDIA"}) == {"command": "FLUSH_MEDIA"}
        await ws.send(json.dumps({"event": "MEDIA_XOFF", "channel_id": "pbx1-1700000000.42"}))
        await ws.send(ULAW[:160])
        assert await receive_audio(ws, 160) == ULAW[:160], "the call went on after XOFF"


async def test_asterisk_slin_is_converted_both_ways(server):
    srv = await server("tel_in.config.envelope_spec=asterisk_chan_websocket")
    async with connect(media_url(srv)) as ws:
        await ws.send(json.dumps({"event": "MEDIA_START", "connection_id": "c-slin",
                                  "channel_id": "pbx1-2", "format": "slin",
                                  "optimal_frame_size": 320, "ptime": 20}))
        for i in range(0, len(PCM), 320):
            await ws.send(PCM[i:i + 320])
        assert await receive_audio(ws, len(PCM)) == ulaw_decode(ulaw_encode(PCM))


async def test_jambonz_l16_is_converted_to_mulaw_for_the_model_and_back(server):
    srv = await server("tel_in.config.envelope_spec=jambonz")
    async with connect(media_url(srv)) as ws:
        await ws.send(json.dumps({
            "callSid": "b7d2-jambonz-call", "callId": "a84b@10.0.0.1", "direction": "inbound",
            "from": "+15550001111", "to": "+15550002222", "accountSid": "acct-1",
            "sampleRate": 8000, "mixType": "mono", "metadata": {"tenant": "acme"}}))
        for i in range(0, len(PCM), 320):
            await ws.send(PCM[i:i + 320])
        texts: list[str] = []
        echoed = await receive_audio(ws, len(PCM), texts)
        assert all(json.loads(t)["type"] == "mark" for t in texts), texts
        # G.711 is lossy: the echo is the caller's L16 through one mu-law encode and decode.
        assert echoed == ulaw_decode(ulaw_encode(PCM))
        assert echoed != PCM, "random L16 cannot survive mu-law unchanged; nothing converted?"
        [call] = srv.calls
        assert call.context.media_format.codec == "pcmu"  # what the model was given
        assert (call.context.stream_id, call.context.call_id) == ("b7d2-jambonz-call",
                                                                   "a84b@10.0.0.1")
        await ws.send(json.dumps({"event": "dtmf", "dtmf": "*", "duration": 1600}))
        assert await receive_command(ws, skip={"mark"}) == {"type": "killAudio"}


async def test_jambonz_at_16k_is_refused_and_the_socket_closed(server, log_lines):
    srv = await server("tel_in.config.envelope_spec=jambonz")
    async with connect(media_url(srv)) as ws:
        await ws.send(json.dumps({"callSid": "c16", "sampleRate": 16000, "mixType": "mono"}))
        await asyncio.wait_for(ws.wait_closed(), GUARD_S)
    assert any("'sampleRate' is 16000" in line and "never resamples" in line
               for line in log_lines), log_lines


async def test_without_an_envelope_spec_the_call_is_refused_saying_what_to_set(server, log_lines):
    srv = await server()
    async with connect(media_url(srv)) as ws:
        await ws.send(json.dumps({"event": "MEDIA_START", "connection_id": "x"}))
        await asyncio.wait_for(ws.wait_closed(), GUARD_S)
    assert any("set tel_in.config.envelope_spec" in line for line in log_lines), log_lines
    assert not srv.calls


@pytest.fixture
def log_lines():
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="DEBUG")
    yield lines
    logger.remove(sink)
