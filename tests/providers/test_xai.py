"""The ``xai`` provider (Grok Voice Agent) against the xAI fake over loopback sockets.

Depends on ``telewire.realtime.xai``, ``telewire.testing.fake_xai``,
``telewire.testing.realtime_fake_adapter`` and ``openai_ga``. Where xAI is GA-shaped, every event
the session sends is checked against the ``openai`` package's GA client-event types; where it is
not (``session.update``), the test says so and the xAI fake checks the shape.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from typing import Any, AsyncIterator

import pytest

from telewire.errors import ConfigError
from telewire.frames import (AudioFrame, DTMFFrame, EndFrame, ErrorFrame, InterruptFrame,
                             StartFrame, SteerFrame, TranscriptFrame, UsageFrame)
from telewire.realtime.base import ProviderConfig, ToolSpec, TurnDetection, create_session
from telewire.realtime.xai import XAISession
from telewire.testing.fake_xai import FakeXAIConnection, FakeXAIServer
from telewire.testing.provider_kit import KitCall, ProviderTests
from telewire.testing.realtime_fake_adapter import XAIRealtimeFake, ga_problem
from telewire.tools import ToolBox

from conftest import ServeProcess
from frame_sink import Sink
from openai_ga import assert_ga

START = StartFrame(carrier="twilio", stream_id="MZ0001", call_id="CA0001")
#: xAI's session.update is not GA-shaped (voice and turn_detection at the top, no type …).
NOT_GA = ("session.update",)


def lookup_order(number: str) -> dict[str, str]:
    return {"number": number, "status": "shipped"}


def check_client_events(server: FakeXAIServer) -> None:
    """GA-shaped events pass openai's types; the fake refused nothing but benign races."""
    for event in server.received:
        if event["type"] in NOT_GA:
            continue
        assert_ga(event, side="client")
    for conn in server.connections:
        assert all(e["code"] is None for e in conn.errors_sent), conn.errors_sent


def config_for(server: FakeXAIServer, **overrides: Any) -> ProviderConfig:
    return ProviderConfig(provider="xai", url=server.url, api_key="test-key",
                          system_prompt="Answer the phone.", **overrides)


@pytest.fixture
async def server() -> AsyncIterator[FakeXAIServer]:
    async with FakeXAIServer(mode="echo") as srv:
        yield srv
        check_client_events(srv)


@pytest.fixture
def sink() -> Sink:
    return Sink()


async def open_session(server: FakeXAIServer, sink: Sink, **overrides: Any
                       ) -> tuple[XAISession, FakeXAIConnection]:
    rt = create_session(config_for(server, **overrides), sink)
    assert isinstance(rt, XAISession)
    await rt.start(START)
    conn = await server.wait_for_connection(len(server.connections) - 1 if server.connections
                                            else 0)
    await conn.wait_for("session.update")
    return rt, conn  # type: ignore[return-value]


async def updated(conn: FakeXAIConnection, count: int = 1) -> None:
    """Wait until the fake has answered ``count`` session.updates (with no refusal)."""
    for _ in range(200):
        if len(conn.events("session.update")) >= count and not conn.errors_sent:
            await asyncio.sleep(0)
            return
        await asyncio.sleep(0.01)
    raise AssertionError(conn.errors_sent)


# -- the session's set-up -----------------------------------------------------------------------


async def test_session_update_is_xais_shape_with_pcmu_both_ways(server: FakeXAIServer,
                                                                sink: Sink) -> None:
    rt, conn = await open_session(server, sink)
    try:
        (update,) = conn.events("session.update")
        session = update["session"]
        assert session == {
            "instructions": "Answer the phone.",
            "voice": "eve",  # xAI's default voice, rt.config.voice being unset
            "turn_detection": {"type": "server_vad"},  # xAI's own VAD defaults
            "audio": {"input": {"format": {"type": "audio/pcmu"},
                                "transcription": {"model": "grok-transcribe"}},
                      "output": {"format": {"type": "audio/pcmu"}}},
            "resumption": {"enabled": True},
        }
        # not GA: GA wants session.type and puts voice / turn_detection under audio
        assert ga_problem(update) is not None
        assert conn.model == "grok-voice-latest"  # the ?model= xAI's alias, rt.config.model unset
        assert conn.headers["Authorization"] == "Bearer test-key"
        assert rt.conversation_id == conn.conversation_id  # from conversation.created
        await updated(conn)
        assert conn.xai_session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert not sink.of(EndFrame) and not sink.of(ErrorFrame)  # the ping was ignored
    finally:
        await rt.close()


async def test_explicit_settings_and_turn_detection_fields_go_through(server: FakeXAIServer,
                                                                      sink: Sink) -> None:
    rt, conn = await open_session(
        server, sink, model="grok-voice-think-fast-1.0", voice="rex", transcription_model="",
        turn_detection=TurnDetection(threshold=0.7, silence_duration_ms=800))
    try:
        session = conn.events("session.update")[0]["session"]
        assert conn.model == "grok-voice-think-fast-1.0" and session["voice"] == "rex"
        assert session["turn_detection"] == {"type": "server_vad", "threshold": 0.7,
                                             "silence_duration_ms": 800}
        assert "transcription" not in session["audio"]["input"]
        await updated(conn)
    finally:
        await rt.close()


@pytest.mark.parametrize("turn", [TurnDetection(type="semantic_vad"),
                                  TurnDetection(create_response=False),
                                  TurnDetection(interrupt_response=False)])
def test_turn_detection_xai_lacks_is_a_config_error(turn: TurnDetection) -> None:
    config = ProviderConfig(provider="xai", turn_detection=turn)
    with pytest.raises(ConfigError, match="xAI"):
        XAISession(config, Sink())


def test_an_openai_url_is_refused_and_the_key_is_xais(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = XAISession(ProviderConfig(provider="xai", url="wss://api.openai.com/v1/realtime"), Sink())
    with pytest.raises(ConfigError, match="api.x.ai"):
        rt._session_url()
    monkeypatch.delenv("XAI_API_KEY", raising=False)
    monkeypatch.delenv("TELEWIRE_XAI_API_KEY", raising=False)
    monkeypatch.chdir("/")  # no .env
    unset = XAISession(ProviderConfig(provider="xai"), Sink())
    assert unset.config.url == "wss://api.x.ai/v1/realtime"
    with pytest.raises(ConfigError, match="XAI_API_KEY"):
        unset._resolve_key(unset._where())
    monkeypatch.setenv("XAI_API_KEY", "xai-from-env")
    assert unset._resolve_key(unset._where()) == "xai-from-env"


# -- audio, barge-in, tools, steering -----------------------------------------------------------


async def test_audio_is_byte_identical_both_ways(server: FakeXAIServer, sink: Sink) -> None:
    rng = random.Random(11)
    payloads = [base64.b64encode(bytes(rng.randrange(256) for _ in range(160))).decode()
                for _ in range(50)]
    rt, conn = await open_session(server, sink)
    try:
        await updated(conn)
        for b64 in payloads:
            await rt.send_audio(AudioFrame(payload=b64))
        got = await sink.wait_for(AudioFrame, 50)
        assert [f.b64 for f in got] == payloads  # the strings themselves, in order
        assert [e["audio"] for e in conn.events("input_audio_buffer.append")] == payloads
    finally:
        await rt.close()


async def test_barge_in_cancels_without_response_id_and_truncates(server: FakeXAIServer,
                                                                  sink: Sink) -> None:
    rt, conn = await open_session(server, sink, transcription_model="")
    try:
        await updated(conn)
        opened = await conn.start_response()
        for _ in range(10):  # 10 x 20 ms
            await conn.push_audio(base64.b64encode(bytes(160)).decode())
        await sink.wait_for(AudioFrame, 10)
        # xAI's VAD hears the caller; xAI does not document that it cancels the reply itself
        await conn.send({"type": "input_audio_buffer.speech_started", "item_id": "item_u1"})
        (interrupt,) = await sink.wait_for(InterruptFrame)
        assert interrupt.source == "model"
        await rt.interrupt(InterruptFrame(source="model", reason="speech_started",
                                          item_id=opened["item_id"], heard_ms=150))
        (cancel,) = await conn.wait_for("response.cancel")
        assert cancel == {"type": "response.cancel"}  # sent all the same, naming no response
        (truncate,) = await conn.wait_for("conversation.item.truncate")
        assert truncate["item_id"] == opened["item_id"] and truncate["audio_end_ms"] == 150
        assert conn.responses[0]["status"] == "cancelled"
        await conn.push_audio(base64.b64encode(bytes(160)).decode())  # a new reply speaks
        await sink.wait_for(AudioFrame, 11)
        assert conn.truncations == [{"item_id": opened["item_id"], "content_index": 0,
                                     "audio_end_ms": 150}]
        assert not sink.of(EndFrame) and not sink.of(ErrorFrame)
    finally:
        await rt.close()


async def test_a_cancel_racing_xais_own_cancel_is_benign(server: FakeXAIServer,
                                                         sink: Sink) -> None:
    rt, conn = await open_session(server, sink)
    try:
        await updated(conn)
        await conn.start_response()
        await conn.push_audio(base64.b64encode(bytes(160)).decode())
        await sink.wait_for(AudioFrame)
        rid = rt._response_id
        await conn.push_speech_started()  # this time the fake's VAD does cancel the reply
        await sink.wait_for(InterruptFrame)
        await conn.send({"type": "response.created", "response": {"id": rid}})  # (stale)
        for _ in range(100):
            if rt.response_active:
                break
            await asyncio.sleep(0.01)
        await rt.interrupt(InterruptFrame(source="vad", reason="local"))
        await conn.wait_for("response.cancel")
        for _ in range(100):
            if conn.errors_sent:
                break
            await asyncio.sleep(0.01)
        # xAI's refusal has no GA code; the session knows it by its message and goes on
        assert [(e["code"], e["message"]) for e in conn.errors_sent] == [
            (None, "Cancellation failed: no active response found")]
        assert not sink.of(EndFrame) and not sink.of(ErrorFrame)
    finally:
        await rt.close()


async def test_tools_run_and_the_model_is_asked_to_go_on(server: FakeXAIServer,
                                                         sink: Sink) -> None:
    tools = ToolBox([ToolSpec(name="lookup_order", function=f"{__name__}:lookup_order",
                              parameters={"type": "object",
                                          "properties": {"number": {"type": "string"}}})],
                    ["end_call"], KitCall())  # type: ignore[arg-type]
    rt = create_session(config_for(server), sink, tools=tools)
    await rt.start(START)
    try:
        conn = await server.wait_for_connection()
        (update,) = await conn.wait_for("session.update")
        names = [t["name"] for t in update["session"]["tools"]]
        assert names == ["end_call", "lookup_order"] and "tool_choice" not in update["session"]
        await updated(conn)
        call_id = conn.script_tool_call("lookup_order", json.dumps({"number": "A17"}))
        await conn.create_response()
        await conn.wait_for("response.create")
        assert conn.function_outputs[0]["call_id"] == call_id
        assert json.loads(conn.function_outputs[0]["output"]) == {"number": "A17",
                                                                  "status": "shipped"}
    finally:
        await rt.close()


async def test_a_call_announced_but_not_in_response_done_still_runs(server: FakeXAIServer,
                                                                    sink: Sink) -> None:
    tools = ToolBox([ToolSpec(name="lookup_order", function=f"{__name__}:lookup_order")],
                    [], KitCall())  # type: ignore[arg-type]
    rt = create_session(config_for(server), sink, tools=tools)
    await rt.start(START)
    try:
        conn = await server.wait_for_connection()
        await updated(conn)
        conn._call_ids.add("call_x1")  # the fake's own bookkeeping of calls it made
        # the guide's response.done: id, object, status, and no output
        await conn.send({"type": "response.created", "response": {"id": "resp_x1",
                                                                  "status": "in_progress"}})
        await conn.send({"type": "response.function_call_arguments.done", "call_id": "call_x1",
                         "name": "lookup_order", "arguments": '{"number": "B2"}'})
        await conn.send({"type": "response.done", "response": {
            "id": "resp_x1", "object": "realtime.response", "status": "completed"}})
        (create,) = await conn.wait_for("conversation.item.create")
        assert create["item"]["call_id"] == "call_x1"
        assert json.loads(create["item"]["output"]) == {"number": "B2", "status": "shipped"}
    finally:
        await rt.close()


async def test_steering_changes_instructions_and_voice_in_xais_shape(server: FakeXAIServer,
                                                                     sink: Sink) -> None:
    rt, conn = await open_session(server, sink)
    try:
        await updated(conn)
        await rt.steer(SteerFrame(instructions="Be brief.", voice="ara"))
        (_, patch) = await conn.wait_for("session.update", 2)
        assert patch["session"] == {"instructions": "Be brief.", "voice": "ara"}
        await updated(conn, 2)
        assert conn.xai_session["voice"] == "ara" and conn.session["instructions"] == "Be brief."
    finally:
        await rt.close()


async def test_say_without_metadata_is_matched_by_the_next_response(sink: Sink) -> None:
    async with FakeXAIServer(mode="talk", talk_speed=0, response_audio_ms=100,
                             talk_after_appends=10_000) as server:
        rt, conn = await open_session(server, sink)
        try:
            await updated(conn)
            assert await asyncio.wait_for(rt.say("Say goodbye."), 10) is True
            (create,) = conn.events("response.create")
            assert create["response"] == {"instructions": "Say goodbye."}  # no metadata
            (usage,) = await sink.wait_for(UsageFrame)  # no caller audio: the reply's 100 ms
            assert usage.billing == "seconds" and usage.seconds == pytest.approx(0.1, abs=0.001)
        finally:
            await rt.close()
        check_client_events(server)


async def test_usage_is_reported_in_seconds_of_audio_sent(sink: Sink) -> None:
    async with FakeXAIServer(mode="talk", talk_speed=0, response_audio_ms=100,
                             talk_after_appends=25) as server:
        rt, conn = await open_session(server, sink)
        try:
            await updated(conn)
            for _ in range(25):  # 0.5 s: the fake's VAD takes it as a turn and answers
                await rt.send_audio(AudioFrame(payload=base64.b64encode(bytes(160)).decode()))
            (usage,) = await sink.wait_for(UsageFrame)
            assert usage.billing == "seconds" and usage.seconds == pytest.approx(0.5)
            assert usage.provider == "xai" and usage.model == "grok-voice-latest"
            assert not usage.input_audio_tokens  # xAI's token counts are not billed
            (said,) = await sink.wait_for(TranscriptFrame)  # from the deltas: xAI's .done
            assert (said.role, said.text) == ("agent", "Response 1.")  # carries no transcript
        finally:
            await rt.close()
        check_client_events(server)


# -- resumption ---------------------------------------------------------------------------------


async def test_a_dropped_connection_resumes_the_conversation(server: FakeXAIServer,
                                                             sink: Sink) -> None:
    rt, first = await open_session(server, sink)
    try:
        await updated(first)
        await rt.send_dtmf(DTMFFrame(digit="5"))
        await first.wait_for("conversation.item.create")
        await first.drop()
        second = await server.wait_for_connection(1)
        await second.wait_for("session.update")
        await updated(second)
        assert second.requested_conversation == first.conversation_id
        assert second.resumed and second.conversation_id == first.conversation_id
        assert ("user", "[The caller pressed the key 5]") in second.dialogue()
        assert not second.events("conversation.item.create")  # the server replayed it
        assert rt.counters()["resumptions"] == 1 and rt.reconnects == 1
    finally:
        await rt.close()


async def test_a_conversation_the_server_lost_is_replayed_by_the_client(server: FakeXAIServer,
                                                                        sink: Sink) -> None:
    rt, first = await open_session(server, sink)
    try:
        await updated(first)
        await rt.send_dtmf(DTMFFrame(digit="7"))
        await first.wait_for("conversation.item.create")
        server.conversations.clear()  # the history expired on the server
        await first.drop()
        second = await server.wait_for_connection(1)
        (replayed,) = await second.wait_for("conversation.item.create")
        assert replayed["item"]["content"][0]["text"] == "[The caller pressed the key 7]"
        assert not second.resumed and second.conversation_id != first.conversation_id
        assert rt.conversation_id == second.conversation_id
        assert rt.counters()["resumptions"] == 0
    finally:
        await rt.close()


# -- the provider kit's fake --------------------------------------------------------------------


async def test_the_kit_fake_reports_what_the_xai_session_configured(sink: Sink) -> None:
    async with XAIRealtimeFake(mode="echo") as fake:
        config = ProviderConfig(**fake.rt_config())
        rt = create_session(config, sink)
        await rt.start(START)
        try:
            await fake.wait_connected()
            assert fake.connections == 1
            assert fake.audio_format() == ("pcmu", 8000, "pcmu", 8000)
            assert fake.voice() == "eve" and fake.instructions() == config.system_prompt
            await rt.send_dtmf(DTMFFrame(digit="#"))
            await fake.latest.wait_for("conversation.item.create")
            assert fake.texts_received() == ["[The caller pressed the key #]"]
            await rt.send_audio(AudioFrame(payload=base64.b64encode(b"\x01" * 160).decode()))
            await sink.wait_for(AudioFrame)
            assert fake.caller_audio() == b"\x01" * 160
            await fake.speak_slowly(200)
            await sink.wait_for(AudioFrame, 2)
            await fake.barge_in()
            await sink.wait_for(InterruptFrame)
            await asyncio.sleep(0.1)
            assert fake.audio_after_barge_in_ms() == 0
            assert fake.client_errors() == []
        finally:
            await rt.close()


# -- end to end ---------------------------------------------------------------------------------


async def test_serve_xai_against_fake_is_byte_identical() -> None:
    from telewire.testing.simulator import CallSimulator

    rng = random.Random(5)
    audio = bytes(rng.randrange(256) for _ in range(160 * 100))  # 2 s
    async with FakeXAIServer(mode="echo") as fake:
        serve = await asyncio.to_thread(
            ServeProcess, "--set", "rt.config.provider=xai", "--set", f"rt.config.url={fake.url}",
            env={"XAI_API_KEY": "xai-local-placeholder"})
        try:
            result = await CallSimulator(serve.url, pace=4.0, expect_echo=True,
                                         drain_s=10).run(audio)
        finally:
            log = await asyncio.to_thread(serve.stop)
        conn = await fake.wait_for_connection()
    assert result.sent_frames == 100 and result.received_frames == 100, log
    sent = [base64.b64encode(audio[i:i + 160]).decode() for i in range(0, len(audio), 160)]
    assert result.received_payloads == sent
    assert result.received_audio == audio
    [update] = conn.events("session.update")
    assert update["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert update["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert update["session"]["voice"] == "eve" and "type" not in update["session"]
    assert conn.model == "grok-voice-latest"
    assert conn.headers["Authorization"] == "Bearer xai-local-placeholder"
    check_client_events(fake)
    assert "xai-local-placeholder" not in log


# -- the provider kit ---------------------------------------------------------------------------


class TestXAIConformance(ProviderTests):
    """The provider kit's conformance tests, run for ``xai`` against the xAI fake."""

    provider = "xai"
    fake_class = XAIRealtimeFake
