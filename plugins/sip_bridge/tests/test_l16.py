"""L16 presets (jambonz, FreeSWITCH) convert correctly, in place of the no-transcoding kit tests."""

from __future__ import annotations

import base64
import json
import random

import pytest

from telewire.frames import AudioFrame
from telewire.g711 import ulaw_decode, ulaw_encode
from telewire.registry import CarrierRegistry
from telewire.testing.conformance import STREAM_A
from telewire_sip_bridge.testing import (
    EnvelopeCarrier,
    FreeSwitchFixtures,
    JambonzFixtures,
    SipBridgeFixtures,
    l16_encoding_to,
)

_rng = random.Random(11)
PCM = b"".join(_rng.randrange(-32768, 32768).to_bytes(2, "little", signed=True)
               for _ in range(800))


@pytest.fixture(scope="module")
def registry() -> CarrierRegistry:
    return CarrierRegistry()


@pytest.fixture(params=[JambonzFixtures, FreeSwitchFixtures], ids=["jambonz", "freeswitch"])
def bridge(request, registry) -> tuple[SipBridgeFixtures, EnvelopeCarrier]:
    from telewire.envelope import load_envelope_file

    fixtures = request.param()
    envelope = load_envelope_file(fixtures.preset, registry.envelope_presets()[fixtures.preset])
    return fixtures, EnvelopeCarrier(registry.get("sip_bridge"), envelope)


def test_caller_l16_reaches_the_graph_as_its_mulaw_encoding(bridge):
    fixtures, carrier = bridge
    call = carrier.new_call()
    carrier.parse_inbound(call, fixtures.start_message(stream_id=STREAM_A, call_id="c",
                                                       custom_parameters={}))
    [frame] = carrier.parse_inbound(call, fixtures.media_message(ulaw_encode(PCM),
                                                                 stream_id=STREAM_A, sequence=1))
    [raw] = carrier.parse_inbound(call, PCM)
    assert isinstance(frame, AudioFrame) and (frame.codec, frame.sample_rate) == ("pcmu", 8000)
    assert frame.data == ulaw_encode(PCM) == raw.data


def test_agent_mulaw_reaches_the_bridge_as_l16(bridge):
    fixtures, carrier = bridge
    call = carrier.new_call()
    carrier.parse_inbound(call, fixtures.start_message(stream_id=STREAM_A, call_id="c",
                                                       custom_parameters={}))
    ulaw = ulaw_encode(PCM)
    out = carrier.wrap_audio(call, AudioFrame(payload=ulaw, codec="pcmu", track="outbound"))
    wire = fixtures.outbound_media_payload(out)
    pcm = base64.b64decode(wire) if isinstance(wire, str) else wire
    assert pcm == ulaw_decode(ulaw)
    assert len(pcm) == 2 * len(ulaw)


def test_every_mulaw_code_survives_the_l16_round_trip_through_the_fixtures():
    """The fixture's L16 for each code encodes back to that code, 0x7F included."""
    codes = bytes(range(256))
    assert ulaw_encode(l16_encoding_to(codes)) == codes


def test_freeswitch_stream_audio_message_shape(registry):
    from telewire.envelope import load_envelope_file

    fixtures = FreeSwitchFixtures()
    envelope = load_envelope_file(fixtures.preset, registry.envelope_presets()[fixtures.preset])
    carrier = EnvelopeCarrier(registry.get("sip_bridge"), envelope)
    call = carrier.new_call()
    carrier.parse_inbound(call, fixtures.start_message(stream_id="u-1", call_id="sip-1",
                                                       custom_parameters={"tenant": "acme"}))
    assert dict(call.custom_parameters) == {"tenant": "acme"}
    doc = json.loads(carrier.wrap_audio(call, AudioFrame(payload=b"\xff" * 160, codec="pcmu")))
    assert doc["type"] == "streamAudio"
    assert doc["data"] == {"audioDataType": "raw", "sampleRate": 8000,
                           "audioData": base64.b64encode(bytes(320)).decode()}
