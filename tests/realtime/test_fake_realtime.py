"""Tests of the fake OpenAI Realtime GA server, driven by a plain WebSocket client over loopback.

Depends on ``telewire.testing.fake_realtime``, ``websockets`` and the GA checker in ``openai_ga``.
Every server event a test receives is checked against the ``openai`` package's GA types.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
from typing import Any, AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from telewire import jsonfast
from telewire.testing.fake_realtime import BETA_DISABLED_MESSAGE, FakeRealtimeServer

from openai_ga import assert_ga

AUTH = {"Authorization": "Bearer sk-test"}
GA_PCMU_UPDATE = {"type": "session.update", "session": {
    "type": "realtime", "model": "gpt-realtime", "output_modalities": ["audio"],
    "instructions": "Be brief.",
    "audio": {"input": {"format": {"type": "audio/pcmu"},
                        "turn_detection": {"type": "server_vad", "threshold": 0.5}},
              "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}},
}}


async def recv(ws: ClientConnection) -> dict[str, Any]:
    """The next server event, checked against the published GA server events."""
    event = jsonfast.loads(await asyncio.wait_for(ws.recv(), 10))
    assert_ga(event, side="server")
    return event


@pytest.fixture
async def echo() -> AsyncIterator[FakeRealtimeServer]:
    async with FakeRealtimeServer(mode="echo") as server:
        yield server


@pytest.fixture
async def client(echo: FakeRealtimeServer) -> AsyncIterator[ClientConnection]:
    async with connect(echo.url + "?model=gpt-realtime", additional_headers=AUTH) as ws:
        created = await recv(ws)
        assert created["type"] == "session.created"
        yield ws


async def test_url_and_session_created_is_the_ga_default(echo: FakeRealtimeServer) -> None:
    assert echo.url.startswith("ws://127.0.0.1:") and echo.url.endswith("/v1/realtime")
    async with connect(echo.url + "?model=gpt-realtime", additional_headers=AUTH) as ws:
        created = await recv(ws)
    session = created["session"]
    assert (created["type"], session["type"], session["model"]) == (
        "session.created", "realtime", "gpt-realtime")
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    conn = echo.connections[0]
    assert conn.model == "gpt-realtime" and conn.headers["Authorization"] == "Bearer sk-test"


async def test_session_update_answers_the_full_effective_session(client: ClientConnection) -> None:
    await client.send(jsonfast.dumps(GA_PCMU_UPDATE))
    updated = await recv(client)
    assert updated["type"] == "session.updated"
    session = updated["session"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["instructions"] == "Be brief."
    # Fields not in the update keep their values (merged, not replaced).
    assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
    assert session["audio"]["input"]["turn_detection"]["threshold"] == 0.5


async def test_beta_header_is_refused_with_code_4000(echo: FakeRealtimeServer) -> None:
    headers = {**AUTH, "OpenAI-Beta": "realtime=v1"}
    async with connect(echo.url + "?model=gpt-realtime", additional_headers=headers) as ws:
        error = await recv(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert error["error"]["code"] == "beta_api_shape_disabled"
    assert error["error"]["message"] == BETA_DISABLED_MESSAGE
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000


@pytest.mark.parametrize(("session", "param", "code"), [
    ({"type": "realtime", "input_audio_format": "g711_ulaw"}, "session.input_audio_format",
     "unknown_parameter"),
    ({"type": "realtime", "modalities": ["text", "audio"]}, "session.modalities",
     "unknown_parameter"),
    ({"type": "realtime", "audio": {"input": {"format": {"type": "g711_ulaw"}}}},
     "session.audio.input.format.type", "invalid_value"),
    ({"type": "realtime", "audio": {"output": {"format": "g711_ulaw"}}},
     "session.audio.output.format", "invalid_type"),
    ({"instructions": "no type"}, "session.type", "missing_required_parameter"),
])
async def test_non_ga_session_update_is_refused_by_param(
        client: ClientConnection, session: dict[str, Any], param: str, code: str) -> None:
    await client.send(jsonfast.dumps({"type": "session.update", "session": session}))
    error = await recv(client)
    assert error["type"] == "error"
    assert (error["error"]["type"], error["error"]["code"], error["error"]["param"]) == (
        "invalid_request_error", code, param)
    # The connection goes on and a GA update still applies.
    await client.send(jsonfast.dumps(GA_PCMU_UPDATE))
    assert (await recv(client))["type"] == "session.updated"


async def test_echo_answers_each_append_with_one_identical_delta_in_order(
        echo: FakeRealtimeServer, client: ClientConnection) -> None:
    payloads = [base64.b64encode(bytes([i % 256]) * 160).decode() for i in range(300)]
    payloads[7] = base64.b64encode(b"\xff\x7f\x00" * 53 + b"\x01").decode()  # padded form
    for payload in payloads:
        await client.send('{"type":"input_audio_buffer.append","audio":"' + payload + '"}')
    opening = [(await recv(client))["type"] for _ in range(3)]
    assert opening == ["response.created", "response.output_item.added",
                       "response.content_part.added"]
    deltas = [await recv(client) for _ in payloads]
    assert [d["type"] for d in deltas] == ["response.output_audio.delta"] * len(payloads)
    assert [d["delta"] for d in deltas] == payloads
    assert len({d["response_id"] for d in deltas}) == 1
    assert len({d["event_id"] for d in deltas}) == len(payloads)
    conn = echo.connections[0]
    assert conn.audio_appended == len(payloads)
    assert [e["audio"] for e in conn.events("input_audio_buffer.append")] == payloads


async def test_cancel_ends_the_open_response_and_is_refused_without_one(
        client: ClientConnection) -> None:
    await client.send('{"type":"response.cancel"}')
    refused = await recv(client)
    assert refused["error"]["code"] == "response_cancel_not_active"
    await client.send('{"type":"input_audio_buffer.append","audio":"AAAA"}')
    created = await recv(client)
    for _ in range(3):  # item added, part added, delta
        await recv(client)
    await client.send('{"type":"response.cancel"}')
    kinds: list[str] = []
    while not kinds or kinds[-1] != "response.done":
        event = await recv(client)
        kinds.append(event["type"])
    assert kinds == ["response.output_audio.done", "response.output_audio_transcript.done",
                     "response.content_part.done", "response.output_item.done", "response.done"]
    assert event["response"]["id"] == created["response"]["id"]
    assert event["response"]["status"] == "cancelled"
    assert event["response"]["status_details"] == {"type": "cancelled",
                                                   "reason": "client_cancelled"}


async def test_bad_client_messages_get_errors_and_the_connection_goes_on(
        echo: FakeRealtimeServer, client: ClientConnection) -> None:
    await client.send("this is not json")
    await client.send('{"type":"response.audio.delta"}')
    await client.send('{"type":"input_audio_buffer.append","audio":"not base64!"}')
    errors = [await recv(client) for _ in range(3)]
    assert [e["error"]["type"] for e in errors] == ["invalid_request_error"] * 3
    assert [e["error"]["code"] for e in errors] == ["invalid_json", "invalid_value",
                                                    "invalid_value"]
    assert [e["error"]["param"] for e in errors] == [None, "type", "audio"]
    await client.send(jsonfast.dumps(GA_PCMU_UPDATE))
    assert (await recv(client))["type"] == "session.updated"
    # The parsed events were recorded, in order, on the server and on the connection.
    kinds = [e["type"] for e in echo.received]
    assert kinds == ["response.audio.delta", "input_audio_buffer.append", "session.update"]
    assert echo.connections[0].received == echo.received


async def test_silent_mode_records_and_never_answers_audio() -> None:
    async with FakeRealtimeServer(mode="silent") as server:
        async with connect(server.url + "?model=m", additional_headers=AUTH) as ws:
            await recv(ws)
            for _ in range(20):
                await ws.send('{"type":"input_audio_buffer.append","audio":"AAAA"}')
            await ws.send('{"type":"input_audio_buffer.clear"}')
            # Events are answered in order, so the first reply is the one to the clear.
            assert (await recv(ws))["type"] == "input_audio_buffer.cleared"
        assert server.connections[0].audio_appended == 20
        assert len(server.received) == 21


async def test_expected_key_mismatch_gets_invalid_api_key_and_close() -> None:
    async with FakeRealtimeServer(api_key="sk-right") as server:
        async with connect(server.url + "?model=m",
                           additional_headers={"Authorization": "Bearer sk-wrong"}) as ws:
            error = await recv(ws)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
        assert error["error"]["code"] == "invalid_api_key"


async def test_missing_model_or_auth_is_refused(echo: FakeRealtimeServer) -> None:
    async with connect(echo.url, additional_headers=AUTH) as ws:
        error = await recv(ws)
        assert (error["error"]["code"], error["error"]["param"]) == (
            "missing_required_parameter", "model")
    async with connect(echo.url + "?model=m") as ws:
        assert (await recv(ws))["error"]["code"] == "missing_api_key"


async def test_other_paths_are_not_found(echo: FakeRealtimeServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(echo.url.replace("/v1/realtime", "/v1/live") + "?model=m",
                           additional_headers=AUTH):
            pass
    assert refused.value.response.status_code == 404


async def test_scripted_events_are_ga_shaped(echo: FakeRealtimeServer,
                                             client: ClientConnection) -> None:
    conn = await echo.wait_for_connection()
    await conn.push_caller_transcript("hello there")
    await conn.push_audio("AAAA")
    await conn.finish_response("hi", usage={"total_tokens": 3, "input_tokens": 2,
                                            "output_tokens": 1})
    await conn.push_speech_started(120)
    kinds: list[str] = []
    while not kinds or kinds[-1] != "input_audio_buffer.speech_started":
        kinds.append((await recv(client))["type"])  # recv() checks each one
    assert kinds[0] == "conversation.item.input_audio_transcription.completed"
    assert "response.done" in kinds


async def test_runs_as_a_module_until_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "telewire.testing.fake_realtime", "--port", "0", "--mode", "echo",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime")
        async with connect(url + "?model=m", additional_headers=AUTH) as ws:
            assert (await recv(ws))["type"] == "session.created"
            await ws.send('{"type":"input_audio_buffer.append","audio":"AAAA"}')
            events = [await recv(ws) for _ in range(4)]
            assert events[-1]["delta"] == "AAAA"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
