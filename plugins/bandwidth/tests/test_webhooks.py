"""DTMF webhooks parsed into frames, and HTTP Basic authentication of Bandwidth's requests."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import MappingProxyType

import pytest

from telewire.carrier import HttpRequest, WebhookEvent
from telewire.errors import AuthenticationError, CarrierProtocolError, ConfigError
from telewire.frames import DTMF_DIGITS, DTMFFrame
from telewire.registry import Carrier, CarrierRegistry
from telewire_bandwidth.auth import basic_authorization
from telewire_bandwidth.testing import dtmf_event

URL = "https://app.example.com/events/bandwidth"
CALL_ID = "c-95ac8d6e-1a31c52e-b38f-4198-93c1-51633ec68f8d"
USER, PASSWORD = "bw-callbacks", "s3cret-Pässword:with:colons"


@pytest.fixture
def bandwidth(carrier_registry: CarrierRegistry) -> Carrier:
    return carrier_registry.get("bandwidth")


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_USERNAME", USER)
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_PASSWORD", PASSWORD)
    return USER, PASSWORD


def post(body: object, *, authorization: str | None = None, raw: bytes | None = None,
         url: str = URL) -> HttpRequest:
    headers = {"content-type": "application/json"}
    if authorization is not None:
        headers["authorization"] = authorization
    data = raw if raw is not None else json.dumps(body).encode()
    return HttpRequest(method="POST", url=url, headers=MappingProxyType(headers), body=data)


# --------------------------------------------------------------------- parsing


@pytest.mark.parametrize("digit", sorted(DTMF_DIGITS))
def test_documented_dtmf_event(bandwidth: Carrier, digit: str) -> None:
    event = bandwidth.parse_webhook(post(dtmf_event(CALL_ID, digit)))
    assert event == WebhookEvent(call_id=CALL_ID, frames=(DTMFFrame(digit=digit),))
    assert event.response is None, "Bandwidth expects 204 No Content"


def test_several_digits_in_order(bandwidth: Carrier) -> None:
    event = bandwidth.parse_webhook(post(dtmf_event(CALL_ID, "12#")))
    assert event is not None
    assert [f.digit for f in event.frames] == ["1", "2", "#"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("event_type", ["mediaStreamStarted", "mediaStreamStopped",
                                        "mediaStreamRejected"])
def test_stream_events_acknowledged_without_frames(bandwidth: Carrier, event_type: str) -> None:
    body = {"eventType": event_type, "callId": CALL_ID, "mediaStream": {"name": "telewire"}}
    assert bandwidth.parse_webhook(post(body)) == WebhookEvent(call_id=CALL_ID)


MALFORMED = [
    ("empty body", None, b"", "body", "empty body"),
    ("not json", None, b"digit=5", "body", "not JSON"),
    ("not utf-8", None, b"\xff\xfe{", "body", "not JSON"),
    ("json array", [dtmf_event(CALL_ID, "5")], None, "body", "JSON list"),
    ("no eventType", {"callId": CALL_ID, "digit": "5"}, None, "eventType", "'eventType'"),
    ("other event", {**dtmf_event(CALL_ID, "5"), "eventType": "gather"}, None, "eventType",
     "'gather'"),
    ("no callId", {k: v for k, v in dtmf_event(CALL_ID, "5").items() if k != "callId"}, None,
     "callId", "missing field 'callId'"),
    ("empty callId", dtmf_event("", "5"), None, "callId", "'callId'"),
    ("callId number", {**dtmf_event(CALL_ID, "5"), "callId": 7}, None, "callId", "7"),
    ("no digit", {k: v for k, v in dtmf_event(CALL_ID, "5").items() if k != "digit"}, None,
     "digit", "missing field 'digit'"),
    ("empty digit", dtmf_event(CALL_ID, ""), None, "digit", "'digit'"),
    ("bad digit", dtmf_event(CALL_ID, "E"), None, "digit", "'E'"),
    ("digit number", {**dtmf_event(CALL_ID, "5"), "digit": 5}, None, "digit", "5"),
]


@pytest.mark.parametrize(("case", "body", "raw", "field", "needle"), MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_malformed_bodies_name_the_field(bandwidth: Carrier, case: str, body: object,
                                         raw: bytes | None, field: str, needle: str) -> None:
    with pytest.raises(CarrierProtocolError) as info:
        bandwidth.parse_webhook(post(body, raw=raw))
    err = info.value
    assert (err.carrier, err.field) == ("bandwidth", field), str(err)
    assert needle in str(err) and field in str(err)


# --------------------------------------------------------------------- Basic authentication


def test_right_credentials_accepted(bandwidth: Carrier, credentials: tuple[str, str]) -> None:
    request = post(dtmf_event(CALL_ID, "5"), authorization=basic_authorization(*credentials))
    assert bandwidth.authenticate(request, "webhook") is True


def test_header_is_rfc7617_basic() -> None:
    assert basic_authorization("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="


@pytest.mark.parametrize("charset", ["utf-8", "latin-1"])
def test_non_ascii_credentials_in_either_common_charset(
        bandwidth: Carrier, credentials: tuple[str, str], charset: str) -> None:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode(charset)).decode()
    assert bandwidth.authenticate(post({}, authorization=f"Basic {token}"), "webhook") is True


@pytest.mark.parametrize(("authorization", "needle"), [
    (None, "has no Authorization header"),
    ("", "has no Authorization header"),
    ("Bearer abc", "not HTTP Basic"),
    ("Basic", "not HTTP Basic"),
    ("Basic %%%not-base64", "not valid base64"),
    (basic_authorization(USER, "wrong-password"), "does not carry the configured credentials"),
    (basic_authorization("someone-else", PASSWORD), "does not carry the configured credentials"),
    (basic_authorization(USER, PASSWORD + "x"), "does not carry the configured credentials"),
    ("Basic " + base64.b64encode(USER.encode()).decode(), "does not carry"),
])
def test_refusals_name_header_and_url_never_the_secret(
        bandwidth: Carrier, credentials: tuple[str, str], authorization: str | None,
        needle: str) -> None:
    with pytest.raises(AuthenticationError) as info:
        bandwidth.authenticate(post({}, authorization=authorization), "webhook")
    message = str(info.value)
    assert needle in message and URL in message and "Authorization" in message
    assert PASSWORD not in message and USER not in message


def test_unset_means_checking_off_and_a_warning(bandwidth: Carrier) -> None:
    assert bandwidth.authenticate(post({}), "webhook") is False
    assert bandwidth.authenticate(post({}, authorization="Basic Zm9vOmJhcg=="), "webhook") is False
    off, socket = bandwidth.warnings()
    assert "validation is OFF" in off and "TELEWIRE_BANDWIDTH_USERNAME" in off
    assert "media WebSocket is not authenticated" in socket


def test_media_socket_not_checked_unless_asked(bandwidth: Carrier,
                                               credentials: tuple[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    wss = "wss://app.example.com/media/bandwidth"
    assert bandwidth.authenticate(post({}, url=wss), "websocket") is None
    (warning,) = bandwidth.warnings()
    assert "WEBSOCKET_AUTH" in warning
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_WEBSOCKET_AUTH", "true")
    assert bandwidth.warnings() == []
    with pytest.raises(AuthenticationError, match="websocket request to 'wss://"):
        bandwidth.authenticate(post({}, url=wss), "websocket")
    good = post({}, url=wss, authorization=basic_authorization(*credentials))
    assert bandwidth.authenticate(good, "websocket") is True


def test_credentials_from_dotenv_file(bandwidth: Carrier, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        f"TELEWIRE_BANDWIDTH_USERNAME={USER}\nTELEWIRE_BANDWIDTH_PASSWORD=from-dotenv\n",
        encoding="utf-8")
    good = post({}, authorization=basic_authorization(USER, "from-dotenv"))
    assert bandwidth.authenticate(good, "webhook") is True


@pytest.mark.parametrize(("env", "needle"), [
    ({"TELEWIRE_BANDWIDTH_USERNAME": USER}, "TELEWIRE_BANDWIDTH_PASSWORD is not set"),
    ({"TELEWIRE_BANDWIDTH_PASSWORD": PASSWORD}, "TELEWIRE_BANDWIDTH_USERNAME is not set"),
    ({"TELEWIRE_BANDWIDTH_WEBSOCKET_AUTH": "true"}, "WEBSOCKET_AUTH needs"),
    ({"TELEWIRE_BANDWIDTH_USERNAME": "a:b", "TELEWIRE_BANDWIDTH_PASSWORD": PASSWORD},
     "TELEWIRE_BANDWIDTH_USERNAME: .*':'"),
])
def test_invalid_credentials_settings(bandwidth: Carrier, monkeypatch: pytest.MonkeyPatch,
                                      env: dict[str, str], needle: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=needle) as info:
        bandwidth.authenticate(post({}), "webhook")
    assert PASSWORD not in str(info.value) and "a:b" not in str(info.value)


def test_settings_model_masks_secrets(bandwidth: Carrier, credentials: tuple[str, str]) -> None:
    model = bandwidth.settings_model()
    assert model is not None
    shown = repr(model())
    assert PASSWORD not in shown and USER not in shown
