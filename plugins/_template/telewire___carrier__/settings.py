"""__carrier__ carrier settings: a pydantic-settings model read from TELEWIRE___CARRIER___* and ``.env``.

Depends on pydantic-settings and ``telewire.errors``; read when a request needs it, never per frame.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from telewire import read_settings

__all__ = ["ENV_PREFIX", "__Carrier__Settings", "load_settings"]

ENV_PREFIX = "TELEWIRE___CARRIER___"


class __Carrier__Settings(BaseSettings):
    """Settings of the ``__carrier__`` carrier.

    Attributes:
        signing_secret: the key the carrier signs its webhooks and media upgrades with. Unset
            means signature checking is off (and the server warns at start-up).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    signing_secret: SecretStr | None = None

    @field_validator("signing_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value


def load_settings(**overrides: Any) -> __Carrier__Settings:
    """Read the settings now (environment, then ``.env``), with ``overrides`` on top.

    Raises:
        ConfigError: a setting is invalid; the message names its environment variable and, for
            settings that are not secrets, the value.
    """
    return read_settings(__Carrier__Settings, title="__carrier__ carrier settings", **overrides)
