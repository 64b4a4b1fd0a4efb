"""The provider conformance kit: what every realtime provider must do, as reusable pytest tests.

Depends on ``telewire.realtime``, ``telewire.frames`` and ``pytest``; the whole-call barge-in
test also on ``telewire.server`` and ``telewire.testing.simulator`` (imported when it runs).

A provider's author supplies a :class:`ProviderFake` (a protocol-faithful local server for the
provider's protocol, driven by the kit through the methods below) and subclasses
:class:`ProviderTests`::

    from telewire.testing.provider_kit import ProviderTests
    from my_provider.testing import MyFake

    class TestMyProvider(ProviderTests):
        provider = "my_provider"
        fake_class = MyFake

Every test talks to the fake over a real loopback WebSocket through the provider's own session
class, exactly as a call would. Tests of what the provider does not declare in its
:class:`~telewire.realtime.base.ProviderCapabilities` are skipped with the reason.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import secrets
import types
from typing import Any, AsyncIterator, Callable, ClassVar, Sequence, TypeVar

import pytest
from loguru import logger

from telewire.carrier import Capabilities
from telewire.frames import (
    AudioFrame,
    DTMFFrame,
    EndFrame,
    Frame,
    InterruptFrame,
    MediaFormat,
    StartFrame,
    SteerFrame,
    UsageFrame,
    audio_frame,
)
from telewire.realtime.base import (
    ProviderCapabilities,
    ProviderConfig,
    RealtimeSession,
    create_session,
    provider_class,
)
from telewire.tools import ToolBox

__all__ = ["KitCall", "ProviderFake", "ProviderTests", "Sink", "caller_frames", "eventually",
           "call_server", "kit_lookup"]


class ProviderFake(abc.ABC):
    """A local server speaking one provider's protocol, driven by the kit.

    An implementation validates every client message it receives against a reference nobody
    here wrote (the ``openai`` package's types, a provider SDK's published message types) and
    records each failure in :meth:`client_errors` instead of raising, so a test can show them.

    Modes: ``"echo"`` answers each caller audio chunk with the same bytes as agent audio, in
    order, at once; ``"quiet"`` says nothing until driven (:meth:`speak`).
    """

    def __init__(self, *, mode: str = "echo") -> None:
        self.mode = mode

    # -- lifecycle --------------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self) -> None:
        """Listen on 127.0.0.1 on a free port."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Close every connection and stop listening."""

    async def __aenter__(self) -> "ProviderFake":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @abc.abstractmethod
    def rt_config(self) -> dict[str, Any]:
        """The ``rt.config`` settings that point the provider at this fake: ``provider``,
        ``url``, ``api_key`` (a test key), ``model`` and any ``options`` it needs."""

    # -- observing ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def wait_connected(self, count: int = 1, *, timeout: float = 10.0) -> None:
        """Wait until ``count`` connections have been opened and configured (the session's
        first settings message accepted)."""

    @property
    @abc.abstractmethod
    def connections(self) -> int:
        """Connections opened so far."""

    @abc.abstractmethod
    def audio_format(self) -> tuple[str, int, str, int]:
        """What the latest connection configured: ``(input codec, input rate, output codec,
        output rate)`` in telewire's names (``"pcmu"``, 8000)."""

    @abc.abstractmethod
    def caller_audio(self) -> bytes:
        """Every byte of caller audio received, over all connections, in order."""

    @abc.abstractmethod
    def instructions(self) -> str:
        """The instructions (system prompt) the latest connection holds now."""

    @abc.abstractmethod
    def voice(self) -> str | None:
        """The voice the latest connection speaks with now (``None`` when unset)."""

    @abc.abstractmethod
    def client_errors(self) -> list[str]:
        """Every client message that failed the reference types, with the reason."""

    @abc.abstractmethod
    def texts_received(self) -> list[str]:
        """Text the client injected into the conversation (DTMF notes, steering messages)."""

    # -- driving -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def speak(self, ms: int, *, transcript: str = "") -> None:
        """Start a model reply of ``ms`` milliseconds of mu-law (sent as fast as the protocol
        allows) with ``transcript`` as its text; returns once all of it has been sent."""

    @abc.abstractmethod
    async def speak_slowly(self, ms: int) -> None:
        """Start a model reply of ``ms`` ms sent in real time (20 ms chunks every 20 ms) in
        the background, so a barge-in can land in the middle of it."""

    @abc.abstractmethod
    async def barge_in(self) -> None:
        """The provider hears the caller talk over the reply: it reports that as its protocol
        does (``input_audio_buffer.speech_started``, Deepgram's ``UserStartedSpeaking`` …)
        and, as the provider would, stops or waits to be told to stop."""

    @abc.abstractmethod
    def audio_after_barge_in_ms(self) -> float:
        """Milliseconds of reply audio the fake sent after the client asked it to stop (or,
        for a provider that stops by itself, after it reported the barge-in)."""

    @abc.abstractmethod
    async def call_tool(self, name: str, arguments: dict[str, Any], *,
                        timeout: float = 10.0) -> Any:
        """The model calls tool ``name``; returns the output the client sent back (parsed
        JSON when it is JSON)."""

    @abc.abstractmethod
    async def drop(self) -> None:
        """Drop the latest connection abnormally (close code 1011, or a TCP reset)."""

    @abc.abstractmethod
    async def send_raw(self, message: str | bytes) -> None:
        """Send ``message`` to the client as it is (a malformed or unknown event)."""


# -- the kit -------------------------------------------------------------------------------------

F = TypeVar("F", bound=Frame)


class Sink:
    """Collects the frames a session emits and lets a test wait for them."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self._changed = asyncio.Event()

    async def __call__(self, frame: Frame) -> None:
        self.frames.append(frame)
        self._changed.set()

    def of(self, cls: type[F]) -> list[F]:
        """The frames of type ``cls`` emitted so far, in order."""
        return [f for f in self.frames if isinstance(f, cls)]

    def audio(self) -> bytes:
        """The agent audio emitted so far, concatenated."""
        return b"".join(f.data for f in self.of(AudioFrame))

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float = 10.0,
                         what: str = "a condition") -> None:
        """Wait until ``predicate()`` holds after a frame arrives (or at once)."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; frames: "
                                 f"{_summary(self.frames)}") from None

    async def wait_for(self, cls: type[F], count: int = 1, *, timeout: float = 10.0) -> list[F]:
        """Wait until ``count`` frames of type ``cls`` have arrived; returns them."""
        await self.wait_until(lambda: len(self.of(cls)) >= count, timeout=timeout,
                              what=f"{count} {cls.__name__}")
        return self.of(cls)


def _summary(frames: Sequence[Frame]) -> str:
    counts: dict[str, int] = {}
    for f in frames:
        counts[type(f).__name__] = counts.get(type(f).__name__, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in counts.items()) or "none"


async def eventually(predicate: Callable[[], bool], *, timeout: float = 10.0,
                     what: str = "a condition") -> None:
    """Poll ``predicate`` every 10 ms until it holds; fail naming ``what`` after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.01)


class KitCall:
    """The call a provider's tools act on in the kit: records hang-ups and transfers."""

    def __init__(self) -> None:
        self.hangups: list[tuple[str, str]] = []
        self.transfers: list[str] = []
        self.log = logger.bind(call_sid="kit")
        self.carrier = types.SimpleNamespace(name="kit", capabilities=Capabilities(transfer=True))
        self.context = types.SimpleNamespace(capabilities=None)

    async def hang_up(self, reason: str, detail: str = "") -> None:
        self.hangups.append((reason, detail))

    async def transfer(self, target: str) -> str | None:
        self.transfers.append(target)
        return None

    async def end(self, reason: str, detail: str = "") -> None:
        self.hangups.append((reason, detail))

    def report(self, frame: Frame) -> None:
        pass


def kit_lookup(order: str = "") -> dict[str, Any]:
    """The function tool the kit offers as ``lookup_order``: answers with what it was asked."""
    return {"order": order, "status": "shipped"}


#: caller audio the kit sends: 20 ms frames of distinct bytes, so a reordering or a lost or
#: duplicated frame shows
def caller_frames(count: int, *, first: int = 0) -> list[AudioFrame]:
    """``count`` 20 ms mu-law frames, each 160 bytes of a pattern unique to its index."""
    out = []
    for i in range(first, first + count):
        payload = bytes(((i * 7 + j) % 251) ^ 0x55 for j in range(160))
        out.append(audio_frame(payload, "pcmu", 8000, i * 20, i, "inbound", "caller"))
    return out


class ProviderTests:
    """Mixin of conformance tests for one provider, run against its :class:`ProviderFake`.

    Set on the subclass:
        provider: the provider's entry-point name (``rt.config.provider``).
        fake_class: its :class:`ProviderFake` (constructed as ``fake_class(mode=...)``).
        barge_in_limit_ms: reply audio the caller may still receive after a barge-in (what
            was already in flight); the provider's documentation should state it.
        rt_overrides: extra ``rt.config`` settings for every session.
        voices: two voices the provider accepts, for the voice-change test.
        turn_gap_ms: for a provider whose replies are told apart by silence alone (GPT-Live),
            the quiet that ends one; the barge-in test waits one and a half of it before asking
            for the next reply.
    """

    provider: ClassVar[str]
    fake_class: ClassVar[type[ProviderFake]]
    barge_in_limit_ms: ClassVar[float] = 120.0
    rt_overrides: ClassVar[dict[str, Any]] = {}
    voices: ClassVar[tuple[str, str]] = ("marin", "cedar")
    turn_gap_ms: ClassVar[float] = 0.0

    # -- fixtures -----------------------------------------------------------------------

    @property
    def capabilities(self) -> ProviderCapabilities:
        return provider_class(self.provider).capabilities

    def skip_unless(self, *names: str) -> None:
        """Skip the test unless the provider declares every capability in ``names``."""
        caps = self.capabilities
        for name in names:
            value = getattr(caps, name)
            if not value or value == "never":
                pytest.skip(f"provider {self.provider!r} declares {name}={value!r}")

    @pytest.fixture
    async def echo_fake(self) -> AsyncIterator[ProviderFake]:
        async with self.fake_class(mode="echo") as fake:
            yield fake

    @pytest.fixture
    async def quiet_fake(self) -> AsyncIterator[ProviderFake]:
        async with self.fake_class(mode="quiet") as fake:
            yield fake

    @contextlib.asynccontextmanager
    async def session(self, fake: ProviderFake, *, tools: bool = True,
                      **overrides: Any) -> AsyncIterator[tuple[RealtimeSession, Sink, KitCall]]:
        """A started session of the provider against ``fake``; closed (and checked to have
        sent only valid messages) on exit."""
        settings = {**fake.rt_config(), **self.rt_overrides, **overrides}
        settings["provider"] = self.provider
        if self.capabilities.tools and tools:
            settings.setdefault("tools", [{
                "name": "lookup_order", "description": "Look up an order by its number.",
                "parameters": {"type": "object", "properties": {"order": {"type": "string"}},
                               "required": ["order"]},
                "function": "telewire.testing.provider_kit:kit_lookup"}])
            settings.setdefault("builtin_tools", ["end_call"])
        config = ProviderConfig.model_validate(settings)
        call = KitCall()
        box = None
        if self.capabilities.tools and tools:
            box = ToolBox(config.tools, config.builtin_tools, call)  # type: ignore[arg-type]
        sink = Sink()
        session = create_session(config, sink, log=call.log, tools=box)
        await session.start(_start_frame())
        try:
            await fake.wait_connected(1)
            yield session, sink, call
        finally:
            await session.close()
            await session.close()  # idempotent
        assert fake.client_errors() == [], fake.client_errors()

    # -- the tests ----------------------------------------------------------------------

    async def test_declares_capabilities_and_mulaw_8k(self) -> None:
        caps = self.capabilities
        assert isinstance(caps, ProviderCapabilities)
        assert caps.supports("pcmu", 8000), f"{self.provider} must take mu-law 8 kHz untouched"
        assert caps.turn_model in ("turn_based", "full_duplex")
        if caps.truncate:
            assert caps.turn_model == "turn_based" and caps.cancel

    async def test_session_is_mulaw_8k_both_ways(self, echo_fake: ProviderFake) -> None:
        async with self.session(echo_fake):
            assert echo_fake.audio_format() == ("pcmu", 8000, "pcmu", 8000)

    async def test_echo_is_byte_identical(self, echo_fake: ProviderFake) -> None:
        frames = caller_frames(100)
        sent = b"".join(f.data for f in frames)
        async with self.session(echo_fake) as (session, sink, _call):
            for frame in frames:
                await session.send_audio(frame)
            await sink.wait_until(lambda: len(sink.audio()) >= len(sent),
                                  what=f"{len(sent)} bytes of echoed audio")
            assert echo_fake.caller_audio() == sent
            assert sink.audio() == sent
            for out in sink.of(AudioFrame):
                assert (out.codec, out.sample_rate, out.track) == ("pcmu", 8000, "outbound")
            assert not sink.of(EndFrame)

    async def test_barge_in_stops_the_reply(self, quiet_fake: ProviderFake) -> None:
        caps = self.capabilities
        if not (caps.interruption or caps.cancel):
            pytest.skip(f"provider {self.provider!r} can neither report nor stop a barge-in")
        async with self.session(quiet_fake) as (session, sink, _call):
            await quiet_fake.speak_slowly(3000)
            await sink.wait_until(lambda: len(sink.audio()) >= 8 * 200,
                                  what="the first 200 ms of the reply")
            await quiet_fake.barge_in()
            if caps.interruption:
                (reported,) = await sink.wait_for(InterruptFrame)
                assert reported.source == "model"
            at_interrupt = len(sink.audio())
            # what the carrier side passes on once it has cleared: the item and what was heard
            heard_ms = at_interrupt / 8
            await session.interrupt(InterruptFrame(source="vad", item_id=_last_item(sink),
                                                   heard_ms=heard_ms))
            # a new 100 ms reply after the barge-in: the connection is ordered, so once all of
            # it has arrived, whatever the abandoned reply still sent before it has too
            if self.turn_gap_ms:
                await asyncio.sleep(self.turn_gap_ms * 1.5 / 1000)
            await quiet_fake.speak(100, transcript="after the barge-in")
            await sink.wait_until(lambda: len(sink.audio()) >= at_interrupt + 800,
                                  what="the reply after the barge-in")
            late_ms = (len(sink.audio()) - at_interrupt - 800) / 8
            assert late_ms <= self.barge_in_limit_ms, (
                f"{late_ms:.0f} ms of abandoned audio reached the caller after the barge-in "
                f"(limit {self.barge_in_limit_ms:g} ms)")
            assert quiet_fake.audio_after_barge_in_ms() <= 3000 - 200
            assert not sink.of(EndFrame)

    async def test_barge_in_over_a_call(self, quiet_fake: ProviderFake,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
        """The barge-in again, end to end over real sockets: a simulated call on the core's
        loopback carrier plays the reply on its real-time playout clock, the provider reports
        the caller talking over it (or, for a provider that cannot, the caller presses ``*``),
        the carrier is cleared, and what reaches the caller after the clear is at most
        ``barge_in_limit_ms`` of the abandoned reply before the next one."""
        caps = self.capabilities
        if not (caps.interruption or caps.cancel):
            pytest.skip(f"provider {self.provider!r} can neither report nor stop a barge-in")
        from telewire.testing.simulator import CallSimulator

        token = "kit-" + secrets.token_hex(16)
        monkeypatch.setenv("TELEWIRE_LOOPBACK_ENABLED", "true")
        monkeypatch.setenv("TELEWIRE_LOOPBACK_TOKEN", token)
        async with call_server(quiet_fake, self.provider, self.rt_overrides) as url:
            sim = CallSimulator(url, carrier="loopback", auth_token=token, drain_s=1.0,
                                dtmf=() if caps.interruption else [(1000, "*")])
            call = asyncio.create_task(sim.run(b"\xff" * 8 * 4000))
            try:
                await quiet_fake.wait_connected(1)
                await quiet_fake.speak_slowly(3000)
                await eventually(lambda: sim.result is not None
                                 and sim.result.received_bytes >= 8 * 300,
                                 what="the first 300 ms of the reply at the caller")
                if caps.interruption:
                    await quiet_fake.barge_in()
                assert sim.result is not None
                result = sim.result
                await eventually(lambda: result.clears >= 1, what="the carrier's clear")
                at_clear = result.received_at_clear[0]
                if self.turn_gap_ms:
                    await asyncio.sleep(self.turn_gap_ms * 1.5 / 1000)
                await quiet_fake.speak(100, transcript="after the barge-in")
                await eventually(lambda: result.received_bytes >= at_clear + 800,
                                 what="the reply after the barge-in at the caller")
                late_ms = (result.received_bytes - at_clear - 800) / 8
            finally:
                result = await call
        assert result.clears == 1 and not result.unexpected, result.unexpected
        assert result.played_at_clear[0] >= 8 * 200, "the caller heard the reply begin"
        assert late_ms <= self.barge_in_limit_ms, (
            f"{late_ms:.0f} ms of abandoned audio reached the caller after the carrier was "
            f"cleared (limit {self.barge_in_limit_ms:g} ms)")
        assert quiet_fake.audio_after_barge_in_ms() <= 3000 - 200

    async def test_steering_changes_instructions(self, quiet_fake: ProviderFake) -> None:
        self.skip_unless("instructions_change")
        async with self.session(quiet_fake) as (session, _sink, _call):
            await session.steer(SteerFrame(instructions="Answer only in French."))
            await eventually(lambda: "Answer only in French." in quiet_fake.instructions(),
                             what="the new instructions at the provider")

    async def test_voice_change(self, quiet_fake: ProviderFake) -> None:
        self.skip_unless("voice_change")
        async with self.session(quiet_fake) as (session, _sink, _call):
            before = quiet_fake.voice()
            new = self.voices[1] if before != self.voices[1] else self.voices[0]
            await session.steer(SteerFrame(voice=new))
            await quiet_fake.speak(200)  # a reply in between: the swap may wait for its end
            await eventually(lambda: quiet_fake.voice() == new, what=f"voice {new!r}")

    async def test_tools_reach_the_toolbox_and_answer(self, quiet_fake: ProviderFake) -> None:
        self.skip_unless("tools")
        async with self.session(quiet_fake) as (_session, _sink, call):
            output = await quiet_fake.call_tool("lookup_order", {"order": "A-17"})
            if isinstance(output, str):
                output = json.loads(output)
            assert output == {"order": "A-17", "status": "shipped"}
            await quiet_fake.call_tool("end_call", {"reason": "done"}, timeout=5.0)
            await eventually(lambda: bool(call.hangups), what="the end_call hang-up")
            assert call.hangups[0][0] == "end_call"

    async def test_dtmf_reaches_the_model(self, quiet_fake: ProviderFake) -> None:
        self.skip_unless("dtmf")
        async with self.session(quiet_fake) as (session, _sink, _call):
            await session.send_dtmf(DTMFFrame(digit="7"))
            await eventually(lambda: any("7" in t for t in quiet_fake.texts_received()),
                             what="the digit at the provider")

    async def test_reconnects_after_a_dropped_connection(self, echo_fake: ProviderFake) -> None:
        self.skip_unless("resume")
        async with self.session(echo_fake) as (session, sink, _call):
            first = caller_frames(10)
            for frame in first:
                await session.send_audio(frame)
            await sink.wait_until(lambda: len(sink.audio()) >= 1600, what="the first echo")
            await echo_fake.drop()
            await echo_fake.wait_connected(2, timeout=15.0)
            after = caller_frames(10, first=10)
            for frame in after:
                await session.send_audio(frame)
            want = b"".join(f.data for f in after)
            await sink.wait_until(lambda: sink.audio().endswith(want),
                                  what="audio echoed on the new connection")
            assert not sink.of(EndFrame)

    async def test_bad_messages_from_the_provider_do_not_end_the_call(
            self, echo_fake: ProviderFake) -> None:
        async with self.session(echo_fake) as (session, sink, _call):
            for junk in ("not json", "[1, 2]", '{"type": "no.such.event"}', '{"no": "type"}',
                         "{" * 10_000):
                await echo_fake.send_raw(junk)
            frames = caller_frames(5)
            for frame in frames:
                await session.send_audio(frame)
            want = b"".join(f.data for f in frames)
            await sink.wait_until(lambda: sink.audio().endswith(want),
                                  what="audio still echoed after bad messages")
            assert not sink.of(EndFrame)

    async def test_usage_is_reported(self, quiet_fake: ProviderFake) -> None:
        if self.capabilities.billing == "none":
            pytest.skip(f"provider {self.provider!r} bills nothing")
        async with self.session(quiet_fake) as (_session, sink, _call):
            await quiet_fake.speak(400, transcript="Your order has shipped.")
            (usage, *_) = await sink.wait_for(UsageFrame, timeout=15.0)
            if usage.billing == "seconds":
                assert usage.seconds > 0
            else:
                assert usage.output_audio_tokens + usage.output_text_tokens > 0


@contextlib.asynccontextmanager
async def call_server(fake: ProviderFake, provider: str,
                      overrides: dict[str, Any]) -> AsyncIterator[str]:
    """A :class:`~telewire.server.TelewireServer` on 127.0.0.1 running the default graph without
    its recorder, its ``rt`` node the ``provider`` pointed at ``fake``; yields the loopback
    carrier's media URL (the caller enables that carrier)."""
    import tomllib

    from telewire.graph import build_graph, default_graph_path
    from telewire.registry import CarrierRegistry
    from telewire.server import TelewireServer
    from telewire.settings import load_settings

    path = default_graph_path()
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    raw["nodes"].pop("recorder", None)
    raw["nodes"]["rt"]["config"] = {**fake.rt_config(), **overrides, "provider": provider}
    graph = build_graph(raw, source=str(path))
    server = TelewireServer(load_settings(host="127.0.0.1", port=0,
                                          operator_token=secrets.token_hex(16)),
                            graph, CarrierRegistry())
    await server.start()
    try:
        yield f"ws://127.0.0.1:{server.port}/media/loopback"
    finally:
        await server.stop(drain_timeout_s=1)


def _last_item(sink: Sink) -> str | None:
    audio = sink.of(AudioFrame)
    return audio[-1].item_id if audio else None


def _start_frame() -> StartFrame:
    return StartFrame(carrier="kit", call_id="CA" + "0" * 32, stream_id="MZ" + "0" * 32,
                      media_format=MediaFormat("pcmu", 8000))
