"""Twilio carrier settings: a pydantic-settings model read from TELEWIRE_TWILIO_* and ``.env``.

Depends on pydantic-settings and ``telewire.errors``; read when a webhook needs it, never per frame.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from telewire import CarrierSettings, read_settings

__all__ = ["ENV_PREFIX", "TwilioSettings", "load_settings"]

ENV_PREFIX = "TELEWIRE_TWILIO_"
_ACCOUNT_SID_RE = re.compile(r"AC[0-9a-fA-F]{32}")


class TwilioSettings(CarrierSettings):
    """Settings of the ``twilio`` carrier.

    Attributes:
        auth_token: the account's primary Auth Token; the key of ``X-Twilio-Signature``. Unset
            means signature validation is off (and the server warns at start-up).
        account_sid: the account SID (``AC`` + 32 hex digits), for REST calls.
        shared_key_secret: the secret of a webhook SharedKey, for webhooks that a Twilio Webhook
            Rule signs with it (they carry ``X-Twilio-Webhooks-Signature-Settings``).
        api_base_url: the REST API's base URL (transfers); change it only for a test double.
        status_callback_url: absolute http(s) URL put in ``<Stream statusCallback>``; Twilio
            posts stream-started / stream-stopped / stream-error events there.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    auth_token: SecretStr | None = None
    account_sid: str | None = None
    shared_key_secret: SecretStr | None = None
    status_callback_url: str | None = None
    api_base_url: str = "https://api.twilio.com"

    @field_validator("account_sid")
    @classmethod
    def _account_sid(cls, value: str | None) -> str | None:
        if value is not None and not _ACCOUNT_SID_RE.fullmatch(value):
            raise ValueError("must be 'AC' followed by 32 hexadecimal digits")
        return value

    @field_validator("status_callback_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an absolute http:// or https:// URL")
        return value


def load_settings(**overrides: Any) -> TwilioSettings:
    """Read the settings now (environment, then ``.env``), with ``overrides`` on top.

    Raises:
        ConfigError: a setting is invalid; the message names its environment variable and, for
            settings that are not secrets, the value.
    """
    return read_settings(TwilioSettings, title="Twilio carrier settings", **overrides)
