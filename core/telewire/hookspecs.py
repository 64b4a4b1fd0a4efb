"""The carrier contract: every hook a carrier plugin implements, with its docstring as the contract.

Depends on ``telewire.frames`` and ``telewire.carrier``. Nothing outside ``telewire.registry``
calls these hooks; the registry's typed facade does, by keyword, one carrier at a time.

Carrier hooks are sans-I/O and synchronous: text or bytes in, typed frames out; envelope in,
envelope out. No sockets, no ``await``, no sleeping, no globals (per-call state lives in
``call.state``). The core's async layer feeds them, so they are testable with no event loop.

Each carrier distribution registers one plugin object under entry-point group
``telewire.carriers``; the entry point's name is the carrier's name (``twilio``). The registry
calls a carrier's hooks only on that carrier's plugin, so "first result" means "this carrier's
answer", and ``None`` from an optional hook means "this carrier does not do that".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic_settings import BaseSettings

    from telewire.carrier import (
        CallContext,
        Capabilities,
        HttpRequest,
        HttpResponse,
        OutboundRequest,
        WebhookEvent,
    )
    from telewire.frames import AudioFrame, Frame

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "telewire"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------
# identity
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def telewire_carrier_capabilities() -> Capabilities:
    """Declare what this carrier's media socket can do.

    Called once when the carrier is loaded. The core refuses a graph whose nodes need a capability
    the carrier lacks, sends no marks to a carrier without marks and no clear to one without clear,
    and drops inbound messages larger than ``max_message_bytes``.

    Returns:
        The carrier's :class:`~telewire.carrier.Capabilities`. Stops at the first non-None result.
    """


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def telewire_carrier_settings() -> type[BaseSettings] | None:
    """Return the carrier's settings model, or ``None`` when it has no settings.

    The model is a pydantic-settings class whose environment prefix is ``TELEWIRE_<NAME>_``
    (``TELEWIRE_TWILIO_AUTH_TOKEN``). Secrets must be ``SecretStr`` so that
    ``telewire config show`` masks them. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def telewire_carrier_warnings() -> Sequence[str] | None:
    """Report configuration problems worth a warning when the server starts.

    For example "signature validation is off: TELEWIRE_TWILIO_AUTH_TOKEN is not set". Never
    include a secret. Returns ``None`` or an empty sequence when all is well.
    Stops at the first non-None result.
    """


@hookspec
def telewire_envelope_presets() -> Mapping[str, Path | Mapping[str, Any]]:
    """Offer named envelope specs that graphs can use by name.

    A graph's ``tel_in.config.envelope_spec`` / ``tel_out.config.response_envelope_spec`` may be a
    preset name instead of a table. Every plugin's presets are collected (this hook does not stop
    at the first result); a name offered twice is a configuration error naming both.

    Returns:
        Preset name to a TOML file holding ``[envelope_spec]`` and ``[response_envelope_spec]``
        tables, or to a mapping with those two keys.
    """


# ---------------------------------------------------------------------------------------------
# inbound
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def telewire_parse_inbound(call: CallContext, message: str | bytes) -> Sequence[Frame]:
    """Parse one message received on the carrier's media socket into frames.

    Args:
        call: this call's context; ``call.started`` tells whether a start frame was seen.
            The hook may keep per-call state in ``call.state``.
        message: the WebSocket message exactly as received (``str`` for text frames, ``bytes``
            for binary frames).

    Returns:
        The frames the message carries, in order: usually one (``StartFrame``, ``AudioFrame``
        with the payload in its wire form, ``DTMFFrame``, ``MarkFrame``, ``EndFrame`` for a
        stop). An empty sequence for a message that carries nothing for the graph (Twilio's
        ``connected``). Stops at the first non-None result.

    Raises:
        CarrierProtocolError: the message is malformed (not JSON, missing or mistyped field,
            invalid base64, unknown event, media before start). The message names the event and
            the dotted field path. ``fatal=True`` only when the call cannot continue.
    """


@hookspec(firstresult=True)
def telewire_parse_webhook(request: HttpRequest) -> WebhookEvent | None:
    """Parse an event the carrier delivers by webhook instead of on the media socket.

    Bandwidth, for one, sends DTMF as ``<StartGather>`` callbacks. The server receives them at
    ``POST /events/{carrier}`` (after ``telewire_authenticate``) and routes the returned frames
    into the live call with that call id. The status callbacks of a dialled call (see
    ``telewire_dial_request``) come to ``POST /status/{carrier}`` and are parsed here too: an
    answering-machine result as an ``AnsweredByFrame``; call progress as no frames.

    Args:
        request: the webhook request.

    Returns:
        The call id, the frames and the answer document; ``None`` when this carrier has no
        event webhooks. Stops at the first non-None result.

    Raises:
        CarrierProtocolError: the webhook body is malformed (naming the field).
    """


# ---------------------------------------------------------------------------------------------
# outbound
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def telewire_wrap_audio(call: CallContext, frame: AudioFrame) -> str | bytes:
    """Wrap agent audio in the carrier's outbound envelope.

    Args:
        call: this call's context (``call.stream_id`` is set).
        frame: audio in the carrier's media format; ``frame.payload`` is in its wire form and
            should be used as is (no decode, no re-encode) when the envelope carries base64.

    Returns:
        The message to send: ``str`` for a text frame, ``bytes`` for a binary frame.
        Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def telewire_build_mark(call: CallContext, name: str) -> str | bytes | None:
    """Build a mark message that the carrier echoes when the audio sent before it has played.

    Args:
        call: this call's context.
        name: the mark's unique name.

    Returns:
        The message, or ``None`` when the carrier has no marks. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def telewire_build_clear(call: CallContext) -> str | bytes | None:
    """Build the message that makes the carrier drop the audio it has buffered (barge-in).

    Returns:
        The message, or ``None`` when the carrier cannot clear. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def telewire_hangup(call: CallContext, reason: str) -> str | bytes | None:
    """Build the message that ends the call, sent on the media socket just before the core
    closes it.

    Called exactly once per call that telewire hangs up (the ``end_call`` tool, a budget guard,
    an operator), after the agent's last audio has played.

    Args:
        call: this call's context.
        reason: why the call is being ended (short, stable: ``"end_call"`` …).

    Returns:
        The message, or ``None`` when closing the media socket is itself the hang-up (Twilio's
        ``<Connect><Stream>`` with no TwiML after it). Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def telewire_transfer_request(call: CallContext, target: str) -> OutboundRequest | None:
    """Build the REST request that transfers the call to ``target`` (the ``transfer_call`` tool).

    Only called for carriers whose capabilities declare ``transfer``. The core drains the agent's
    last audio first, sends the request, and ends the call with reason ``transferred`` when the
    carrier accepts it (2xx).

    Args:
        call: this call's context (``call.call_id`` names the call to the carrier).
        target: an E.164 number (``+15551234567``) or a ``sip:`` URI, as the model gave it.

    Returns:
        The request, or ``None`` when this carrier cannot transfer. Stops at the first non-None
        result.

    Raises:
        ConfigError: the carrier's credentials are not configured, or ``target`` is not a number
            or SIP URI it can dial (the message says which).
    """


@hookspec(firstresult=True)
def telewire_dial_request(
    to: str,
    from_: str,
    stream_url: str,
    parameters: Mapping[str, str],
    answer_url: str,
    status_url: str,
    machine_detection: Literal["answer", "message_end"] | None,
) -> OutboundRequest | None:
    """Build the REST request that places an outbound call whose answered leg streams here.

    Called by :func:`telewire.dial.dial` (``telewire dial``). The core sends the request with a
    timeout; a 2xx answer's JSON field ``OutboundRequest.id_field`` is the new call's id (the
    id its start event will carry); any other answer becomes a ``DialError`` with the HTTP
    status and the carrier's error message. The answered call then reaches this server like an
    inbound one: either the request carries the answer document inline, streaming to
    ``stream_url`` with ``parameters``, or it names ``answer_url`` and the carrier fetches it.

    Args:
        to: the number to call, as the user gave it (E.164 ``+15551234567``, or whatever else
            the carrier can dial: a ``sip:`` URI …); the hook checks it.
        from_: the caller id to present (a number of the account).
        stream_url: the absolute ``wss://`` URL of this server's media socket for the carrier
            (``ws://`` only for a loopback test server), with no query string.
        parameters: custom parameters for the media stream, including the one-time call token
            (``telewire_call_token``), which must reach the start event unchanged.
        answer_url: this server's answer webhook for the carrier (``…/answer/{carrier}``).
        status_url: this server's status webhook for the carrier (``…/status/{carrier}``): call
            progress and answering-machine results posted there are authenticated with
            ``telewire_authenticate`` and parsed with ``telewire_parse_webhook``.
        machine_detection: ``None`` for none; ``"answer"`` to learn who answered as soon as it
            is known; ``"message_end"`` to wait for the end of a machine's greeting (to leave a
            message after the beep). The result reaches the call as an ``AnsweredByFrame``.

    Returns:
        The request, or ``None`` when this carrier cannot place calls. Stops at the first
        non-None result.

    Raises:
        ConfigError: the carrier's credentials are not configured (naming the variables), a
            number is not one the carrier can dial (naming the field and the value), a URL or
            parameter cannot go into the request, or machine detection is asked of a carrier
            that cannot do it.
    """


# ---------------------------------------------------------------------------------------------
# control
# ---------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def telewire_answer_document(
    request: HttpRequest, stream_url: str, parameters: Mapping[str, str]
) -> HttpResponse | None:
    """Build the document that answers the carrier's incoming-call webhook (TwiML, BXML …).

    Args:
        request: the webhook request (already authenticated by ``telewire_authenticate``).
        stream_url: the absolute ``wss://``/``ws://`` URL of this server's media socket for the
            carrier, with no query string.
        parameters: custom parameters to pass to the media stream (they come back in the start
            frame's ``custom_parameters``).

    Returns:
        The response document, or ``None`` when the carrier has no answer webhook.
        Stops at the first non-None result.

    Raises:
        ConfigError: ``stream_url`` or ``parameters`` cannot go into the carrier's document
            (a parameter too long for the carrier, a URL scheme it refuses); names which.
    """


@hookspec(firstresult=True)
def telewire_authenticate(
    request: HttpRequest, purpose: Literal["webhook", "websocket"]
) -> bool | None:
    """Check that a webhook or WebSocket upgrade really comes from the carrier.

    Args:
        request: the request as the carrier addressed it (public URL, headers, form body).
        purpose: ``"webhook"`` for the answer webhook, ``"websocket"`` for the media upgrade.

    Returns:
        ``True`` when the signature was checked and is valid; ``False`` when checking is
        switched off (no secret configured — the plugin warns at start-up); ``None`` when the
        carrier has no such check. Stops at the first non-None result.

    Raises:
        AuthenticationError: the signature is missing or wrong. The message says which header
            and which URL were checked, never the secret.
    """
