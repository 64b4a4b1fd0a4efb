"""Bandwidth's event webhooks: the ``<StartGather>`` DTMF callback parsed into frames for a live call.

Depends on the standard library, ``telewire.carrier``, ``telewire.frames`` and ``telewire.errors``;
sans-I/O.

Bandwidth posts a JSON body per event (``{"eventType":"dtmf","callId":"c-…","digit":"5",…}``)
and expects ``204``. The ``callId`` is the same id the media stream's ``start`` message carries
in ``metadata.callId``, so it names the live call the digit belongs to; it is checked like every
id from the wire (:func:`telewire.envelope.id_problem`) before the core looks it up or logs it.
"""

from __future__ import annotations

import json
from typing import Any

from telewire.carrier import HttpRequest, WebhookEvent
from telewire.envelope import id_problem, shown
from telewire.errors import CarrierProtocolError
from telewire.frames import DTMF_DIGITS, DTMFFrame

__all__ = ["ACKNOWLEDGED_EVENTS", "parse_event"]

CARRIER = "bandwidth"
#: Webhooks accepted without frames (``<StartStream streamEventUrl>`` may point here): they are
#: answered ``204`` when their call is live, so Bandwidth does not retry them.
ACKNOWLEDGED_EVENTS = frozenset({"mediaStreamStarted", "mediaStreamStopped",
                                 "mediaStreamRejected"})


def _error(message: str, *, event: str | None = None, field: str | None = None
           ) -> CarrierProtocolError:
    where = f" in {event!r} webhook" if event else " in webhook"
    return CarrierProtocolError(f"{CARRIER}: {message}{where}", carrier=CARRIER, event=event,
                                field=field)


def _body(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        raise _error("empty body; Bandwidth posts events as a JSON object", field="body")
    try:
        doc = json.loads(request.body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _error(f"body is not JSON ({exc}); starts with {request.body[:40]!r}",
                     field="body") from None
    if type(doc) is not dict:
        raise _error(f"body is a JSON {type(doc).__name__}, not an object", field="body")
    return doc


def _string(doc: dict[str, Any], name: str, event: str) -> str:
    value = doc.get(name)
    if value is None:
        raise _error(f"missing field {name!r}", event=event, field=name)
    if not isinstance(value, str) or not value:
        raise _error(f"field {name!r} must be a non-empty string, not {shown(value)}",
                     event=event, field=name)
    return value


def parse_event(request: HttpRequest) -> WebhookEvent:
    """Parse one Bandwidth event webhook; the body of ``telewire_parse_webhook``.

    A ``dtmf`` event becomes one :class:`~telewire.frames.DTMFFrame` per character of its
    ``digit`` (Bandwidth documents one digit per event; several valid digits are accepted, in
    order). ``mediaStreamStarted``/``Stopped``/``Rejected`` are acknowledged with no frames.

    Args:
        request: the webhook, its JSON body in ``request.body``.

    Returns:
        The event's ``callId`` and frames; no response document (the server answers ``204``).

    Raises:
        CarrierProtocolError: the body is empty, not JSON or not an object (field ``body``);
            ``eventType`` is missing or not one of these (field ``eventType``); ``callId`` is
            missing, empty or not a safe id (field ``callId``: 1 to 128 letters, digits and
            ``. _ : @ -``, not ``.`` or ``..``); ``digit`` is missing or holds a character that
            is not a keypad digit (field ``digit``). Values are shown repr'd and cut short.
    """
    doc = _body(request)
    event = doc.get("eventType")
    if event is None:
        raise _error("missing field 'eventType'", field="eventType")
    if event != "dtmf" and event not in ACKNOWLEDGED_EVENTS:
        known = ", ".join(sorted({"dtmf", *ACKNOWLEDGED_EVENTS}))
        raise _error(f"unknown event {shown(event)} (field 'eventType'); this endpoint takes: "
                     f"{known}", field="eventType")
    call_id = _string(doc, "callId", event)
    problem = id_problem(call_id)
    if problem is not None:
        raise _error(f"field 'callId' (call id) {problem}: {shown(call_id)}", event=event,
                     field="callId")
    if event != "dtmf":
        return WebhookEvent(call_id=call_id)
    digits = _string(doc, "digit", event)
    bad = [c for c in digits if c not in DTMF_DIGITS]
    if bad:
        raise _error(f"field 'digit' is {shown(digits)}, which is not a keypad digit "
                     "(0-9 * # A-D)", event=event, field="digit")
    return WebhookEvent(call_id=call_id, frames=tuple(DTMFFrame(digit=d) for d in digits))
