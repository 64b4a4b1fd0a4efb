"""The answer document: TwiML ``<Connect><Stream>`` parsed back with ElementTree."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from telewire.carrier import HttpRequest, HttpResponse
from telewire.errors import ConfigError
from telewire.registry import Carrier
from telewire_twilio.twiml import MAX_PARAMETER_CHARS

STREAM_URL = "wss://app.example.com/twilio/media"
WEBHOOK = HttpRequest(method="POST", url="https://app.example.com/twilio/voice",
                      form=(("CallSid", "CA1"), ("From", "+15005550006")))


def answer(twilio: Carrier, parameters: dict[str, str] | None = None,
           url: str = STREAM_URL) -> HttpResponse:
    response = twilio.answer_document(WEBHOOK, url, parameters or {})
    assert isinstance(response, HttpResponse)
    return response


def stream_of(response: HttpResponse) -> ET.Element:
    assert response.body.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(response.body)
    assert root.tag == "Response"
    assert [c.tag for c in root] == ["Connect"], "nothing may follow <Connect>: close = hang up"
    (connect,) = root
    assert connect.attrib == {}
    (stream,) = connect
    assert stream.tag == "Stream"
    return stream


def test_structure_and_content_type(twilio: Carrier) -> None:
    response = answer(twilio, {"tenant": "acme", "token": "t-1"})
    assert (response.status, response.content_type) == (200, "application/xml")
    stream = stream_of(response)
    assert stream.attrib == {"url": STREAM_URL}
    assert [(p.tag, p.attrib) for p in stream] == [
        ("Parameter", {"name": "tenant", "value": "acme"}),
        ("Parameter", {"name": "token", "value": "t-1"}),
    ]


def test_no_parameters_and_webhook_fields_not_copied(twilio: Carrier) -> None:
    stream = stream_of(answer(twilio))
    assert list(stream) == [] and "CA1" not in ET.tostring(stream, encoding="unicode")


def test_status_callback_from_settings(twilio: Carrier, monkeypatch: pytest.MonkeyPatch) -> None:
    callback = "https://app.example.com/stream-status?a=1&b=2"
    monkeypatch.setenv("TELEWIRE_TWILIO_STATUS_CALLBACK_URL", callback)
    assert stream_of(answer(twilio)).attrib == {"url": STREAM_URL, "statusCallback": callback}


def test_invalid_status_callback_is_a_config_error(twilio: Carrier,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEWIRE_TWILIO_STATUS_CALLBACK_URL", "/relative")
    with pytest.raises(ConfigError, match="TELEWIRE_TWILIO_STATUS_CALLBACK_URL.*'/relative'"):
        answer(twilio)


@pytest.mark.parametrize("value", [
    'a&b<c>d"e\'f', "line one\nline two\ttab\r", "]]><!--x-->", "Zürich ☎ 東京", "",
])
def test_values_are_escaped_and_round_trip(twilio: Carrier, value: str) -> None:
    response = answer(twilio, {'odd "name" & <more>': value})
    (param,) = stream_of(response)
    assert param.attrib == {"name": 'odd "name" & <more>', "value": value}


def test_stream_url_is_escaped(twilio: Carrier) -> None:
    url = "wss://app.example.com/media/a&b"
    assert stream_of(answer(twilio, url=url)).get("url") == url


def test_parameter_limit(twilio: Carrier) -> None:
    name = "token"
    fits = "v" * (MAX_PARAMETER_CHARS - 1 - len(name))
    (param,) = stream_of(answer(twilio, {name: fits}))
    assert param.get("value") == fits
    secret = "s" * (MAX_PARAMETER_CHARS - len(name))
    with pytest.raises(ConfigError) as info:
        answer(twilio, {"tenant": "acme", name: secret})
    message = str(info.value)
    assert "'token'" in message and "500" in message and secret not in message


@pytest.mark.parametrize(("parameters", "needle"), [
    ({"": "x"}, "non-empty"),
    ({"n": "bell\x07"}, r"U\+0007 at index 4"),
    ({"n": 42}, "must be a string"),
])
def test_bad_parameters(twilio: Carrier, parameters: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        answer(twilio, parameters)


@pytest.mark.parametrize(("url", "needle"), [
    ("wss://app.example.com/media?token=abc", "query string"),
    ("wss://app.example.com/media#frag", "query string"),
    ("https://app.example.com/media", "wss://"),
    ("ws://app.example.com/media", "wss://"),
    ("/twilio/media", "wss://"),
    ("wss:///media", "no host"),
])
def test_bad_stream_urls(twilio: Carrier, url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        answer(twilio, url=url)
    assert repr(url) in str(info.value)


def test_plain_ws_allowed_for_loopback_test_peers(twilio: Carrier) -> None:
    url = "ws://127.0.0.1:8765/twilio/media"
    assert stream_of(answer(twilio, url=url)).get("url") == url


def test_dial_numbers_and_sip_uris_and_refuse_anything_else() -> None:
    from telewire.errors import ConfigError
    from telewire_twilio.twiml import dial

    assert dial("+15551234567").endswith("<Dial><Number>+15551234567</Number></Dial></Response>")
    assert "<Sip>sip:agent@pbx.example.com</Sip>" in dial("sip:agent@pbx.example.com")
    for bad in ("5551234567", "+0123", "tel:+1555", "sip:", "<Number>1</Number>"):
        with pytest.raises(ConfigError, match="cannot dial"):
            dial(bad)
