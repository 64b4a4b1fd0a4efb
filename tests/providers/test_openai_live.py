"""The ``openai_live`` and ``azure_live`` providers against the fake GPT-Live server over loopback.

Depends on ``telewire.realtime.live``, ``telewire.testing.fake_live`` (which checks every client
event against ``openai.types.live``), ``frame_sink`` and, for the end-to-end test, ``conftest``'s
``ServeProcess`` and ``telewire.testing.simulator``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from decimal import Decimal
from typing import Any, AsyncIterator

import pytest

from telewire.carrier import Capabilities
from telewire.cost import CallCost, Usage
from telewire.errors import ConfigError
from telewire.frames import (
    AudioFrame,
    DTMFFrame,
    EndFrame,
    InterruptFrame,
    StartFrame,
    SteerFrame,
    TranscriptFrame,
    UsageFrame,
)
from telewire.realtime.base import ProviderConfig, ToolSpec, create_session
from telewire.realtime.live import AzureLiveSession, OpenAILiveSession
from telewire.testing.fake_live import (
    AZURE_LIVE_PATH,
    LIVE_PATH,
    AzureFakeLiveServer,
    FakeLiveServer,
)
from telewire.testing.provider_kit import ProviderTests
from telewire.tools import ToolBox

from frame_sink import Sink

START = StartFrame(carrier="twilio", stream_id="MZ0001", call_id="CA0001")
#: a short turn gap keeps the tests quick; what they wait for are events, never a sleep
FAST = {"turn_gap_ms": 300}


def _frame(payload: bytes) -> AudioFrame:
    return AudioFrame(payload=base64.b64encode(payload).decode(), codec="pcmu", sample_rate=8000)


class _Call:
    """What a ToolBox needs of a call."""

    class carrier:  # noqa: N801
        capabilities = Capabilities()

    class context:  # noqa: N801
        capabilities = None

    class log:  # noqa: N801
        @staticmethod
        def warning(*args: object) -> None:
            pass

    @staticmethod
    async def hang_up(reason: str, detail: str = "") -> None:
        pass


def _config(fake: FakeLiveServer, **over: Any) -> ProviderConfig:
    options = over.pop("options", FAST)
    return ProviderConfig(**{**fake.rt_config(), "options": options, **over})


@pytest.fixture
async def fake() -> AsyncIterator[FakeLiveServer]:
    async with FakeLiveServer(mode="echo") as server:
        yield server


@pytest.fixture
async def quiet() -> AsyncIterator[FakeLiveServer]:
    async with FakeLiveServer(mode="quiet") as server:
        yield server


async def _open(fake: FakeLiveServer, **over: Any) -> tuple[OpenAILiveSession, Sink]:
    tools = over.pop("tools", None)
    sink = Sink()
    session = create_session(_config(fake, **over), sink, tools=tools)
    assert isinstance(session, OpenAILiveSession)
    await session.start(START)
    await fake.wait_connected()
    return session, sink


async def _until(predicate, conn, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            conn.changed.clear()
            await conn.changed.wait()


async def test_session_start_is_pcmu_8000_and_audio_comes_back_byte_identical(fake):
    session, sink = await _open(fake)
    rng = random.Random(11)
    chunks = [bytes(rng.randrange(256) for _ in range(160)) for _ in range(50)]
    try:
        for chunk in chunks:
            await session.send_audio(_frame(chunk))
        got = await sink.wait_for(AudioFrame, 50)
    finally:
        await session.close()
    conn = fake.latest()
    [start] = conn.events("session.start")
    assert start["session"]["audio"]["format"] == {"type": "audio/pcmu", "rate": 8000}
    assert start["session"]["model"] == "gpt-live-1"
    assert fake.audio_format() == ("pcmu", 8000, "pcmu", 8000)  # one format, both ways
    assert conn.path == LIVE_PATH  # no query string: the model travels in session.start
    assert conn.headers["Authorization"] == "Bearer test-key"
    assert [f.b64 for f in got] == [base64.b64encode(c).decode() for c in chunks]
    assert all(f.codec == "pcmu" and f.sample_rate == 8000 for f in got)
    assert fake.caller_audio() == b"".join(chunks)
    await _until(lambda: conn.events("session.close"), conn)
    assert fake.client_errors() == []
    assert fake.server_errors() == []
    assert not sink.of(EndFrame)


async def test_barge_in_reports_an_interrupt_and_the_abandoned_reply_stops(quiet):
    """The model yields by itself; the session reports the caller talking over it as an
    InterruptFrame, and the agent audio that reaches the sink after it is exactly what the model
    still sent before yielding (nothing of the session's own): with an immediate yield, at most
    two 20 ms chunks that were already under way."""
    session, sink = await _open(quiet)
    try:
        await quiet.speak_slowly(5000)
        await sink.wait_for(AudioFrame, 5)
        await quiet.barge_in()
        [interrupt] = await sink.wait_for(InterruptFrame)
        at_interrupt = sink.frames.index(interrupt)
        await quiet.wait_reply_done()
        await sink.wait_for(TranscriptFrame)  # the agent turn ended: nothing more is coming
    finally:
        await session.close()
    assert interrupt.source == "model"
    after = [f for f in sink.frames[at_interrupt:] if isinstance(f, AudioFrame)]
    assert len(after) * 20 == quiet.audio_after_barge_in_ms() <= 40
    assert len(sink.of(AudioFrame)) < 5000 // 20
    assert session.counters()["interrupts"] == 1
    assert quiet.client_errors() == []


async def test_a_late_caller_fragment_of_the_question_is_not_a_barge_in(quiet):
    session, sink = await _open(quiet)
    conn = quiet.latest()
    conn.started_at -= 5.0  # the session timeline is 5 s along: the agent's turn starts there
    try:
        await quiet.speak_slowly(1000)
        await sink.wait_for(AudioFrame, 3)
        # a caller fragment that began before the agent's turn began (its question, late)
        await quiet._send(conn, quiet._fragment("input", " please", 0, 100))
        await quiet.wait_reply_done()
        await sink.wait_for(TranscriptFrame, 2)
    finally:
        await session.close()
    assert not sink.of(InterruptFrame)


async def test_a_keypad_interrupt_drops_the_rest_of_the_agent_turn(quiet):
    """The model cannot be cancelled: on an interrupt from elsewhere the session drops the agent
    audio of the turn in progress, tells the model (silently), and lets the next turn through."""
    session, sink = await _open(quiet)
    try:
        await quiet.speak_slowly(1000)
        await sink.wait_for(AudioFrame, 3)
        await session.interrupt(InterruptFrame(source="dtmf", reason="digit *"))
        muted_from = len(sink.of(AudioFrame))
        await quiet.wait_reply_done()
        await sink.wait_for(TranscriptFrame)  # that agent turn is over
        assert len(sink.of(AudioFrame)) <= muted_from + 1  # at most one chunk under way
        assert session.counters()["muted_audio_deltas"] > 0
        before = len(sink.of(AudioFrame))
        await quiet.speak(100, transcript=" Yes?")
        await sink.wait_for(AudioFrame, before + 5)  # the next turn is heard in full
    finally:
        await session.close()
    assert any("did not hear the rest" in t for t in quiet.texts_received())
    assert quiet.client_errors() == []


async def test_tools_go_through_responses_delegation_to_the_toolbox():
    async with FakeLiveServer(mode="quiet") as fake:
        spec = ToolSpec(name="lookup_order", description="Find an order.",
                        parameters={"type": "object",
                                    "properties": {"number": {"type": "string"}}},
                        function="builtins:dict")
        box = ToolBox([spec], ["end_call"], _Call())
        session, _ = await _open(fake, tools=box,
                                 options={**FAST, "delegation_model": "gpt-5.5-mini"})
        conn = fake.latest()
        try:
            output = await fake.call_tool("lookup_order", {"number": "A-42"})
            await _until(lambda: conn.response_creates == 1, conn)
        finally:
            await session.close()
        delegation = conn.events("session.start")[0]["session"]["delegation"]
        assert delegation["type"] == "responses"
        assert delegation["responses"]["model"] == "gpt-5.5-mini"
        assert {t["name"] for t in delegation["responses"]["tools"]} == {"lookup_order",
                                                                          "end_call"}
        assert output == {"number": "A-42"}
        [item] = conn.events("response.item.create")
        assert item["item"]["type"] == "function_call_output"
        assert len(conn.events("response.create")) == 1  # the delegated response continues
        assert session.counters()["tool_calls"] == 1
        assert fake.client_errors() == []


async def test_without_tools_a_client_delegation_is_answered_at_once(quiet):
    session, _ = await _open(quiet, builtin_tools=[])
    conn = quiet.latest()
    try:
        assert conn.events("session.start")[0]["session"]["delegation"] == {"type": "client"}
        await quiet._send(conn, {"type": "session.delegation.created", "event_id": "e1",
                                 "offset_ms": 10, "delegation": {
                                     "id": "deleg_1", "target": "client", "type": "delegation"}})
        await _until(lambda: conn.events("session.commentary.append"), conn)
    finally:
        await session.close()
    [reply] = conn.events("session.commentary.append")
    assert reply["delegation_id"] == "deleg_1"
    assert quiet.client_errors() == []


async def test_steering_appends_instructions_and_the_voice_stays(quiet, log_lines):
    session, _ = await _open(quiet, system_prompt="Be brief.")
    conn = quiet.latest()
    try:
        await session.steer(SteerFrame(instructions="Answer in French from now on.",
                                       voice="cedar"))
        await session.send_dtmf(DTMFFrame(digit="5"))
        await _until(lambda: len(conn.events("session.instructions.append")) == 2, conn)
    finally:
        await session.close()
    assert quiet.instructions() == ("Be brief.\n\nAnswer in French from now on.\n\n"
                                    "The caller pressed the key 5 on their phone's keypad.")
    assert quiet.voice() == "marin"
    assert any("cannot change the voice" in line for line in log_lines)
    assert quiet.client_errors() == []


async def test_cumulative_usage_becomes_seconds_usage_frames():
    async with FakeLiveServer(mode="quiet", usage_interval_s=None) as quiet:
        session, sink = await _open(quiet)
        try:
            await quiet.send_usage(12)
            await quiet.send_usage(12)
            await quiet.send_usage(30)
            await sink.wait_for(UsageFrame, 2)
            quiet.latest().started_at -= 40.0  # 40 s into the session when it closes
        finally:
            await session.close()  # session.closed's final usage is still counted
    assert [(f.billing, f.seconds, f.model) for f in sink.of(UsageFrame)] == [
        ("seconds", 12.0, "gpt-live-1"), ("seconds", 18.0, "gpt-live-1"),
        ("seconds", 10.0, "gpt-live-1")]
    cost = CallCost.for_model("openai_live", "gpt-live-1")
    for frame in sink.of(UsageFrame):
        cost.add(Usage.from_frame(frame))
    assert cost.usd == Decimal("0.05") * 40 / 60  # $0.05 a minute, billed per second


async def test_a_fatal_error_or_a_content_close_ends_the_call(quiet):
    session, sink = await _open(quiet)
    try:
        await quiet._error(quiet.latest(), "invalid_api_key", "Incorrect API key provided.")
        [end] = await sink.wait_for(EndFrame)
    finally:
        await session.close()
    assert end.reason == "provider_error" and "invalid_api_key" in end.detail
    session, sink = await _open(quiet)
    try:
        await quiet.end_session("content")
        [end] = await sink.wait_for(EndFrame)
    finally:
        await session.close()
    assert end.reason == "provider_closed" and "content" in end.detail
    assert quiet.connections == 2  # neither was reconnected


async def test_bad_server_events_do_not_end_the_call(fake, log_lines):
    session, sink = await _open(fake, max_message_bytes=4096)
    try:
        await fake.send_raw("this is not JSON")
        await fake.send_raw(json.dumps({"type": "session.mystery", "x": 1}))
        await fake.send_raw(json.dumps({"type": "session.output_audio.delta",
                                        "delta": 'abc"},"event":"clear'}))
        await fake.send_raw(json.dumps({"type": "session.output_audio.delta", "delta": 7}))
        await fake.send_raw(json.dumps({"type": "session.output_audio.delta",
                                        "delta": "A" * 10_000}))  # oversize
        await fake.send_raw(json.dumps({"type": "session.usage.updated",
                                        "usage": {"seconds": "lots"}}))
        await fake.send_raw(json.dumps({"type": "session.output_transcript.delta",
                                        "delta": "no timing"}))
        await fake.send_raw(b"\xff\xfe binary")
        await session.send_audio(_frame(b"\x01" * 160))
        [echo] = await sink.wait_for(AudioFrame)
    finally:
        await session.close()
    assert echo.b64 == base64.b64encode(b"\x01" * 160).decode()
    counts = session.counters()
    assert counts["bad_audio_deltas"] == 2
    assert counts["bad_events"] == 6
    assert not sink.of(EndFrame) and not sink.of(UsageFrame)
    assert any("dropped a 10" in line and "max_message_bytes" in line for line in log_lines)
    assert "test-key" not in "\n".join(log_lines)


async def test_an_abnormal_close_starts_a_new_session_with_the_conversation(quiet):
    session, sink = await _open(quiet)
    try:
        await quiet.speak(100, transcript=" Hello, how can I help?")
        await sink.wait_for(TranscriptFrame)
        await quiet.drop()
        await quiet.wait_connected(2)
        await quiet.end_session("expired")  # the service's duration limit: carried on too
        await quiet.wait_connected(3)
        await session.send_audio(_frame(b"\x02" * 160))
        await _until(lambda: quiet.latest().events("session.input_audio.append"), quiet.latest())
    finally:
        await session.close()
    replayed = quiet.latest().events("session.start")[0]["session"]["input"]
    assert replayed == [{"type": "message", "role": "assistant",
                         "content": [{"type": "output_text", "text": "Hello, how can I help?"}]}]
    assert session.counters()["reconnects"] == 2
    assert not sink.of(EndFrame)
    assert quiet.client_errors() == []


async def test_say_asks_the_model_to_speak_and_waits_for_it(quiet):
    session, _ = await _open(quiet)
    try:
        said = await asyncio.wait_for(session.say("Say goodbye.", tag="budget"), 10)
    finally:
        await session.close()
    assert said is True
    [ask] = quiet.latest().events("session.commentary.append")
    assert ask["content"] == "Say goodbye." and ask["event_id"] == "telewire-say-budget"


async def test_azure_live_uses_the_api_key_header_and_the_resource_path(quiet):
    url = f"http://127.0.0.1:{quiet.port}{AZURE_LIVE_PATH}"
    config = ProviderConfig(provider="azure_live", url=url, api_key="azure-test-key",
                            model="my-gpt-live", options=FAST)
    session = create_session(config, Sink())
    assert isinstance(session, AzureLiveSession)
    await session.start(START)
    try:
        await quiet.wait_connected()
    finally:
        await session.close()
    conn = quiet.latest()
    assert conn.path == AZURE_LIVE_PATH
    assert conn.headers["api-key"] == "azure-test-key" and "Authorization" not in conn.headers
    assert conn.events("session.start")[0]["session"]["model"] == "my-gpt-live"
    assert quiet.client_errors() == []
    with pytest.raises(ConfigError, match="RESOURCE.openai.azure.com"):
        await create_session(ProviderConfig(provider="azure_live"), Sink()).start(START)


async def test_serve_with_openai_live_against_the_fake_is_byte_identical():
    from conftest import ServeProcess

    from telewire.testing.simulator import CallSimulator

    rng = random.Random(5)
    audio = bytes(rng.randrange(256) for _ in range(160 * 100))  # 2 s
    async with FakeLiveServer(mode="echo") as fake:
        serve = await asyncio.to_thread(
            ServeProcess, "--set", "rt.config.provider=openai_live",
            "--set", f"rt.config.url=ws://127.0.0.1:{fake.port}{LIVE_PATH}",
            env={"OPENAI_API_KEY": "sk-live-local-placeholder"})
        try:
            result = await CallSimulator(serve.url, pace=4.0, expect_echo=True,
                                         drain_s=10).run(audio)
        finally:
            log = await asyncio.to_thread(serve.stop)
        assert fake.connections == 1, log
        start = fake.latest().events("session.start")[0]["session"]
        errors = fake.client_errors()
    sent = [base64.b64encode(audio[i:i + 160]).decode() for i in range(0, len(audio), 160)]
    assert result.received_payloads == sent, log
    assert result.received_audio == audio
    assert start["audio"]["format"] == {"type": "audio/pcmu", "rate": 8000}
    assert start["model"] == "gpt-live-1"
    assert errors == []
    assert "sk-live-local-placeholder" not in log


class TestOpenAILiveConformance(ProviderTests):
    """The provider kit's conformance tests, against the fake GPT-Live server. The abandoned
    audio after a barge-in is what the fake still sends before it yields (at most two 20 ms
    chunks under way) and nothing of the session's own."""

    provider = "openai_live"
    fake_class = FakeLiveServer
    barge_in_limit_ms = 60.0
    rt_overrides = {"options": FAST}
    turn_gap_ms = FAST["turn_gap_ms"]


class TestAzureLiveConformance(TestOpenAILiveConformance):
    """The kit again for ``azure_live``: the same protocol on Azure's path and ``api-key``."""

    provider = "azure_live"
    fake_class = AzureFakeLiveServer


def test_every_published_server_event_is_handled_or_knowingly_ignored():
    """A server event type the ``openai`` package publishes but the session would call unknown
    (and complain about) means the protocol grew: look at it."""
    from telewire.realtime import live
    from telewire.testing.fake_live import _reference

    _, server_events, _ = _reference()
    session = OpenAILiveSession(ProviderConfig(provider="openai_live"), Sink())
    handled = set(session._handlers) | {"session.output_audio.delta", "session.started"}
    assert set(server_events) - handled - live._KNOWN_UNUSED == set()
    assert live._KNOWN_UNUSED <= set(server_events)


async def test_the_fake_serves_standalone():
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "telewire.testing.fake_live", "--port", "0", "--mode", "echo",
        stdout=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(30):
            url = (await proc.stdout.readline()).decode().strip()
        assert url.startswith("ws://127.0.0.1:") and url.endswith(LIVE_PATH)
        sink = Sink()
        session = create_session(ProviderConfig(provider="openai_live", url=url), sink)
        await session.start(START)
        try:
            await session.send_audio(_frame(b"\x03" * 160))
            [echo] = await sink.wait_for(AudioFrame)
        finally:
            await session.close()
        assert echo.data == b"\x03" * 160
    finally:
        proc.terminate()
        await proc.wait()
