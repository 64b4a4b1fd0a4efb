"""Process settings: pydantic-settings over ``TELEWIRE_*`` environment variables and ``.env``.

Depends on ``telewire.errors`` only. The graph file carries per-node config; these settings carry
what belongs to the process (where to listen, which graph, logging, limits) plus environment
overrides of node config: ``TELEWIRE_NODES__RT__MODEL=gpt-realtime`` sets ``rt.config.model``.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from telewire.errors import ConfigError

__all__ = ["CarrierSettings", "ServerSettings", "load_settings", "node_overrides", "read_settings"]

S = TypeVar("S", bound=BaseSettings)


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret(a) for a in typing.get_args(annotation))


class CarrierSettings(BaseSettings):
    """Base of carrier plugins' settings models: a blank value (``TELEWIRE_X_TOKEN=``, often
    left in a ``.env`` template) counts as unset, for secrets too. Subclasses set
    ``model_config`` (``env_prefix`` …) as usual."""

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, SecretStr) and not value.get_secret_value().strip():
            return None
        return value


def read_settings(model: type[S], *, title: str, **overrides: Any) -> S:
    """Read a pydantic-settings model now (environment, ``.env``), ``overrides`` on top.

    For carrier plugins and the core alike: a bad value becomes a :class:`ConfigError` with one
    line per problem naming the environment variable (the model's ``env_prefix``, nested keys
    joined with its delimiter) and the value, except for ``SecretStr`` fields, whose values are
    never shown.

    Args:
        model: the settings class.
        title: what the settings are, for the message (``"Twilio carrier settings"``).

    Raises:
        ConfigError: a setting is invalid.
    """
    try:
        return model(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        prefix = str(model.model_config.get("env_prefix") or "")
        joiner = str(model.model_config.get("env_nested_delimiter") or "__")
        lines = [f"invalid {title}:"]
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            if not loc:  # a model-level check: its message names the variables itself
                lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
                continue
            field = model.model_fields.get(loc[0])
            secret = field is not None and _is_secret(field.annotation)
            shown = "" if secret else f" (value {err.get('input')!r})"
            lines.append(f"  {prefix}{joiner.join(loc).upper()}: {err['msg']}{shown}")
        raise ConfigError("\n".join(lines)) from None


class ServerSettings(BaseSettings):
    """Settings of a telewire process (``TELEWIRE_<NAME>``; nested keys joined with ``__``).

    Attributes:
        host: address to listen on.
        port: port to listen on (``0``: any free port).
        graph: the graph file; the default graph when unset.
        public_url: the base URL carriers use to reach this server (``https://voice.example.com``);
            signatures are checked against it. When unset it is taken from the request.
        trust_forwarded: take scheme and host from ``X-Forwarded-Proto``/``X-Forwarded-Host``
            (only behind a proxy you control).
        max_calls: concurrent calls accepted; more get HTTP 503 on the media upgrade.
        ws_max_message_bytes: hard limit on one WebSocket message; larger closes the socket with
            1009. Per-carrier limits below it drop the message and keep the call.
        drain_timeout_s: on SIGTERM, how long running calls may go on before they are ended.
        loop: ``auto`` uses uvloop when installed.
        log_level / log_json: logging (the CLI installs the sink; library code never does).
        answer_parameters: custom parameters put in every answer document's stream.
        nodes: node-config overrides, ``{node: {key: value}}``.
    """

    model_config = SettingsConfigDict(
        env_prefix="TELEWIRE_", env_nested_delimiter="__", env_file=".env",
        env_file_encoding="utf-8", extra="ignore",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    graph: Path | None = None
    public_url: str | None = None
    trust_forwarded: bool = False
    max_calls: int = Field(default=500, gt=0)
    ws_max_message_bytes: int = Field(default=2 * 1024 * 1024, gt=1024)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    answer_parameters: dict[str, str] = Field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = Field(default_factory=dict)


def load_settings(**overrides: Any) -> ServerSettings:
    """Read the process settings from the environment and ``.env``, then apply ``overrides``.

    Raises:
        ConfigError: naming the environment variable and the value that is wrong.
    """
    return read_settings(ServerSettings, title="settings", **overrides)


def node_overrides(settings: ServerSettings) -> list[str]:
    """``TELEWIRE_NODES__*`` as ``NODE.config.KEY=VALUE`` strings for the graph loader."""
    out = []
    for node, values in settings.nodes.items():
        for key, value in values.items():
            out.append(f"{node}.config.{key}={value}")
    return out
