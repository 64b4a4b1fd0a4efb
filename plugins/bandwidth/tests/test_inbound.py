"""Bandwidth's media-socket messages beyond the conformance kit: track shapes, tracks, counters."""

from __future__ import annotations

import json

import pytest

from telewire.carrier import CallContext
from telewire.errors import CarrierProtocolError
from telewire.frames import PCMU_8K, AudioFrame, EndFrame, StartFrame
from telewire.registry import Carrier, CarrierRegistry
from telewire_bandwidth.testing import media_message, start_message, stop_message

STREAM, CALL = "b2c3d4-stream", "c-15ac29a2-1331029f-a45f-4f04-b54a-1c5da8ce1cc0"


@pytest.fixture
def bandwidth(carrier_registry: CarrierRegistry) -> Carrier:
    return carrier_registry.get("bandwidth")


def start(bandwidth: Carrier, **kwargs: object) -> tuple[CallContext, StartFrame]:
    call = bandwidth.new_call()
    (frame,) = bandwidth.parse_inbound(call, start_message(stream_id=STREAM, call_id=CALL,
                                                           **kwargs))  # type: ignore[arg-type]
    assert isinstance(frame, StartFrame)
    return call, frame


def test_documented_start(bandwidth: Carrier) -> None:
    call, frame = start(bandwidth, stream_params={"tenant": "acme"})
    assert (frame.carrier, frame.stream_id, frame.call_id, frame.account_id) == (
        "bandwidth", STREAM, CALL, "9900000")
    assert dict(frame.custom_parameters) == {"tenant": "acme"}
    assert frame.media_format == PCMU_8K and frame.tracks == ("inbound",)
    assert (call.call_id, call.stream_id) == (CALL, STREAM), "webhooks route by this call id"


@pytest.mark.parametrize(("tracks", "names"), [
    (["inbound"], ("inbound",)),  # the shape Bandwidth's own plugin tests use
    ([{"name": "inbound"}], ("inbound",)),
    ([{"name": "inbound", "mediaFormat": {"encoding": "audio/pcmu", "sampleRate": "8000"}},
      {"name": "outbound", "mediaFormat": {"encoding": "AUDIO/PCMU", "sampleRate": 8000.0}}],
     ("inbound", "outbound")),
    ([{"mediaFormat": {"encoding": "audio/PCMU"}}], ("inbound",)),
    ([], ("inbound",)),
])
def test_track_shapes_tolerated(bandwidth: Carrier, tracks: list[object],
                                names: tuple[str, ...]) -> None:
    _, frame = start(bandwidth, tracks=tracks)
    assert frame.tracks == names and frame.media_format == PCMU_8K


def test_start_without_tracks(bandwidth: Carrier) -> None:
    message = json.dumps({"eventType": "start", "metadata": {"callId": CALL, "streamId": STREAM}})
    (frame,) = bandwidth.parse_inbound(bandwidth.new_call(), message)
    assert isinstance(frame, StartFrame) and frame.tracks == ("inbound",)


def test_refused_start_leaves_the_call_unstarted(bandwidth: Carrier) -> None:
    call = bandwidth.new_call()
    bad = start_message(stream_id=STREAM, call_id=CALL, tracks=[
        {"name": "inbound", "mediaFormat": {"encoding": "audio/L16", "sampleRate": 16000}}])
    with pytest.raises(CarrierProtocolError) as info:
        bandwidth.parse_inbound(call, bad)
    assert info.value.fatal and "audio/L16" in str(info.value)
    assert not call.started and call.call_id == call.stream_id == ""


def test_outbound_track_is_dropped(bandwidth: Carrier) -> None:
    call, _ = start(bandwidth, tracks=["inbound", "outbound"])
    assert bandwidth.parse_inbound(call, media_message(b"\x01" * 160, track="outbound")) == ()
    (frame,) = bandwidth.parse_inbound(call, media_message(b"\x02" * 160, track="inbound"))
    assert isinstance(frame, AudioFrame) and frame.data == b"\x02" * 160


@pytest.mark.parametrize("extra", [{}, {"sequenceNumber": "12"}, {"sequenceNumber": 12},
                                   {"sequenceNumber": "not-a-number"}, {"timestamp": "x"}])
def test_counters_are_not_required_nor_trusted(bandwidth: Carrier, extra: dict[str, object]) -> None:
    call, _ = start(bandwidth)
    message = json.dumps({"eventType": "media", "track": "inbound", "payload": "/w==", **extra})
    (frame,) = bandwidth.parse_inbound(call, message)
    assert isinstance(frame, AudioFrame) and frame.payload == "/w==" and frame.sequence is None


def test_media_without_track_is_the_caller(bandwidth: Carrier) -> None:
    call, _ = start(bandwidth)
    (frame,) = bandwidth.parse_inbound(call, '{"eventType":"media","payload":"AAAA"}')
    assert isinstance(frame, AudioFrame) and frame.track == "inbound"


def test_stop_ends_the_call(bandwidth: Carrier) -> None:
    call, _ = start(bandwidth)
    (frame,) = bandwidth.parse_inbound(call, stop_message(stream_id=STREAM, call_id=CALL))
    assert isinstance(frame, EndFrame) and frame.reason == "carrier_stop" and call.stopped


def test_outbound_messages(bandwidth: Carrier) -> None:
    call, _ = start(bandwidth)
    payload = "AAECAwQ="
    out = bandwidth.wrap_audio(call, AudioFrame(payload=payload, track="outbound"))
    assert json.loads(out) == {"eventType": "playAudio",
                               "media": {"contentType": "audio/pcmu", "payload": payload}}
    assert payload in out, "the payload text is passed through, not re-encoded"
    assert json.loads(bandwidth.build_clear(call) or "") == {"eventType": "clear"}
    assert bandwidth.build_mark(call, "m-1") is None
    with pytest.raises(Exception, match="pcmu at 8000 Hz"):
        bandwidth.wrap_audio(call, AudioFrame(payload=payload, codec="l16", sample_rate=24000))


def test_envelope_preset_offered(carrier_registry: CarrierRegistry) -> None:
    presets = carrier_registry.envelope_presets()
    assert str(presets["bandwidth"]).endswith("telewire_bandwidth/envelope.toml")
