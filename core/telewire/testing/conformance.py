"""The carrier conformance kit: mixin test classes every carrier plugin runs against itself.

Depends on pytest and telewire's public API (registry, carrier, frames, errors); nothing imports it.

A carrier's test module is three lines::

    from telewire.testing.conformance import CarrierConformanceTests
    from telewire_acme.testing import AcmeFixtures

    class TestAcme(AcmeFixtures, CarrierConformanceTests):
        pass

``AcmeFixtures`` subclasses :class:`CarrierFixtures` and implements every method there: the
carrier's name, its inbound messages as the carrier really sends them, and small decoders for
the messages the plugin builds; optionally, the messages of one recorded real call. The carrier
is reached through ``CarrierRegistry().get(name)``, so the kit also proves the plugin is
installed and registered. A capability the carrier does not declare (or a recording it does
not supply) turns the tests of that feature into ``pytest.skip(reason)``; nothing is
overridden to pass.

Messages are ``str`` (text WebSocket frames) or ``bytes`` (binary frames) everywhere: the kit
never assumes JSON text, so a carrier whose media travels in binary frames runs it unchanged.
"""

from __future__ import annotations

import base64
import random
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import pytest

from telewire.carrier import CallContext, Capabilities
from telewire.errors import CarrierError, CarrierProtocolError, PluginError
from telewire.frames import (
    DTMF_DIGITS,
    AudioFrame,
    DTMFFrame,
    EndFrame,
    Frame,
    MarkFrame,
    MediaFormat,
    StartFrame,
)
from telewire.registry import Carrier, CarrierRegistry

__all__ = [
    "REQUIRED_MALFORMED_CASES",
    "CarrierConformanceTests",
    "CarrierFixtures",
    "ClearTests",
    "DTMFTests",
    "HOSTILE_IDS",
    "HOSTILE_PARAMETERS",
    "IdentityTests",
    "InboundParsingTests",
    "IsolationTests",
    "MalformedInputTests",
    "Malformed",
    "MarkTests",
    "MediaRoundTripTests",
    "OutboundTests",
    "RegistrationTests",
]

Message = str | bytes
STREAM_A = "conformance-stream-a"
STREAM_B = "conformance-stream-b"
#: Custom parameters with characters that break naive JSON/XML handling.
TRICKY_PARAMETERS: Mapping[str, str] = {
    "token": 's3cr&t<"quoted">\\back',
    "tenant": "acme",
    "unicode": "Zürich ☎ 東京",
}
#: Ids no carrier may accept: once used as a store key, a REST path segment or in a log line,
#: each would be a path step, a query, an escape or a forged line.
HOSTILE_IDS: Mapping[str, str] = {
    "slash": "CA/../../etc/passwd",
    "query": "CA1?Status=completed",
    "dot-dot": "..",
    "dot": ".",
    "space": "CA 1",
    "newline": "CA1\n2024-01-01 00:00:00 | INFO | forged line",
    "carriage-return": "CA1\rx",
    "nul": "CA1\x00",
    "percent": "CA%2F..%2F",
    "backslash": "CA\\..\\x",
    "hash": "CA1#frag",
    "non-ascii": "CA1\u0430",
    "line-separator": "CA1\u2028x",
    "too-long": "C" * 300,
}
#: Custom parameters no carrier may accept: control characters in a name or a value, absurd
#: sizes and counts.
HOSTILE_PARAMETERS: Mapping[str, Mapping[str, str]] = {
    "newline-in-value": {"note": "a\nforged line"},
    "nul-in-value": {"note": "a\x00b"},
    "escape-in-value": {"note": "\x1b[2J"},
    "control-in-name": {"no\rte": "x"},
    "huge-value": {"note": "x" * 100_000},
    "huge-name": {"n" * 10_000: "x"},
    "too-many": {f"p{i}": "x" for i in range(2000)},
}
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Case ids :meth:`CarrierFixtures.malformed_messages` must supply, and what each means. A
#: carrier whose media is binary frames (no fields to leave out) supplies the nearest control
#: message cases instead: a required field missing, a field of the wrong type.
REQUIRED_MALFORMED_CASES: Mapping[str, str] = {
    "unknown_event": "a message naming an event the protocol does not have",
    "missing_field": "a media message without its audio payload field (or, for binary media, "
                     "a control message without a required field)",
    "wrong_type": "a media message whose payload field has the wrong JSON type (or, for binary "
                  "media, a control message field of the wrong type)",
    "bad_payload": "a media message whose payload is not valid base64 (or not valid audio)",
}
_ONE_MB = 1024 * 1024
#: Seed of the mutation fuzzing in :class:`MalformedInputTests`; a failure names it and the round.
FUZZ_SEED = 20240611
_FUZZ_ROUNDS = 400


@dataclass(frozen=True, slots=True)
class Malformed:
    """One malformed inbound message and how the plugin must reject it.

    Attributes:
        message: the message as it would arrive on the socket.
        field: the dotted field path ``CarrierProtocolError.field`` must name, if any.
        event: the event ``CarrierProtocolError.event`` must name, if any.
        mentions: substrings the error message must contain (the bad value, the event name …).
        after_start: feed a valid start message first (most errors are about mid-call messages).
        fatal: the expected ``CarrierProtocolError.fatal``, or ``None`` not to check it.
    """

    message: Message
    field: str | None = None
    event: str | None = None
    mentions: tuple[str, ...] = ()
    after_start: bool = True
    fatal: bool | None = None


def _missing(obj: object, method: str, what: str) -> NotImplementedError:
    return NotImplementedError(
        f"{type(obj).__name__} must implement CarrierFixtures.{method}(): {what}"
    )


class CarrierFixtures:
    """What a carrier author supplies to the kit. Every method raises ``NotImplementedError``
    until implemented; messages are built exactly as the carrier sends or expects them.

    The ids the kit gives its calls are attributes: the defaults suit a carrier that takes any
    id of the safe charset (letters, digits, ``. _ : @ -``); a carrier whose ids have a
    documented shape (Twilio's ``MZ``/``CA`` + 32 hex digits) sets real-shaped ones and
    overrides :meth:`call_id_for`, so that the kit never feeds it an id it must refuse.
    """

    #: The stream id of the kit's first call, and of a second one beside it.
    stream_a: str = STREAM_A
    stream_b: str = STREAM_B
    #: The call id of the kit's first call where a test names it.
    call_1: str = "call-1"

    def call_id_for(self, stream_id: str) -> str:
        """The call id of the kit's call on ``stream_id`` (default ``call-of-<stream_id>``)."""
        return f"call-of-{stream_id}"

    def carrier_name(self) -> str:
        """The carrier's entry-point name in group ``telewire.carriers`` (``"twilio"``)."""
        raise _missing(self, "carrier_name", "return the carrier's entry-point name, e.g. 'twilio'")

    # ------------------------------------------------------------------ recorded inbound messages

    def start_message(self, *, stream_id: str, call_id: str,
                      custom_parameters: Mapping[str, str]) -> Message:
        """The carrier's start message for a call with these ids and custom parameters."""
        raise _missing(self, "start_message",
                       "return the carrier's call-start message carrying stream_id, call_id and "
                       "custom_parameters, in the carrier's own media format")

    def media_message(self, payload: bytes, *, stream_id: str, sequence: int) -> Message:
        """The carrier's inbound media message carrying ``payload`` (raw audio bytes) as its
        ``sequence``-th chunk (1-based)."""
        raise _missing(self, "media_message",
                       "return an inbound media message carrying the given raw audio bytes, "
                       "encoded as the carrier does (base64 in JSON, or a binary frame)")

    def dtmf_message(self, digit: str, *, stream_id: str) -> Message:
        """The carrier's DTMF message for ``digit`` (the kit also passes invalid digits)."""
        raise _missing(self, "dtmf_message",
                       "return the carrier's DTMF message for the digit, putting it in the "
                       "message as is (even when it is not a valid digit)")

    def mark_message(self, name: str, *, stream_id: str) -> Message:
        """The carrier's echo of a mark named ``name``."""
        raise _missing(self, "mark_message",
                       "return the message the carrier sends when it reaches a mark of this name")

    def stop_message(self, *, stream_id: str) -> Message:
        """The carrier's end-of-stream message."""
        raise _missing(self, "stop_message", "return the carrier's stream-stopped message")

    def recorded_session(self) -> Sequence[Message] | None:
        """Every message of one real call, in order, exactly as the carrier sent them.

        Capture them from a real call (log each WebSocket message as received, then shorten the
        media run to a handful of chunks) and keep them verbatim: field order, string-typed
        counters, keep-alives and all. The kit parses them in order into one call and checks
        start first, stop last, nothing rejected, and that the recorded audio survives a round
        trip byte for byte.

        Returns:
            The messages (``str`` for text frames, ``bytes`` for binary frames), or ``None``
            when there is no recording yet; the recorded-session tests are then skipped, saying
            so. Supplying one is strongly recommended: it is the only test fed with messages
            the fixtures' author did not write.
        """
        return None

    def malformed_messages(self, *, stream_id: str) -> Mapping[str, Malformed]:
        """Carrier-specific malformed messages by case id; must include the ids in
        :data:`REQUIRED_MALFORMED_CASES` (more are welcome). Mid-call cases are fed after a
        start message for ``stream_id``."""
        raise _missing(self, "malformed_messages",
                       "return {case_id: Malformed(...)} including the ids "
                       + ", ".join(REQUIRED_MALFORMED_CASES))

    # ------------------------------------------------------------------ outbound decoders

    def outbound_media_payload(self, message: Message) -> str | bytes:
        """The audio payload of an outbound media message in its wire form: the base64 text
        exactly as it appears in the envelope, or the raw bytes of a binary frame."""
        raise _missing(self, "outbound_media_payload",
                       "return the payload of an outbound media message as it is on the wire "
                       "(base64 text unchanged, or raw bytes)")

    def is_clear(self, message: Message) -> bool:
        """Whether ``message`` is the carrier's clear (drop buffered audio) command."""
        raise _missing(self, "is_clear", "return True only for the carrier's clear command")

    def outbound_mark_name(self, message: Message) -> str:
        """The mark name in an outbound mark message."""
        raise _missing(self, "outbound_mark_name", "return the name carried by an outbound mark")

    def outbound_stream_id(self, message: Message) -> str | None:
        """The stream id an outbound message is addressed to, or ``None`` when the carrier's
        outbound messages carry none."""
        raise _missing(self, "outbound_stream_id",
                       "return the stream id in an outbound message, or None if it carries none")


class _KitBase(CarrierFixtures):
    """Fixtures and helpers shared by every ``*Tests`` mixin."""

    @pytest.fixture(scope="class")
    @classmethod
    def registry(cls) -> CarrierRegistry:
        """A registry that discovered the installed entry points, as the server does; one per
        test class (it caches its carrier facades)."""
        return CarrierRegistry()

    @pytest.fixture
    def carrier(self, registry: CarrierRegistry) -> Carrier:
        """The carrier under test, through the registry's facade."""
        return registry.get(self.carrier_name())

    @pytest.fixture
    def caps(self, carrier: Carrier) -> Capabilities:
        """The capabilities the carrier declared."""
        return carrier.capabilities

    def started_call(self, carrier: Carrier, stream_id: str | None = None,
                     custom_parameters: Mapping[str, str] | None = None) -> CallContext:
        """A new call context that has parsed a start message for ``stream_id`` (default
        :attr:`stream_a`)."""
        call = carrier.new_call()
        stream_id = stream_id or self.stream_a
        frames = carrier.parse_inbound(call, self.start_message(
            stream_id=stream_id, call_id=self.call_id_for(stream_id),
            custom_parameters=custom_parameters or {}))
        starts = [f for f in frames if isinstance(f, StartFrame)]
        assert len(starts) == 1, f"start message gave {frames!r}, not one StartFrame"
        return call

    def parse_one(self, carrier: Carrier, call: CallContext, message: Message,
                  kind: type[Frame]) -> Frame:
        """Parse ``message`` and return its single frame, asserting its type."""
        frames = list(carrier.parse_inbound(call, message))
        assert len(frames) == 1 and isinstance(frames[0], kind), (
            f"expected one {kind.__name__}, got {frames!r}")
        return frames[0]

    def expect_protocol_error(self, carrier: Carrier, call: CallContext, message: Message,
                              what: str) -> CarrierProtocolError:
        """Parse ``message``; fail unless it raises ``CarrierProtocolError`` for this carrier."""
        try:
            frames = carrier.parse_inbound(call, message)
        except CarrierProtocolError as exc:
            assert exc.carrier == carrier.name, (
                f"{what}: CarrierProtocolError.carrier is {exc.carrier!r}, not {carrier.name!r}")
            return exc
        except PluginError as exc:
            pytest.fail(f"{what}: the plugin crashed, not raising CarrierProtocolError: {exc}")
        pytest.fail(f"{what}: accepted and parsed into {list(frames)!r}")

    def parse_or_reject(self, carrier: Carrier, call: CallContext, message: Message,
                        what: str) -> list[Frame] | CarrierProtocolError:
        """Parse ``message``: its frames, or the ``CarrierProtocolError`` refusing it. Anything
        else (a crash, a non-frame result) fails the test naming ``what``."""
        try:
            frames = list(carrier.parse_inbound(call, message))
        except CarrierProtocolError as exc:
            assert exc.carrier == carrier.name, (
                f"{what}: CarrierProtocolError.carrier is {exc.carrier!r}, not {carrier.name!r}")
            return exc
        except PluginError as exc:
            pytest.fail(f"{what}: the plugin crashed instead of raising CarrierProtocolError: "
                        f"{exc}")
        bad = [f for f in frames if not isinstance(f, Frame)]
        assert not bad, f"{what}: parse_inbound returned non-frames {bad!r}"
        return frames

    def require_recording(self, carrier: Carrier) -> Sequence[Message]:
        """The carrier's recorded session; skip the test when it supplies none."""
        recording = self.recorded_session()
        if recording is None:
            pytest.skip(f"carrier {carrier.name!r} supplies no recorded session "
                        f"({type(self).__name__}.recorded_session() returned None)")
        assert len(recording) >= 2, "a recorded session has at least a start and a stop message"
        return recording

    def valid_messages(self, caps: Capabilities) -> dict[str, tuple[Message, bool]]:
        """One valid message of each kind the carrier has, with whether it belongs after the
        start message (everything but the start itself). A kind the carrier does not declare,
        or whose fixture skips (a protocol with no stop message), is left out."""
        makers = {
            "start": (True, lambda: self.start_message(
                stream_id=self.stream_a, call_id=self.call_1,
                custom_parameters={"tenant": "acme"})),
            "media": (True, lambda: self.media_message(
                _PAYLOADS["random-20ms"], stream_id=self.stream_a, sequence=3)),
            "stop": (True, lambda: self.stop_message(stream_id=self.stream_a)),
            "dtmf": (caps.dtmf, lambda: self.dtmf_message("5", stream_id=self.stream_a)),
            "mark": (caps.marks, lambda: self.mark_message("m-1", stream_id=self.stream_a)),
        }
        out: dict[str, tuple[Message, bool]] = {}
        for kind, (declared, make) in makers.items():
            if not declared:
                continue
            try:
                out[kind] = (make(), kind != "start")
            except pytest.skip.Exception:
                continue
        return out

    @staticmethod
    def require(caps: Capabilities, flag: str, carrier: Carrier) -> None:
        """Skip the test when the carrier does not declare capability ``flag``."""
        if not getattr(caps, flag):
            pytest.skip(f"carrier {carrier.name!r} declares Capabilities.{flag}=False")


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------


class RegistrationTests(_KitBase):
    """The plugin is installed, found by entry point, valid against the hookspec."""

    def test_registered_through_entry_point(self, registry: CarrierRegistry) -> None:
        name = self.carrier_name()
        failed = [f.error for f in registry.failures if f.name == name]
        assert not failed, f"carrier {name!r} failed to load: {failed}"
        assert name in registry.names(), f"carrier {name!r} not installed: {registry.names()}"
        info = registry.infos[name]
        assert info.entry_point, f"carrier {name!r} is not from an entry point"
        assert info.distribution and info.version, (
            f"carrier {name!r}: entry point {info.entry_point!r} belongs to no installed "
            "distribution (is the plugin installed with pip, not just on sys.path?)")

    def test_capabilities_declared(self, caps: Capabilities) -> None:
        assert isinstance(caps, Capabilities)
        assert isinstance(caps.media_format, MediaFormat)
        assert isinstance(caps.max_message_bytes, int) and caps.max_message_bytes > 0


# ---------------------------------------------------------------------------------------------
# inbound
# ---------------------------------------------------------------------------------------------


class InboundParsingTests(_KitBase):
    """Start, media and stop messages become the right frames and update the call context."""

    def test_start(self, carrier: Carrier, caps: Capabilities) -> None:
        call = carrier.new_call()
        msg = self.start_message(stream_id=self.stream_a, call_id=self.call_1,
                                 custom_parameters=TRICKY_PARAMETERS)
        start = self.parse_one(carrier, call, msg, StartFrame)
        assert isinstance(start, StartFrame)
        assert start.carrier == carrier.name
        assert (start.stream_id, start.call_id) == (self.stream_a, self.call_1)
        assert dict(start.custom_parameters) == dict(TRICKY_PARAMETERS)
        assert start.media_format == caps.media_format
        assert call.started and call.stream_id == self.stream_a and call.call_id == self.call_1
        assert dict(call.custom_parameters) == dict(TRICKY_PARAMETERS)

    def test_start_without_custom_parameters(self, carrier: Carrier) -> None:
        call = carrier.new_call()
        start = self.parse_one(carrier, call, self.start_message(
            stream_id=self.stream_a, call_id=self.call_1, custom_parameters={}), StartFrame)
        assert isinstance(start, StartFrame) and dict(start.custom_parameters) == {}

    def test_media(self, carrier: Carrier, caps: Capabilities) -> None:
        call = self.started_call(carrier)
        audio = bytes(range(160))
        frame = self.parse_one(carrier, call, self.media_message(
            audio, stream_id=self.stream_a, sequence=7), AudioFrame)
        assert isinstance(frame, AudioFrame)
        assert frame.data == audio
        assert (frame.codec, frame.sample_rate) == (caps.media_format.codec,
                                                    caps.media_format.sample_rate)
        assert frame.track == "inbound"
        assert frame.sequence in (None, 7), f"sequence {frame.sequence!r}, sent 7"

    def test_stop(self, carrier: Carrier) -> None:
        call = self.started_call(carrier)
        self.parse_one(carrier, call, self.stop_message(stream_id=self.stream_a), EndFrame)
        assert call.stopped

    def test_recorded_session(self, carrier: Carrier) -> None:
        recording = self.require_recording(carrier)
        call = carrier.new_call()
        frames: list[Frame] = []
        for i, message in enumerate(recording):
            try:
                frames.extend(carrier.parse_inbound(call, message))
            except CarrierError as exc:
                pytest.fail(f"recorded message {i} was refused: {exc}\n  message: {message!r}")
        kinds = [type(f).__name__ for f in frames]
        assert frames and isinstance(frames[0], StartFrame), (
            f"the recording must yield a StartFrame first, got {kinds}")
        assert isinstance(frames[-1], EndFrame), f"the recording must end with an EndFrame: {kinds}"
        assert kinds.count("StartFrame") == 1 and kinds.count("EndFrame") == 1, kinds
        start = frames[0]
        assert isinstance(start, StartFrame) and start.carrier == carrier.name
        assert call.started and call.stopped and call.stream_id == start.stream_id
        audio = [f for f in frames if isinstance(f, AudioFrame)]
        assert audio, "the recording carries no media: keep a few media messages in it"
        fmt = start.media_format
        for frame in audio:
            assert (frame.codec, frame.sample_rate) == (fmt.codec, fmt.sample_rate), (
                f"recorded audio is {frame.codec}/{frame.sample_rate}, the call's start says "
                f"{fmt.codec}/{fmt.sample_rate}")
            assert frame.byte_length == len(frame.data) > 0


# ---------------------------------------------------------------------------------------------
# outbound
# ---------------------------------------------------------------------------------------------


class OutboundTests(_KitBase):
    """Agent audio is wrapped for this call, in the frame type the socket carries."""

    def test_wrap_audio_from_bytes(self, carrier: Carrier, caps: Capabilities) -> None:
        call = self.started_call(carrier)
        audio = bytes(range(255, -1, -1))
        fmt = caps.media_format
        out = carrier.wrap_audio(call, AudioFrame(payload=audio, codec=fmt.codec,
                                                  sample_rate=fmt.sample_rate, track="outbound"))
        if caps.text_frames_only:
            assert isinstance(out, str), f"text-only carrier built a {type(out).__name__} message"
        assert AudioFrame(payload=self.outbound_media_payload(out)).data == audio

    def test_wrap_audio_from_base64_text(self, carrier: Carrier, caps: Capabilities) -> None:
        """Agent audio arrives from the realtime model as base64 text; a text envelope carries
        that text as it is (no decode and re-encode)."""
        call = self.started_call(carrier)
        audio = _PAYLOADS["random-20ms"]
        text = base64.b64encode(audio).decode("ascii")
        fmt = caps.media_format
        out = carrier.wrap_audio(call, AudioFrame(payload=text, codec=fmt.codec,
                                                  sample_rate=fmt.sample_rate, track="outbound"))
        wire = self.outbound_media_payload(out)
        if isinstance(wire, str):
            assert wire == text, "the base64 text was re-encoded on the way out"
        assert AudioFrame(payload=wire).data == audio

    def test_text_only_carrier_sends_only_text(self, carrier: Carrier,
                                               caps: Capabilities) -> None:
        self.require(caps, "text_frames_only", carrier)
        call = self.started_call(carrier)
        fmt = caps.media_format
        sent = {
            "media": carrier.wrap_audio(call, AudioFrame(payload=b"\xff" * 160, codec=fmt.codec,
                                                         sample_rate=fmt.sample_rate,
                                                         track="outbound")),
            "mark": carrier.build_mark(call, "m-1"),
            "clear": carrier.build_clear(call),
        }
        binary = [k for k, v in sent.items() if v is not None and not isinstance(v, str)]
        assert not binary, f"Capabilities.text_frames_only=True but {binary} built as bytes"

    def test_outbound_addressed_to_the_call(self, carrier: Carrier, caps: Capabilities) -> None:
        call = self.started_call(carrier)
        fmt = caps.media_format
        out = carrier.wrap_audio(call, AudioFrame(payload=b"\xff" * 160, codec=fmt.codec,
                                                  sample_rate=fmt.sample_rate, track="outbound"))
        sid = self.outbound_stream_id(out)
        if sid is None:
            pytest.skip(f"carrier {carrier.name!r}: outbound messages carry no stream id")
        assert sid == self.stream_a


# ---------------------------------------------------------------------------------------------
# media round trip
# ---------------------------------------------------------------------------------------------

_rng = random.Random(20240611)
_PAYLOADS = {
    "every-byte-value": bytes(range(256)),
    "every-byte-value-reversed": bytes(range(255, -1, -1)),
    "random-20ms": _rng.randbytes(160),
    "random-500ms": _rng.randbytes(4000),
    "one-byte": b"\x7f",
    "two-bytes": b"\x00\xff",
    "three-bytes": b"\xfe\x00\x80",
    "silence": b"\xff" * 160,
}


class MediaRoundTripTests(_KitBase):
    """Caller audio in, the same bytes out: no decode, no re-encode, byte for byte."""

    @pytest.mark.parametrize("audio", list(_PAYLOADS.values()), ids=list(_PAYLOADS))
    def test_round_trip(self, carrier: Carrier, audio: bytes) -> None:
        call = self.started_call(carrier)
        frame = self.parse_one(carrier, call, self.media_message(
            audio, stream_id=self.stream_a, sequence=1), AudioFrame)
        assert isinstance(frame, AudioFrame)
        assert frame.data == audio, "inbound audio bytes changed"
        agent = AudioFrame(payload=frame.payload, codec=frame.codec,
                           sample_rate=frame.sample_rate, track="outbound")
        wire = self.outbound_media_payload(carrier.wrap_audio(call, agent))
        if type(wire) is type(frame.payload):
            assert wire == frame.payload, "payload was re-encoded on the way through"
        assert AudioFrame(payload=wire).data == audio, "outbound audio bytes differ"

    def test_inbound_payload_kept_in_wire_form(self, carrier: Carrier) -> None:
        call = self.started_call(carrier)
        audio = _PAYLOADS["random-20ms"]
        msg = self.media_message(audio, stream_id=self.stream_a, sequence=1)
        frame = self.parse_one(carrier, call, msg, AudioFrame)
        assert isinstance(frame, AudioFrame)
        b64 = base64.b64encode(audio).decode("ascii")
        if isinstance(msg, str) or b64.encode("ascii") in msg:
            assert isinstance(frame.payload, str) and frame.payload == b64, (
                "a base64 payload must be kept as the text that arrived, not decoded")
        else:
            assert isinstance(frame.payload, bytes) and frame.payload == audio, (
                "binary audio must be kept as the bytes that arrived, not base64-encoded")

    def test_recorded_audio_round_trip(self, carrier: Carrier) -> None:
        """Each recorded media payload, wrapped as agent audio as it arrives, goes back out
        byte for byte (in the wire form it came in, when the envelope uses the same form)."""
        recording = self.require_recording(carrier)
        call = carrier.new_call()
        checked = 0
        for i, message in enumerate(recording):
            for frame in carrier.parse_inbound(call, message):
                if not isinstance(frame, AudioFrame):
                    continue
                agent = AudioFrame(payload=frame.payload, codec=frame.codec,
                                   sample_rate=frame.sample_rate, track="outbound")
                wire = self.outbound_media_payload(carrier.wrap_audio(call, agent))
                if type(wire) is type(frame.payload):
                    assert wire == frame.payload, f"recorded message {i}: payload re-encoded"
                assert AudioFrame(payload=wire).data == frame.data, (
                    f"recorded message {i}: outbound audio bytes differ")
                checked += 1
        assert checked, "the recording carries no media: keep a few media messages in it"


# ---------------------------------------------------------------------------------------------
# marks, clear, DTMF
# ---------------------------------------------------------------------------------------------


class MarkTests(_KitBase):
    """Marks are built with their name and the carrier's echo becomes a MarkFrame."""

    def test_build_mark_matches_capability(self, carrier: Carrier, caps: Capabilities) -> None:
        out = carrier.build_mark(self.started_call(carrier), "m-1")
        assert (out is not None) == caps.marks, (
            f"Capabilities.marks={caps.marks} but telewire_build_mark returned {out!r}")

    @pytest.mark.parametrize("name", ["resp-42-end", 'q"uote\\back/slash', "ünïcödé ☎"])
    def test_mark_round_trip(self, carrier: Carrier, caps: Capabilities, name: str) -> None:
        self.require(caps, "marks", carrier)
        call = self.started_call(carrier)
        out = carrier.build_mark(call, name)
        assert out is not None
        assert self.outbound_mark_name(out) == name
        echo = self.parse_one(carrier, call, self.mark_message(name, stream_id=self.stream_a),
                              MarkFrame)
        assert isinstance(echo, MarkFrame) and echo.name == name


class ClearTests(_KitBase):
    """The clear command is built and is distinguishable from other outbound messages."""

    def test_build_clear_matches_capability(self, carrier: Carrier, caps: Capabilities) -> None:
        out = carrier.build_clear(self.started_call(carrier))
        assert (out is not None) == caps.clear, (
            f"Capabilities.clear={caps.clear} but telewire_build_clear returned {out!r}")

    def test_clear_recognised(self, carrier: Carrier, caps: Capabilities) -> None:
        self.require(caps, "clear", carrier)
        call = self.started_call(carrier)
        clear = carrier.build_clear(call)
        assert clear is not None and self.is_clear(clear)
        fmt = caps.media_format
        media = carrier.wrap_audio(call, AudioFrame(payload=b"\xff" * 160, codec=fmt.codec,
                                                    sample_rate=fmt.sample_rate))
        assert not self.is_clear(media)
        mark = carrier.build_mark(call, "m-1")
        if mark is not None:
            assert not self.is_clear(mark)


class DTMFTests(_KitBase):
    """Every keypad digit arrives as a DTMFFrame; anything else is refused."""

    @pytest.mark.parametrize("digit", sorted(DTMF_DIGITS))
    def test_digit(self, carrier: Carrier, caps: Capabilities, digit: str) -> None:
        self.require(caps, "dtmf", carrier)
        call = self.started_call(carrier)
        frame = self.parse_one(carrier, call, self.dtmf_message(digit, stream_id=self.stream_a),
                               DTMFFrame)
        assert isinstance(frame, DTMFFrame) and frame.digit == digit

    @pytest.mark.parametrize("digit", ["E", "x", "12"])
    def test_bad_digit_rejected(self, carrier: Carrier, caps: Capabilities, digit: str) -> None:
        self.require(caps, "dtmf", carrier)
        call = self.started_call(carrier)
        err = self.expect_protocol_error(
            carrier, call, self.dtmf_message(digit, stream_id=self.stream_a),
            f"DTMF digit {digit!r}")
        assert err.field and err.field in str(err), (
            f"the error for digit {digit!r} does not name its field: {err}")
        assert repr(digit) in str(err), f"the error does not show the digit: {err}"


# ---------------------------------------------------------------------------------------------
# malformed input
# ---------------------------------------------------------------------------------------------

_GARBAGE: Mapping[str, str] = {
    "not-json": "{this is not json",
    "json-array": '[{"event": "media"}]',
    "json-string": '"media"',
    "json-number": "42",
    "json-null": "null",
    "empty": "",
    "deeply-nested": "[" * 200_000,
}


class MalformedInputTests(_KitBase):
    """Every malformed message raises CarrierProtocolError naming the field or event."""

    @pytest.mark.parametrize("text", list(_GARBAGE.values()), ids=list(_GARBAGE))
    def test_garbage_text_rejected(self, carrier: Carrier, text: str) -> None:
        self.expect_protocol_error(carrier, self.started_call(carrier), text,
                                   f"text message {text[:30]!r}")

    def test_media_before_start_rejected(self, carrier: Carrier) -> None:
        call = carrier.new_call()
        err = self.expect_protocol_error(
            carrier, call, self.media_message(b"\xff" * 160, stream_id=self.stream_a, sequence=1),
            "media before start")
        assert not err.fatal, "media before start must not end the call"
        assert not call.started

    def test_required_cases_supplied(self) -> None:
        cases = self.malformed_messages(stream_id=self.stream_a)
        missing = [f"{k} ({v})" for k, v in REQUIRED_MALFORMED_CASES.items() if k not in cases]
        assert not missing, "malformed_messages() lacks cases: " + "; ".join(missing)

    def test_carrier_cases_rejected(self, carrier: Carrier) -> None:
        problems: list[str] = []
        for case_id, case in self.malformed_messages(stream_id=self.stream_a).items():
            call = self.started_call(carrier) if case.after_start else carrier.new_call()
            try:
                err = self.expect_protocol_error(carrier, call, case.message, case_id)
            except pytest.fail.Exception as exc:
                problems.append(str(exc))
                continue
            text = str(err)
            if case.field is not None and err.field != case.field:
                problems.append(f"{case_id}: field {err.field!r}, expected {case.field!r}: {text}")
            if case.event is not None and err.event != case.event:
                problems.append(f"{case_id}: event {err.event!r}, expected {case.event!r}: {text}")
            if case.fatal is not None and err.fatal != case.fatal:
                problems.append(f"{case_id}: fatal={err.fatal}, expected {case.fatal}: {text}")
            for needle in (case.field, *case.mentions):
                if needle is not None and needle not in text:
                    problems.append(f"{case_id}: message does not mention {needle!r}: {text}")
        if problems:
            pytest.fail(f"{len(problems)} malformed-input problem(s):\n  " + "\n  ".join(problems))

    def test_binary_frame_rejected_by_text_only_carrier(self, carrier: Carrier,
                                                        caps: Capabilities) -> None:
        self.require(caps, "text_frames_only", carrier)
        call = self.started_call(carrier)
        media = self.media_message(b"\xff" * 160, stream_id=self.stream_a, sequence=1)
        for what, frame in (("a valid message sent as a binary frame",
                             media.encode("utf-8") if isinstance(media, str) else media),
                            ("raw audio bytes", b"\xff" * 160),
                            ("an empty binary frame", b"")):
            err = self.expect_protocol_error(carrier, call, frame, what)
            assert not err.fatal, f"{what}: one stray binary frame must not end the call"

    def test_call_continues_after_rejection(self, carrier: Carrier) -> None:
        """A refused message that is not fatal leaves the call able to go on."""
        problems: list[str] = []
        for case_id, case in self.malformed_messages(stream_id=self.stream_a).items():
            if not case.after_start:
                continue
            call = self.started_call(carrier)
            result = self.parse_or_reject(carrier, call, case.message, case_id)
            if not isinstance(result, CarrierProtocolError) or result.fatal:
                continue  # accepted (reported by test_carrier_cases_rejected) or call over
            if not call.started or call.stopped or call.stream_id != self.stream_a:
                problems.append(f"{case_id}: the rejection changed the call (started="
                                f"{call.started}, stopped={call.stopped}, "
                                f"stream_id={call.stream_id!r})")
                continue
            after = self.parse_or_reject(carrier, call, self.media_message(
                b"\x01" * 160, stream_id=self.stream_a, sequence=2), f"media after {case_id}")
            if isinstance(after, CarrierProtocolError):
                problems.append(f"{case_id}: the next valid media message was refused: {after}")
            elif [type(f) for f in after] != [AudioFrame]:
                problems.append(f"{case_id}: the next media message gave {after!r}")
        if problems:
            pytest.fail("non-fatal rejections that broke the call:\n  " + "\n  ".join(problems))

    def test_truncated_messages_never_crash(self, carrier: Carrier, caps: Capabilities) -> None:
        """Every prefix of every valid message is parsed or refused, never a crash."""
        for kind, (message, after_start) in self.valid_messages(caps).items():
            step = max(1, len(message) // 300)
            for cut in range(0, len(message), step):
                call = self.started_call(carrier) if after_start else carrier.new_call()
                self.parse_or_reject(carrier, call, message[:cut],
                                     f"{kind} message cut to {cut} of {len(message)}")

    def test_mutated_messages_never_crash(self, carrier: Carrier, caps: Capabilities) -> None:
        """Valid messages with a character or byte changed, inserted or deleted are parsed or
        refused, never a crash (seeded: a failure names the seed and the round)."""
        rng = random.Random(FUZZ_SEED)
        samples = list(self.valid_messages(caps).items())
        text_alphabet = '{}[]":,\\0123456789-.eE aZ\x00\u00e9\u260e'
        for round_ in range(_FUZZ_ROUNDS):
            kind, (message, after_start) = rng.choice(samples)
            if not message:
                continue
            pos = rng.randrange(len(message))
            op = rng.choice(("replace", "insert", "delete"))
            if isinstance(message, str):
                ch = rng.choice(text_alphabet)
                mutated: Message = (message[:pos] + ("" if op == "delete" else ch)
                                    + message[pos + (op != "insert"):])
            else:
                b = bytes([rng.randrange(256)])
                mutated = (message[:pos] + (b"" if op == "delete" else b)
                           + message[pos + (op != "insert"):])
            call = self.started_call(carrier) if after_start else carrier.new_call()
            self.parse_or_reject(carrier, call, mutated,
                                 f"seed {FUZZ_SEED} round {round_}: {kind} message, {op} at "
                                 f"{pos}: {mutated[:200]!r}")

    def test_message_limit_declared(self, carrier: Carrier, caps: Capabilities) -> None:
        typical = self.media_message(b"\xff" * 160, stream_id=self.stream_a, sequence=1)
        size = len(typical.encode("utf-8")) if isinstance(typical, str) else len(typical)
        assert 0 < size <= caps.max_message_bytes < 16 * _ONE_MB, (
            f"max_message_bytes={caps.max_message_bytes} must admit a 20 ms media message "
            f"({size} bytes) and stay bounded")

    @pytest.mark.parametrize("kind", ["media", "garbage"])
    def test_one_megabyte_message(self, carrier: Carrier, kind: str) -> None:
        call = self.started_call(carrier)
        message: Message = (self.media_message(b"\x55" * _ONE_MB, stream_id=self.stream_a,
                                               sequence=1)
                            if kind == "media" else "x" * _ONE_MB)
        try:
            frames = carrier.parse_inbound(call, message)
        except CarrierProtocolError:
            return  # refusing is fine; the core enforces max_message_bytes before parsing
        except PluginError as exc:
            pytest.fail(f"a 1 MB {kind} message crashed the plugin: {exc}")
        assert all(isinstance(f, Frame) for f in frames)
        if kind == "media":
            assert [type(f) for f in frames] == [AudioFrame]


# ---------------------------------------------------------------------------------------------
# isolation
# ---------------------------------------------------------------------------------------------


class IsolationTests(_KitBase):
    """Two calls on one carrier share nothing: identities, state and outbound addressing."""

    def test_contexts_do_not_leak(self, carrier: Carrier) -> None:
        a = self.started_call(carrier, self.stream_a, {"who": "a"})
        b = self.started_call(carrier, self.stream_b, {"who": "b"})
        assert (a.stream_id, b.stream_id) == (self.stream_a, self.stream_b)
        assert (dict(a.custom_parameters), dict(b.custom_parameters)) == ({"who": "a"},
                                                                           {"who": "b"})
        assert a.state is not b.state
        fa = self.parse_one(carrier, a, self.media_message(b"\x01" * 160, stream_id=self.stream_a,
                                                           sequence=1), AudioFrame)
        fb = self.parse_one(carrier, b, self.media_message(b"\x02" * 160, stream_id=self.stream_b,
                                                           sequence=1), AudioFrame)
        assert isinstance(fa, AudioFrame) and isinstance(fb, AudioFrame)
        assert (fa.data, fb.data) == (b"\x01" * 160, b"\x02" * 160)
        self.parse_one(carrier, a, self.stop_message(stream_id=self.stream_a), EndFrame)
        assert a.stopped and not b.stopped
        self.parse_one(carrier, b, self.media_message(b"\x03" * 160, stream_id=self.stream_b,
                                                      sequence=2), AudioFrame)

    def test_outbound_stream_ids_are_each_calls_own(self, carrier: Carrier,
                                                    caps: Capabilities) -> None:
        a = self.started_call(carrier, self.stream_a)
        b = self.started_call(carrier, self.stream_b)
        fmt = caps.media_format
        audio = AudioFrame(payload=b"\xff" * 160, codec=fmt.codec, sample_rate=fmt.sample_rate,
                           track="outbound")
        # interleaved, so that anything cached per call is exercised on both
        sent = [(call, carrier.wrap_audio(call, audio)) for call in (a, b, a, b)]
        for call in (a, b):
            for extra in (carrier.build_mark(call, "m"), carrier.build_clear(call)):
                if extra is not None:
                    sent.append((call, extra))
        if self.outbound_stream_id(sent[0][1]) is None:
            pytest.skip(f"carrier {carrier.name!r}: outbound messages carry no stream id")
        for call, message in sent:
            assert self.outbound_stream_id(message) == call.stream_id, (
                f"a message for {call.stream_id!r} is addressed elsewhere: {message!r}")


# ---------------------------------------------------------------------------------------------
# call identity
# ---------------------------------------------------------------------------------------------


class IdentityTests(_KitBase):
    """Ids and custom parameters are checked where they enter: a start whose stream id or call
    id could not safely be a store key, a REST path segment or a log line is refused, fatally,
    before anything uses it; so are control characters and absurd sizes in custom parameters."""

    def _refused(self, carrier: Carrier, message: Message, what: str) -> CarrierProtocolError:
        call = carrier.new_call()
        err = self.expect_protocol_error(carrier, call, message, what)
        text = str(err)
        assert err.fatal, f"{what}: refused, but not fatally: {text}"
        assert not call.started, f"{what}: the refused start still started the call"
        assert err.field and err.field in text, f"{what}: the error names no field: {text}"
        assert not _CONTROL.search(text), f"{what}: the error holds a raw control character"
        assert len(text) < 1000, f"{what}: the error is {len(text)} characters long"
        return err

    @pytest.mark.parametrize("bad", list(HOSTILE_IDS.values()), ids=list(HOSTILE_IDS))
    def test_hostile_stream_id_refused(self, carrier: Carrier, bad: str) -> None:
        self._refused(carrier, self.start_message(stream_id=bad, call_id=self.call_1,
                                                  custom_parameters={}), f"stream id {bad!r}")

    @pytest.mark.parametrize("bad", list(HOSTILE_IDS.values()), ids=list(HOSTILE_IDS))
    def test_hostile_call_id_refused_or_unused(self, carrier: Carrier, bad: str) -> None:
        """Refused, or (for a carrier whose start carries no call id) never in the start."""
        call = carrier.new_call()
        message = self.start_message(stream_id=self.stream_a, call_id=bad, custom_parameters={})
        result = self.parse_or_reject(carrier, call, message, f"call id {bad!r}")
        if isinstance(result, CarrierProtocolError):
            self._refused(carrier, message, f"call id {bad!r}")
            return
        starts = [f for f in result if isinstance(f, StartFrame)]
        assert starts and bad not in (starts[0].call_id, starts[0].account_id), (
            f"call id {bad!r} was accepted into {starts!r}")

    def test_refusal_shows_the_value_bounded(self, carrier: Carrier) -> None:
        err = self._refused(carrier, self.start_message(
            stream_id="x/" * 5000, call_id=self.call_1, custom_parameters={}), "a 10 kB id")
        assert "'x/x/" in str(err), f"the error does not show the start of the value: {err}"

    @pytest.mark.parametrize("params", list(HOSTILE_PARAMETERS.values()),
                             ids=list(HOSTILE_PARAMETERS))
    def test_hostile_custom_parameters_refused(self, carrier: Carrier,
                                               params: Mapping[str, str]) -> None:
        """Refused, or (for a carrier whose start carries no custom parameters) not in it."""
        what = f"custom parameters {str(params)[:40]}"
        message = self.start_message(stream_id=self.stream_a, call_id=self.call_1,
                                     custom_parameters=params)
        result = self.parse_or_reject(carrier, carrier.new_call(), message, what)
        if isinstance(result, CarrierProtocolError):
            self._refused(carrier, message, what)
            return
        starts = [f for f in result if isinstance(f, StartFrame)]
        assert starts and not set(params) & set(starts[0].custom_parameters), (
            f"{what} were accepted into the start frame")


class CarrierConformanceTests(
    RegistrationTests,
    InboundParsingTests,
    OutboundTests,
    MediaRoundTripTests,
    MarkTests,
    ClearTests,
    DTMFTests,
    MalformedInputTests,
    IsolationTests,
    IdentityTests,
):
    """Every conformance test; subclass it together with your :class:`CarrierFixtures`."""
