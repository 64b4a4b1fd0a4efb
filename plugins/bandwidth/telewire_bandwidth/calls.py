"""Bandwidth's create-call API request, and the dial parameters carried in the call's ``tag``.

Depends on the standard library, ``telewire.carrier`` and ``telewire.errors``; builds values, no I/O.

Creating a call is ``POST {api}/api/v2/accounts/{accountId}/calls`` with a JSON body and HTTP
Basic API credentials (https://dev.bandwidth.com/docs/voice/guides/outboundCall/ and the
``createCall`` operation of Bandwidth's Voice API reference). When the callee answers,
Bandwidth posts the ``answer`` webhook to ``answerUrl`` — this server's ``/answer/bandwidth``,
which answers with the same ``<StartStream>`` BXML as for an inbound call, with a fresh call
token. Bandwidth sends the call's ``tag`` with every webhook of the call, so the dial's own
stream parameters travel there (as a JSON object) and the answer document adds them as
``<StreamParam>``s.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Literal, Mapping
from urllib.parse import quote, urlsplit

from telewire.carrier import OutboundRequest
from telewire.errors import ConfigError

__all__ = ["MAX_TAG_CHARS", "TOKEN_PARAMETER", "create_call", "tag_parameters"]

#: Bandwidth's limit on a call's ``tag``.
MAX_TAG_CHARS = 256
#: The stream parameter that carries the one-time call token: the answer webhook issues its
#: own, so a dial's is never put in the tag.
TOKEN_PARAMETER = "telewire_call_token"
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_SIP = re.compile(r"sips?:[^\s<>\"]{1,250}")
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _number(field: str, value: object, *, sip: bool) -> str:
    if isinstance(value, str):
        value = value.strip()
        if _E164.fullmatch(value) or (sip and _SIP.fullmatch(value)):
            return value
    kinds = "an E.164 number (+15551234567) or a sip: URI" if sip else \
        "an E.164 number (+15551234567) of your account"
    raise ConfigError(f"bandwidth: {field} {_shown(value)} is not {kinds}")


def create_call(
    *,
    account_id: str,
    application_id: str,
    api_credentials: tuple[str, str],
    api_base_url: str,
    to: str,
    from_: str,
    answer_url: str,
    parameters: Mapping[str, str],
    webhook_credentials: tuple[str, str] | None = None,
    machine_detection: Literal["answer", "message_end"] | None = None,
) -> OutboundRequest:
    """The create-call request: JSON ``to``, ``from``, ``applicationId``, ``answerUrl``,
    ``answerMethod`` (``POST``); ``username``/``password`` (the Basic credentials Bandwidth
    must send to ``answerUrl``) when configured; ``tag`` when there are dial parameters.

    Raises:
        ConfigError: ``to``/``from`` not dialable (naming the field and value), credentials
            bound for a non-TLS ``answerUrl``, parameters too long for the ``tag``, or machine
            detection asked for (not supported here yet).
    """
    if machine_detection is not None:
        raise ConfigError("bandwidth: answering-machine detection is not supported by "
                          "telewire's Bandwidth dialler; dial without it")
    body: dict[str, Any] = {
        "to": _number("to", to, sip=True),
        "from": _number("from", from_, sip=False),
        "applicationId": application_id,
        "answerUrl": answer_url,
        "answerMethod": "POST",
    }
    parts = urlsplit(answer_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"bandwidth: answerUrl {answer_url!r} must be an absolute https:// URL")
    if webhook_credentials is not None:
        if parts.scheme != "https" and parts.hostname not in _LOOPBACK_HOSTS:
            raise ConfigError(f"bandwidth: answerUrl {answer_url!r} is not https://, and "
                              "Bandwidth sends the Basic credentials only to TLS URLs; use an "
                              "https:// TELEWIRE_PUBLIC_URL")
        body["username"], body["password"] = webhook_credentials
    extra = {k: v for k, v in parameters.items() if k != TOKEN_PARAMETER}
    if extra:
        tag = json.dumps(extra, separators=(",", ":"), ensure_ascii=False)
        if len(tag) > MAX_TAG_CHARS:
            raise ConfigError(f"bandwidth: the dial parameters make a tag of {len(tag)} "
                              f"characters (as JSON); Bandwidth allows {MAX_TAG_CHARS}")
        body["tag"] = tag
    user, password = api_credentials
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return OutboundRequest(
        method="POST",
        url=f"{api_base_url.rstrip('/')}/api/v2/accounts/{quote(account_id, safe='')}/calls",
        headers={"Authorization": f"Basic {credentials}", "Accept": "application/json"},
        json=body,
        id_field="callId",
    )


def tag_parameters(body: bytes) -> dict[str, str]:
    """The dial parameters in an answer webhook's ``tag`` (``{}`` when there are none).

    A tag that is not a JSON object of strings (one set by something else) is ignored, and so
    is a ``telewire_call_token`` in it: the answer webhook issues the token.
    """
    if not body:
        return {}
    try:
        doc = json.loads(body)
        tag = json.loads(doc.get("tag") or "{}") if isinstance(doc, dict) else {}
    except (ValueError, TypeError, RecursionError):
        return {}
    if not isinstance(tag, dict):
        return {}
    return {k: v for k, v in tag.items()
            if isinstance(k, str) and k and isinstance(v, str) and k != TOKEN_PARAMETER}
