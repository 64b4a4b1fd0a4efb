"""The ``twilio`` carrier: Twilio Media Streams (``<Connect><Stream>``) as a telewire plugin.

Depends only on telewire's public API and, through its settings, on pydantic-settings.

This module object is the pluggy plugin, registered under entry-point group
``telewire.carriers`` as ``twilio``. The media envelopes are the declarative spec in
``envelope.toml``, compiled once at import, so the per-frame hooks are one call into the
compiled envelope. Settings are read when a webhook needs them, never held in a global.
"""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import quote
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
from telewire.frames import AudioFrame, Frame, MediaFormat
from telewire.hookspecs import hookimpl

from telewire_twilio.calls import create_call, parse_status
from telewire_twilio.settings import ENV_PREFIX, TwilioSettings, load_settings
from telewire_twilio.signature import verify_request
from telewire_twilio.twiml import connect_stream, dial

__all__ = ["CAPABILITIES", "CARRIER", "ENVELOPE", "SID_PATTERNS", "TwilioSettings"]

CARRIER = "twilio"
#: Twilio Media Streams: mu-law 8 kHz mono both ways, JSON text frames, clear and marks; DTMF
#: arrives on bidirectional streams; closing the socket ends a ``<Connect><Stream>`` call.
CAPABILITIES = Capabilities(
    clear=True,
    marks=True,
    dtmf=True,
    hangup=True,
    transfer=True,
    text_frames_only=True,
    media_format=MediaFormat(codec="pcmu", sample_rate=8000, channels=1),
    max_message_bytes=64 * 1024,
)
#: The shape of the ids a Twilio ``start`` event carries: every Twilio SID is a two-letter prefix
#: and 32 hexadecimal digits (https://www.twilio.com/docs/glossary/what-is-a-sid): ``MZ`` a
#: stream, ``CA`` a call, ``AC`` an account. A start with any other id is refused (and its call
#: ended) before the id is used anywhere. The ``twilio`` preset leaves them out, so bridges that
#: speak Twilio's envelope with ids of their own can use it.
SID_PATTERNS = {
    "stream_id": "MZ[0-9a-fA-F]{32}",
    "call_id": "CA[0-9a-fA-F]{32}",
    "account_id": "AC[0-9a-fA-F]{32}",
}
#: The compiled envelopes of ``envelope.toml`` with :data:`SID_PATTERNS`; shared by every call,
#: immutable.
ENVELOPE: CompiledEnvelope = load_envelope_file(
    CARRIER, Path(__file__).with_name("envelope.toml"), ids=SID_PATTERNS)


def _need_stream(call: CallContext, what: str) -> None:
    if not call.stream_id:
        raise ValueError(f"cannot build a Twilio {what} message before the start event "
                         "gave this call its streamSid")


# ---------------------------------------------------------------------------------------------
# identity and settings
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_carrier_capabilities() -> Capabilities:
    """What Twilio Media Streams can do (see :data:`CAPABILITIES`)."""
    return CAPABILITIES


@hookimpl
def telewire_hangup(call: CallContext, reason: str) -> str | bytes | None:
    """Closing the media socket ends a ``<Connect><Stream>`` call when no TwiML follows it (our
    answer document has none), so there is nothing to send first."""
    return None


@hookimpl
def telewire_transfer_request(call: CallContext, target: str) -> OutboundRequest:
    """Redirect the live call to ``<Dial>target</Dial>`` with the Calls REST API (``Twiml``).

    The account and call SIDs go into the URL as percent-encoded path segments (both were
    checked already: the account SID by the settings, the call SID by the start event's
    :data:`SID_PATTERNS`).

    Raises:
        ConfigError: ``TELEWIRE_TWILIO_ACCOUNT_SID``/``AUTH_TOKEN`` unset, no call sid yet, or a
            target that is neither E.164 nor ``sip:``.
    """
    settings = load_settings()
    if settings.account_sid is None or settings.auth_token is None:
        raise ConfigError(f"twilio: transferring a call needs {ENV_PREFIX}ACCOUNT_SID and "
                          f"{ENV_PREFIX}AUTH_TOKEN")
    if not call.call_id:
        raise ConfigError("twilio: this call has no callSid to transfer")
    credentials = f"{settings.account_sid}:{settings.auth_token.get_secret_value()}"
    base = settings.api_base_url.rstrip("/")
    return OutboundRequest(
        method="POST",
        url=(f"{base}/2010-04-01/Accounts/{quote(settings.account_sid, safe='')}"
             f"/Calls/{quote(call.call_id, safe='')}.json"),
        headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()},
        form=(("Twiml", dial(target)),),
    )


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
    """Create the call with the Calls REST API, its TwiML inline (``<Connect><Stream>`` to
    ``stream_url`` with ``parameters``), progress and AMD results posted to ``status_url``
    (see :func:`telewire_twilio.calls.create_call`).

    Raises:
        ConfigError: ``TELEWIRE_TWILIO_ACCOUNT_SID``/``AUTH_TOKEN`` unset, a number Twilio
            cannot dial (naming ``To`` or ``From`` and the value), or TwiML too long.
    """
    settings = load_settings()
    if settings.account_sid is None or settings.auth_token is None:
        raise ConfigError(f"twilio: placing a call needs {ENV_PREFIX}ACCOUNT_SID and "
                          f"{ENV_PREFIX}AUTH_TOKEN")
    return create_call(
        account_sid=settings.account_sid, auth_token=settings.auth_token.get_secret_value(),
        api_base_url=settings.api_base_url, to=to, from_=from_, stream_url=stream_url,
        parameters=parameters, status_url=status_url, machine_detection=machine_detection)


@hookimpl
def telewire_parse_webhook(request: HttpRequest) -> WebhookEvent:
    """A call status or answering-machine callback (``POST /status/twilio``): the call's
    ``CallSid`` and, when it carries ``AnsweredBy``, an ``AnsweredByFrame``
    (see :func:`telewire_twilio.calls.parse_status`).

    Raises:
        CarrierProtocolError: ``CallSid`` missing or not a call SID, or an ``AnsweredBy``
            value Twilio does not document (naming the field).
    """
    return parse_status(request)


@hookimpl
def telewire_envelope_presets() -> Mapping[str, Path]:
    """Twilio's Media Streams envelope as preset ``twilio``, for Twilio-compatible bridges."""
    return {"twilio": Path(__file__).with_name("envelope.toml")}


@hookimpl
def telewire_carrier_settings() -> type[TwilioSettings]:
    """The settings model, environment prefix ``TELEWIRE_TWILIO_``."""
    return TwilioSettings


@hookimpl
def telewire_carrier_warnings() -> Sequence[str]:
    """Warn when no signing key is configured, so anyone can post webhooks and open media sockets.

    Raises:
        ConfigError: a setting is invalid (named by its environment variable).
    """
    settings = load_settings()
    if settings.auth_token is not None:
        return []
    if settings.shared_key_secret is not None:
        return [f"twilio: {ENV_PREFIX}AUTH_TOKEN is not set; only requests signed with the "
                "webhook SharedKey will be accepted, requests signed with the Auth Token (such "
                "as media WebSocket upgrades) will be refused"]
    return [f"twilio: signature validation is OFF: {ENV_PREFIX}AUTH_TOKEN is not set, so "
            "webhooks and media WebSocket upgrades are accepted from anyone"]


# ---------------------------------------------------------------------------------------------
# inbound
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_parse_inbound(call: CallContext, message: str | bytes) -> Sequence[Frame]:
    """Parse one Twilio message (``connected`` → no frames; ``start``/``media``/``dtmf``/
    ``mark``/``stop`` → one frame). Binary messages are refused: Twilio sends only text."""
    if type(message) is not str:
        raise CarrierProtocolError(
            f"{CARRIER}: binary WebSocket message ({len(message)} bytes); Twilio Media Streams "
            "sends only JSON text messages", carrier=CARRIER,
        )
    return ENVELOPE.parse(call, message)


# ---------------------------------------------------------------------------------------------
# outbound
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_wrap_audio(call: CallContext, frame: AudioFrame) -> str:
    """``{"event":"media","streamSid":…,"media":{"payload":…}}`` with the payload as it came.

    Raises:
        ValueError: the audio is not mu-law 8 kHz, or the call has no streamSid yet.
    """
    if frame.codec != "pcmu" or frame.sample_rate != 8000:
        raise ValueError(f"Twilio plays only pcmu at 8000 Hz, not {frame.codec} at "
                         f"{frame.sample_rate} Hz")
    _need_stream(call, "media")
    return ENVELOPE.media(call, frame)


@hookimpl
def telewire_build_mark(call: CallContext, name: str) -> str | None:
    """``{"event":"mark","streamSid":…,"mark":{"name":…}}``; Twilio echoes it once the audio
    before it has played or was cleared."""
    _need_stream(call, "mark")
    return ENVELOPE.mark(call, name)


@hookimpl
def telewire_build_clear(call: CallContext) -> str | None:
    """``{"event":"clear","streamSid":…}``: drop buffered audio; pending marks are echoed."""
    _need_stream(call, "clear")
    return ENVELOPE.clear(call)


# ---------------------------------------------------------------------------------------------
# control
# ---------------------------------------------------------------------------------------------


@hookimpl
def telewire_answer_document(
    request: HttpRequest, stream_url: str, parameters: Mapping[str, str]
) -> HttpResponse:
    """TwiML ``<Connect><Stream>`` to ``stream_url`` with ``parameters`` as ``<Parameter>``s and
    ``statusCallback`` from ``TELEWIRE_TWILIO_STATUS_CALLBACK_URL`` when set.

    Raises:
        ConfigError: a bad stream URL or parameter (see
            :func:`telewire_twilio.twiml.connect_stream`), or invalid settings.
    """
    settings = load_settings()
    body = connect_stream(stream_url, parameters, status_callback=settings.status_callback_url)
    return HttpResponse(body=body, content_type="application/xml")


@hookimpl
def telewire_authenticate(
    request: HttpRequest, purpose: Literal["webhook", "websocket"]
) -> bool:
    """Verify ``X-Twilio-Signature`` (see :func:`telewire_twilio.signature.verify_request`).

    Returns:
        ``True`` when valid; ``False`` when ``TELEWIRE_TWILIO_AUTH_TOKEN`` (and the SharedKey
        secret) are unset, so checking is off.

    Raises:
        AuthenticationError: missing or wrong signature, naming the header and URL checked.
        ConfigError: invalid settings.
    """
    settings = load_settings()
    token = settings.auth_token.get_secret_value() if settings.auth_token else None
    shared = settings.shared_key_secret.get_secret_value() if settings.shared_key_secret else None
    return verify_request(request, purpose, auth_token=token, shared_key_secret=shared)
