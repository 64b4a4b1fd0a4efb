"""Bridge messages as each preset's bridge sends them, for telewire's carrier conformance kit.

Depends on ``telewire.testing.conformance`` (so on pytest); only tests import it, never the plugin.

``sip_bridge`` reads every message through the envelope the graph compiled, which the kit's plain
``carrier.new_call()`` does not attach. :class:`EnvelopeCarrier` is the carrier as a graph using
one preset sees it: calls get that preset's compiled envelope, and the capabilities are the
plugin's narrowed by the envelope (no marks where the preset has none …), so the kit's
capability flags skip what a bridge cannot do.
"""

from __future__ import annotations

import base64
import itertools
import json
import struct
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pytest

from telewire.carrier import CallContext, Capabilities
from telewire.envelope import CompiledEnvelope, load_envelope_file
from telewire.frames import AudioFrame, Frame
from telewire.testing.conformance import CarrierFixtures, Malformed

if TYPE_CHECKING:
    from telewire.registry import Carrier, CarrierRegistry

__all__ = [
    "AsteriskFixtures",
    "EnvelopeCarrier",
    "FreeSwitchFixtures",
    "JambonzFixtures",
    "SignalWireFixtures",
    "SipBridgeFixtures",
    "l16_encoding_to",
]


def _decoded(code: int) -> int:
    """G.711 mu-law decoding of one code (the standard's formula, kept here so the fixtures do
    not borrow the implementation under test)."""
    code = ~code & 0xFF
    magnitude = ((((code & 0x0F) << 3) + 0x84) << ((code >> 4) & 0x07)) - 0x84
    return -magnitude if code & 0x80 else magnitude


def l16_encoding_to(ulaw: bytes) -> bytes:
    """L16 little-endian samples whose G.711 mu-law encoding is exactly ``ulaw``.

    Each code's decoded value encodes back to itself except 0x7F (mu-law's "negative zero",
    which decodes to 0 and re-encodes as 0xFF); the sample -1 encodes to 0x7F.
    """
    return struct.pack(f"<{len(ulaw)}h", *(-1 if c == 0x7F else _decoded(c) for c in ulaw))


class EnvelopeCarrier:
    """The ``sip_bridge`` carrier with one envelope attached to every call it creates."""

    def __init__(self, carrier: Carrier, envelope: CompiledEnvelope) -> None:
        self._carrier = carrier
        self.envelope = envelope
        self.name = carrier.name
        self.capabilities: Capabilities = envelope.capabilities(carrier.capabilities)

    def new_call(self) -> CallContext:
        """A fresh call context carrying the envelope, as a graph with this preset makes it."""
        call = self._carrier.new_call()
        call.envelope = self.envelope
        return call

    def parse_inbound(self, call: CallContext, message: str | bytes) -> Sequence[Frame]:
        return self._carrier.parse_inbound(call, message)

    def wrap_audio(self, call: CallContext, frame: AudioFrame) -> str | bytes:
        return self._carrier.wrap_audio(call, frame)

    def build_mark(self, call: CallContext, name: str) -> str | bytes | None:
        return self._carrier.build_mark(call, name)

    def build_clear(self, call: CallContext) -> str | bytes | None:
        return self._carrier.build_clear(call)


class SipBridgeFixtures(CarrierFixtures):
    """Shared by every preset: the carrier is ``sip_bridge`` seen through the preset's envelope,
    compiled from the file the plugin offers through ``telewire_envelope_presets``."""

    #: The preset under test (a name the plugin offers).
    preset: str = ""

    def carrier_name(self) -> str:
        return "sip_bridge"

    @pytest.fixture
    def envelope(self, registry: CarrierRegistry) -> CompiledEnvelope:
        """The preset, as the registry offers it, compiled."""
        if not self.preset:
            raise NotImplementedError(f"{type(self).__name__} must set preset = '<name>'")
        return load_envelope_file(self.preset, registry.envelope_presets()[self.preset])

    @pytest.fixture
    def carrier(self, registry: CarrierRegistry,  # type: ignore[override]
                envelope: CompiledEnvelope) -> EnvelopeCarrier:
        return EnvelopeCarrier(registry.get(self.carrier_name()), envelope)


# ---------------------------------------------------------------------------------------------
# Asterisk chan_websocket (JSON control format, binary ulaw)
# ---------------------------------------------------------------------------------------------


class AsteriskFixtures(SipBridgeFixtures):
    """JSON control events as chan_websocket documents them; media as binary ulaw."""

    preset = "asterisk_chan_websocket"

    @staticmethod
    def event(name: str, **fields: Any) -> str:
        return json.dumps({"event": name, **fields}, ensure_ascii=False)

    def start_message(self, *, stream_id: str, call_id: str,
                      custom_parameters: Mapping[str, str], format: str = "ulaw") -> str:
        return self.event("MEDIA_START", connection_id=stream_id, channel="WebSocket/telewire",
                          channel_id=call_id, format=format, optimal_frame_size=160, ptime=20,
                          channel_variables=dict(custom_parameters))

    def media_message(self, payload: bytes, *, stream_id: str, sequence: int) -> bytes:
        return payload

    def dtmf_message(self, digit: str, *, stream_id: str) -> str:
        return self.event("DTMF_END", channel_id=f"call-of-{stream_id}", digit=digit)

    def mark_message(self, name: str, *, stream_id: str) -> str:
        return self.event("MEDIA_MARK_PROCESSED", channel_id=f"call-of-{stream_id}",
                          correlation_id=name)

    def stop_message(self, *, stream_id: str) -> str:
        return self.event("HANGUP", channel_id=f"call-of-{stream_id}")

    def malformed_messages(self, *, stream_id: str) -> Mapping[str, Malformed]:
        start = self.start_message(stream_id=stream_id, call_id="pbx-1.1", custom_parameters={})

        def start_with(**fields: Any) -> str:
            return json.dumps({**json.loads(start), **fields})

        return {
            "unknown_event": Malformed(self.event("DANCE"), field="event", mentions=("'DANCE'",)),
            "missing_event": Malformed(json.dumps({"channel_id": "x"}), field="event"),
            # Binary media has no fields: these two cases are about control messages instead.
            "missing_field": Malformed(self.event("DTMF_END", channel_id="x"), field="digit",
                                       event="DTMF_END"),
            "wrong_type": Malformed(start_with(channel_id=42), field="channel_id",
                                    mentions=("42",), after_start=False, fatal=True),
            "bad_payload": Malformed(b"", mentions=("empty binary media",), fatal=False),
            "binary_before_start": Malformed(b"\xff" * 160, mentions=("before the start",),
                                             after_start=False, fatal=False),
            "unsupported_format": Malformed(start_with(format="opus"), field="format",
                                            mentions=("'opus'",), after_start=False, fatal=True),
            "variables_not_object": Malformed(start_with(channel_variables=["a"]),
                                              field="channel_variables", after_start=False,
                                              fatal=True),
            "connection_id_missing": Malformed(start_with(connection_id=""),
                                               field="connection_id", after_start=False,
                                               fatal=True),
            "mark_without_id": Malformed(self.event("MEDIA_MARK_PROCESSED", channel_id="x"),
                                         field="correlation_id", event="MEDIA_MARK_PROCESSED"),
        }

    def outbound_media_payload(self, message: str | bytes) -> bytes:
        assert isinstance(message, bytes), f"media must go as a binary message, not {message!r}"
        return message

    def is_clear(self, message: str | bytes) -> bool:
        return isinstance(message, str) and json.loads(message) == {"command": "FLUSH_MEDIA"}

    def outbound_mark_name(self, message: str | bytes) -> str:
        assert isinstance(message, str), f"commands are text messages, not {message!r}"
        doc = json.loads(message)
        assert doc.get("command") == "MARK_MEDIA" and set(doc) == {"command", "correlation_id"}
        return doc["correlation_id"]

    def outbound_stream_id(self, message: str | bytes) -> str | None:
        return None  # chan_websocket commands address the socket's own channel


# ---------------------------------------------------------------------------------------------
# jambonz listen (binary L16 8 kHz, JSON control)
# ---------------------------------------------------------------------------------------------


class JambonzFixtures(SipBridgeFixtures):
    """The listen verb's first text frame, binary L16 and JSON dtmf/mark events.

    ``media_message(payload)`` is the L16 the bridge would send for the mu-law ``payload`` the
    graph must then see (see :func:`l16_encoding_to`).
    """

    preset = "jambonz"

    def start_message(self, *, stream_id: str, call_id: str,
                      custom_parameters: Mapping[str, str], sample_rate: int = 8000,
                      mix_type: str = "mono") -> str:
        return json.dumps({
            "callSid": stream_id, "direction": "inbound", "from": "+15550001111",
            "to": "+15550002222", "callId": call_id, "accountSid": "acct-1",
            "applicationSid": "app-1", "callStatus": "in-progress", "sipStatus": 200,
            "sampleRate": sample_rate, "mixType": mix_type, "metadata": dict(custom_parameters),
        }, ensure_ascii=False)

    def media_message(self, payload: bytes, *, stream_id: str, sequence: int) -> bytes:
        return l16_encoding_to(payload)

    def dtmf_message(self, digit: str, *, stream_id: str) -> str:
        return json.dumps({"event": "dtmf", "dtmf": digit, "duration": 1600})

    def mark_message(self, name: str, *, stream_id: str) -> str:
        return json.dumps({"type": "mark", "data": {"name": name, "event": "playout"}},
                          ensure_ascii=False)

    def stop_message(self, *, stream_id: str) -> str:
        pytest.skip("jambonz ends a listen by closing the socket; it sends no stop message")

    def malformed_messages(self, *, stream_id: str) -> Mapping[str, Malformed]:
        def start(**fields: Any) -> str:
            doc = json.loads(self.start_message(stream_id=stream_id, call_id=stream_id,
                                                custom_parameters={}))
            return json.dumps({**doc, **fields})

        return {
            "unknown_event": Malformed(json.dumps({"type": "dance"}), field="type",
                                       mentions=("'dance'",)),
            "missing_field": Malformed(json.dumps({"event": "dtmf", "duration": 800}),
                                       field="dtmf", event="dtmf"),
            "wrong_type": Malformed(start(metadata=["a"]), field="metadata", after_start=False,
                                    fatal=True),
            "bad_payload": Malformed(b"\x00\x01\x02", mentions=("odd length", "3 bytes"),
                                     fatal=False),
            "empty_payload": Malformed(b"", mentions=("empty",), fatal=False),
            "rate_16k_refused": Malformed(start(sampleRate=16000), field="sampleRate",
                                          mentions=("16000", "never resamples"),
                                          after_start=False, fatal=True),
            "stereo_refused": Malformed(start(mixType="stereo"), field="mixType",
                                        mentions=("'stereo'", "'mono'"), after_start=False,
                                        fatal=True),
            "call_sid_missing": Malformed(start(callSid=""), field="callSid",
                                          after_start=False, fatal=True),
            "mark_without_name": Malformed(json.dumps({"type": "mark", "data": {}}),
                                           field="data.name", event="mark"),
        }

    def outbound_media_payload(self, message: str | bytes) -> bytes:
        assert isinstance(message, bytes), f"media must go as a binary message, not {message!r}"
        return message

    def is_clear(self, message: str | bytes) -> bool:
        return isinstance(message, str) and json.loads(message) == {"type": "killAudio"}

    def outbound_mark_name(self, message: str | bytes) -> str:
        assert isinstance(message, str), f"commands are text messages, not {message!r}"
        doc = json.loads(message)
        assert doc.get("type") == "mark" and set(doc) == {"type", "data"}
        return doc["data"]["name"]

    def outbound_stream_id(self, message: str | bytes) -> str | None:
        return None  # the listen socket is the call's own


# ---------------------------------------------------------------------------------------------
# FreeSWITCH mod_audio_stream (binary L16 in, JSON streamAudio out)
# ---------------------------------------------------------------------------------------------


class FreeSwitchFixtures(SipBridgeFixtures):
    """The JSON metadata given to ``uuid_audio_stream … start`` (the preset's convention:
    ``uuid``, ``sip_call_id``, ``parameters``), then binary L16."""

    preset = "freeswitch_audio_stream"

    def start_message(self, *, stream_id: str, call_id: str,
                      custom_parameters: Mapping[str, str]) -> str:
        return json.dumps({"uuid": stream_id, "sip_call_id": call_id,
                           "parameters": dict(custom_parameters)}, ensure_ascii=False)

    def media_message(self, payload: bytes, *, stream_id: str, sequence: int) -> bytes:
        return l16_encoding_to(payload)

    def dtmf_message(self, digit: str, *, stream_id: str) -> str:
        pytest.skip("mod_audio_stream sends no DTMF on its socket")

    def mark_message(self, name: str, *, stream_id: str) -> str:
        pytest.skip("mod_audio_stream has no marks")

    def stop_message(self, *, stream_id: str) -> str:
        pytest.skip("mod_audio_stream ends by closing the socket; it sends no stop message")

    def malformed_messages(self, *, stream_id: str) -> Mapping[str, Malformed]:
        return {
            "unknown_event": Malformed(json.dumps({"event": "dance"}), field="event",
                                       mentions=("'dance'",)),
            "missing_field": Malformed(json.dumps({"sip_call_id": "x"}), field="uuid",
                                       after_start=False, fatal=True),
            "wrong_type": Malformed(json.dumps({"uuid": 42}), field="uuid",
                                    mentions=("42",), after_start=False, fatal=True),
            "bad_payload": Malformed(b"\x01", mentions=("odd length",), fatal=False),
        }

    def outbound_media_payload(self, message: str | bytes) -> str:
        assert isinstance(message, str), f"streamAudio is a text message, not {message!r}"
        doc = json.loads(message)
        assert doc["type"] == "streamAudio" and doc["data"]["audioDataType"] == "raw"
        assert doc["data"]["sampleRate"] == 8000
        return doc["data"]["audioData"]

    def is_clear(self, message: str | bytes) -> bool:
        return False  # the open-source module has no clear command

    def outbound_mark_name(self, message: str | bytes) -> str:
        raise AssertionError(f"mod_audio_stream has no marks, yet a mark was built: {message!r}")

    def outbound_stream_id(self, message: str | bytes) -> str | None:
        return None


# ---------------------------------------------------------------------------------------------
# SignalWire (Twilio-compatible JSON)
# ---------------------------------------------------------------------------------------------


class SignalWireFixtures(SipBridgeFixtures):
    """SignalWire's Twilio-compatible Media Streams messages (PCMU@8000h)."""

    preset = "signalwire"
    _sequence = itertools.count(1)
    _FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}

    def _message(self, event: str, stream_id: str | None, **body: Any) -> str:
        doc: dict[str, Any] = {"event": event, "sequenceNumber": str(next(self._sequence))}
        if stream_id is not None:
            doc["streamSid"] = stream_id
        doc.update(body)
        return json.dumps(doc, ensure_ascii=False)

    def start_message(self, *, stream_id: str, call_id: str,
                      custom_parameters: Mapping[str, str]) -> str:
        return self._message("start", stream_id, start={
            "accountSid": "project-1", "streamSid": stream_id, "callSid": call_id,
            "tracks": ["inbound"], "customParameters": dict(custom_parameters),
            "mediaFormat": self._FORMAT})

    def media_message(self, payload: bytes, *, stream_id: str, sequence: int) -> str:
        return self._message("media", stream_id, media={
            "track": "inbound", "chunk": str(sequence), "timestamp": str((sequence - 1) * 20),
            "payload": base64.b64encode(payload).decode("ascii")})

    def dtmf_message(self, digit: str, *, stream_id: str) -> str:
        return self._message("dtmf", stream_id, dtmf={"track": "inbound_track", "digit": digit})

    def mark_message(self, name: str, *, stream_id: str) -> str:
        return self._message("mark", stream_id, mark={"name": name})

    def stop_message(self, *, stream_id: str) -> str:
        return self._message("stop", stream_id, stop={"callSid": f"call-of-{stream_id}"})

    def malformed_messages(self, *, stream_id: str) -> Mapping[str, Malformed]:
        def media(**fields: Any) -> str:
            return self._message("media", stream_id, media={"track": "inbound", "chunk": "1",
                                                            "timestamp": "0", **fields})

        def start(**fields: Any) -> str:
            return self._message("start", stream_id, start={
                "streamSid": stream_id, "callSid": "c1", "customParameters": {},
                "mediaFormat": self._FORMAT, **fields})

        return {
            "unknown_event": Malformed(self._message("dance", stream_id), field="event",
                                       mentions=("'dance'",)),
            "missing_field": Malformed(media(), field="media.payload", event="media"),
            "wrong_type": Malformed(media(payload=12345), field="media.payload", event="media"),
            "bad_payload": Malformed(media(payload="not*base64!"), field="media.payload",
                                     event="media"),
            "l16_refused": Malformed(
                start(mediaFormat={"encoding": "audio/L16", "sampleRate": 16000, "channels": 1}),
                field="start.mediaFormat.encoding", mentions=("audio/L16",), after_start=False,
                fatal=True),
            "foreign_stream": Malformed(self.media_message(b"\xff", stream_id="other",
                                                           sequence=1),
                                        field="streamSid", mentions=("other",)),
        }

    def outbound_media_payload(self, message: str | bytes) -> str:
        assert isinstance(message, str), f"SignalWire messages are text, not {message!r}"
        doc = json.loads(message)
        assert doc["event"] == "media" and set(doc) == {"event", "streamSid", "media"}
        return doc["media"]["payload"]

    def is_clear(self, message: str | bytes) -> bool:
        return isinstance(message, str) and json.loads(message).get("event") == "clear"

    def outbound_mark_name(self, message: str | bytes) -> str:
        assert isinstance(message, str)
        doc = json.loads(message)
        assert doc["event"] == "mark"
        return doc["mark"]["name"]

    def outbound_stream_id(self, message: str | bytes) -> str | None:
        return json.loads(message)["streamSid"]
