"""sip_bridge carrier settings: a pydantic-settings model read from TELEWIRE_SIP_BRIDGE_* and ``.env``.

Depends on pydantic-settings and telewire's public API; read when a socket upgrade needs it,
never per frame.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from telewire import CarrierSettings, read_settings

__all__ = ["ENV_PREFIX", "MIN_SECRET_LENGTH", "SipBridgeSettings", "load_settings"]

ENV_PREFIX = "TELEWIRE_SIP_BRIDGE_"
#: The shortest shared secret accepted: 16 characters (about 96 bits when random).
MIN_SECRET_LENGTH = 16
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]{0,63}")
_QUERY_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class SipBridgeSettings(CarrierSettings):
    """Settings of the ``sip_bridge`` carrier: how a bridge proves it may open a media socket.

    Attributes:
        secret: the shared secret the bridge must present on the media WebSocket upgrade, at
            least 16 characters. Unset means the socket is not authenticated (and the server
            warns at start-up).
        header: the request header that carries it. ``Authorization`` (the default) takes
            ``Bearer <secret>``, or HTTP Basic credentials whose password is the secret (for
            bridges that can only send a user name and password); any other header (such as
            ``X-Telewire-Token``) carries the secret as its whole value.
        query_parameter: also accept the secret as this query parameter of the socket URL
            (``wss://host/media/sip_bridge?token=…``), for bridges that cannot set headers.
            Unset (the default): a secret in the URL is not accepted. URLs end up in proxies'
            and bridges' logs, so prefer a header.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    secret: SecretStr | None = None
    header: str = "Authorization"
    query_parameter: str | None = None

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters (use a random "
                             "one: python -c 'import secrets; print(secrets.token_urlsafe())')")
        return value

    @field_validator("header", mode="before")
    @classmethod
    def _header_name(cls, value: Any) -> Any:
        if value is None:
            return "Authorization"
        if isinstance(value, str) and not _HEADER_NAME.fullmatch(value):
            raise ValueError("must be an HTTP header name (letters, digits and -)")
        return value

    @field_validator("query_parameter")
    @classmethod
    def _query_name(cls, value: str | None) -> str | None:
        if value is not None and not _QUERY_NAME.fullmatch(value):
            raise ValueError("must be a query parameter name (letters, digits, _ . -)")
        return value


def load_settings(**overrides: Any) -> SipBridgeSettings:
    """Read the settings now (environment, then ``.env``), with ``overrides`` on top.

    Raises:
        ConfigError: a setting is invalid; the message names its environment variable and, for
            settings that are not secrets, the value.
    """
    return read_settings(SipBridgeSettings, title="sip_bridge carrier settings", **overrides)
