"""X-Twilio-Signature checks, cross-checked against Twilio's own ``RequestValidator``."""

from __future__ import annotations

import hashlib
import random
import string
from pathlib import Path
from types import MappingProxyType

import pytest
from twilio.request_validator import RequestValidator

from telewire.carrier import HttpRequest
from telewire.errors import AuthenticationError, ConfigError
from telewire.registry import Carrier
from telewire_twilio.signature import compute_signature, url_variants

TOKEN = "12345678901234567890123456789012"
SHARED = "shared-key-secret-0123456789abcdef"
WEBHOOK_URL = "https://app.example.com/twilio/voice?tenant=acme&x=%2Fy"
WSS_URL = "wss://app.example.com/twilio/media"
FORM = (
    ("AccountSid", "AC" + "0" * 32),
    ("CallSid", "CA" + "1" * 32),
    ("From", "+15005550006"),
    ("To", "+15005550001"),
    ("CallerName", "Zoë & Co <ltd>"),
    ("Digits", ""),
)


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TELEWIRE_TWILIO_AUTH_TOKEN", TOKEN)
    return TOKEN


def request(url: str, signature: str | None, *, form: tuple[tuple[str, str], ...] = (),
            body: bytes = b"", extra: dict[str, str] | None = None) -> HttpRequest:
    headers = {k.lower(): v for k, v in (extra or {}).items()}
    if signature is not None:
        headers["x-twilio-signature"] = signature
    return HttpRequest(method="POST", url=url, headers=MappingProxyType(headers), form=form,
                       body=body)


# --------------------------------------------------------------------- agreement with Twilio's SDK


def test_webhook_signature_matches_twilio_sdk(twilio: Carrier, token: str) -> None:
    sdk = RequestValidator(token)
    expected = sdk.compute_signature(WEBHOOK_URL, dict(FORM))
    assert compute_signature(token, WEBHOOK_URL, FORM) == expected
    assert sdk.validate(WEBHOOK_URL, dict(FORM), expected)
    assert twilio.authenticate(request(WEBHOOK_URL, expected, form=FORM), "webhook") is True


def test_random_params_match_twilio_sdk() -> None:
    rng = random.Random(7)
    alphabet = string.printable + "éü☎東"
    for _ in range(200):
        params = {"".join(rng.choices(alphabet, k=rng.randint(1, 12))):
                  "".join(rng.choices(alphabet, k=rng.randint(0, 40)))
                  for _ in range(rng.randint(0, 8))}
        assert compute_signature(TOKEN, WEBHOOK_URL, params) == \
            RequestValidator(TOKEN).compute_signature(WEBHOOK_URL, params)


def test_repeated_params_match_twilio_sdk() -> None:
    class MultiDict(dict[str, str]):
        """What Flask hands Twilio's validator: one value per key, all values by ``getall``."""

        def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
            super().__init__(pairs)
            self.pairs = pairs

        def getall(self, name: str) -> list[str]:
            return [v for k, v in self.pairs if k == name]

    pairs = (("To", "+1"), ("Tag", "b"), ("Tag", "a"), ("Tag", "b"), ("From", "+2"))
    assert compute_signature(TOKEN, WEBHOOK_URL, pairs) == \
        RequestValidator(TOKEN).compute_signature(WEBHOOK_URL, MultiDict(pairs))


def test_websocket_signature_matches_twilio_sdk(twilio: Carrier, token: str) -> None:
    sdk = RequestValidator(token)
    signature = sdk.compute_signature(WSS_URL, {})
    assert sdk.validate(WSS_URL, {}, signature)
    assert twilio.authenticate(request(WSS_URL, signature), "websocket") is True


def test_websocket_seen_as_https_still_checks_the_wss_url(twilio: Carrier, token: str) -> None:
    signature = RequestValidator(token).compute_signature(WSS_URL, {})
    https_view = WSS_URL.replace("wss://", "https://")
    assert twilio.authenticate(request(https_view, signature), "websocket") is True


@pytest.mark.parametrize(("signed", "requested", "sdk_agrees"), [
    ("https://app.example.com:443/voice", "https://app.example.com/voice", True),
    ("https://app.example.com/voice", "https://app.example.com:443/voice", True),
    ("http://localhost:8080/voice", "http://localhost:8080/voice", True),
    # The SDK's add_port appends :80 to any non-https scheme, so it never tries wss://…:443.
    ("wss://app.example.com:443/media", "wss://app.example.com/media", False),
])
def test_default_port_with_or_without(twilio: Carrier, token: str, signed: str,
                                      requested: str, sdk_agrees: bool) -> None:
    signature = RequestValidator(token).compute_signature(signed, {})
    assert RequestValidator(token).validate(requested, {}, signature) is sdk_agrees
    purpose = "websocket" if signed.startswith("wss") else "webhook"
    assert twilio.authenticate(request(requested, signature), purpose) is True


def test_url_variants_keep_path_and_query() -> None:
    assert url_variants("https://u:p@h.example/a?b=1:2") == (
        "https://u:p@h.example/a?b=1:2", "https://u:p@h.example:443/a?b=1:2")
    assert url_variants("wss://[::1]:8443/m") == ("wss://[::1]:8443/m", "wss://[::1]/m")


def test_json_body_with_body_sha256(twilio: Carrier, token: str) -> None:
    body = '{"CallSid":"CA1","note":"ünïcode"}'
    digest = hashlib.sha256(body.encode()).hexdigest()
    url = f"https://app.example.com/voice?bodySHA256={digest}"
    signature = RequestValidator(token).compute_signature(url, {})
    assert RequestValidator(token).validate(url, body, signature)
    assert twilio.authenticate(request(url, signature, body=body.encode()), "webhook") is True
    with pytest.raises(AuthenticationError, match="bodySHA256") as info:
        twilio.authenticate(request(url, signature, body=body.encode() + b" "), "webhook")
    assert token not in str(info.value)


def test_shared_key_hmac_sha256(twilio: Carrier, token: str,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {"X-Twilio-Webhooks-Signature-Settings": "key=KS123,algorithm=HMAC_SHA256"}
    signature = RequestValidator(SHARED).compute_signature(WEBHOOK_URL, dict(FORM),
                                                          algorithm="HMAC_SHA256")
    signed = request(WEBHOOK_URL, signature, form=FORM, extra=settings)
    with pytest.raises(AuthenticationError, match="TELEWIRE_TWILIO_SHARED_KEY_SECRET"):
        twilio.authenticate(signed, "webhook")
    monkeypatch.setenv("TELEWIRE_TWILIO_SHARED_KEY_SECRET", SHARED)
    assert twilio.authenticate(signed, "webhook") is True
    bogus = {"X-Twilio-Webhooks-Signature-Settings": "key=KS123,algorithm=HMAC_MD5"}
    with pytest.raises(AuthenticationError, match="HMAC_MD5"):
        twilio.authenticate(request(WEBHOOK_URL, signature, form=FORM, extra=bogus), "webhook")


# --------------------------------------------------------------------- refusals


def test_wrong_signature_names_header_and_url_never_the_token(twilio: Carrier,
                                                              token: str) -> None:
    signature = RequestValidator(token).compute_signature(WEBHOOK_URL, dict(FORM))
    tampered = tuple((k, "+19999999999" if k == "From" else v) for k, v in FORM)
    with pytest.raises(AuthenticationError) as info:
        twilio.authenticate(request(WEBHOOK_URL, signature, form=tampered), "webhook")
    message = str(info.value)
    assert "X-Twilio-Signature" in message and WEBHOOK_URL in message
    assert token not in message and signature not in message


def test_signature_for_another_url_refused(twilio: Carrier, token: str) -> None:
    signature = RequestValidator(token).compute_signature("wss://evil.example/media", {})
    with pytest.raises(AuthenticationError, match="wss://app.example.com/twilio/media"):
        twilio.authenticate(request(WSS_URL, signature), "websocket")


def test_wrong_key_refused(twilio: Carrier, token: str) -> None:
    signature = RequestValidator("another-token").compute_signature(WSS_URL, {})
    assert not RequestValidator(token).validate(WSS_URL, {}, signature)
    with pytest.raises(AuthenticationError):
        twilio.authenticate(request(WSS_URL, signature), "websocket")


@pytest.mark.parametrize("signature", [None, "", "ünïcode-not-base64"])
def test_missing_or_garbage_header_refused(twilio: Carrier, token: str,
                                           signature: str | None) -> None:
    with pytest.raises(AuthenticationError, match="X-Twilio-Signature") as info:
        twilio.authenticate(request(WSS_URL, signature), "websocket")
    assert WSS_URL in str(info.value) and token not in str(info.value)


# --------------------------------------------------------------------- checking switched off


def test_token_unset_means_checking_off(twilio: Carrier) -> None:
    assert twilio.authenticate(request(WEBHOOK_URL, None, form=FORM), "webhook") is False
    assert twilio.authenticate(request(WSS_URL, "anything"), "websocket") is False
    warnings = twilio.warnings()
    assert len(warnings) == 1
    assert "OFF" in warnings[0] and "TELEWIRE_TWILIO_AUTH_TOKEN" in warnings[0]


def test_token_from_dotenv_file(twilio: Carrier, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"TELEWIRE_TWILIO_AUTH_TOKEN={TOKEN}\n", encoding="utf-8")
    signature = RequestValidator(TOKEN).compute_signature(WSS_URL, {})
    assert twilio.authenticate(request(WSS_URL, signature), "websocket") is True
    assert twilio.warnings() == []


def test_no_warning_ever_shows_the_token(twilio: Carrier, token: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert twilio.warnings() == []
    monkeypatch.delenv("TELEWIRE_TWILIO_AUTH_TOKEN")
    monkeypatch.setenv("TELEWIRE_TWILIO_SHARED_KEY_SECRET", SHARED)
    (warning,) = twilio.warnings()
    assert "AUTH_TOKEN is not set" in warning and SHARED not in warning


def test_invalid_setting_is_a_config_error(twilio: Carrier, token: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEWIRE_TWILIO_ACCOUNT_SID", "AC-not-a-sid")
    with pytest.raises(ConfigError, match="TELEWIRE_TWILIO_ACCOUNT_SID.*AC-not-a-sid"):
        twilio.warnings()
