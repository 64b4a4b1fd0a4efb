"""The answer document: BXML ``<StartGather>`` + ``<StartStream>`` + ``<StopStream>``, parsed back."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from telewire.carrier import HttpRequest, HttpResponse
from telewire.errors import ConfigError
from telewire.registry import Carrier, CarrierRegistry
from telewire_bandwidth.bxml import (
    MAX_PARAMETER_NAME_CHARS,
    MAX_PARAMETER_VALUE_CHARS,
    MAX_PARAMETERS,
    events_url_for,
)

STREAM_URL = "wss://app.example.com/media/bandwidth"
EVENTS_URL = "https://app.example.com/events/bandwidth"
WEBHOOK = HttpRequest(method="POST", url="https://app.example.com/answer/bandwidth",
                      body=b'{"eventType":"initiate","callId":"c-1"}')


@pytest.fixture
def bandwidth(carrier_registry: CarrierRegistry) -> Carrier:
    return carrier_registry.get("bandwidth")


def answer(bandwidth: Carrier, parameters: dict[str, str] | None = None,
           url: str = STREAM_URL) -> HttpResponse:
    response = bandwidth.answer_document(WEBHOOK, url, parameters or {})
    assert isinstance(response, HttpResponse)
    return response


def verbs(response: HttpResponse) -> list[ET.Element]:
    assert response.body.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(response.body)
    assert root.tag == "Response" and root.attrib == {}
    return list(root)


def test_structure_and_content_type(bandwidth: Carrier) -> None:
    response = answer(bandwidth, {"tenant": "acme", "token": "t-1"})
    assert (response.status, response.content_type) == (200, "application/xml")
    gather, stream, stop = verbs(response)
    assert (gather.tag, gather.attrib) == ("StartGather", {"dtmfUrl": EVENTS_URL,
                                                           "dtmfMethod": "POST"})
    assert list(gather) == []
    assert (stream.tag, stream.attrib) == ("StartStream", {
        "name": "telewire", "mode": "bidirectional", "tracks": "inbound",
        "destination": STREAM_URL})
    assert [(p.tag, p.attrib) for p in stream] == [
        ("StreamParam", {"name": "tenant", "value": "acme"}),
        ("StreamParam", {"name": "token", "value": "t-1"}),
    ]
    # The BXML waits on the stream's socket, and nothing follows: closing it ends the call.
    assert (stop.tag, stop.attrib) == ("StopStream", {"name": "telewire", "wait": "true"})


def test_no_parameters_and_webhook_fields_not_copied(bandwidth: Carrier) -> None:
    _, stream, _ = verbs(answer(bandwidth))
    assert list(stream) == [] and "c-1" not in answer(bandwidth).body


def test_events_url_follows_the_media_url() -> None:
    assert events_url_for("wss://h.example/media/bandwidth") == "https://h.example/events/bandwidth"
    assert events_url_for("wss://h.example:8443/voice/media/bandwidth") == \
        "https://h.example:8443/voice/events/bandwidth"
    assert events_url_for("ws://127.0.0.1:9/media/bandwidth") == "http://127.0.0.1:9/events/bandwidth"
    with pytest.raises(ConfigError, match="TELEWIRE_BANDWIDTH_EVENTS_URL"):
        events_url_for("wss://h.example/stream")


def test_settings_shape_the_document(bandwidth: Carrier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_STREAM_NAME", "agent-1")
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_EVENTS_URL", "https://hooks.example.com/dtmf?a=1&b=2")
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_STREAM_EVENT_URL", "https://hooks.example.com/stream")
    gather, stream, stop = verbs(answer(bandwidth))
    assert gather.get("dtmfUrl") == "https://hooks.example.com/dtmf?a=1&b=2"
    assert stream.get("name") == stop.get("name") == "agent-1"
    assert (stream.get("streamEventUrl"), stream.get("streamEventMethod")) == (
        "https://hooks.example.com/stream", "POST")


def test_dtmf_can_be_left_out(bandwidth: Carrier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_DTMF", "false")
    assert [v.tag for v in verbs(answer(bandwidth))] == ["StartStream", "StopStream"]


def test_credentials_go_on_the_callbacks(bandwidth: Carrier,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_USERNAME", "bw-user")
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_PASSWORD", 'p&ss<"w>rd')
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_STREAM_EVENT_URL", "https://hooks.example.com/stream")
    gather, stream, _ = verbs(answer(bandwidth))
    assert (gather.get("username"), gather.get("password")) == ("bw-user", 'p&ss<"w>rd')
    assert (stream.get("username"), stream.get("password")) == ("bw-user", 'p&ss<"w>rd')
    assert stream.get("destination") == STREAM_URL, "no credentials in the URL unless asked"


def test_websocket_credentials_in_destination(bandwidth: Carrier,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_USERNAME", "bw-user")
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_PASSWORD", "p@ss/w:rd")
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_WEBSOCKET_AUTH", "true")
    _, stream, _ = verbs(answer(bandwidth))
    assert stream.get("destination") == \
        "wss://bw-user:p%40ss%2Fw%3Ard@app.example.com/media/bandwidth"


def test_credentials_never_sent_to_plain_http(bandwidth: Carrier,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_USERNAME", "bw-user")
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_PASSWORD", "s3cret")
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_EVENTS_URL", "http://hooks.example.com/dtmf")
    with pytest.raises(ConfigError, match="not https://") as info:
        answer(bandwidth)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize("value", [
    'a&b<c>d"e\'f', "line one\nline two\ttab\r", "]]><!--x-->", "Zürich ☎ 東京", "",
])
def test_values_are_escaped_and_round_trip(bandwidth: Carrier, value: str) -> None:
    _, stream, _ = verbs(answer(bandwidth, {'odd "name" & <more>': value}))
    (param,) = stream
    assert param.attrib == {"name": 'odd "name" & <more>', "value": value}


def test_stream_url_is_escaped(bandwidth: Carrier) -> None:
    url = "wss://app.example.com/media/bandwidth?a=1&b=<2>"
    _, stream, _ = verbs(answer(bandwidth, url=url))
    assert stream.get("destination") == url


def test_parameter_limits(bandwidth: Carrier) -> None:
    fits = {f"p{i}": "v" * MAX_PARAMETER_VALUE_CHARS for i in range(MAX_PARAMETERS - 1)}
    fits["n" * MAX_PARAMETER_NAME_CHARS] = "v"
    _, stream, _ = verbs(answer(bandwidth, fits))
    assert len(stream) == MAX_PARAMETERS
    with pytest.raises(ConfigError, match="13 stream parameters; Bandwidth allows at most 12"):
        answer(bandwidth, {**fits, "one-more": "x"})
    secret = "s" * (MAX_PARAMETER_VALUE_CHARS + 1)
    with pytest.raises(ConfigError) as info:
        answer(bandwidth, {"token": secret})
    assert "'token'" in str(info.value) and "2048" in str(info.value)
    assert secret not in str(info.value)
    with pytest.raises(ConfigError, match="256"):
        answer(bandwidth, {"n" * (MAX_PARAMETER_NAME_CHARS + 1): "v"})


@pytest.mark.parametrize(("parameters", "needle"), [
    ({"": "x"}, "non-empty"),
    ({"n": "bell\x07"}, r"U\+0007 at index 4"),
    ({"n": 42}, "must be a string"),
])
def test_bad_parameters(bandwidth: Carrier, parameters: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        answer(bandwidth, parameters)


@pytest.mark.parametrize(("url", "needle"), [
    ("https://app.example.com/media/bandwidth", "wss://"),
    ("ws://app.example.com/media/bandwidth", "wss://"),
    ("/media/bandwidth", "wss://"),
    ("wss:///media/bandwidth", "no host"),
    ("wss://u:p@app.example.com/media/bandwidth", "credentials"),
    ("wss://app.example.com:99999/media/bandwidth", "not a valid URL"),
])
def test_bad_stream_urls(bandwidth: Carrier, url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        answer(bandwidth, url=url)


def test_plain_ws_allowed_for_loopback_test_peers(bandwidth: Carrier) -> None:
    url = "ws://127.0.0.1:8765/media/bandwidth"
    gather, stream, _ = verbs(answer(bandwidth, url=url))
    assert stream.get("destination") == url
    assert gather.get("dtmfUrl") == "http://127.0.0.1:8765/events/bandwidth"


@pytest.mark.parametrize(("name", "value", "needle"), [
    ("EVENTS_URL", "/relative", "TELEWIRE_BANDWIDTH_EVENTS_URL.*'/relative'"),
    ("STREAM_EVENT_URL", "ftp://x.example/", "TELEWIRE_BANDWIDTH_STREAM_EVENT_URL"),
    ("STREAM_NAME", "bad\x01name", "TELEWIRE_BANDWIDTH_STREAM_NAME"),
    ("DTMF", "perhaps", "TELEWIRE_BANDWIDTH_DTMF"),
])
def test_invalid_settings_are_config_errors(bandwidth: Carrier, monkeypatch: pytest.MonkeyPatch,
                                            name: str, value: str, needle: str) -> None:
    monkeypatch.setenv(f"TELEWIRE_BANDWIDTH_{name}", value)
    with pytest.raises(ConfigError, match=needle):
        answer(bandwidth)
