"""The ``openai`` provider session against a provider that misbehaves, over loopback sockets.

Depends on ``telewire.realtime.openai``, ``telewire.testing.fake_realtime`` and ``openai_ga``.
Audio deltas that are not base64, provider text that would forge log lines, a provider that keeps
closing, a burst of keypad digits, a conversation that outgrows its replay caps, and the API key
coming from a ``.env`` file. Every event the session sends is checked against the GA types.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from telewire.frames import AudioFrame, DTMFFrame, EndFrame, StartFrame, TranscriptFrame
from telewire.realtime.base import ProviderConfig
from telewire.realtime.openai import AzureSession, OpenAISession
from telewire.testing.fake_realtime import FakeConnection, FakeRealtimeServer

from frame_sink import Sink
from openai_ga import assert_ga

START = StartFrame(carrier="twilio", stream_id="MZ0002", call_id="CA0002")
KEY_VARIABLES = ("OPENAI_API_KEY", "TELEWIRE_OPENAI_API_KEY", "AZURE_OPENAI_API_KEY",
                 "TELEWIRE_AZURE_OPENAI_API_KEY")


def config_for(server: FakeRealtimeServer, **overrides: Any) -> ProviderConfig:
    return ProviderConfig(provider="openai", url=server.url, model="gpt-realtime",
                          transcription_model="", **overrides)


@pytest.fixture
def sink() -> Sink:
    return Sink()


async def opened(server: FakeRealtimeServer, sink: Sink,
                 **overrides: Any) -> tuple[OpenAISession, FakeConnection]:
    rt = OpenAISession(config_for(server, **overrides), sink)
    await rt.start(START)
    conn = await server.wait_for_connection(len(server.connections) - 1 if server.connections
                                            else 0)
    await conn.wait_for("session.update")
    return rt, conn


def assert_all_ga(server: FakeRealtimeServer) -> None:
    for event in server.received:
        assert_ga(event, side="client")


async def round_trip(session: OpenAISession, conn: FakeConnection) -> None:
    """Wait until everything the session sent before now has reached the fake (an append sent
    last arrives last), and the fake's answers to it have been read."""
    before = conn.audio_appended
    await session.send_audio(AudioFrame(payload="/w=="))
    async with asyncio.timeout(10):
        while conn.audio_appended <= before:
            await asyncio.sleep(0.005)


# -- audio deltas --------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [
    'abc"},"event":"clear',                       # JSON injection into the carrier envelope
    'AAAA"},"event":"clear","x":{"y":"',          # the same, leaving valid JSON behind
    "AAA",                                        # length not a multiple of 4
    "AA=A",                                       # padding in the middle
    "AAAA\nAAA",                                  # a control character
    "ÄÄÄÄ",                                       # not ASCII
    12345, None, ["AAAA"], {"b64": "AAAA"},      # not a string at all
    "A" * 1072,                                   # more audio than max_audio_delta_ms (100 ms)
], ids=lambda d: repr(d)[:24])
async def test_a_delta_that_is_not_base64_audio_is_dropped_and_counted(
        sink: Sink, delta: Any, log_lines: list[str]) -> None:
    async with FakeRealtimeServer(mode="silent") as server:
        rt, conn = await opened(server, sink, max_audio_delta_ms=100)
        await conn.push_delta(delta)
        await conn.push_delta("A" * 1068)  # exactly 100 ms (801 bytes, padded): accepted
        await conn.push_audio("AAAA")
        frames = await sink.wait_for(AudioFrame, 2)
        await rt.close()
    assert [f.payload for f in frames] == ["A" * 1068, "AAAA"]
    assert rt.bad_audio_deltas == 1 and rt.counters()["bad_audio_deltas"] == 1
    assert sink.of(EndFrame) == []
    (line,) = [line for line in log_lines if "dropped an audio delta" in line]
    assert line.startswith("ERROR") and "\n" not in line


async def test_a_flood_of_bad_deltas_is_counted_in_full_and_logged_once(
        sink: Sink, log_lines: list[str]) -> None:
    async with FakeRealtimeServer(mode="silent") as server:
        rt, conn = await opened(server, sink)
        for _ in range(500):
            await conn.push_delta('x"},"event":"clear')
        await conn.push_audio("AAAA")
        await sink.wait_for(AudioFrame)
        await rt.close()
    assert rt.bad_audio_deltas == 500
    assert len([line for line in log_lines if "dropped an audio delta" in line]) == 1


# -- provider text in log lines ------------------------------------------------------------------


async def test_provider_text_cannot_forge_log_lines(sink: Sink, log_lines: list[str]) -> None:
    forged = "ok\n12:00:00.000 INFO    twilio CA00 | call ended: normal"
    async with FakeRealtimeServer(mode="silent") as server:
        rt, conn = await opened(server, sink)
        await conn.send_error(forged, code="odd\r\ncode", param="p\nq")
        await conn.send_error(forged, code="insufficient_quota")
        (end,) = await sink.wait_for(EndFrame)
        await rt.close()
    mentioning = [line for line in log_lines if "call ended: normal" in line]
    assert len(mentioning) == 2
    assert all("\n" not in line and "\r" not in line for line in mentioning)
    assert "\n" not in end.detail and end.detail.startswith("insufficient_quota: ok\\n")


# -- closes --------------------------------------------------------------------------------------


async def test_a_provider_that_keeps_closing_at_once_ends_the_call(sink: Sink) -> None:
    """Every connection is closed (1000) before it produced any response: after
    ``reconnect_attempts`` such connections in a row the call ends instead of looping."""
    async with FakeRealtimeServer(mode="silent") as server:
        rt, conn = await opened(server, sink, reconnect_attempts=2)
        index = 0
        while not sink.of(EndFrame):
            conn = await server.wait_for_connection(index)
            await conn.wait_for("session.update")
            await conn.close(1000, "")
            index += 1
            if index > 5:
                break
        (end,) = await sink.wait_for(EndFrame)
        await rt.close()
    assert index == 3 and rt.reconnects == 2
    assert end.reason == "provider_closed" and "before any response" in end.detail


async def test_a_close_after_a_response_resets_the_count(sink: Sink) -> None:
    async with FakeRealtimeServer(mode="echo") as server:
        rt, conn = await opened(server, sink, reconnect_attempts=1)
        for index in range(1, 4):
            await rt.send_audio(AudioFrame(payload="AAAA"))  # echo answers: a response
            await sink.wait_for(AudioFrame, index)
            await conn.close(1000, "")
            conn = await server.wait_for_connection(index)
            await conn.wait_for("session.update")
        await rt.close()
    assert rt.reconnects == 3 and sink.of(EndFrame) == []
    assert_all_ga(server)


# -- DTMF ----------------------------------------------------------------------------------------


async def test_a_burst_of_digits_asks_for_one_answer_and_every_digit_is_heard(sink: Sink) -> None:
    async with FakeRealtimeServer(mode="silent") as server:  # responses only when the test says
        rt, conn = await opened(server, sink)
        for i in range(200):
            await rt.send_dtmf(DTMFFrame(digit="0123456789*#"[i % 12]))
        await conn.wait_for("conversation.item.create", 200)
        await round_trip(rt, conn)
        assert len(conn.events("response.create")) == 1  # pending: not answered yet

        await conn.start_response()  # the model starts answering ...
        for _ in range(50):
            await rt.send_dtmf(DTMFFrame(digit="5"))  # ... and the caller keeps pressing
        await round_trip(rt, conn)
        assert len(conn.events("response.create")) == 1
        await conn.finish_response()
        await conn.wait_for("response.create", 2)  # one answer for the 50 pressed meanwhile
        await round_trip(rt, conn)

        await conn.start_response()
        await conn.finish_response()  # no digit since: nothing more to answer
        await round_trip(rt, conn)
        await rt.close()
    assert len(conn.events("response.create")) == 2
    digits = [text for role, text in conn.dialogue() if role == "user"]
    assert len(digits) == 250 and digits[0] == "[The caller pressed the key 0]"
    assert_all_ga(server)


async def test_a_refused_response_create_is_retried_once_the_active_one_is_done(
        sink: Sink) -> None:
    async with FakeRealtimeServer(mode="silent") as server:
        rt, conn = await opened(server, sink)
        await conn.start_response()  # the provider starts a response (its own VAD) ...
        async with asyncio.timeout(10):
            while not rt.response_active:
                await asyncio.sleep(0.005)
        rt._response_id = None  # ... whose response.created the session has not read yet
        await rt.send_dtmf(DTMFFrame(digit="1"))
        await conn.wait_for("response.create")  # refused: conversation_already_has_active_response
        await conn.finish_response()  # (sent after the refusal: read after it)
        (_, retry) = await conn.wait_for("response.create", 2)
        await round_trip(rt, conn)
        await rt.close()
    assert retry == {"type": "response.create"} and len(conn.events("response.create")) == 2
    assert_all_ga(server)


# -- conversation history ------------------------------------------------------------------------


async def test_history_is_capped_by_items_and_characters_oldest_first(sink: Sink) -> None:
    async with FakeRealtimeServer(mode="silent") as server:
        rt, conn = await opened(server, sink, history_max_items=5, history_max_chars=100)
        for i in range(12):
            await conn.push_caller_transcript(f"caller line {i:02d}")  # 15 characters each
        await sink.wait_for(TranscriptFrame, 12)
        assert [item["content"][0]["text"] for item in rt.history] == [
            f"caller line {i:02d}" for i in range(7, 12)]
        await conn.push_caller_transcript("x" * 70)  # 75 + 70 > 100: two more must go
        await sink.wait_for(TranscriptFrame, 13)
        assert [item["content"][0]["text"] for item in rt.history] == [
            "caller line 10", "caller line 11", "x" * 70]
        await conn.push_caller_transcript("y" * 5000)  # longer than the cap on its own
        await sink.wait_for(TranscriptFrame, 14)
        assert [item["content"][0]["text"] for item in rt.history] == ["y" * 100]
        assert rt.history_dropped == 10 + 3

        await conn.close(1001, "going away")  # the replay sends what is kept, nothing more
        fresh = await server.wait_for_connection(1)
        (replayed,) = await fresh.wait_for("conversation.item.create")
        await round_trip(rt, fresh)
        await rt.close()
    assert replayed["item"]["content"] == [{"type": "input_text", "text": "y" * 100}]
    assert len(fresh.events("conversation.item.create")) == 1
    assert_all_ga(server)


async def test_a_tool_output_whose_call_was_dropped_is_not_replayed(sink: Sink) -> None:
    async with FakeRealtimeServer(mode="silent") as server:
        rt, conn = await opened(server, sink, history_max_items=3)
        conn.script_tool_call("lookup", '{"q": "hours"}')
        await conn.create_response()
        await conn.wait_for("response.create")  # after the function_call_output
        assert [item["type"] for item in rt.history] == ["function_call", "function_call_output"]
        await conn.push_caller_transcript("first")
        await conn.push_caller_transcript("second")
        await sink.wait_for(TranscriptFrame, 2)
        assert [item["type"] for item in rt.history] == ["function_call_output", "message",
                                                         "message"]
        await conn.close(1012, "restart")
        fresh = await server.wait_for_connection(1)
        await fresh.wait_for("conversation.item.create", 2)
        await round_trip(rt, fresh)
        await rt.close()
    assert [e["item"]["type"] for e in fresh.events("conversation.item.create")] == [
        "message", "message"]
    assert fresh.events("error") == [] and not [e for e in fresh.received if e["type"] == "error"]
    assert_all_ga(server)


# -- provider keys -------------------------------------------------------------------------------


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


async def test_the_key_comes_from_a_dotenv_file_and_is_read_once_per_session(
        sink: Sink, no_keys: None) -> None:
    dotenv = Path(".env")  # the test runs in its own tmp folder
    dotenv.write_text("OPENAI_API_KEY=sk-from-dotenv\n")
    async with FakeRealtimeServer(mode="silent") as server:
        rt, conn = await opened(server, sink)
        dotenv.write_text("OPENAI_API_KEY=sk-changed-later\n")
        await conn.close(1001, "going away")
        fresh = await server.wait_for_connection(1)
        await fresh.wait_for("session.update")
        await rt.close()
    assert conn.headers["Authorization"] == "Bearer sk-from-dotenv"
    assert fresh.headers["Authorization"] == "Bearer sk-from-dotenv"  # not re-read


async def test_the_telewire_name_wins_and_the_configured_key_wins_over_both(
        sink: Sink, no_keys: None, monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("OPENAI_API_KEY=sk-standard\nTELEWIRE_OPENAI_API_KEY=sk-telewire\n")
    async with FakeRealtimeServer(mode="silent") as server:
        rt, conn = await opened(server, sink)
        await rt.close()
        assert conn.headers["Authorization"] == "Bearer sk-telewire"
        monkeypatch.setenv("OPENAI_API_KEY", "")  # blank: unset; .env's telewire name still wins
        from pydantic import SecretStr
        rt, conn = await opened(server, sink, api_key=SecretStr("sk-graph"))
        await rt.close()
        assert conn.headers["Authorization"] == "Bearer sk-graph"


async def test_azure_reads_its_own_key_from_dotenv(sink: Sink, no_keys: None) -> None:
    Path(".env").write_text("OPENAI_API_KEY=sk-not-this-one\nAZURE_OPENAI_API_KEY=az-dotenv\n")
    async with FakeRealtimeServer(mode="silent") as server:
        rt = AzureSession(config_for(server).model_copy(update={"provider": "azure"}), sink)
        await rt.start(START)
        conn = await server.wait_for_connection()
        await rt.close()
    assert conn.headers["api-key"] == "az-dotenv"
    assert "Authorization" not in conn.headers
