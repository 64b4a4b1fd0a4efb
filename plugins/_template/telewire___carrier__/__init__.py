"""The ``__carrier__`` carrier: its media WebSocket as a telewire plugin.

Depends only on telewire's public API and, through its settings, on pydantic-settings.

This module object is the pluggy plugin, registered under entry-point group
``telewire.carriers`` as ``__carrier__`` (see ``pyproject.toml``). The media envelopes are the
declarative spec in ``envelope.toml``, compiled once at import, so the per-frame hooks are one
call into the compiled envelope. Settings are read when a request needs them, never held in a
global. Every hook is sans-I/O and synchronous: no sockets, no ``await``, per-call state in
``call.state``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Mapping, Sequence
from urllib.parse import urlsplit

from telewire.carrier import CallContext, Capabilities, HttpRequest, HttpResponse
from telewire.envelope import CompiledEnvelope, load_envelope_file
from telewire.errors import CarrierProtocolError, ConfigError
from telewire.frames import AudioFrame, Frame, MediaFormat
from telewire.hookspecs import hookimpl

from telewire___carrier__.settings import ENV_PREFIX, __Carrier__Settings, load_settings
from telewire___carrier__.signature import verify_request

__all__ = ["CAPABILITIES", "CARRIER", "ENVELOPE", "__Carrier__Settings", "answer_document"]

CARRIER = "__carrier__"
#: What the media socket can do: mu-law 8 kHz mono both ways, JSON text frames, clear and
#: marks, DTMF on the socket; closing the socket ends the call. Set each flag to what your
#: carrier really does: the conformance kit skips (saying so) the tests of a feature declared
#: absent, and the core never sends marks or clears to a carrier without them.
CAPABILITIES = Capabilities(
    clear=True,
    marks=True,
    dtmf=True,
    hangup=True,
    text_frames_only=True,
    media_format=MediaFormat(codec="pcmu", sample_rate=8000, channels=1),
    max_message_bytes=64 * 1024,
)
#: The compiled envelopes of ``envelope.toml``; shared by every call, immutable.
ENVELOPE: CompiledEnvelope = load_envelope_file(CARRIER, Path(__file__).with_name("envelope.toml"))


def _need_stream(call: CallContext, what: str) -> None:
    if not call.stream_id:
        raise ValueError(f"cannot build a {CARRIER} {what} message before the start event "
                         "gave this call its stream id")


def answer_document(stream_url: str, parameters: Mapping[str, str]) -> str:
    """The JSON document that answers the carrier's incoming-call webhook.

    The template's example: ``{"stream": {"url": …, "parameters": {…}}}`` tells the carrier to
    open its media socket to ``stream_url`` and echo ``parameters`` in the start message.

    Raises:
        ConfigError: ``stream_url`` is not an absolute ``ws://``/``wss://`` URL without query
            string, or a parameter is not a non-empty string name with a string value.
    """
    parts = urlsplit(stream_url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"{CARRIER}: stream URL {stream_url!r} must be an absolute ws:// or "
                          "wss:// URL")
    if parts.query or parts.fragment:
        raise ConfigError(f"{CARRIER}: stream URL {stream_url!r} must have no query string or "
                          "fragment; pass values as parameters")
    for name, value in parameters.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{CARRIER}: parameter name {name!r} must be a non-empty string")
        if not isinstance(value, str):
            raise ConfigError(f"{CARRIER}: parameter {name!r} must be a string, not "
                              f"{type(value).__name__}")
    return json.dumps({"stream": {"url": stream_url, "parameters": dict(parameters)}},
                      ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# identity and settings
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_carrier_capabilities() -> Capabilities:
    """What the media socket can do (see :data:`CAPABILITIES`)."""
    return CAPABILITIES


@hookimpl
def telewire_carrier_settings() -> type[__Carrier__Settings]:
    """The settings model, environment prefix ``TELEWIRE___CARRIER___``."""
    return __Carrier__Settings


@hookimpl
def telewire_carrier_warnings() -> Sequence[str]:
    """Warn when no signing secret is configured, so anyone can open a media socket.

    Raises:
        ConfigError: a setting is invalid (named by its environment variable).
    """
    if load_settings().signing_secret is not None:
        return []
    return [f"{CARRIER}: signature checking is OFF: {ENV_PREFIX}SIGNING_SECRET is not set, so "
            "webhooks and media WebSocket upgrades are accepted from anyone"]


# ---------------------------------------------------------------------------------------------
# inbound
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_parse_inbound(call: CallContext, message: str | bytes) -> Sequence[Frame]:
    """Parse one message (``connected`` → no frames; ``start``/``media``/``dtmf``/``mark``/
    ``stop`` → one frame). Binary messages are refused: the carrier sends only text."""
    if type(message) is not str:
        raise CarrierProtocolError(
            f"{CARRIER}: binary WebSocket message ({len(message)} bytes); this carrier sends "
            "only JSON text messages", carrier=CARRIER,
        )
    return ENVELOPE.parse(call, message)


# ---------------------------------------------------------------------------------------------
# outbound
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_wrap_audio(call: CallContext, frame: AudioFrame) -> str | bytes:
    """``{"event":"media","stream_id":…,"media":{"payload":…}}`` with the payload as it came.

    Raises:
        ValueError: the audio is not in the carrier's media format, or the call has no
            stream id yet.
    """
    fmt = CAPABILITIES.media_format
    if frame.codec != fmt.codec or frame.sample_rate != fmt.sample_rate:
        raise ValueError(f"{CARRIER} plays only {fmt.codec} at {fmt.sample_rate} Hz, not "
                         f"{frame.codec} at {frame.sample_rate} Hz")
    _need_stream(call, "media")
    return ENVELOPE.media(call, frame)


@hookimpl
def telewire_build_mark(call: CallContext, name: str) -> str | None:
    """``{"event":"mark","stream_id":…,"mark":{"name":…}}``; echoed once the audio before it
    has played."""
    _need_stream(call, "mark")
    return ENVELOPE.mark(call, name)


@hookimpl
def telewire_build_clear(call: CallContext) -> str | None:
    """``{"event":"clear","stream_id":…}``: drop the audio the carrier has buffered."""
    _need_stream(call, "clear")
    return ENVELOPE.clear(call)


# ---------------------------------------------------------------------------------------------
# control
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_answer_document(
    request: HttpRequest, stream_url: str, parameters: Mapping[str, str]
) -> HttpResponse:
    """The JSON answer document (see :func:`answer_document`).

    Raises:
        ConfigError: a bad stream URL or parameter.
    """
    return HttpResponse(body=answer_document(stream_url, parameters),
                        content_type="application/json")


@hookimpl
def telewire_authenticate(
    request: HttpRequest, purpose: Literal["webhook", "websocket"]
) -> bool:
    """Verify the signature header (see :func:`telewire___carrier__.signature.verify_request`).

    Returns:
        ``True`` when valid; ``False`` when ``TELEWIRE___CARRIER___SIGNING_SECRET`` is unset,
        so checking is off.

    Raises:
        AuthenticationError: missing or wrong signature, naming the header and URL checked.
        ConfigError: invalid settings.
    """
    secret = load_settings().signing_secret
    return verify_request(request, secret.get_secret_value() if secret is not None else None)

