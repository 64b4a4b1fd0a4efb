"""The __carrier__ carrier's control hooks: the answer document, signatures and start-up warnings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import MappingProxyType

import pytest

from telewire.carrier import HttpRequest, HttpResponse
from telewire.errors import AuthenticationError, ConfigError
from telewire.registry import Carrier, CarrierRegistry
from telewire___carrier__.settings import ENV_PREFIX
from telewire___carrier__.signature import SIGNATURE_HEADER, compute_signature

SECRET = "s3cret-for-tests"
STREAM_URL = "wss://app.example.com/media/__carrier__"
WEBHOOK = HttpRequest(method="POST", url="https://app.example.com/answer/__carrier__",
                      body=b'{"call_id":"c-1"}')


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No settings from the outer environment or a stray .env file."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture
def carrier(carrier_registry: CarrierRegistry) -> Carrier:
    return carrier_registry.get("__carrier__")


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(f"{ENV_PREFIX}SIGNING_SECRET", SECRET)
    return SECRET


def signed(request: HttpRequest, signature: str | None) -> HttpRequest:
    headers = {} if signature is None else {SIGNATURE_HEADER.lower(): signature}
    return HttpRequest(method=request.method, url=request.url, body=request.body,
                       headers=MappingProxyType(headers))


# --------------------------------------------------------------------- answer document


def test_answer_document(carrier: Carrier) -> None:
    response = carrier.answer_document(WEBHOOK, STREAM_URL, {"tenant": "acme", "q": 'a"b<c'})
    assert isinstance(response, HttpResponse)
    assert (response.status, response.content_type) == (200, "application/json")
    assert json.loads(response.body) == {
        "stream": {"url": STREAM_URL, "parameters": {"tenant": "acme", "q": 'a"b<c'}}}


@pytest.mark.parametrize(("url", "needle"), [
    ("https://app.example.com/media", "ws:// or wss://"),
    ("wss:///media", "ws:// or wss://"),
    ("wss://app.example.com/media?token=x", "no query string"),
])
def test_bad_stream_url_is_a_config_error(carrier: Carrier, url: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        carrier.answer_document(WEBHOOK, url, {})
    assert repr(url) in str(info.value)


def test_bad_parameter_is_a_config_error(carrier: Carrier) -> None:
    with pytest.raises(ConfigError, match="'n' must be a string, not int"):
        carrier.answer_document(WEBHOOK, STREAM_URL, {"n": 42})  # type: ignore[dict-item]


# --------------------------------------------------------------------- signatures


@pytest.mark.parametrize("purpose", ["webhook", "websocket"])
def test_valid_signature(carrier: Carrier, secret: str, purpose: str) -> None:
    request = WEBHOOK if purpose == "webhook" else HttpRequest(method="GET", url=STREAM_URL)
    signature = compute_signature(secret, request.url, request.body)
    assert carrier.authenticate(signed(request, signature), purpose) is True  # type: ignore[arg-type]


def test_tampered_body_refused_naming_header_and_url(carrier: Carrier, secret: str) -> None:
    signature = compute_signature(secret, WEBHOOK.url, WEBHOOK.body)
    tampered = HttpRequest(method="POST", url=WEBHOOK.url, body=b'{"call_id":"c-2"}',
                           headers=MappingProxyType({SIGNATURE_HEADER.lower(): signature}))
    with pytest.raises(AuthenticationError) as info:
        carrier.authenticate(tampered, "webhook")
    message = str(info.value)
    assert SIGNATURE_HEADER in message and WEBHOOK.url in message
    assert secret not in message and signature not in message


def test_missing_signature_refused(carrier: Carrier, secret: str) -> None:
    with pytest.raises(AuthenticationError, match=f"missing {SIGNATURE_HEADER}"):
        carrier.authenticate(signed(WEBHOOK, None), "webhook")


def test_no_secret_means_checking_off_with_a_warning(carrier: Carrier) -> None:
    assert carrier.authenticate(signed(WEBHOOK, None), "webhook") is False
    (warning,) = carrier.warnings()
    assert "OFF" in warning and f"{ENV_PREFIX}SIGNING_SECRET" in warning


def test_no_warning_with_a_secret(carrier: Carrier, secret: str) -> None:
    assert carrier.warnings() == []
    settings = carrier.settings_model()
    assert settings is not None and "signing_secret" in settings.model_fields
