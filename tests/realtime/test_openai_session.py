"""Tests of the ``openai`` provider session against the fake GA server over loopback sockets.

Depends on ``telewire.realtime.openai``, ``telewire.testing.fake_realtime`` and ``openai_ga``.
Every event the session sends is checked against the ``openai`` package's GA client-event types.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from typing import Any, AsyncIterator

import pytest
from pydantic import SecretStr

from telewire.errors import ConfigError, ProviderError
from telewire.frames import (
    AudioFrame,
    EndFrame,
    ErrorFrame,
    InterruptFrame,
    StartFrame,
    SteerFrame,
    TranscriptFrame,
    UsageFrame,
)
from telewire.realtime.base import ProviderConfig, create_session
from telewire.realtime.openai import OpenAISession
from telewire.testing.fake_realtime import FakeConnection, FakeRealtimeServer

from frame_sink import Sink
from openai_ga import assert_ga

START = StartFrame(carrier="twilio", stream_id="MZ0001", call_id="CA0001")


@pytest.fixture
async def server() -> AsyncIterator[FakeRealtimeServer]:
    async with FakeRealtimeServer(mode="echo") as srv:
        yield srv
        # The honesty check: every event any session sent is a published GA client event.
        for event in srv.received:
            assert_ga(event, side="client")


@pytest.fixture
def sink() -> Sink:
    return Sink()


def config_for(server: FakeRealtimeServer, **overrides: Any) -> ProviderConfig:
    return ProviderConfig(provider="openai", url=server.url, model="gpt-realtime",
                          voice="cedar", system_prompt="Answer the phone.", **overrides)


@pytest.fixture
async def session(server: FakeRealtimeServer, sink: Sink) -> AsyncIterator[OpenAISession]:
    rt = create_session(config_for(server), sink)
    assert isinstance(rt, OpenAISession)
    await rt.start(START)
    yield rt
    await rt.close()


@pytest.fixture
async def conn(server: FakeRealtimeServer, session: OpenAISession) -> FakeConnection:
    connection = await server.wait_for_connection()
    await connection.wait_for("session.update")
    return connection


async def test_start_sends_a_ga_session_update_with_pcmu_both_ways(conn: FakeConnection) -> None:
    (update,) = conn.events("session.update")
    assert update["event_id"]  # lets a refusal of the set-up be told from other errors
    session = update["session"]
    assert session["type"] == "realtime" and session["model"] == "gpt-realtime"
    assert session["output_modalities"] == ["audio"]
    assert session["instructions"] == "Answer the phone."
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["voice"] == "cedar"
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert conn.model == "gpt-realtime"
    assert "OpenAI-Beta" not in conn.headers
    assert conn.headers["Authorization"].startswith("Bearer ")
    assert conn.session["audio"]["output"]["format"] == {"type": "audio/pcmu"}


async def test_url_keeps_query_parameters_and_sends_the_configured_key(
        sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with FakeRealtimeServer(api_key="sk-configured") as server:
        cfg = config_for(server, api_key=SecretStr("sk-configured"))
        cfg = cfg.model_copy(update={"url": server.url + "?api-version=2025-08-28&model=old"})
        rt = OpenAISession(cfg, sink)
        await rt.start(START)
        conn = await server.wait_for_connection()
        await conn.wait_for("session.update")
        await rt.close()
    request = conn.ws.request
    assert request is not None
    assert request.path.endswith("/v1/realtime?api-version=2025-08-28&model=gpt-realtime")
    assert conn.headers["Authorization"] == "Bearer sk-configured"
    assert sink.of(EndFrame) == []


async def test_key_from_environment_is_used(
        sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    async with FakeRealtimeServer(api_key="sk-from-env") as server:
        rt = OpenAISession(config_for(server), sink)
        await rt.start(START)
        await rt.close()
    assert server.connections[0].headers["Authorization"] == "Bearer sk-from-env"


async def test_missing_key_for_a_remote_url_is_a_config_error(
        sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rt = OpenAISession(ProviderConfig(provider="openai"), sink)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        await rt.start(START)


async def test_refused_key_is_a_provider_error_with_its_code(
        sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with FakeRealtimeServer(api_key="sk-right") as server:
        rt = OpenAISession(config_for(server, api_key=SecretStr("sk-wrong")), sink)
        with pytest.raises(ProviderError) as refused:
            await rt.start(START)
    assert refused.value.code == "invalid_api_key"
    assert "sk-wrong" not in str(refused.value)


async def test_unreachable_provider_is_a_provider_error(sink: Sink) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rt = OpenAISession(ProviderConfig(provider="openai", url=f"ws://127.0.0.1:{port}/v1/realtime",
                                      connect_timeout_s=5), sink)
    with pytest.raises(ProviderError, match="cannot connect"):
        await rt.start(START)


async def test_appends_carry_the_exact_payload(session: OpenAISession, conn: FakeConnection) -> None:
    text = base64.b64encode(bytes(range(160))).decode()
    raw = bytes(range(255, 95, -1))
    await session.send_audio(AudioFrame(payload=text))
    await session.send_audio(AudioFrame(payload=raw))
    appends = await conn.wait_for("input_audio_buffer.append", 2)
    assert [a["audio"] for a in appends] == [text, base64.b64encode(raw).decode()]
    assert all(set(a) == {"type", "audio"} for a in appends)


async def test_echo_round_trip_is_byte_identical_and_in_order(
        session: OpenAISession, conn: FakeConnection, sink: Sink) -> None:
    payloads = [base64.b64encode(bytes([(i * 7 + j) % 256 for j in range(160)])).decode()
                for i in range(500)]
    for payload in payloads:
        await session.send_audio(AudioFrame(payload=payload, sequence=1))
    frames = await sink.wait_for(AudioFrame, len(payloads))
    assert [f.payload for f in frames] == payloads
    assert {(f.track, f.codec, f.sample_rate) for f in frames} == {("outbound", "pcmu", 8000)}
    assert len({f.item_id for f in frames}) == 1 and frames[0].item_id
    assert session.response_active


async def test_transcripts_usage_and_vad_interrupt_become_frames(
        session: OpenAISession, conn: FakeConnection, sink: Sink) -> None:
    caller_item = await conn.push_caller_transcript("I need a taxi")
    await conn.push_audio("AAAA")
    usage = {"total_tokens": 60, "input_tokens": 40, "output_tokens": 20,
             "input_token_details": {"text_tokens": 10, "audio_tokens": 30, "cached_tokens": 8},
             "output_token_details": {"text_tokens": 5, "audio_tokens": 15}}
    response_id = await conn.finish_response("Where to?", usage=usage)
    await conn.push_speech_started(1200)
    (caller, agent) = await sink.wait_for(TranscriptFrame, 2)
    assert (caller.role, caller.text, caller.item_id) == ("caller", "I need a taxi", caller_item)
    (audio,) = sink.of(AudioFrame)
    assert (agent.role, agent.text, agent.item_id) == ("agent", "Where to?", audio.item_id)
    (used,) = await sink.wait_for(UsageFrame)
    assert used == UsageFrame(provider="openai", model="gpt-realtime", response_id=response_id,
                              input_text_tokens=10, input_audio_tokens=30, input_cached_tokens=8,
                              output_text_tokens=5, output_audio_tokens=15)
    (interrupt,) = await sink.wait_for(InterruptFrame)
    assert interrupt.source == "model"
    assert not session.response_active
    assert sink.of(EndFrame) == []


async def test_interrupt_cancels_the_active_response_only(
        session: OpenAISession, conn: FakeConnection, sink: Sink) -> None:
    await session.interrupt(InterruptFrame(source="dtmf"))  # nothing is being said
    await session.send_audio(AudioFrame(payload="AAAA"))
    await sink.wait_for(AudioFrame)
    open_response = await conn.start_response()  # the ids of the response echo opened
    await session.interrupt(InterruptFrame(source="model"))  # the server already cancelled
    await session.interrupt(InterruptFrame(source="dtmf"))
    (cancel,) = await conn.wait_for("response.cancel")
    assert cancel == {"type": "response.cancel", "response_id": open_response["response_id"]}
    # The cancelled response reports response.done; the session no longer thinks one is active.
    async with asyncio.timeout(10):
        while session.response_active:
            await asyncio.sleep(0.01)
    assert len(conn.events("response.cancel")) == 1
    assert sink.of(EndFrame) == []


async def test_steer_updates_instructions_and_respects_the_voice_lock(
        session: OpenAISession, conn: FakeConnection, sink: Sink) -> None:
    await session.steer(SteerFrame(instructions="Speak Spanish.", voice="marin"))
    first = (await conn.wait_for("session.update", 2))[1]
    assert first["session"] == {"type": "realtime", "instructions": "Speak Spanish.",
                                "audio": {"output": {"voice": "marin"}}}
    await session.send_audio(AudioFrame(payload="AAAA"))
    await sink.wait_for(AudioFrame)
    await session.steer(SteerFrame(instructions="Speak French.", voice="ash"))
    second = (await conn.wait_for("session.update", 3))[2]
    assert second["session"] == {"type": "realtime", "instructions": "Speak French."}
    assert conn.session["instructions"] == "Speak French."
    assert conn.session["audio"]["output"]["voice"] == "marin"  # never asked to change: locked
    assert session.handovers == 0  # the echo response is still open: wait for response.done
    await conn.finish_response()
    fresh = await conn.server.wait_for_connection(1)  # the voice moved to a fresh session
    (setup,) = await fresh.wait_for("session.update")
    assert setup["session"]["audio"]["output"]["voice"] == "ash"
    assert setup["session"]["instructions"] == "Speak French."
    assert session.handovers == 1
    assert conn.events("error") == [] and fresh.events("error") == []


async def test_fatal_provider_error_ends_with_provider_error(
        session: OpenAISession, conn: FakeConnection, sink: Sink) -> None:
    await conn.send_error("Cancellation failed: no active response found",
                          code="response_cancel_not_active")
    await conn.send_error("You exceeded your current quota.", code="insufficient_quota",
                          error_type="insufficient_quota")
    (end,) = await sink.wait_for(EndFrame)
    assert end.reason == "provider_error"
    assert end.detail == "insufficient_quota: You exceeded your current quota."
    await asyncio.wait_for(conn.closed.wait(), 10)
    await session.send_audio(AudioFrame(payload="AAAA"))  # dropped quietly once ended
    assert len(sink.of(EndFrame)) == 1


async def test_wrong_output_format_in_session_updated_fails_loudly(sink: Sink) -> None:
    overrides = {"audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}}}}
    async with FakeRealtimeServer(session_overrides=overrides) as server:
        rt = OpenAISession(config_for(server), sink)
        await rt.start(START)
        (end,) = await sink.wait_for(EndFrame)
        await rt.close()
    (error,) = sink.of(ErrorFrame)
    assert error.fatal and error.source == "openai"
    assert "audio.output.format.type is 'audio/pcm'" in error.message
    assert end.reason == "provider_error" and "audio/pcmu" in end.detail


async def test_refused_session_setup_fails_loudly(sink: Sink) -> None:
    class Misconfigured(OpenAISession):
        def session_config(self) -> dict[str, Any]:
            config = super().session_config()
            config["audio"]["output"]["pitch"] = 2  # a field the provider does not know
            return config

    async with FakeRealtimeServer() as server:
        rt = Misconfigured(config_for(server), sink)
        await rt.start(START)
        (end,) = await sink.wait_for(EndFrame)
        await rt.close()
    assert end.reason == "provider_error"
    assert end.detail.startswith("the provider refused the session set-up: unknown_parameter")
    assert "session.audio.output.pitch" in end.detail
    assert sink.of(ErrorFrame)[0].fatal


async def test_normal_close_mid_call_reconnects_and_audio_flows_again(
        session: OpenAISession, conn: FakeConnection, sink: Sink) -> None:
    """A close with 1000 is no reason to end a live call: the provider has no business doing
    so (``end_call`` is how the model hangs up), so it is treated like any other drop."""
    await session.send_audio(AudioFrame(payload="AAAA"))
    await sink.wait_for(AudioFrame)
    await conn.push_caller_transcript("Two tickets, please.")
    await sink.wait_for(TranscriptFrame)
    await conn.close(1000, "bye")
    fresh = await conn.server.wait_for_connection(1)
    (item,) = await fresh.wait_for("conversation.item.create")
    assert item["item"]["content"] == [{"type": "input_text", "text": "Two tickets, please."}]
    await session.send_audio(AudioFrame(payload="AAEC"))
    (append,) = await fresh.wait_for("input_audio_buffer.append")
    assert append["audio"] == "AAEC"
    frames = await sink.wait_for(AudioFrame, 2)
    assert frames[-1].payload == "AAEC"  # the fresh session's echo reached the caller side
    assert session.reconnects == 1 and sink.of(EndFrame) == []


async def test_policy_close_ends_with_provider_closed_and_its_code(
        session: OpenAISession, conn: FakeConnection, sink: Sink) -> None:
    await conn.close(1008, "bye\nERROR forged line")
    (end,) = await sink.wait_for(EndFrame)
    assert end.reason == "provider_closed"
    assert "1008" in end.detail and "bye" in end.detail
    assert "\n" not in end.detail  # the reason is quoted, its newline escaped
    assert session.reconnects == 0


async def test_going_away_reconnects_and_replays_the_conversation(
        session: OpenAISession, conn: FakeConnection, sink: Sink) -> None:
    await conn.push_caller_transcript("What are your opening hours?")
    await sink.wait_for(TranscriptFrame)
    await conn.close(1001, "going away")
    fresh = await conn.server.wait_for_connection(1)
    (item,) = await fresh.wait_for("conversation.item.create")
    assert item["item"]["role"] == "user"
    assert item["item"]["content"] == [{"type": "input_text", "text": "What are your opening hours?"}]
    await session.send_audio(AudioFrame(payload="AAEC"))
    (append,) = await fresh.wait_for("input_audio_buffer.append")
    assert append["audio"] == "AAEC"
    assert session.reconnects == 1 and sink.of(EndFrame) == []


async def test_junk_and_oversize_provider_messages_are_skipped(sink: Sink) -> None:
    async with FakeRealtimeServer() as server:
        rt = OpenAISession(config_for(server, max_message_bytes=4096), sink)
        await rt.start(START)
        conn = await server.wait_for_connection()
        await conn.ws.send("{not json")
        await conn.ws.send('["no", "type"]')
        await conn.ws.send('{"type":"response.output_audio_transcript.done"}')  # no transcript
        await conn.ws.send('{"type":"response.output_audio.delta","delta":"' + "A" * 8000 + '"}')
        await conn.push_audio("AAAA")
        (frame,) = await sink.wait_for(AudioFrame)
        await rt.close()
    assert frame.payload == "AAAA"
    assert sink.of(EndFrame) == [] and sink.of(TranscriptFrame) == []


async def test_close_is_idempotent_and_emits_nothing(
        session: OpenAISession, conn: FakeConnection, sink: Sink) -> None:
    await session.close()
    await session.close()
    await asyncio.wait_for(conn.closed.wait(), 10)
    await session.send_audio(AudioFrame(payload="AAAA"))
    assert sink.of(EndFrame) == []


async def test_send_audio_before_start_is_a_usage_error(server: FakeRealtimeServer,
                                                        sink: Sink) -> None:
    rt = OpenAISession(config_for(server), sink)
    with pytest.raises(RuntimeError, match="before start"):
        await rt.send_audio(AudioFrame(payload="AAAA"))
