"""The ``bandwidth`` carrier: Bandwidth Programmable Voice bidirectional media streams as a plugin.

Depends only on telewire's public API and, through its settings, on pydantic-settings.

This module object is the pluggy plugin, registered under entry-point group
``telewire.carriers`` as ``bandwidth``. The call is answered with BXML ``<StartStream
mode="bidirectional">``; Bandwidth then opens the media WebSocket and sends ``start``, ``media``
and ``stop`` (key ``eventType``); telewire answers with ``playAudio`` (``audio/pcmu``, the
payload exactly as it came) and ``clear``. Bandwidth has no marks, and delivers DTMF by
``<StartGather>`` webhook, which ``telewire_parse_webhook`` turns into frames for the live call.
The media envelopes are the declarative spec in ``envelope.toml``, compiled once at import.
Settings are read when a webhook needs them, never held in a global.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping, Sequence

from telewire.carrier import (
    CallContext,
    Capabilities,
    HttpRequest,
    HttpResponse,
    OutboundRequest,
    WebhookEvent,
)
from telewire.envelope import CompiledEnvelope, load_envelope_file
from telewire.errors import CarrierProtocolError, ConfigError
from telewire.frames import PCMU_8K, AudioFrame, Frame, StartFrame
from telewire.hookspecs import hookimpl

from telewire_bandwidth.auth import verify_basic
from telewire_bandwidth.bxml import events_url_for, start_stream
from telewire_bandwidth.calls import create_call, tag_parameters
from telewire_bandwidth.inbound import check_start
from telewire_bandwidth.settings import ENV_PREFIX, BandwidthSettings, load_settings
from telewire_bandwidth.webhooks import parse_event

__all__ = ["CAPABILITIES", "CARRIER", "ENVELOPE", "BandwidthSettings"]

CARRIER = "bandwidth"
#: Bandwidth bidirectional streams: mu-law 8 kHz in (the only documented format) and out
#: (``playAudio`` ``audio/pcmu``), JSON text frames, ``clear`` but no marks; DTMF comes by
#: webhook, not on the socket. Closing the socket ends the call: the answer document's
#: ``<StopStream wait="true"/>`` is its last verb.
CAPABILITIES = Capabilities(
    clear=True,
    marks=False,
    dtmf=False,
    hangup=True,
    text_frames_only=True,
    media_format=PCMU_8K,
    # A start message may carry 12 stream parameters of 256 + 2048 characters, several times
    # longer once JSON-escaped; media messages are far smaller.
    max_message_bytes=256 * 1024,
)
#: The compiled envelopes of ``envelope.toml``; shared by every call, immutable.
ENVELOPE: CompiledEnvelope = load_envelope_file(CARRIER, Path(__file__).with_name("envelope.toml"))


# ---------------------------------------------------------------------------------------------
# identity and settings
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_carrier_capabilities() -> Capabilities:
    """What Bandwidth's media socket can do (see :data:`CAPABILITIES`)."""
    return CAPABILITIES


@hookimpl
def telewire_envelope_presets() -> Mapping[str, Path]:
    """Bandwidth's media-stream envelope as preset ``bandwidth``, for Bandwidth-shaped bridges."""
    return {"bandwidth": Path(__file__).with_name("envelope.toml")}


@hookimpl
def telewire_carrier_settings() -> type[BandwidthSettings]:
    """The settings model, environment prefix ``TELEWIRE_BANDWIDTH_``."""
    return BandwidthSettings


@hookimpl
def telewire_carrier_warnings() -> Sequence[str]:
    """Warn when webhooks are unauthenticated, and that the media socket is by default.

    Raises:
        ConfigError: a setting is invalid (named by its environment variable).
    """
    settings = load_settings()
    warnings = []
    if settings.credentials is None:
        warnings.append(
            f"bandwidth: webhook validation is OFF: {ENV_PREFIX}USERNAME and {ENV_PREFIX}PASSWORD "
            "are not set, so answer and DTMF webhooks are accepted from anyone (and DTMF can be "
            "injected into live calls)")
    if not settings.websocket_auth:
        warnings.append(
            "bandwidth: the media WebSocket is not authenticated (Bandwidth documents no "
            "handshake authentication), so anyone who can reach /media/bandwidth can open a "
            f"call; restrict it at the network edge, or set {ENV_PREFIX}WEBSOCKET_AUTH=true "
            "after checking that Bandwidth sends the destination URL's credentials")
    return warnings


# ---------------------------------------------------------------------------------------------
# inbound
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_parse_inbound(call: CallContext, message: str | bytes) -> Sequence[Frame]:
    """Parse one Bandwidth message: ``start`` → StartFrame, ``media`` → AudioFrame (none for
    the ``outbound`` track, which is the agent's own voice), ``stop`` → EndFrame.

    Binary messages are refused: Bandwidth sends only JSON text. The ``start`` message's
    per-track media format is checked too (see :mod:`telewire_bandwidth.inbound`).
    """
    if type(message) is not str:
        raise CarrierProtocolError(
            f"{CARRIER}: binary WebSocket message ({len(message)} bytes); Bandwidth media "
            "streams send only JSON text messages", carrier=CARRIER,
        )
    frames = ENVELOPE.parse(call, message)
    if frames:
        first = frames[0]
        if type(first) is AudioFrame:
            return frames if first.track == "inbound" else ()
        if type(first) is StartFrame:
            return [check_start(call, message, first)]
    return frames


# ---------------------------------------------------------------------------------------------
# outbound
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_wrap_audio(call: CallContext, frame: AudioFrame) -> str:
    """``{"eventType":"playAudio","media":{"contentType":"audio/pcmu","payload":…}}`` with the
    payload as it came.

    Raises:
        ValueError: the audio is not mu-law 8 kHz.
    """
    if frame.codec != "pcmu" or frame.sample_rate != 8000:
        raise ValueError(f"telewire sends Bandwidth only pcmu at 8000 Hz (audio/pcmu), not "
                         f"{frame.codec} at {frame.sample_rate} Hz")
    return ENVELOPE.media(call, frame)


@hookimpl
def telewire_build_mark(call: CallContext, name: str) -> str | bytes | None:
    """``None``: Bandwidth documents no marks or playback acknowledgements on the socket."""
    return None


@hookimpl
def telewire_build_clear(call: CallContext) -> str | None:
    """``{"eventType":"clear"}``: drop the audio Bandwidth has buffered."""
    return ENVELOPE.clear(call)


@hookimpl
def telewire_hangup(call: CallContext, reason: str) -> str | bytes | None:
    """``None``: closing the media socket is the hang-up. Our answer document ends with
    ``<StopStream wait="true"/>``, which resumes when the socket closes, and no verb follows it,
    so Bandwidth ends the call. (Bandwidth has no hang-up message on the socket.)"""
    return None


# ---------------------------------------------------------------------------------------------
# control
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_answer_document(
    request: HttpRequest, stream_url: str, parameters: Mapping[str, str]
) -> HttpResponse:
    """BXML ``<StartGather>`` + ``<StartStream mode="bidirectional">`` + ``<StopStream
    wait="true"/>`` (see :func:`telewire_bandwidth.bxml.start_stream`).

    The DTMF webhook goes to ``TELEWIRE_BANDWIDTH_EVENTS_URL``, or to this server's
    ``/events/bandwidth`` beside ``stream_url``; the configured Basic credentials are put on it.
    For a call placed by ``telewire dial``, the dial's stream parameters come in the webhook's
    ``tag`` and are added (``parameters``, with the call token, win on a name clash).

    Raises:
        ConfigError: a bad stream URL or parameter, credentials bound for a non-TLS URL, or
            invalid settings.
    """
    settings = load_settings()
    events_url = None
    if settings.dtmf:
        events_url = settings.events_url or events_url_for(stream_url, CARRIER)
    body = start_stream(
        stream_url, {**tag_parameters(request.body), **parameters},
        stream_name=settings.stream_name,
        events_url=events_url,
        stream_event_url=settings.stream_event_url,
        credentials=settings.credentials,
        websocket_credentials=settings.websocket_auth,
    )
    return HttpResponse(body=body, content_type="application/xml")


@hookimpl
def telewire_dial_request(
    to: str,
    from_: str,
    stream_url: str,
    parameters: Mapping[str, str],
    answer_url: str,
    status_url: str,
    machine_detection: Literal["answer", "message_end"] | None,
) -> OutboundRequest:
    """Create the call with Bandwidth's Voice API; when it is answered Bandwidth fetches its
    BXML from ``answer_url`` (this server's ``/answer/bandwidth``), see
    :func:`telewire_bandwidth.calls.create_call`.

    Raises:
        ConfigError: account id, application id or API credentials unset (naming the
            variables), a number Bandwidth cannot dial (naming ``to`` or ``from`` and the value),
            or machine detection asked for.
    """
    settings = load_settings()
    missing = [name for name, value in (("ACCOUNT_ID", settings.account_id),
                                        ("APPLICATION_ID", settings.application_id),
                                        ("API_USERNAME", settings.api_username),
                                        ("API_PASSWORD", settings.api_password)) if value is None]
    if missing:
        raise ConfigError("bandwidth: placing a call needs "
                          + ", ".join(ENV_PREFIX + name for name in missing))
    assert settings.account_id and settings.application_id
    assert settings.api_username is not None and settings.api_password is not None
    return create_call(
        account_id=settings.account_id, application_id=settings.application_id,
        api_credentials=(settings.api_username.get_secret_value(),
                         settings.api_password.get_secret_value()),
        api_base_url=settings.api_base_url, to=to, from_=from_, answer_url=answer_url,
        parameters=parameters, webhook_credentials=settings.credentials,
        machine_detection=machine_detection)


@hookimpl
def telewire_parse_webhook(request: HttpRequest) -> WebhookEvent:
    """Bandwidth's ``dtmf`` callback → ``DTMFFrame`` for the live call named by ``callId``
    (see :func:`telewire_bandwidth.webhooks.parse_event`).

    Raises:
        CarrierProtocolError: a malformed body, naming the field.
    """
    return parse_event(request)


@hookimpl
def telewire_authenticate(
    request: HttpRequest, purpose: Literal["webhook", "websocket"]
) -> bool | None:
    """Check HTTP Basic credentials (see :func:`telewire_bandwidth.auth.verify_basic`).

    Returns:
        For webhooks: ``True`` when valid; ``False`` when ``TELEWIRE_BANDWIDTH_USERNAME`` and
        ``TELEWIRE_BANDWIDTH_PASSWORD`` are unset, so checking is off. For the media socket:
        the same when ``TELEWIRE_BANDWIDTH_WEBSOCKET_AUTH`` is on, else ``None`` (Bandwidth
        documents no check there).

    Raises:
        AuthenticationError: missing or wrong credentials, naming the header and URL.
        ConfigError: invalid settings.
    """
    settings = load_settings()
    if purpose == "websocket" and not settings.websocket_auth:
        return None
    return verify_basic(request, purpose, settings.credentials)
