"""envelope_spec: validation with precise messages, compiled parsing, templates (no event loop)."""

from __future__ import annotations

import base64

import pytest

from telewire.carrier import CallContext
from telewire.envelope import compile_envelope, load_envelope_file
from telewire.errors import CarrierProtocolError, ConfigError
from telewire.frames import AudioFrame, DTMFFrame, EndFrame, MarkFrame, StartFrame

START = ('{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"accountSid":"AC1",'
         '"streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"customParameters":{"token":"t"},'
         '"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}')


def media(payload: str, sid: str = "MZ1") -> str:
    return ('{"event":"media","sequenceNumber":"3","streamSid":"' + sid + '","media":{"track":'
            '"inbound","chunk":"2","timestamp":"40","payload":"' + payload + '"}}')


@pytest.fixture
def started(twilio_envelope):
    call = CallContext(carrier="twilio")
    twilio_envelope.parse(call, START)
    return call


def test_twilio_start_is_parsed_into_call_identity(twilio_envelope):
    call = CallContext(carrier="twilio")
    assert twilio_envelope.parse(call, '{"event":"connected","protocol":"Call","version":"1.0.0"}') == []
    [frame] = twilio_envelope.parse(call, START)
    assert isinstance(frame, StartFrame)
    assert (frame.stream_id, frame.call_id, frame.account_id) == ("MZ1", "CA1", "AC1")
    assert dict(frame.custom_parameters) == {"token": "t"}
    assert frame.media_format.codec == "pcmu" and frame.media_format.sample_rate == 8000
    assert call.started and call.stream_id == "MZ1"


def test_media_payload_passes_through_untouched(twilio_envelope, started):
    payload = base64.b64encode(bytes(range(256))).decode()
    [frame] = twilio_envelope.parse(started, media(payload))
    assert isinstance(frame, AudioFrame)
    assert frame.payload == payload and frame.timestamp_ms == 40 and frame.sequence == 2
    out = twilio_envelope.media(started, frame)
    assert out == '{"event":"media","streamSid":"MZ1","media":{"payload":"' + payload + '"}}'


def test_dtmf_mark_stop(twilio_envelope, started):
    [d] = twilio_envelope.parse(started, '{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5",'
                                         '"dtmf":{"track":"inbound_track","digit":"#"}}')
    assert d == DTMFFrame(digit="#")
    [m] = twilio_envelope.parse(started, '{"event":"mark","streamSid":"MZ1","mark":{"name":"m-1"}}')
    assert m == MarkFrame(name="m-1")
    [s] = twilio_envelope.parse(started, '{"event":"stop","streamSid":"MZ1","stop":{}}')
    assert isinstance(s, EndFrame) and s.reason == "carrier_stop"


@pytest.mark.parametrize("message, fragment", [
    ("not json", "not JSON"),
    ("[1, 2]", "JSON list, not an object"),
    ('{"streamSid":"MZ1"}', "no 'event' field"),
    ('{"event":"bogus"}', "unknown event 'bogus'"),
    ('{"event":"media","streamSid":"MZ1","media":{}}', "missing field 'media.payload'"),
    ('{"event":"media","streamSid":"MZ1","media":{"payload":5}}', "must be a base64 string, not int"),
    ('{"event":"media","streamSid":"MZ1","media":{"payload":"!!!!"}}', "'media.payload' is not valid base64"),
    ('{"event":"media","streamSid":"MZ1","media":{"payload":"AAA"}}', "is not valid base64"),
    ('{"event":"media","streamSid":"MZ1","media":{"payload":"AAAA","timestamp":"x"}}', "'media.timestamp' must be a whole number"),
    ('{"event":"media","streamSid":"MZ9","media":{"payload":"AAAA"}}', "stream id 'MZ9' does not match"),
    ('{"event":"dtmf","streamSid":"MZ1","dtmf":{"digit":"E"}}', "DTMF digit"),
    ('{"event":"dtmf","streamSid":"MZ1","dtmf":{}}', "missing field 'dtmf.digit'"),
    ('{"event":"mark","streamSid":"MZ1","mark":{"name":""}}', "mark name must be a non-empty string"),
])
def test_malformed_messages_are_rejected_precisely(twilio_envelope, started, message, fragment):
    with pytest.raises(CarrierProtocolError, match="twilio: ") as info:
        twilio_envelope.parse(started, message)
    assert fragment in str(info.value)
    assert not info.value.fatal


def test_second_start_for_another_stream_is_fatal(twilio_envelope, started):
    with pytest.raises(CarrierProtocolError, match="second start event .stream 'MZ2'.") as info:
        twilio_envelope.parse(started, START.replace("MZ1", "MZ2"))
    assert info.value.fatal
    with pytest.raises(CarrierProtocolError, match="second start event") as info:
        twilio_envelope.parse(started, START)
    assert not info.value.fatal
    assert started.stream_id == "MZ1"


def test_media_before_start_is_an_error(twilio_envelope):
    call = CallContext(carrier="twilio")
    with pytest.raises(CarrierProtocolError, match="before the start event"):
        twilio_envelope.parse(call, media("AAAA"))


def test_start_without_stream_id_is_fatal(twilio_envelope):
    with pytest.raises(CarrierProtocolError, match="start.streamSid") as info:
        twilio_envelope.parse(CallContext(carrier="twilio"), '{"event":"start","start":{}}')
    assert info.value.fatal


def test_unsupported_encoding_is_fatal(twilio_envelope):
    with pytest.raises(CarrierProtocolError, match="unsupported encoding 'audio/opus'") as info:
        twilio_envelope.parse(CallContext(carrier="twilio"), START.replace("audio/x-mulaw", "audio/opus"))
    assert info.value.fatal


def test_outbound_values_are_json_escaped(twilio_envelope):
    call = CallContext(carrier="twilio", stream_id='MZ"\\x', started=True)
    import json

    assert json.loads(twilio_envelope.mark(call, 'a"b'))["mark"]["name"] == 'a"b'
    assert json.loads(twilio_envelope.clear(call))["streamSid"] == 'MZ"\\x'
    assert json.loads(twilio_envelope.media(call, AudioFrame(payload="AAAA")))["streamSid"] == 'MZ"\\x'


def test_calls_do_not_share_outbound_state(twilio_envelope):
    a = CallContext(carrier="twilio", stream_id="MZa", started=True)
    b = CallContext(carrier="twilio", stream_id="MZb", started=True)
    f = AudioFrame(payload="AAAA")
    assert '"MZa"' in twilio_envelope.media(a, f) and '"MZb"' in twilio_envelope.media(b, f)
    assert '"MZa"' in twilio_envelope.media(a, f)


BASE = {
    "events": {"start": "start", "media": "media"},
    "start": {"stream_id": "sid"},
    "media": {"payload": "audio"},
}


def test_spec_errors_name_the_field_and_value():
    with pytest.raises(ConfigError) as info:
        compile_envelope("x", {**BASE, "events": {"start": "start", "media": "sound"}},
                         {"media": '{"a":"${payload}"}'}, source="bridge.toml")
    text = str(info.value)
    assert "bridge.toml [envelope_spec]" in text and "events.media" in text and "'sound'" in text
    with pytest.raises(ConfigError, match="not a dotted field path"):
        compile_envelope("x", {**BASE, "media": {"payload": "a..b"}}, {"media": '{"a":"${payload}"}'})
    with pytest.raises(ConfigError, match="must map some wire event to 'media'"):
        compile_envelope("x", {**BASE, "events": {"start": "start"}}, {"media": '{"a":"${payload}"}'})
    with pytest.raises(ConfigError, match="no \\[dtmf\\] table"):
        compile_envelope("x", {**BASE, "events": {**BASE["events"], "k": "dtmf"}}, {"media": '{"a":"${payload}"}'})
    with pytest.raises(ConfigError, match="colour: Extra inputs are not permitted"):
        compile_envelope("x", {**BASE, "colour": "red"}, {"media": '{"a":"${payload}"}'})


@pytest.mark.parametrize("template, fragment", [
    ('{"a":"${payload}"', "not valid JSON"),
    ('{"a":"${nope}"}', "uses ${nope}"),
    ('{"a":${payload}}', "not valid JSON"),
    ('{"a":"x${payload}"}', "must be a whole JSON string value"),
])
def test_template_errors(template, fragment):
    with pytest.raises(ConfigError) as info:
        compile_envelope("x", BASE, {"media": template}, source="b.toml")
    assert fragment in str(info.value) and "[response_envelope_spec]" in str(info.value)


def test_envelope_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_envelope_file("x", tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[envelope_spec\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_envelope_file("x", bad)
    bad.write_text("[envelope_spec]\nevent='e'\n")
    with pytest.raises(ConfigError, match="missing table \\[response_envelope_spec\\]"):
        load_envelope_file("x", bad)


def test_minimal_custom_envelope_round_trip():
    env = compile_envelope(
        "bridge",
        {"event": "type", "events": {"hello": "start", "audio": "media", "bye": "stop"},
         "start": {"stream_id": "id", "call_id": "call"}, "media": {"payload": "data.b64"}},
        {"media": '{"type":"audio","id":"${stream_id}","data":{"b64":"${payload}"}}',
         "clear": '{"type":"flush","id":"${stream_id}"}'},
    )
    call = CallContext(carrier="bridge")
    [start] = env.parse(call, '{"type":"hello","id":"s1","call":"c1"}')
    assert start.stream_id == "s1" and start.call_id == "c1"
    [audio] = env.parse(call, '{"type":"audio","data":{"b64":"AAEC"}}')
    assert env.media(call, audio) == '{"type":"audio","id":"s1","data":{"b64":"AAEC"}}'
    assert env.clear(call) == '{"type":"flush","id":"s1"}'
    assert env.mark(call, "m") is None and not env.has_marks
