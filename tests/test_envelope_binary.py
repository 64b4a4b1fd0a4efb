"""envelope_spec for binary-audio bridges: pass-through, L16 conversion, validation (sans-I/O)."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from telewire.carrier import CallContext, Capabilities
from telewire.envelope import compile_envelope
from telewire.errors import CarrierProtocolError, ConfigError
from telewire.frames import AudioFrame, DTMFFrame, MarkFrame, StartFrame
from telewire.g711 import ulaw_decode, ulaw_encode

# Shaped like Asterisk chan_websocket (JSON control, binary media in the dial string's codec).
ASTERISK = {
    "event": "event",
    "events": {"MEDIA_START": "start", "DTMF_END": "dtmf", "MEDIA_MARK_PROCESSED": "mark",
               "MEDIA_XOFF": "ignore"},
    "binary_media": {"codec": "pcmu", "sample_rate": 8000},
    "start": {"stream_id": "connection_id", "call_id": "channel_id",
              "custom_parameters": "channel_variables", "encoding": "format"},
    "dtmf": {"digit": "digit"},
    "mark": {"name": "correlation_id"},
    "encodings": {"ulaw": "pcmu", "slin": "l16"},
}
ASTERISK_OUT = {"media_format": "binary",
                "mark": '{"command":"MARK_MEDIA","correlation_id":"${name}"}',
                "clear": '{"command":"FLUSH_MEDIA"}', "hangup": '{"command":"HANGUP"}'}
# Shaped like jambonz listen (first text frame has no event field; binary L16).
JAMBONZ = {
    "event": ["event", "type"],
    "default_event": "metadata",
    "events": {"metadata": "start", "dtmf": "dtmf", "mark": "mark"},
    "binary_media": {"codec": "l16"},
    "start": {"stream_id": "callSid", "call_id": "callId", "custom_parameters": "metadata",
              "sample_rate": "sampleRate"},
    "start_expect": {"mixType": "mono"},
    "dtmf": {"digit": "dtmf"},
    "mark": {"name": "data.name"},
}
JAMBONZ_OUT = {"media_format": "binary", "clear": '{"type":"killAudio"}',
               "mark": '{"type":"mark","data":{"name":"${name}"}}'}

PCM = struct.pack("<8h", 0, 1, -1, 1000, -1000, 32767, -32768, 12345)


def media_start(fmt: str = "ulaw", sid: str = "conn-1") -> str:
    return json.dumps({"event": "MEDIA_START", "connection_id": sid, "channel_id": "pbx-1.7",
                       "format": fmt, "optimal_frame_size": 160,
                       "channel_variables": {"A": "1"}})


def jambonz_start(**fields: object) -> str:
    return json.dumps({"callSid": "cs-1", "callId": "sip-1", "sampleRate": 8000,
                       "mixType": "mono", "metadata": {"tenant": "acme"}, **fields})


@pytest.fixture
def asterisk():
    return compile_envelope("asterisk", ASTERISK, ASTERISK_OUT)


@pytest.fixture
def jambonz():
    return compile_envelope("jambonz", JAMBONZ, JAMBONZ_OUT)


def started(env, message: str, carrier: str = "bridge") -> CallContext:
    call = CallContext(carrier=carrier)
    [start] = env.parse(call, message)
    assert isinstance(start, StartFrame)
    return call


# --------------------------------------------------------------------------- mu-law pass-through


def test_mulaw_binary_frame_passes_through_as_the_same_bytes_object(asterisk):
    call = started(asterisk, media_start())
    message = bytes(range(256))
    [frame] = asterisk.parse(call, message)
    assert isinstance(frame, AudioFrame)
    assert frame.payload is message, "the received bytes must be the frame's payload, uncopied"
    assert (frame.codec, frame.sample_rate) == ("pcmu", 8000)
    agent = AudioFrame(payload=frame.payload, codec="pcmu", track="outbound")
    assert asterisk.media(call, agent) is message, "outbound mu-law must go out as it came"


def test_mulaw_from_a_base64_model_is_sent_as_its_bytes(asterisk):
    call = started(asterisk, media_start())
    raw = bytes(range(160))
    out = asterisk.media(call, AudioFrame(payload=base64.b64encode(raw).decode(), codec="pcmu"))
    assert out == raw


def test_start_fields_and_control_events(asterisk):
    call = CallContext(carrier="sip_bridge")
    [start] = asterisk.parse(call, media_start())
    assert isinstance(start, StartFrame) and start.carrier == "sip_bridge"
    assert (start.stream_id, start.call_id) == ("conn-1", "pbx-1.7")
    assert dict(start.custom_parameters) == {"A": "1"}
    assert start.media_format.codec == "pcmu"
    assert asterisk.parse(call, '{"event":"DTMF_END","digit":"5"}') == [DTMFFrame(digit="5")]
    assert asterisk.parse(call, '{"event":"MEDIA_MARK_PROCESSED","correlation_id":"m"}') == [
        MarkFrame(name="m")]
    assert asterisk.parse(call, '{"event":"MEDIA_XOFF"}') == []


def test_commands(asterisk):
    call = started(asterisk, media_start())
    assert json.loads(asterisk.mark(call, 'a"b')) == {"command": "MARK_MEDIA",
                                                     "correlation_id": 'a"b'}
    assert asterisk.clear(call) == '{"command":"FLUSH_MEDIA"}'
    assert asterisk.hangup(call) == '{"command":"HANGUP"}'


def test_binary_before_start_is_refused_without_ending_the_call(asterisk):
    call = CallContext(carrier="sip_bridge")
    with pytest.raises(CarrierProtocolError) as info:
        asterisk.parse(call, b"\xff" * 160)
    assert "before the start event" in str(info.value) and not info.value.fatal
    assert info.value.carrier == "sip_bridge" and str(info.value).startswith("sip_bridge: ")


def test_a_json_only_spec_refuses_binary_messages(twilio_envelope):
    call = CallContext(carrier="twilio")
    with pytest.raises(CarrierProtocolError) as info:
        twilio_envelope.parse(call, b'{"event":"connected"}')
    assert "binary WebSocket message (21 bytes) refused" in str(info.value)
    assert not info.value.fatal


def test_empty_binary_message_is_refused(asterisk):
    call = started(asterisk, media_start())
    with pytest.raises(CarrierProtocolError, match="empty binary media"):
        asterisk.parse(call, b"")


# --------------------------------------------------------------------------- L16 conversion


def test_l16_in_becomes_mulaw_and_mulaw_out_becomes_l16(jambonz):
    call = started(jambonz, jambonz_start())
    assert call.media_format.codec == "pcmu" and call.media_format.sample_rate == 8000
    [frame] = jambonz.parse(call, PCM)
    assert isinstance(frame, AudioFrame) and frame.codec == "pcmu"
    assert frame.payload == ulaw_encode(PCM)
    out = jambonz.media(call, AudioFrame(payload=frame.payload, codec="pcmu", track="outbound"))
    assert isinstance(out, bytes) and out == ulaw_decode(ulaw_encode(PCM))


def test_per_call_codec_comes_from_the_start_event(asterisk):
    """One envelope, two calls: ulaw passes through, slin is converted; nothing leaks."""
    ulaw_call = started(asterisk, media_start("ulaw", "a"))
    slin_call = started(asterisk, media_start("slin", "b"))
    [u] = asterisk.parse(ulaw_call, PCM)
    [s] = asterisk.parse(slin_call, PCM)
    assert u.payload is PCM and s.payload == ulaw_encode(PCM)
    agent = AudioFrame(payload=ulaw_encode(PCM), codec="pcmu")
    assert asterisk.media(slin_call, agent) == ulaw_decode(ulaw_encode(PCM))
    assert asterisk.media(ulaw_call, agent) == ulaw_encode(PCM)


@pytest.mark.parametrize(("message", "fragment"), [(b"\x00\x01\x02", "3 bytes (odd length)"),
                                                   (b"", "0 bytes (empty)")])
def test_l16_that_is_not_16_bit_audio_is_refused(jambonz, message, fragment):
    call = started(jambonz, jambonz_start())
    with pytest.raises(CarrierProtocolError) as info:
        jambonz.parse(call, message)
    assert fragment in str(info.value) and not info.value.fatal


def test_l16_at_16k_is_refused_at_start_naming_field_and_value(jambonz):
    call = CallContext(carrier="sip_bridge")
    with pytest.raises(CarrierProtocolError) as info:
        jambonz.parse(call, jambonz_start(sampleRate=16000))
    err = info.value
    assert err.fatal and err.field == "sampleRate"
    assert "'sampleRate' is 16000" in str(err) and "never resamples" in str(err)
    assert not call.started


def test_start_expect_refuses_another_value(jambonz):
    with pytest.raises(CarrierProtocolError) as info:
        jambonz.parse(CallContext(carrier="sip_bridge"), jambonz_start(mixType="stereo"))
    assert info.value.fatal and info.value.field == "mixType"
    assert "'stereo'" in str(info.value) and "'mono'" in str(info.value)


def test_l16_in_json_base64_is_converted_and_so_is_the_reply():
    env = compile_envelope(
        "exotel-like",
        {"events": {"start": "start", "media": "media"}, "start": {"stream_id": "sid"},
         "media": {"payload": "audio"}, "default_encoding": "l16"},
        {"media": '{"audio":"${payload}"}'})
    call = started(env, '{"event":"start","sid":"s1"}')
    b64 = base64.b64encode(PCM).decode()
    [frame] = env.parse(call, json.dumps({"event": "media", "audio": b64}))
    assert frame.payload == ulaw_encode(PCM) and frame.codec == "pcmu"
    out = json.loads(env.media(call, frame))
    assert base64.b64decode(out["audio"]) == ulaw_decode(ulaw_encode(PCM))


def test_response_codec_l16_with_a_json_template():
    env = compile_envelope(
        "fs-like",
        {"default_event": "metadata", "events": {"metadata": "start"},
         "binary_media": {"codec": "l16"}, "start": {"stream_id": "uuid"}},
        {"codec": "l16",
         "media": '{"type":"streamAudio","data":{"sampleRate":8000,"audioData":"${payload}"}}'})
    call = started(env, '{"uuid":"u-1"}')
    out = json.loads(env.media(call, AudioFrame(payload=ulaw_encode(PCM), codec="pcmu")))
    assert base64.b64decode(out["data"]["audioData"]) == ulaw_decode(ulaw_encode(PCM))


def test_non_mulaw_agent_audio_is_refused_naming_both_codecs(jambonz):
    call = started(jambonz, jambonz_start())
    with pytest.raises(ValueError, match="cannot send l16 audio to a bridge that plays l16"):
        jambonz.media(call, AudioFrame(payload=PCM, codec="l16"))


# --------------------------------------------------------------------------- events


def test_default_event_and_event_paths_in_order(jambonz):
    call = started(jambonz, jambonz_start())
    assert jambonz.parse(call, '{"event":"dtmf","dtmf":"#","duration":800}') == [
        DTMFFrame(digit="#")]
    assert jambonz.parse(call, '{"type":"mark","data":{"name":"n","event":"cleared"}}') == [
        MarkFrame(name="n")]
    with pytest.raises(CarrierProtocolError) as info:
        jambonz.parse(call, '{"type":"dance"}')
    assert info.value.field == "type" and "unknown event 'dance'" in str(info.value)
    with pytest.raises(CarrierProtocolError, match="second start event"):
        jambonz.parse(call, jambonz_start(callSid="cs-2"))


def test_without_default_event_a_message_without_event_names_every_field():
    spec = {**JAMBONZ}
    del spec["default_event"]
    env = compile_envelope("x", spec, JAMBONZ_OUT)
    with pytest.raises(CarrierProtocolError) as info:
        env.parse(CallContext(carrier="x"), '{"callSid":"c"}')
    assert info.value.field == "event" and "no 'event' or 'type' field" in str(info.value)


def test_capabilities_are_narrowed_to_the_envelope(asterisk):
    broad = Capabilities(text_frames_only=True)
    fs = compile_envelope("fs", {"default_event": "m", "events": {"m": "start"},
                                 "binary_media": {"codec": "l16"}, "start": {"stream_id": "uuid"}},
                          {"media_format": "binary"})
    caps = fs.capabilities(broad)
    assert (caps.marks, caps.clear, caps.dtmf, caps.text_frames_only) == (False, False, False,
                                                                          False)
    caps = asterisk.capabilities(broad)
    assert (caps.marks, caps.clear, caps.dtmf, caps.text_frames_only) == (True, True, True, False)
    assert caps.media_format.codec == "pcmu" and caps.media_format.sample_rate == 8000


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("spec", "response", "fragments"), [
    ({**JAMBONZ, "binary_media": {"codec": "l16", "sample_rate": 16000}}, JAMBONZ_OUT,
     ["binary_media.sample_rate", "(value 16000)", "never resamples"]),
    ({**JAMBONZ, "binary_media": {"codec": "opus"}}, JAMBONZ_OUT,
     ["binary_media.codec", "'opus'"]),
    ({**JAMBONZ, "default_event": "hello"}, JAMBONZ_OUT,
     ["default_event 'hello' is not a key of events"]),
    ({**JAMBONZ, "event": []}, JAMBONZ_OUT, ["event", "at least one field path"]),
    ({**JAMBONZ, "event": ["type", "a..b"]}, JAMBONZ_OUT, ["'a..b' is not a dotted field path"]),
    ({**JAMBONZ, "start_expect": {"mix type": "mono"}}, JAMBONZ_OUT,
     ["start_expect", "'mix type'"]),
    ({**JAMBONZ, "default_encoding": "pcmu"}, JAMBONZ_OUT,
     ["binary_media.codec/sample_rate or default_encoding, not both"]),
    ({k: v for k, v in JAMBONZ.items() if k != "binary_media"}, JAMBONZ_OUT,
     ["must map some wire event to 'media'", "binary_media"]),
    ({"events": {"s": "start", "m": "media"}, "start": {"stream_id": "id"},
      "default_encoding": "l16", "default_sample_rate": 16000, "media": {"payload": "p"}},
     {"media": '{"p":"${payload}"}'},
     ["default_sample_rate 16000", "never resamples"]),
    (JAMBONZ, {"media_format": "binary", "media": '{"a":"${payload}"}'},
     ["[response_envelope_spec]", "no template with media_format 'binary'"]),
    (JAMBONZ, {"media_format": "json"}, ["[response_envelope_spec]", "template is required"]),
    (JAMBONZ, {"media_format": "binary", "hangup": '{"bye":"${name}"}'},
     ["hangup template uses ${name}"]),
    (JAMBONZ, {"media_format": "carrier-pigeon"}, ["media_format", "'carrier-pigeon'"]),
])
def test_spec_errors_name_the_field_and_value(spec, response, fragments):
    with pytest.raises(ConfigError) as info:
        compile_envelope("x", spec, response, source="bridge.toml")
    text = str(info.value)
    assert "bridge.toml" in text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
