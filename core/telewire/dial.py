"""Outbound calls: place a call through a carrier's REST API so that its answered leg streams here.

Depends on ``telewire.registry``, ``telewire.settings``, ``telewire.calltoken`` and
``telewire.errors`` (and aiohttp to send the request); ``cli`` (``telewire dial``) uses it.

The carrier's ``telewire_dial_request`` hook builds the request without I/O; this module
supplies what it needs from the process settings (``TELEWIRE_PUBLIC_URL`` gives this server's
media, answer and status URLs), adds a one-time call token to the stream parameters, sends the
request and turns the answer into a :class:`DialResult` or a :class:`~telewire.errors.DialError`
that gives the HTTP status and the carrier's own error message. The call token is signed with
``TELEWIRE_CALL_TOKEN_SECRET``, so the process that serves the call (which checks it at the
start event) must share that secret — or the caller passes the serving process's
:class:`~telewire.calltoken.CallTokens`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit, urlunsplit

from loguru import logger

from telewire import calltoken
from telewire.carrier import OutboundRequest
from telewire.errors import ConfigError, DialError
from telewire.redact import mask_text
from telewire.registry import CarrierRegistry
from telewire.settings import ServerSettings, load_settings

__all__ = ["DIAL_TOKEN_TTL_S", "DialResult", "dial", "server_urls"]

#: The least lifetime of a dialled call's token: it is issued when the call is placed, and
#: checked when the callee has answered (carriers ring for up to 60 s by default).
DIAL_TOKEN_TTL_S = 300.0
_MAX_ERROR_CHARS = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class DialResult:
    """A call the carrier accepted (it is now ringing, or queued to ring).

    Attributes:
        carrier: the carrier's name.
        call_id: the carrier's id of the new call (Twilio ``CA…``, Bandwidth ``c-…``); the
            call's start event, status webhooks and the operator API name it by this id.
        to: the number called.
        from_: the caller id presented.
        status: the carrier's first status for the call (Twilio ``queued``), when it gives one.
        http_status: the HTTP status the carrier answered (``201``).
        response: the carrier's JSON answer.
    """

    carrier: str
    call_id: str
    to: str
    from_: str
    status: str = ""
    http_status: int = 201
    response: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (``telewire dial`` prints it)."""
        return {"carrier": self.carrier, "call_id": self.call_id, "to": self.to,
                "from": self.from_, "status": self.status, "http_status": self.http_status}


def server_urls(settings: ServerSettings, carrier: str) -> dict[str, str]:
    """This server's public ``media``, ``answer`` and ``status`` URLs for ``carrier``.

    Raises:
        ConfigError: ``TELEWIRE_PUBLIC_URL`` is unset or not an absolute http(s) URL without
            a query string.
    """
    base = settings.public_url
    if not base:
        raise ConfigError("dialling needs TELEWIRE_PUBLIC_URL: the https:// base URL at which "
                          "the carrier reaches this server (its media socket and webhooks)")
    try:
        parts = urlsplit(base)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"TELEWIRE_PUBLIC_URL {base!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"TELEWIRE_PUBLIC_URL {base!r} must be an absolute https:// URL "
                          "(http:// only for a test server)")
    if parts.query or parts.fragment:
        raise ConfigError(f"TELEWIRE_PUBLIC_URL {base!r} must not have a query string or "
                          "fragment")
    prefix = parts.path.rstrip("/")
    ws = "wss" if parts.scheme == "https" else "ws"

    def url(scheme: str, route: str) -> str:
        return urlunsplit((scheme, parts.netloc, f"{prefix}/{route}/{carrier}", "", ""))

    return {"media": url(ws, "media"), "answer": url(parts.scheme, "answer"),
            "status": url(parts.scheme, "status")}


def _parameters(settings: ServerSettings, given: Mapping[str, str],
                tokens: calltoken.CallTokens | None, carrier: str) -> dict[str, str]:
    params = dict(settings.answer_parameters)
    for name, value in given.items():
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise ConfigError(f"dial parameter {name!r}: names and values must be strings "
                              "(and a name not empty)")
        if name == calltoken.PARAMETER:
            raise ConfigError(f"dial parameter {name!r} is reserved for the call token")
        params[name] = value
    if tokens is None and settings.call_token_secret is not None:
        tokens = calltoken.CallTokens(settings.call_token_secret.get_secret_value().encode(),
                                      ttl_s=max(settings.call_token_ttl_s, DIAL_TOKEN_TTL_S))
    if tokens is not None:
        params[calltoken.PARAMETER] = tokens.issue(carrier)
    elif settings.call_tokens != "off":
        raise ConfigError("dialling needs TELEWIRE_CALL_TOKEN_SECRET, the same value as the "
                          "serving process's, so that the server can check the one-time call "
                          "token the answered call brings back (or set TELEWIRE_CALL_TOKENS=off "
                          "on both)")
    return params


def _carrier_error(body: str) -> tuple[str | None, str]:
    """The carrier's error code and message from an error body (JSON or text)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None, " ".join(body.split())[:_MAX_ERROR_CHARS]
    if not isinstance(doc, dict):
        return None, " ".join(body.split())[:_MAX_ERROR_CHARS]
    code = doc.get("code", doc.get("type"))
    message = next((doc[k] for k in ("message", "description", "error", "detail")
                    if isinstance(doc.get(k), str)), None)
    if message is None:
        message = " ".join(body.split())[:_MAX_ERROR_CHARS]
    more = doc.get("more_info")
    if isinstance(more, str) and more:
        message += f" (see {more})"
    return (str(code) if code is not None else None), message[:_MAX_ERROR_CHARS]


def _where(url: str) -> str:
    """The URL without user-info, query or fragment (for messages)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


async def _send(carrier: str, request: OutboundRequest, timeout_s: float
                ) -> tuple[int, str]:
    import aiohttp

    if request.form and request.json is not None:
        raise ConfigError(f"carrier {carrier!r}: telewire_dial_request gave both a form and a "
                          "JSON body")
    kwargs: dict[str, Any] = {"headers": dict(request.headers)}
    if request.json is not None:
        kwargs["json"] = dict(request.json)
    elif request.form:
        kwargs["data"] = list(request.form)  # a list of pairs keeps repeated names
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
            async with http.request(request.method, request.url, **kwargs) as resp:
                return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DialError(f"{carrier}: could not reach the REST API at {_where(request.url)}: "
                        f"{type(exc).__name__}: {mask_text(str(exc))[:_MAX_ERROR_CHARS]}",
                        carrier=carrier) from None


async def dial(to: str, from_: str, *, carrier: str = "twilio",
               parameters: Mapping[str, str] | None = None,
               settings: ServerSettings | None = None,
               machine_detection: Literal["answer", "message_end"] | None = None,
               registry: CarrierRegistry | None = None,
               tokens: calltoken.CallTokens | None = None,
               timeout_s: float = 15.0) -> DialResult:
    """Place a call to ``to`` from ``from_`` whose answered leg streams through this server.

    Args:
        to: the number to call (E.164, or what else the carrier dials).
        from_: the caller id (a number of the carrier account).
        carrier: the carrier's name (``twilio``, ``bandwidth``).
        parameters: custom stream parameters; they come back in the call's start frame, after
            ``TELEWIRE_ANSWER_PARAMETERS`` (which they override).
        settings: process settings (read from the environment when ``None``); ``public_url``
            and ``call_token_secret`` are used.
        machine_detection: ``"answer"`` or ``"message_end"`` to have the carrier report who
            answered (an ``AnsweredByFrame`` on ``tel_in.answered_by``); ``None`` for none.
        registry: the carriers (discovered when ``None``).
        tokens: issue the call token with these (the serving process's own) instead of a key
            from ``TELEWIRE_CALL_TOKEN_SECRET``.
        timeout_s: how long the REST request may take.

    Returns:
        The accepted call, with the carrier's call id.

    Raises:
        ConfigError: ``TELEWIRE_PUBLIC_URL`` or the call-token secret is missing, the carrier is
            unknown or cannot dial, its credentials are not set, or a number is not one it can
            dial (naming the field and value).
        DialError: the carrier refused the call (HTTP status, the carrier's code and message),
            answered without a call id, or could not be reached.
        PluginError: the carrier's hook broke its contract.
    """
    settings = settings if settings is not None else load_settings()
    registry = registry if registry is not None else CarrierRegistry()
    facade = registry.get(carrier)
    urls = server_urls(settings, carrier)
    params = _parameters(settings, parameters or {}, tokens, carrier)
    request = facade.dial_request(to=to, from_=from_, stream_url=urls["media"],
                                  parameters=params, answer_url=urls["answer"],
                                  status_url=urls["status"], machine_detection=machine_detection)
    if request is None:
        raise ConfigError(f"carrier {carrier!r} cannot place outbound calls (it implements no "
                          "telewire_dial_request)")
    log = logger.bind(carrier=carrier, call_sid="", stream_sid="")
    status, body = await _send(carrier, request, timeout_s)
    if not 200 <= status < 300:
        code, message = _carrier_error(body)
        hint = ""
        if status in (401, 403):
            hint = " (the carrier did not accept the credentials: check its account settings)"
        log.error("dial {} from {}: the carrier answered HTTP {}{}: {}", to, from_, status,
                  f", code {code}" if code else "", message)
        raise DialError(f"{carrier} refused the call to {to!r}: HTTP {status}"
                        + (f", error {code}" if code else "") + f": {mask_text(message)}{hint}",
                        carrier=carrier, http_status=status, code=code)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    call_id = doc.get(request.id_field) if isinstance(doc, dict) and request.id_field else None
    if not isinstance(call_id, str) or not call_id:
        raise DialError(f"{carrier} accepted the call to {to!r} (HTTP {status}) but its answer "
                        f"has no call id in field {request.id_field or '(none named)'!r}",
                        carrier=carrier, http_status=status)
    assert isinstance(doc, dict)
    state = doc.get("status")
    log.info("dialled {} from {}: call {} ({})", to, from_, call_id, state or f"HTTP {status}")
    return DialResult(carrier=carrier, call_id=call_id, to=to, from_=from_,
                      status=state if isinstance(state, str) else "", http_status=status,
                      response=MappingProxyType(doc))
