"""The carrier conformance kit: mixin test classes every carrier plugin runs against itself.

Depends on pytest and telewire's public API (registry, carrier, frames, errors); nothing imports it.

A carrier's test module is three lines::

    from telewire.testing.conformance import CarrierConformanceTests
    from telewire_acme.testing import AcmeFixtures

    class TestAcme(AcmeFixtures, CarrierConformanceTests):
        pass

``AcmeFixtures`` subclasses :class:`CarrierFixtures` and implements every method there: the
carrier's name, its inbound messages as the carrier really sends them, and small decoders for
the messages the plugin builds. The carrier is reached through
``CarrierRegistry().get(name)``, so the kit also proves the plugin is installed and registered.
A capability the carrier does not declare turns the tests of that feature into
``pytest.skip(reason)``; nothing is overridden to pass.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from typing import Mapping

import pytest

from telewire.carrier import CallContext, Capabilities
from telewire.errors import CarrierProtocolError, PluginError
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
#: Case ids :meth:`CarrierFixtures.malformed_messages` must supply, and what each means.
REQUIRED_MALFORMED_CASES: Mapping[str, str] = {
    "unknown_event": "a message naming an event the protocol does not have",
    "missing_field": "a media message without its audio payload field",
    "wrong_type": "a media message whose payload field has the wrong JSON type",
    "bad_payload": "a media message whose payload is not valid base64 (or not valid audio)",
}
_ONE_MB = 1024 * 1024


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
    until implemented; messages are built exactly as the carrier sends or expects them."""

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

    def started_call(self, carrier: Carrier, stream_id: str = STREAM_A,
                     custom_parameters: Mapping[str, str] | None = None) -> CallContext:
        """A new call context that has parsed a start message for ``stream_id``."""
        call = carrier.new_call()
        frames = carrier.parse_inbound(call, self.start_message(
            stream_id=stream_id, call_id=f"call-of-{stream_id}",
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
        assert registry.infos[name].entry_point, f"carrier {name!r} is not from an entry point"

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
        msg = self.start_message(stream_id=STREAM_A, call_id="call-1",
                                 custom_parameters=TRICKY_PARAMETERS)
        start = self.parse_one(carrier, call, msg, StartFrame)
        assert isinstance(start, StartFrame)
        assert start.carrier == carrier.name
        assert (start.stream_id, start.call_id) == (STREAM_A, "call-1")
        assert dict(start.custom_parameters) == dict(TRICKY_PARAMETERS)
        assert start.media_format == caps.media_format
        assert call.started and call.stream_id == STREAM_A and call.call_id == "call-1"
        assert dict(call.custom_parameters) == dict(TRICKY_PARAMETERS)

    def test_start_without_custom_parameters(self, carrier: Carrier) -> None:
        call = carrier.new_call()
        start = self.parse_one(carrier, call, self.start_message(
            stream_id=STREAM_A, call_id="call-1", custom_parameters={}), StartFrame)
        assert isinstance(start, StartFrame) and dict(start.custom_parameters) == {}

    def test_media(self, carrier: Carrier, caps: Capabilities) -> None:
        call = self.started_call(carrier)
        audio = bytes(range(160))
        frame = self.parse_one(carrier, call, self.media_message(
            audio, stream_id=STREAM_A, sequence=7), AudioFrame)
        assert isinstance(frame, AudioFrame)
        assert frame.data == audio
        assert (frame.codec, frame.sample_rate) == (caps.media_format.codec,
                                                    caps.media_format.sample_rate)
        assert frame.track == "inbound"
        assert frame.sequence in (None, 7), f"sequence {frame.sequence!r}, sent 7"

    def test_stop(self, carrier: Carrier) -> None:
        call = self.started_call(carrier)
        self.parse_one(carrier, call, self.stop_message(stream_id=STREAM_A), EndFrame)
        assert call.stopped


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

    def test_outbound_addressed_to_the_call(self, carrier: Carrier, caps: Capabilities) -> None:
        call = self.started_call(carrier)
        fmt = caps.media_format
        out = carrier.wrap_audio(call, AudioFrame(payload=b"\xff" * 160, codec=fmt.codec,
                                                  sample_rate=fmt.sample_rate, track="outbound"))
        sid = self.outbound_stream_id(out)
        if sid is None:
            pytest.skip(f"carrier {carrier.name!r}: outbound messages carry no stream id")
        assert sid == STREAM_A


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
            audio, stream_id=STREAM_A, sequence=1), AudioFrame)
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
        msg = self.media_message(audio, stream_id=STREAM_A, sequence=1)
        frame = self.parse_one(carrier, call, msg, AudioFrame)
        assert isinstance(frame, AudioFrame)
        if isinstance(msg, str):
            assert isinstance(frame.payload, str) and frame.payload in msg, (
                "a text message's base64 payload must be kept as the text that arrived")
            assert frame.payload == base64.b64encode(audio).decode("ascii")


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
        echo = self.parse_one(carrier, call, self.mark_message(name, stream_id=STREAM_A),
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
        frame = self.parse_one(carrier, call, self.dtmf_message(digit, stream_id=STREAM_A),
                               DTMFFrame)
        assert isinstance(frame, DTMFFrame) and frame.digit == digit

    @pytest.mark.parametrize("digit", ["E", "x", "12"])
    def test_bad_digit_rejected(self, carrier: Carrier, caps: Capabilities, digit: str) -> None:
        self.require(caps, "dtmf", carrier)
        call = self.started_call(carrier)
        err = self.expect_protocol_error(
            carrier, call, self.dtmf_message(digit, stream_id=STREAM_A), f"DTMF digit {digit!r}")
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
            carrier, call, self.media_message(b"\xff" * 160, stream_id=STREAM_A, sequence=1),
            "media before start")
        assert not err.fatal, "media before start must not end the call"
        assert not call.started

    def test_required_cases_supplied(self) -> None:
        cases = self.malformed_messages(stream_id=STREAM_A)
        missing = [f"{k} ({v})" for k, v in REQUIRED_MALFORMED_CASES.items() if k not in cases]
        assert not missing, "malformed_messages() lacks cases: " + "; ".join(missing)

    def test_carrier_cases_rejected(self, carrier: Carrier) -> None:
        problems: list[str] = []
        for case_id, case in self.malformed_messages(stream_id=STREAM_A).items():
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

    def test_message_limit_declared(self, carrier: Carrier, caps: Capabilities) -> None:
        typical = self.media_message(b"\xff" * 160, stream_id=STREAM_A, sequence=1)
        assert 0 < len(typical) <= caps.max_message_bytes < 16 * _ONE_MB, (
            f"max_message_bytes={caps.max_message_bytes} must admit a 20 ms media message "
            f"({len(typical)} bytes) and stay bounded")

    @pytest.mark.parametrize("kind", ["media", "garbage"])
    def test_one_megabyte_message(self, carrier: Carrier, kind: str) -> None:
        call = self.started_call(carrier)
        message: Message = (self.media_message(b"\x55" * _ONE_MB, stream_id=STREAM_A, sequence=1)
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
        a = self.started_call(carrier, STREAM_A, {"who": "a"})
        b = self.started_call(carrier, STREAM_B, {"who": "b"})
        assert (a.stream_id, b.stream_id) == (STREAM_A, STREAM_B)
        assert (dict(a.custom_parameters), dict(b.custom_parameters)) == ({"who": "a"},
                                                                           {"who": "b"})
        assert a.state is not b.state
        fa = self.parse_one(carrier, a, self.media_message(b"\x01" * 160, stream_id=STREAM_A,
                                                           sequence=1), AudioFrame)
        fb = self.parse_one(carrier, b, self.media_message(b"\x02" * 160, stream_id=STREAM_B,
                                                           sequence=1), AudioFrame)
        assert isinstance(fa, AudioFrame) and isinstance(fb, AudioFrame)
        assert (fa.data, fb.data) == (b"\x01" * 160, b"\x02" * 160)
        self.parse_one(carrier, a, self.stop_message(stream_id=STREAM_A), EndFrame)
        assert a.stopped and not b.stopped
        self.parse_one(carrier, b, self.media_message(b"\x03" * 160, stream_id=STREAM_B,
                                                      sequence=2), AudioFrame)

    def test_outbound_stream_ids_are_each_calls_own(self, carrier: Carrier,
                                                    caps: Capabilities) -> None:
        a = self.started_call(carrier, STREAM_A)
        b = self.started_call(carrier, STREAM_B)
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
):
    """Every conformance test; subclass it together with your :class:`CarrierFixtures`."""
