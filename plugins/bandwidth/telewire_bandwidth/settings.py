"""Bandwidth carrier settings: a pydantic-settings model read from TELEWIRE_BANDWIDTH_* and ``.env``.

Depends on pydantic-settings and ``telewire.errors``; read when a webhook needs it, never per frame.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from telewire import CarrierSettings, read_settings

__all__ = ["ENV_PREFIX", "BandwidthSettings", "load_settings"]

ENV_PREFIX = "TELEWIRE_BANDWIDTH_"
# Characters XML 1.0 cannot carry at all, not even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _http_url(value: str | None) -> str | None:
    if value is not None:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        if _NOT_XML.search(value):
            raise ValueError("contains a character XML cannot carry")
    return value


class BandwidthSettings(CarrierSettings):
    """Settings of the ``bandwidth`` carrier.

    Attributes:
        username: the user name Bandwidth sends with HTTP Basic auth on its callbacks (the
            application's callback credentials, and the ``username`` attribute this plugin puts
            on ``<StartGather>``/``<StartStream>``). Set together with ``password``; both unset
            means webhook authentication is off (and the server warns at start-up).
        password: the password of those Basic credentials.
        stream_name: the ``<StartStream name>`` (unique per call) that ``<StopStream>`` waits on.
        events_url: absolute http(s) URL for ``<StartGather dtmfUrl>``. Default: this server's
            ``/events/bandwidth``, derived from the media socket's URL.
        stream_event_url: absolute http(s) URL for ``<StartStream streamEventUrl>`` (Bandwidth's
            mediaStreamStarted/Stopped/Rejected webhooks); unset sends none.
        dtmf: put ``<StartGather>`` in the answer document so keypresses reach the call by
            webhook. ``False`` leaves DTMF out entirely.
        websocket_auth: require the Basic credentials on the media WebSocket upgrade too, and
            put them in the ``<StartStream destination>`` URL as ``wss://user:password@host/…``.
            Bandwidth documents no authentication for the media socket, so whether it sends
            user-info credentials from the destination URL is unverified: enable this only after
            checking it on a live call (or when a proxy in front adds the header).
        account_id: the Bandwidth account id, for placing calls (``telewire dial``).
        application_id: the Voice application placing calls (``applicationId``).
        api_username / api_password: the API credentials of the create-call request (HTTP
            Basic). Set together.
        api_base_url: the Voice API's base URL; change it only for a test double.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    username: SecretStr | None = None
    password: SecretStr | None = None
    stream_name: str = "telewire"
    events_url: str | None = None
    stream_event_url: str | None = None
    dtmf: bool = True
    websocket_auth: bool = False
    account_id: str | None = None
    application_id: str | None = None
    api_username: SecretStr | None = None
    api_password: SecretStr | None = None
    api_base_url: str = "https://voice.bandwidth.com"

    @field_validator("username")
    @classmethod
    def _username(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and ":" in value.get_secret_value():
            raise ValueError("must not contain ':' (HTTP Basic credentials cannot carry it)")
        return value

    @field_validator("stream_name", mode="before")
    @classmethod
    def _stream_name(cls, value: Any) -> Any:
        if value is None:
            return "telewire"
        if isinstance(value, str) and _NOT_XML.search(value):
            raise ValueError("contains a character XML cannot carry")
        return value

    @field_validator("events_url", "stream_event_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return _http_url(value)

    @field_validator("account_id", "application_id")
    @classmethod
    def _ids(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9._\-]{1,64}", value):
            raise ValueError("must be 1 to 64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("api_base_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _credentials_in_pairs(self) -> "BandwidthSettings":
        if (self.api_username is None) != (self.api_password is None):
            missing = "api_password" if self.api_password is None else "api_username"
            raise ValueError(f"{ENV_PREFIX}API_USERNAME and {ENV_PREFIX}API_PASSWORD must be "
                             f"set together ({ENV_PREFIX}{missing.upper()} is not set)")
        if (self.username is None) != (self.password is None):
            missing = "password" if self.password is None else "username"
            raise ValueError(f"{ENV_PREFIX}USERNAME and {ENV_PREFIX}PASSWORD must be set "
                             f"together ({ENV_PREFIX}{missing.upper()} is not set)")
        if self.websocket_auth and self.username is None:
            raise ValueError(f"{ENV_PREFIX}WEBSOCKET_AUTH needs {ENV_PREFIX}USERNAME and "
                             f"{ENV_PREFIX}PASSWORD")
        return self

    @property
    def credentials(self) -> tuple[str, str] | None:
        """``(username, password)`` when both are set, else ``None``."""
        if self.username is None or self.password is None:
            return None
        return self.username.get_secret_value(), self.password.get_secret_value()


def load_settings(**overrides: Any) -> BandwidthSettings:
    """Read the settings now (environment, then ``.env``), with ``overrides`` on top.

    Raises:
        ConfigError: a setting is invalid; the message names its environment variable and, for
            settings that are not secrets, the value.
    """
    return read_settings(BandwidthSettings, title="Bandwidth carrier settings", **overrides)
