"""The ``loopback`` carrier: a minimal documented JSON envelope, the core's reference carrier.

Depends on ``telewire.carrier``, ``telewire.envelope``, ``telewire.errors``, ``telewire.frames``,
``telewire.hookspecs`` and ``telewire.settings``; like every carrier, only the registry calls it.

This module object is the pluggy plugin, registered by the ``telewire`` distribution itself under
entry-point group ``telewire.carriers`` as ``loopback`` (built-ins go through the same door as
third parties). It is the smallest complete carrier: a test client, a home-made bridge or a
new carrier's author can speak it with a dozen lines, and it passes the carrier conformance kit
(``tests/test_loopback_carrier.py``). The envelope, both ways (docs/carriers/loopback.md)::

    -> {"event":"start","stream_id":"s-1","call_id":"c-1",
        "format":{"encoding":"pcmu","sample_rate":8000,"channels":1},"parameters":{"k":"v"}}
    -> {"event":"media","stream_id":"s-1","seq":1,"timestamp":0,"payload":"<base64 mu-law>"}
    -> {"event":"dtmf","stream_id":"s-1","digit":"5"}
    -> {"event":"mark","stream_id":"s-1","name":"m-1"}       (a mark echoed once played)
    -> {"event":"stop","stream_id":"s-1"}                      (the caller hung up)
    <- {"event":"media","stream_id":"s-1","payload":"<base64 mu-law>"}
    <- {"event":"mark","stream_id":"s-1","name":"m-1"}
    <- {"event":"clear","stream_id":"s-1"}                     (drop buffered audio; echo marks)
    <- {"event":"stop","stream_id":"s-1"}                      (telewire hangs up)

The carrier is off unless ``TELEWIRE_LOOPBACK_ENABLED=true`` (every ``/media/loopback`` upgrade
is refused with 403 otherwise), since it is in every installation and an open media socket
spends model money; ``TELEWIRE_LOOPBACK_TOKEN`` makes the client present ``Authorization:
Bearer <token>``, compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Any, Literal, Mapping, Sequence

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from telewire.carrier import CallContext, Capabilities, HttpRequest
from telewire.envelope import CompiledEnvelope, compile_envelope
from telewire.errors import AuthenticationError, CarrierProtocolError
from telewire.frames import PCMU_8K, AudioFrame, Frame
from telewire.hookspecs import hookimpl
from telewire.settings import CarrierSettings, read_settings

__all__ = ["CAPABILITIES", "CARRIER", "ENVELOPE", "ENVELOPE_SPEC", "ENV_PREFIX",
           "LoopbackSettings", "RESPONSE_ENVELOPE_SPEC", "load_settings"]

CARRIER = "loopback"
ENV_PREFIX = "TELEWIRE_LOOPBACK_"
#: mu-law 8 kHz both ways in JSON text messages, with clear, marks, DTMF and a hang-up message.
CAPABILITIES = Capabilities(clear=True, marks=True, dtmf=True, hangup=True, transfer=False,
                            text_frames_only=True, media_format=PCMU_8K,
                            max_message_bytes=64 * 1024)
#: How inbound messages are read (an :class:`telewire.envelope.EnvelopeSpec`).
ENVELOPE_SPEC: Mapping[str, Any] = {
    "format": "json",
    "event": "event",
    "events": {"start": "start", "media": "media", "dtmf": "dtmf", "mark": "mark",
               "stop": "stop"},
    "start": {"stream_id": "stream_id", "call_id": "call_id",
              "custom_parameters": "parameters", "encoding": "format.encoding",
              "sample_rate": "format.sample_rate", "channels": "format.channels"},
    "media": {"payload": "payload", "sequence": "seq", "timestamp": "timestamp",
              "stream_id": "stream_id"},
    "dtmf": {"digit": "digit"},
    "mark": {"name": "name"},
    "stop": {"reason": "reason"},
    "encodings": {"pcmu": "pcmu", "audio/pcmu": "pcmu"},
}
#: How outbound messages are written (a :class:`telewire.envelope.ResponseEnvelopeSpec`).
RESPONSE_ENVELOPE_SPEC: Mapping[str, Any] = {
    "format": "json",
    "media": '{"event":"media","stream_id":"${stream_id}","payload":"${payload}"}',
    "mark": '{"event":"mark","stream_id":"${stream_id}","name":"${name}"}',
    "clear": '{"event":"clear","stream_id":"${stream_id}"}',
    "hangup": '{"event":"stop","stream_id":"${stream_id}"}',
}
#: The compiled envelope, shared by every call (immutable).
ENVELOPE: CompiledEnvelope = compile_envelope(CARRIER, ENVELOPE_SPEC, RESPONSE_ENVELOPE_SPEC,
                                              source="telewire.loopback")


class LoopbackSettings(CarrierSettings):
    """Settings of the ``loopback`` carrier (``TELEWIRE_LOOPBACK_*``, environment or ``.env``).

    Attributes:
        enabled: accept calls on ``/media/loopback``; off by default, so an installation does
            not expose an unauthenticated media socket it never asked for.
        token: when set, the client must send ``Authorization: Bearer <token>`` on the upgrade.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env",
                                      env_file_encoding="utf-8", extra="ignore")

    enabled: bool = False
    token: SecretStr | None = None


def load_settings(**overrides: Any) -> LoopbackSettings:
    """Read the settings now (environment, then ``.env``).

    Raises:
        ConfigError: a setting is invalid (named by its environment variable).
    """
    return read_settings(LoopbackSettings, title="loopback carrier settings", **overrides)


def _need_stream(call: CallContext, what: str) -> None:
    if not call.stream_id:
        raise ValueError(f"cannot build a loopback {what} message before the start message "
                         "gave this call its stream_id")


# ---------------------------------------------------------------------------------------------
# identity and settings
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_carrier_capabilities() -> Capabilities:
    """What the loopback envelope can do (see :data:`CAPABILITIES`)."""
    return CAPABILITIES


@hookimpl
def telewire_carrier_settings() -> type[LoopbackSettings]:
    """The settings model, environment prefix ``TELEWIRE_LOOPBACK_``."""
    return LoopbackSettings


@hookimpl
def telewire_carrier_warnings() -> Sequence[str]:
    """Warn when the carrier is on without a token: anyone reaching the port can open a call.

    Raises:
        ConfigError: a setting is invalid.
    """
    settings = load_settings()
    if settings.enabled and settings.token is None:
        return [f"loopback: the media WebSocket is on and not authenticated "
                f"({ENV_PREFIX}TOKEN is not set), so anyone who can reach /media/loopback can "
                "open a call; set a token or keep the port local"]
    return []


@hookimpl
def telewire_envelope_presets() -> Mapping[str, Mapping[str, Any]]:
    """The loopback envelope as preset ``loopback``, for bridges that speak it."""
    return {CARRIER: {"envelope_spec": dict(ENVELOPE_SPEC),
                      "response_envelope_spec": dict(RESPONSE_ENVELOPE_SPEC)}}


@hookimpl
def telewire_authenticate(request: HttpRequest,
                          purpose: Literal["webhook", "websocket"]) -> bool:
    """Let the upgrade in only when the carrier is enabled, and with the token when one is set.

    Returns:
        ``True`` when the token matched; ``False`` when enabled with no token (checking is off;
        the server warns at start-up).

    Raises:
        AuthenticationError: the carrier is disabled, or the token is missing or wrong (the
            message names the setting and header, never the token).
        ConfigError: a setting is invalid.
    """
    settings = load_settings()
    if not settings.enabled:
        raise AuthenticationError(f"loopback: the carrier is off; set {ENV_PREFIX}ENABLED=true "
                                  "to accept calls on /media/loopback")
    if settings.token is None:
        return False
    scheme, _, presented = (request.header("authorization") or "").strip().partition(" ")
    want = settings.token.get_secret_value().encode("utf-8")
    got = presented.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() != "bearer" or not hmac.compare_digest(got, want):
        raise AuthenticationError(f"loopback: the {purpose} request to {request.url.split('?')[0]} "
                                  f"has no valid Authorization: Bearer token ({ENV_PREFIX}TOKEN)")
    return True


# ---------------------------------------------------------------------------------------------
# inbound
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_parse_inbound(call: CallContext, message: str | bytes) -> Sequence[Frame]:
    """Parse one loopback message (``start``/``media``/``dtmf``/``mark``/``stop`` → one frame).

    Raises:
        CarrierProtocolError: a binary message (the envelope is JSON text), or a malformed
            message (naming the event and field).
    """
    if type(message) is not str:
        raise CarrierProtocolError(
            f"{CARRIER}: binary WebSocket message ({len(message)} bytes); the loopback envelope "
            "is JSON text messages only", carrier=CARRIER)
    return ENVELOPE.parse(call, message)


# ---------------------------------------------------------------------------------------------
# outbound
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_wrap_audio(call: CallContext, frame: AudioFrame) -> str | bytes:
    """``{"event":"media","stream_id":…,"payload":…}`` with the payload as it came.

    Raises:
        ValueError: the audio is not mu-law 8 kHz, or the call has no stream id yet.
    """
    if frame.codec != "pcmu" or frame.sample_rate != 8000:
        raise ValueError(f"loopback plays only pcmu at 8000 Hz, not {frame.codec} at "
                         f"{frame.sample_rate} Hz")
    _need_stream(call, "media")
    return ENVELOPE.media(call, frame)


@hookimpl
def telewire_build_mark(call: CallContext, name: str) -> str | None:
    """``{"event":"mark","stream_id":…,"name":…}``; the client echoes it once the audio before
    it has played (or was cleared)."""
    _need_stream(call, "mark")
    return ENVELOPE.mark(call, name)


@hookimpl
def telewire_build_clear(call: CallContext) -> str | None:
    """``{"event":"clear","stream_id":…}``: drop buffered audio and echo every pending mark."""
    _need_stream(call, "clear")
    return ENVELOPE.clear(call)


@hookimpl
def telewire_hangup(call: CallContext, reason: str) -> str | None:
    """``{"event":"stop","stream_id":…}``, sent just before the core closes the socket."""
    _need_stream(call, "stop")
    return ENVELOPE.hangup(call)
