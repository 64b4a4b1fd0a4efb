"""Process settings: pydantic-settings over ``TELEWIRE_*`` environment variables and ``.env``.

Depends on ``telewire.errors`` only. The graph file carries per-node config; these settings carry
what belongs to the process (where to listen, which graph, logging, limits) plus environment
overrides of node config: ``TELEWIRE_NODES__RT__MODEL=gpt-realtime`` sets ``rt.config.model``.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from telewire.errors import ConfigError
from telewire.redact import shown as _shown

__all__ = ["CarrierSettings", "ProviderKeys", "ServerSettings", "load_settings", "node_overrides",
           "provider_keys", "read_settings"]

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
    joined with its delimiter) and the value, except for ``SecretStr`` fields, secret-like names
    (``…_KEY``, ``…_TOKEN`` …, see :mod:`telewire.redact`) and node-config overrides
    (``TELEWIRE_NODES__…``), whose values are never shown.

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
            secret = (field is not None and _is_secret(field.annotation)) or loc[0] == "nodes"
            shown = "" if secret else f" (value {_shown(err.get('input'), *loc)})"
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
        operator_token: the bearer token of the operator API (``/api/…``); unset turns the
            operator API off (404).
        metrics_token: a read-only bearer token for ``GET /metrics`` (the operator token works
            there too); with neither, ``/metrics`` answers 404.
        admin_host / admin_port: when ``admin_port`` is set, the operator API is served only on
            this second listener (keep it off the public network), not on the carrier port.
        carriers: comma-separated carriers to serve (``twilio,bandwidth``); the others' routes
            answer 404. Empty serves every installed carrier.
        call_token_secret: the key that signs the one-time call token put in answer documents;
            a random key per process when unset (set one shared key when several processes
            answer and serve calls).
        call_token_ttl_s: how long a call token stays valid after the answer webhook.
        call_tokens: when a start event must present its call token: ``auto`` when the media
            socket's own signature was checked (Twilio with an Auth Token), ``required`` for
            every call (use it for Bandwidth, whose media socket carries no signature), ``off``.
        start_timeout_s: a media socket that has not sent its start event by then is closed.
        media_timeout_s: a started call that receives nothing for this long is ended (``0``:
            never).
        max_call_s: a call is hung up after this long (``0``: no limit).
        heartbeat_s: WebSocket ping interval on media sockets; a peer that does not answer
            within the next interval is disconnected (``0``: off).
        max_pending_per_ip: media sockets from one address that have not started a call yet.
        max_connections_per_ip: media sockets from one address at once (``0``: ``max_calls``).
        header_timeout_s: an HTTP connection that has not sent a whole request head by then is
            closed (slow-header clients).
        nodes: node-config overrides, ``{node: {key: value}}``.
        trace_frames: per-frame span events: ``off`` (none; nothing runs per audio frame),
            ``sampled`` (1 audio frame in 50 per port, every other frame) or ``all``.
        trace_content: put caller content (transcripts, tool arguments, steer instructions) on
            spans, as attributes prefixed ``telewire.content.``; off by default.
        spans_db: the SQLite database of the embedded span store (table ``workflow_spans``).
        tracing: ``off`` exports no spans at all (no SQLite span store, no OTLP, no frame
            events); ``on`` (the default) exports to ``spans_db`` and, when configured, OTLP.
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
    operator_token: SecretStr | None = None
    metrics_token: SecretStr | None = None
    admin_host: str = "127.0.0.1"
    admin_port: int | None = Field(default=None, ge=0, le=65535)
    carriers: str = ""
    call_token_secret: SecretStr | None = None
    call_token_ttl_s: float = Field(default=120.0, gt=0)
    call_tokens: Literal["auto", "required", "off"] = "auto"
    start_timeout_s: float = Field(default=5.0, gt=0)
    media_timeout_s: float = Field(default=30.0, ge=0)
    max_call_s: float = Field(default=4 * 3600.0, ge=0)
    heartbeat_s: float = Field(default=20.0, ge=0)
    max_pending_per_ip: int = Field(default=128, gt=0)
    max_connections_per_ip: int = Field(default=0, ge=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
    nodes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    trace_frames: Literal["off", "sampled", "all"] = "sampled"
    trace_content: bool = False
    spans_db: Path = Path("telewire-spans.db")
    control_url: str | None = None
    control_ttl_s: float = Field(default=15.0, gt=0)
    control_timeout_s: float = Field(default=3.0, gt=0)
    worker_id: str | None = None
    max_cluster_calls: int = Field(default=0, ge=0)
    drain_goodbye_s: float = Field(default=10.0, ge=0)
    tracing: Literal["on", "off"] = "on"

    @field_validator("operator_token", "metrics_token", "call_token_secret", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("control_url", "worker_id", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("carriers")
    @classmethod
    def _carrier_list(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        for name in names:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"carrier name {name!r} is not a plugin name")
        return ",".join(names)

    def carrier_names(self) -> tuple[str, ...]:
        """The carriers this process serves (``()``: all installed)."""
        return tuple(self.carriers.split(",")) if self.carriers else ()


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


# -- provider keys ---------------------------------------------------------------------------------


def _key(*names: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(*names))


class ProviderKeys(BaseSettings):
    """Realtime providers' API keys, under their providers' standard names, from the environment
    or a ``.env`` file in the working directory (like every other setting).

    A key set in the graph (``rt.config.api_key``) wins over these. The ``TELEWIRE_`` name wins
    over the standard one when both are set. A blank value counts as unset.

    Attributes:
        openai_api_key: ``TELEWIRE_OPENAI_API_KEY`` or ``OPENAI_API_KEY`` (the ``openai``
            provider).
        azure_openai_api_key: ``TELEWIRE_AZURE_OPENAI_API_KEY`` or ``AZURE_OPENAI_API_KEY`` (the
            ``azure`` provider).
        xai_api_key: ``TELEWIRE_XAI_API_KEY`` or ``XAI_API_KEY`` (the ``xai`` provider).
        deepgram_api_key: ``TELEWIRE_DEEPGRAM_API_KEY`` or ``DEEPGRAM_API_KEY`` (the ``deepgram``
            provider).
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    openai_api_key: SecretStr | None = _key("TELEWIRE_OPENAI_API_KEY", "OPENAI_API_KEY")
    azure_openai_api_key: SecretStr | None = _key("TELEWIRE_AZURE_OPENAI_API_KEY",
                                                  "AZURE_OPENAI_API_KEY")
    xai_api_key: SecretStr | None = _key("TELEWIRE_XAI_API_KEY", "XAI_API_KEY")
    deepgram_api_key: SecretStr | None = _key("TELEWIRE_DEEPGRAM_API_KEY", "DEEPGRAM_API_KEY")

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


def provider_keys() -> ProviderKeys:
    """Read the provider keys now (environment, then ``.env``). A provider session calls this
    once, when it starts, never per frame.

    Raises:
        ConfigError: the keys cannot be read.
    """
    return read_settings(ProviderKeys, title="provider keys")
