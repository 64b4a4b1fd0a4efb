"""Twilio's Calls REST API (create a call) and its status callbacks, built and parsed without I/O.

Depends on the standard library, ``telewire.carrier``, ``telewire.frames`` and ``telewire.errors``.

Creating a call is ``POST {api}/2010-04-01/Accounts/{AccountSid}/Calls.json``, form-encoded, HTTP
Basic ``AccountSid:AuthToken`` (https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource;
the field names are those ``twilio.rest.api.v2010.account.call.CallList.create`` sends). The
answered call runs the inline ``Twiml``: ``<Connect><Stream>`` to this server's media socket,
whose ``<Parameter>``s carry the one-time call token. Call progress (``StatusCallbackEvent``
``initiated ringing answered completed``) and, with ``MachineDetection`` and ``AsyncAmd=true``,
the answering-machine result (``AnsweredBy``) are posted to the status URL; asynchronous AMD
lets the call stream (and the agent speak) while detection runs, so the result arrives while
the call is live.
"""

from __future__ import annotations

import base64
import re
from typing import Literal, Mapping
from urllib.parse import quote, urlsplit

from telewire.carrier import HttpRequest, OutboundRequest, WebhookEvent
from telewire.errors import CarrierProtocolError, ConfigError
from telewire.frames import ANSWERED_BY, AnsweredByFrame

from telewire_twilio.twiml import connect_stream

__all__ = ["MACHINE_DETECTION", "MAX_TWIML_CHARS", "STATUS_EVENTS", "create_call",
           "parse_status"]

#: Twilio refuses inline TwiML longer than this.
MAX_TWIML_CHARS = 4000
#: The call progress events asked for.
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
#: telewire's machine-detection modes as Twilio's ``MachineDetection`` values.
MACHINE_DETECTION = {"answer": "Enable", "message_end": "DetectMessageEnd"}
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_SIP = re.compile(r"sips?:[^\s<>\"]{1,250}")
_CLIENT = re.compile(r"client:[A-Za-z0-9_.\-]{1,121}")
_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
_CARRIER = "twilio"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _check_number(field: str, value: object, *, sip: bool) -> str:
    if isinstance(value, str):
        value = value.strip()
        if _E164.fullmatch(value) or _CLIENT.fullmatch(value) or (sip and _SIP.fullmatch(value)):
            return value
    kinds = "an E.164 number (+15551234567), a sip: URI or a client: name" if sip else \
        "an E.164 number (+15551234567) of your account or a client: name"
    raise ConfigError(f"twilio: {field} {_shown(value)} is not {kinds}")


def _check_http_url(field: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"twilio: {field} {url!r} must be an absolute https:// URL")


def create_call(
    *,
    account_sid: str,
    auth_token: str,
    api_base_url: str,
    to: str,
    from_: str,
    stream_url: str,
    parameters: Mapping[str, str],
    status_url: str,
    machine_detection: Literal["answer", "message_end"] | None = None,
) -> OutboundRequest:
    """The Calls API request creating a call to ``to`` that streams to ``stream_url``.

    Form fields, in order: ``To``, ``From``, ``Twiml``, ``StatusCallback``,
    ``StatusCallbackMethod`` (``POST``), ``StatusCallbackEvent`` four times (``initiated``,
    ``ringing``, ``answered``, ``completed``); with machine detection also ``MachineDetection``
    (``Enable`` or ``DetectMessageEnd``), ``AsyncAmd`` (``true``), ``AsyncAmdStatusCallback``
    (the status URL) and ``AsyncAmdStatusCallbackMethod`` (``POST``).

    Raises:
        ConfigError: ``to``/``from_`` not dialable (naming the field and value), a bad URL or
            parameter (see :func:`telewire_twilio.twiml.connect_stream`), TwiML over 4000
            characters, or an unknown machine-detection mode.
    """
    to = _check_number("To", to, sip=True)
    from_ = _check_number("From", from_, sip=False)
    _check_http_url("StatusCallback", status_url)
    twiml = connect_stream(stream_url, parameters)
    if len(twiml) > MAX_TWIML_CHARS:
        raise ConfigError(f"twilio: Twiml is {len(twiml)} characters; Twilio takes at most "
                          f"{MAX_TWIML_CHARS} (fewer or shorter stream parameters)")
    form: list[tuple[str, str]] = [
        ("To", to), ("From", from_), ("Twiml", twiml),
        ("StatusCallback", status_url), ("StatusCallbackMethod", "POST"),
        *(("StatusCallbackEvent", event) for event in STATUS_EVENTS),
    ]
    if machine_detection is not None:
        mode = MACHINE_DETECTION.get(machine_detection)
        if mode is None:
            raise ConfigError(f"twilio: machine detection {machine_detection!r} is not one of "
                              f"{sorted(MACHINE_DETECTION)}")
        form += [("MachineDetection", mode), ("AsyncAmd", "true"),
                 ("AsyncAmdStatusCallback", status_url),
                 ("AsyncAmdStatusCallbackMethod", "POST")]
    credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode("ascii")
    return OutboundRequest(
        method="POST",
        url=(f"{api_base_url.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}"
             "/Calls.json"),
        headers={"Authorization": f"Basic {credentials}", "Accept": "application/json"},
        form=tuple(form),
        id_field="sid",
    )


def _error(message: str, field: str) -> CarrierProtocolError:
    return CarrierProtocolError(f"{_CARRIER}: status callback: {message}", carrier=_CARRIER,
                                event="status", field=field)


def parse_status(request: HttpRequest) -> WebhookEvent:
    """Parse a status callback (call progress, or the asynchronous AMD result).

    Returns:
        The ``CallSid``, and one :class:`~telewire.frames.AnsweredByFrame` when the callback
        carries ``AnsweredBy`` (with ``MachineDetectionDuration`` as ``detection_ms``); no
        frames otherwise. No response document (the server answers ``204``).

    Raises:
        CarrierProtocolError: ``CallSid`` missing or not ``CA`` + 32 hex digits; ``AnsweredBy``
            not one Twilio documents; ``MachineDetectionDuration`` not a number of ms.
    """
    params = request.params()
    call_sid = params.get("CallSid")
    if not call_sid:
        raise _error("missing field 'CallSid'", "CallSid")
    if not _CALL_SID.fullmatch(call_sid):
        raise _error(f"field 'CallSid' {_shown(call_sid)} is not a call SID (CA + 32 hex "
                     "digits)", "CallSid")
    answered_by = params.get("AnsweredBy")
    if not answered_by:
        return WebhookEvent(call_id=call_sid)
    if answered_by not in ANSWERED_BY:
        raise _error(f"field 'AnsweredBy' {_shown(answered_by)} is not one of "
                     f"{', '.join(sorted(ANSWERED_BY))}", "AnsweredBy")
    duration = params.get("MachineDetectionDuration")
    detection_ms = None
    if duration:
        if not duration.isdigit() or len(duration) > 9:
            raise _error(f"field 'MachineDetectionDuration' {_shown(duration)} is not a "
                         "number of milliseconds", "MachineDetectionDuration")
        detection_ms = int(duration)
    return WebhookEvent(call_id=call_sid,
                        frames=(AnsweredByFrame(result=answered_by, detection_ms=detection_ms),))
