"""Tests of the ``deepgram`` provider against the fake Voice Agent server over loopback sockets.

Depends on ``telewire.realtime.deepgram``, ``telewire.testing.fake_deepgram`` (which checks every
client message against the ``deepgram-sdk`` types) and the shared ``conftest`` / ``frame_sink``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from typing import Any, AsyncIterator

import pytest

from conftest import ServeProcess
from frame_sink import Sink
from telewire.carrier import Capabilities
from telewire.cost import CallCost, Usage
from telewire.errors import ConfigError, ProviderError
from telewire.frames import (AudioFrame, DTMFFrame, EndFrame, InterruptFrame, StartFrame,
                             SteerFrame, TranscriptFrame, UsageFrame)
from telewire.realtime.base import ProviderConfig, ToolSpec, create_session
from telewire.realtime.deepgram import DeepgramSession
from telewire.testing.fake_deepgram import FakeDeepgramServer
from telewire.testing.provider_kit import ProviderFake, ProviderTests, eventually
from telewire.testing.simulator import CallSimulator
from telewire.tools import ToolBox

START = StartFrame(carrier="twilio", stream_id="MZ0001", call_id="CA0001")


def lookup_order(number: str) -> dict:
    return {"number": number, "status": "shipped"}


class _Call:
    """The least of a call a :class:`ToolBox` needs."""

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


def config_for(fake: FakeDeepgramServer, **overrides: Any) -> ProviderConfig:
    return ProviderConfig(**{**fake.rt_config(), "system_prompt": "Answer the phone.",
                             **overrides})


def frame(data: bytes) -> AudioFrame:
    return AudioFrame(payload=base64.b64encode(data).decode())


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
async def echo() -> AsyncIterator[FakeDeepgramServer]:
    async with FakeDeepgramServer(mode="echo") as fake:
        yield fake
        assert fake.client_errors() == []


@pytest.fixture
async def quiet() -> AsyncIterator[FakeDeepgramServer]:
    async with FakeDeepgramServer(mode="quiet") as fake:
        yield fake
        assert fake.client_errors() == []


async def opened(fake: FakeDeepgramServer, sink: Sink, **overrides: Any) -> DeepgramSession:
    rt = create_session(config_for(fake, **overrides), sink)
    assert isinstance(rt, DeepgramSession)
    await rt.start(START)
    await fake.wait_connected()
    return rt


# -- set-up ----------------------------------------------------------------------------------------


async def test_settings_ask_for_mulaw_8k_both_ways_with_no_container(
        echo: FakeDeepgramServer, sink: Sink) -> None:
    rt = await opened(echo, sink, options={"greeting": "Hello, how can I help?"})
    try:
        settings = echo.latest.settings
        assert settings["audio"] == {
            "input": {"encoding": "mulaw", "sample_rate": 8000},
            "output": {"encoding": "mulaw", "sample_rate": 8000, "container": "none"}}
        assert echo.audio_format() == ("pcmu", 8000, "pcmu", 8000)
        agent = settings["agent"]
        assert agent["listen"]["provider"] == {"type": "deepgram", "model": "nova-3",
                                               "language": "en"}
        assert agent["think"]["provider"] == {"type": "open_ai", "model": "gpt-4o-mini"}
        assert agent["think"]["prompt"] == "Answer the phone." == echo.instructions()
        assert echo.voice() == "aura-2-thalia-en"
        assert agent["greeting"] == "Hello, how can I help?"
        assert echo.latest.headers["Authorization"] == "Token test-key"
        assert echo.latest.messages[0]["type"] == "Settings"  # first, before any audio
        (greeting,) = await sink.wait_for(TranscriptFrame)
        assert (greeting.role, greeting.text) == ("agent", "Hello, how can I help?")
    finally:
        await rt.close()


async def test_defaults_and_refusals() -> None:
    async def nowhere(frame: Any) -> None:
        pass

    rt = create_session(ProviderConfig(provider="deepgram"), nowhere)
    assert rt.config.url == "wss://agent.deepgram.com/v1/agent/converse"
    assert rt.config.model == "voice-agent"
    with pytest.raises(ValueError, match="options.speak_voice"):
        ProviderConfig(provider="deepgram", options={"speak_voice": "x"})
    wrong = create_session(ProviderConfig(provider="deepgram",
                                          url="wss://api.openai.com/v1/realtime"), nowhere)
    with pytest.raises(ConfigError, match="Deepgram's endpoint"):
        await wrong.start(START)
    caps = DeepgramSession.capabilities
    assert (caps.turn_model, caps.truncate, caps.billing) == ("full_duplex", False, "duration")
    price = CallCost.for_model("deepgram", "voice-agent").price
    assert price is not None and price.cost(Usage(kind="seconds", seconds=60)) == price.per_minute


async def test_the_key_comes_from_the_environment_and_is_never_logged(
        monkeypatch: pytest.MonkeyPatch, sink: Sink, log_lines: list[str]) -> None:
    async with FakeDeepgramServer(mode="echo", api_key="dg-secret-from-env") as fake:
        monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-secret-from-env")
        config = ProviderConfig(provider="deepgram", url=fake.url)
        rt = create_session(config, sink)
        await rt.start(START)
        await fake.wait_connected()
        await rt.close()
        assert fake.latest.headers["Authorization"] == "Token dg-secret-from-env"
        wrong = create_session(ProviderConfig(provider="deepgram", url=fake.url,
                                              api_key="not-the-key"), sink)
        with pytest.raises(ProviderError, match="HTTP 401"):
            await wrong.start(START)
    assert not any("dg-secret-from-env" in line or "not-the-key" in line for line in log_lines)


async def test_an_error_answering_the_settings_refuses_the_session(
        quiet: FakeDeepgramServer, sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(conn: Any, message: dict[str, Any]) -> None:
        await quiet._send(conn, {"type": "Error", "code": "INVALID_SETTINGS",
                                 "description": "no such think model"})

    monkeypatch.setattr(quiet, "_on_settings", refuse)
    rt = create_session(config_for(quiet), sink)
    with pytest.raises(ProviderError, match="INVALID_SETTINGS: no such think model"):
        await rt.start(START)


# -- audio -----------------------------------------------------------------------------------------


async def test_audio_goes_both_ways_byte_identical(echo: FakeDeepgramServer, sink: Sink) -> None:
    rng = random.Random(11)
    audio = bytes(rng.randrange(256) for _ in range(160 * 50))
    rt = await opened(echo, sink)
    try:
        for i in range(0, len(audio), 160):
            await rt.send_audio(frame(audio[i:i + 160]))
        frames = await sink.wait_for(AudioFrame, 50)
        assert [f.data for f in frames] == [audio[i:i + 160] for i in range(0, len(audio), 160)]
        assert all(isinstance(f.payload, bytes) and f.track == "outbound"
                   and (f.codec, f.sample_rate) == ("pcmu", 8000) for f in frames)
        assert echo.caller_audio() == audio
        assert not any(m["type"] == "KeepAlive" for m in echo.latest.messages)
    finally:
        await rt.close()


async def test_barge_in_interrupts_and_no_abandoned_audio_reaches_the_sink(
        quiet: FakeDeepgramServer, sink: Sink) -> None:
    """Bound: zero bytes of the interrupted reply after the InterruptFrame, although the fake
    sends 100 ms of it after ``UserStartedSpeaking`` (audio already on its way)."""
    rt = await opened(quiet, sink)
    try:
        await quiet.speak_slowly(5000)
        await sink.wait_for(AudioFrame, 3)
        await quiet.barge_in(in_flight_ms=100)
        assert quiet.audio_after_barge_in_ms() == 100
        await sink.wait_for(InterruptFrame)
        await quiet.speak(200, transcript="Sure, go ahead.")  # the next reply
        await sink.wait_for(UsageFrame)  # at its AgentAudioDone: everything before has arrived
        frames = sink.frames
        cut = next(i for i, f in enumerate(frames) if isinstance(f, InterruptFrame))
        interrupt = frames[cut]
        assert interrupt.source == "model" and interrupt.reason == "user_started_speaking"
        old = {f.item_id for f in frames[:cut] if isinstance(f, AudioFrame)}
        after = [f for f in frames[cut:] if isinstance(f, AudioFrame)]
        assert old == {interrupt.item_id}
        assert sum(f.byte_length for f in after) == 200 * 8  # the new reply only, all of it
        assert not {f.item_id for f in after} & old
        assert rt.counters()["barged_in_bytes"] == 800
        assert rt.samples()["model_first_audio_seconds"]
    finally:
        await rt.close()


async def test_hostile_server_messages_are_dropped_and_the_call_goes_on(
        quiet: FakeDeepgramServer, sink: Sink, log_lines: list[str]) -> None:
    rt = await opened(quiet, sink, max_audio_delta_ms=100, max_message_bytes=4096)
    try:
        await quiet.send_raw("this is not JSON")
        await quiet.send_raw('{"type": "NoSuchEvent"}')
        await quiet.send_raw('{"type": "ConversationText", "role": 7}')
        await quiet.send_raw('{"no": "type"}')
        await quiet.send_raw(b"\xff" * (101 * 8))  # more than max_audio_delta_ms of mu-law
        await quiet.send_raw(b"")
        await quiet.send_raw(json.dumps({"type": "Warning", "code": "X",
                                         "description": "y" * 5000}))
        await quiet.send_event({"type": "Warning", "code": "PROMPT_TOO_LONG",
                                "description": "truncated"})
        await quiet.speak(100, transcript="Still here.")
        await sink.wait_for(UsageFrame)
        assert sum(f.byte_length for f in sink.of(AudioFrame)) == 800
        assert [t.text for t in sink.of(TranscriptFrame)] == ["Still here."]
        assert not sink.of(EndFrame)
        assert rt.counters()["bad_audio_deltas"] == 2
        logged = "\n".join(log_lines)
        for what in ("not JSON", "unknown type 'NoSuchEvent'", "usable field",
                     "max_message_bytes", "max_audio_delta_ms", "PROMPT_TOO_LONG"):
            assert what in logged, what
    finally:
        await rt.close()


# -- tools, steering, DTMF, say --------------------------------------------------------------------


async def test_function_calls_run_in_the_toolbox_and_the_response_returns(
        quiet: FakeDeepgramServer, sink: Sink) -> None:
    spec = ToolSpec(name="lookup_order", description="Find an order.",
                    function=f"{__name__}:lookup_order",
                    parameters={"type": "object", "properties": {"number": {"type": "string"}}})
    tools = ToolBox([spec], ["end_call"], _Call())
    rt = create_session(config_for(quiet), sink, tools=tools)
    await rt.start(START)
    try:
        await quiet.wait_connected()
        functions = quiet.latest.settings["agent"]["think"]["functions"]
        assert [f["name"] for f in functions] == ["end_call", "lookup_order"]
        assert functions[1]["parameters"] == spec.parameters
        assert await quiet.call_tool("lookup_order", {"number": "42"}) == {
            "number": "42", "status": "shipped"}
        (response,) = quiet.latest.of("FunctionCallResponse")
        assert response["name"] == "lookup_order" and response["id"].startswith("fc_")
        remembered = rt.history[-1]["function_calls"][0]
        assert remembered["response"] == json.dumps({"number": "42", "status": "shipped"})
    finally:
        await rt.close()


async def test_steering_sends_update_prompt_and_update_speak(
        quiet: FakeDeepgramServer, sink: Sink) -> None:
    rt = await opened(quiet, sink)
    try:
        await rt.steer(SteerFrame(instructions="Be brief.", voice="aura-2-andromeda-en"))
        (update,) = await quiet.wait_for("UpdatePrompt")
        assert update == {"type": "UpdatePrompt", "prompt": "Be brief."}
        await quiet.wait_for("UpdateSpeak")
        assert quiet.instructions() == "Be brief."
        assert quiet.voice() == "aura-2-andromeda-en"
    finally:
        await rt.close()


async def test_dtmf_and_say_are_injected_messages(quiet: FakeDeepgramServer, sink: Sink) -> None:
    rt = await opened(quiet, sink)
    try:
        await rt.send_dtmf(DTMFFrame(digit="5"))
        await quiet.wait_for("InjectUserMessage")
        assert quiet.texts_received() == ["[The caller pressed the key 5]"]
        await sink.wait_for(UsageFrame)  # the agent answered the digit
        assert await asyncio.wait_for(rt.say("Say goodbye.", tag="budget_goodbye"), 10)
        assert quiet.texts_received()[-1] == (
            "[Instruction from the system, not the caller: Say goodbye.]")
    finally:
        await rt.close()
    literal = await opened(quiet, Sink(), options={"say_with": "inject_agent_message"})
    try:
        assert await asyncio.wait_for(literal.say("Goodbye!"), 10)
        assert quiet.latest.of("InjectAgentMessage") == [
            {"type": "InjectAgentMessage", "message": "Goodbye!"}]
    finally:
        await literal.close()


async def test_say_waits_out_a_refused_injection(quiet: FakeDeepgramServer, sink: Sink) -> None:
    rt = await opened(quiet, sink, options={"say_with": "inject_agent_message"})
    try:
        await quiet.speak_slowly(300)
        await sink.wait_for(AudioFrame)
        rt._speaking = False  # as if AgentStartedSpeaking were still on its way: say() does not
        # wait, and Deepgram refuses the injection because its agent is speaking
        assert await asyncio.wait_for(rt.say("One moment."), 10)
        assert len(quiet.latest.of("InjectAgentMessage")) >= 2
    finally:
        await rt.close()


async def test_keepalive_while_the_caller_sends_nothing(quiet: FakeDeepgramServer,
                                                        sink: Sink) -> None:
    rt = await opened(quiet, sink, options={"keepalive_s": 0.05})
    try:
        await quiet.wait_for("KeepAlive", 2)
        assert rt.counters()["keepalives"] >= 2
    finally:
        await rt.close()


# -- usage -----------------------------------------------------------------------------------------


async def test_usage_is_connection_seconds_at_each_reply_and_at_close(
        quiet: FakeDeepgramServer, sink: Sink) -> None:
    rt = await opened(quiet, sink)
    await quiet.speak(100)
    (usage,) = await sink.wait_for(UsageFrame)
    assert (usage.provider, usage.billing, usage.model) == ("deepgram", "seconds", "voice-agent")
    assert usage.seconds > 0
    await rt.close()
    last = sink.of(UsageFrame)[-1]
    assert len(sink.of(UsageFrame)) == 2 and last.seconds > 0
    cost = CallCost.for_model("deepgram", "voice-agent")
    for u in sink.of(UsageFrame):
        cost.add(Usage.from_frame(u))
    assert cost.usd is not None and cost.usd > 0


# -- reconnecting ----------------------------------------------------------------------------------


async def test_a_dropped_connection_reconnects_with_the_conversation(
        quiet: FakeDeepgramServer, sink: Sink) -> None:
    rt = await opened(quiet, sink, options={"greeting": "Hi!"})
    try:
        await quiet.speak(100, transcript="Your order has shipped.")
        await sink.wait_for(UsageFrame)
        await rt.send_dtmf(DTMFFrame(digit="1"))
        await sink.wait_for(UsageFrame, 2)
        await quiet.drop()
        await quiet.wait_connected(2)
        second = quiet.latest.settings["agent"]
        assert "greeting" not in second  # not greeted twice
        assert second["context"]["messages"] == [
            {"type": "History", "role": "assistant", "content": "Hi!"},
            {"type": "History", "role": "assistant", "content": "Your order has shipped."},
            {"type": "History", "role": "user", "content": "[The caller pressed the key 1]"},
            {"type": "History", "role": "assistant",
             "content": "(answering the injected message)"},
        ]
        await rt.send_audio(frame(b"\x42" * 160))
        await quiet.speak(40)
        await sink.wait_for(UsageFrame, 4)  # one for the old connection, one per reply
        assert await quiet.wait_caller_audio(160) == b"\x42" * 160
        assert rt.counters()["reconnects"] == 1 and not sink.of(EndFrame)
    finally:
        await rt.close()


async def test_an_error_mid_call_reconnects_and_a_fatal_one_ends_the_call(
        quiet: FakeDeepgramServer, sink: Sink) -> None:
    rt = await opened(quiet, sink)
    try:
        await quiet.send_event({"type": "Error", "code": "INTERNAL_SERVER_ERROR",
                                "description": "try again"})
        await quiet.wait_connected(2)
        async with asyncio.timeout(10):
            while rt.counters()["reconnects"] != 1:  # SettingsApplied is on its way
                await asyncio.sleep(0.01)
        await quiet.send_event({"type": "Error", "code": "FAILED_TO_SPEAK",
                                "description": "speed not accepted"})
        (end,) = await sink.wait_for(EndFrame)
        assert end.reason == "provider_error" and "FAILED_TO_SPEAK" in end.detail
    finally:
        await rt.close()


# -- the provider kit's fake -----------------------------------------------------------------------


async def test_the_fake_is_standalone_and_rejects_what_the_sdk_does_not_define() -> None:
    from websockets.asyncio.client import connect

    async with FakeDeepgramServer(mode="echo") as fake:
        async with connect(fake.url, additional_headers={"Authorization": "Token test-key"}) as ws:
            assert json.loads(await ws.recv())["type"] == "Welcome"
            await ws.send(b"\x00" * 160)  # audio before Settings
            await ws.send(json.dumps({"type": "Settings", "audio": {
                "input": {"encoding": "ulaw", "sample_rate": 8000}}, "agent": {"think": {
                    "provider": {"type": "open_ai", "model": "gpt-4o-mini"}, "extra": 1}}}))
            assert json.loads(await ws.recv())["type"] == "SettingsApplied"
            await ws.send(json.dumps({"type": "KeepAlive", "interval": 5}))
            await ws.send(json.dumps({"type": "Nope"}))
            assert json.loads(await ws.recv())["code"] == "UNPARSABLE_CLIENT_MESSAGE"
        errors = "\n".join(fake.client_errors())
        for problem in ("binary audio frame before SettingsApplied", "'ulaw' is not one of",
                        "unknown key 'extra'", "unknown key 'interval'",
                        "unknown client message type 'Nope'"):
            assert problem in errors, problem


# -- end to end ------------------------------------------------------------------------------------


async def test_serve_deepgram_against_the_fake_is_byte_identical() -> None:
    rng = random.Random(5)
    audio = bytes(rng.randrange(256) for _ in range(160 * 100))  # 2 s
    async with FakeDeepgramServer(mode="echo") as fake:
        serve = await asyncio.to_thread(
            ServeProcess, "--set", "rt.config.provider=deepgram",
            "--set", f"rt.config.url={fake.url}", env={"DEEPGRAM_API_KEY": "test-key"})
        try:
            result = await CallSimulator(serve.url, pace=4.0, expect_echo=True,
                                         drain_s=10).run(audio)
        finally:
            log = await asyncio.to_thread(serve.stop)
        assert fake.client_errors() == [], log
        assert fake.audio_format() == ("pcmu", 8000, "pcmu", 8000)
        assert fake.caller_audio() == audio
    assert result.sent_frames == 100 and result.received_frames == 100, log
    sent = [base64.b64encode(audio[i:i + 160]).decode() for i in range(0, len(audio), 160)]
    assert result.received_payloads == sent
    assert result.received_audio == audio
    assert "test-key" not in log


# -- the conformance kit ---------------------------------------------------------------------------


class TestDeepgramConformance(ProviderTests):
    provider = "deepgram"
    fake_class = FakeDeepgramServer
    #: the session drops every byte of an interrupted reply once UserStartedSpeaking is read
    barge_in_limit_ms = 0.0
    voices = ("aura-2-thalia-en", "aura-2-andromeda-en")  # Deepgram refuses OpenAI voices
