"""BXML for answering a call with a bidirectional media stream and DTMF delivered by webhook.

Depends on the standard library and ``telewire.errors``; builds a string, does no I/O.

Bandwidth's ``<StartStream>`` does not block: with nothing after it the call ends and the socket
closes at once. ``<StopStream name=… wait="true"/>`` holds the BXML until the media WebSocket
closes (Bandwidth's documented way for bidirectional streams; the vendor's pipecat example uses a
long ``<Pause>`` instead), and with nothing after it, closing the socket ends the call.
DTMF never arrives on the media socket: ``<StartGather dtmfUrl=…>`` makes Bandwidth post one
``dtmf`` webhook per keypress, while the other verbs run.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Mapping
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from telewire.errors import ConfigError

__all__ = [
    "MAX_PARAMETERS",
    "MAX_PARAMETER_NAME_CHARS",
    "MAX_PARAMETER_VALUE_CHARS",
    "events_url_for",
    "start_stream",
]

#: Bandwidth allows up to 12 ``<StreamParam>``s, names up to 256 and values up to 2048 characters.
MAX_PARAMETERS = 12
MAX_PARAMETER_NAME_CHARS = 256
MAX_PARAMETER_VALUE_CHARS = 2048
_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
# Characters XML 1.0 cannot carry at all, not even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_HTTP_FOR_WS = {"wss": "https", "ws": "http"}


def _parts(url: str, what: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"Bandwidth {what}: {url!r} is not a valid URL ({exc})") from None
    return parts


def _check_stream_url(url: str) -> None:
    parts = _parts(url, "<StartStream destination>")
    host = parts.hostname or ""
    if parts.scheme != "wss" and not (parts.scheme == "ws" and host in _LOOPBACK_HOSTS):
        raise ConfigError(
            f"Bandwidth <StartStream destination>: {url!r} must be an absolute wss:// URL "
            "(ws:// is accepted only for loopback test peers)"
        )
    if not host:
        raise ConfigError(f"Bandwidth <StartStream destination>: {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"Bandwidth <StartStream destination>: the URL must not carry "
                          f"credentials of its own (host {host!r}); set "
                          "TELEWIRE_BANDWIDTH_WEBSOCKET_AUTH instead")


def _check_text(value: str, what: str) -> None:
    bad = _NOT_XML.search(value)
    if bad:
        raise ConfigError(
            f"Bandwidth {what} contains the character U+{ord(bad.group()):04X} at index "
            f"{bad.start()}, which XML cannot carry"
        )


def _check_credentials_url(url: str, what: str) -> None:
    parts = _parts(url, what)
    if parts.scheme != "https" and (parts.hostname or "") not in _LOOPBACK_HOSTS:
        raise ConfigError(
            f"Bandwidth {what}: {url!r} is not https://, and Bandwidth sends the Basic "
            "credentials only to TLS URLs; use an https:// public URL (TELEWIRE_PUBLIC_URL or "
            "TELEWIRE_BANDWIDTH_EVENTS_URL)"
        )


def events_url_for(stream_url: str, carrier: str = "bandwidth") -> str:
    """This server's event-webhook URL, derived from its media socket URL.

    ``wss://host/prefix/media/bandwidth`` becomes ``https://host/prefix/events/bandwidth``
    (``ws://`` becomes ``http://``).

    Raises:
        ConfigError: the URL's path has no ``/media/`` segment to replace; set
            ``TELEWIRE_BANDWIDTH_EVENTS_URL`` then.
    """
    parts = _parts(stream_url, "<StartStream destination>")
    head, sep, _ = parts.path.rpartition("/media/")
    if not sep:
        raise ConfigError(
            f"Bandwidth <StartGather dtmfUrl>: cannot derive the events URL from the media "
            f"socket URL {stream_url!r} (no '/media/' in its path); set "
            "TELEWIRE_BANDWIDTH_EVENTS_URL"
        )
    scheme = _HTTP_FOR_WS.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, f"{head}/events/{carrier}", "", ""))


def _with_userinfo(url: str, credentials: tuple[str, str]) -> str:
    parts = urlsplit(url)
    user, password = (quote(s, safe="") for s in credentials)
    return urlunsplit((parts.scheme, f"{user}:{password}@{parts.netloc}", parts.path,
                       parts.query, parts.fragment))


def start_stream(
    stream_url: str,
    parameters: Mapping[str, str] | None = None,
    *,
    stream_name: str = "telewire",
    events_url: str | None = None,
    stream_event_url: str | None = None,
    credentials: tuple[str, str] | None = None,
    websocket_credentials: bool = False,
) -> str:
    """Return BXML that streams the call both ways over ``stream_url`` until the socket closes.

    ``<Response>`` holds, in order: ``<StartGather dtmfUrl=… dtmfMethod="POST">`` (when
    ``events_url`` is given), ``<StartStream name=… mode="bidirectional" tracks="inbound"
    destination=…>`` with one ``<StreamParam name=… value=…/>`` per parameter, and
    ``<StopStream name=… wait="true"/>``.

    Args:
        stream_url: absolute ``wss://`` URL of the media socket (``ws://`` only for a loopback
            host), without credentials.
        parameters: stream parameters, in order; they come back in the ``start`` message's
            ``streamParams``.
        stream_name: the stream's name, unique within the call.
        events_url: where Bandwidth posts DTMF events; ``None`` leaves ``<StartGather>`` out.
        stream_event_url: where Bandwidth posts mediaStream* events; ``None`` sends none.
        credentials: ``(username, password)`` Bandwidth must send with HTTP Basic auth on the
            webhooks named here, or ``None``.
        websocket_credentials: also put ``credentials`` in the destination URL's user-info.

    Raises:
        ConfigError: the stream URL is not acceptable; credentials would go to a non-TLS URL;
            more than 12 parameters; a parameter name is empty, too long or not a string; a
            value is not a string or too long; a text holds a character XML cannot carry. The
            message names the parameter but never shows its value (it may be a per-call secret).
    """
    _check_stream_url(stream_url)
    _check_text(stream_url, "<StartStream destination>")
    _check_text(stream_name, "<StartStream name>")
    if not stream_name:
        raise ConfigError("Bandwidth <StartStream name> must not be empty")
    params = dict(parameters or {})
    if len(params) > MAX_PARAMETERS:
        raise ConfigError(f"Bandwidth <StartStream>: {len(params)} stream parameters; Bandwidth "
                          f"allows at most {MAX_PARAMETERS}")
    root = ET.Element("Response")
    if events_url is not None:
        _check_text(events_url, "<StartGather dtmfUrl>")
        gather = ET.SubElement(root, "StartGather", {"dtmfUrl": events_url, "dtmfMethod": "POST"})
        if credentials is not None:
            _check_credentials_url(events_url, "<StartGather dtmfUrl>")
            gather.set("username", credentials[0])
            gather.set("password", credentials[1])
    destination = stream_url
    if websocket_credentials:
        if credentials is None:
            raise ConfigError("Bandwidth <StartStream destination>: websocket credentials "
                              "requested but TELEWIRE_BANDWIDTH_USERNAME/PASSWORD are not set")
        destination = _with_userinfo(stream_url, credentials)
    stream = ET.SubElement(root, "StartStream", {
        "name": stream_name, "mode": "bidirectional", "tracks": "inbound",
        "destination": destination,
    })
    if stream_event_url is not None:
        _check_text(stream_event_url, "<StartStream streamEventUrl>")
        stream.set("streamEventUrl", stream_event_url)
        stream.set("streamEventMethod", "POST")
        if credentials is not None:
            _check_credentials_url(stream_event_url, "<StartStream streamEventUrl>")
            stream.set("username", credentials[0])
            stream.set("password", credentials[1])
    for name, value in params.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"Bandwidth <StreamParam>: name must be a non-empty string, "
                              f"not {name!r}")
        if len(name) > MAX_PARAMETER_NAME_CHARS:
            raise ConfigError(f"Bandwidth <StreamParam name={name[:32]!r}…>: the name is "
                              f"{len(name)} characters; Bandwidth allows "
                              f"{MAX_PARAMETER_NAME_CHARS}")
        if not isinstance(value, str):
            raise ConfigError(f"Bandwidth <StreamParam name={name!r}>: value must be a string, "
                              f"not {type(value).__name__}")
        if len(value) > MAX_PARAMETER_VALUE_CHARS:
            raise ConfigError(f"Bandwidth <StreamParam name={name!r}>: the value is "
                              f"{len(value)} characters; Bandwidth allows "
                              f"{MAX_PARAMETER_VALUE_CHARS}")
        _check_text(name, f"<StreamParam> name {name!r}")
        _check_text(value, f"<StreamParam name={name!r}> value")
        ET.SubElement(stream, "StreamParam", {"name": name, "value": value})
    ET.SubElement(root, "StopStream", {"name": stream_name, "wait": "true"})
    return _XML_DECLARATION + ET.tostring(root, encoding="unicode")
