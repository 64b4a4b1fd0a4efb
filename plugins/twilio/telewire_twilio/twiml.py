"""TwiML for answering a call with a bidirectional media stream (``<Connect><Stream>``).

Depends on the standard library and ``telewire.errors``; builds a string, does no I/O.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Mapping
from urllib.parse import urlsplit

from telewire.errors import ConfigError

__all__ = ["MAX_PARAMETER_CHARS", "connect_stream"]

#: Twilio requires a ``<Parameter>``'s name and value together to be shorter than this.
MAX_PARAMETER_CHARS = 500
_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
# Characters XML 1.0 cannot carry at all, not even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _check_stream_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"Twilio <Stream url>: {url!r} is not a valid URL ({exc})") from None
    host = parts.hostname or ""
    if parts.scheme != "wss" and not (parts.scheme == "ws" and host in _LOOPBACK_HOSTS):
        raise ConfigError(
            f"Twilio <Stream url>: {url!r} must be an absolute wss:// URL (Twilio connects to "
            "media streams only over TLS; ws:// is accepted only for loopback test peers)"
        )
    if not host:
        raise ConfigError(f"Twilio <Stream url>: {url!r} has no host")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ConfigError(
            f"Twilio <Stream url>: {url!r} has a query string or fragment, which Twilio strips "
            "or rejects (error 31920); pass such values as stream parameters instead"
        )


def _check_text(value: str, what: str) -> None:
    bad = _NOT_XML.search(value)
    if bad:
        raise ConfigError(
            f"Twilio {what} contains the character U+{ord(bad.group()):04X} at index "
            f"{bad.start()}, which XML cannot carry"
        )


def connect_stream(
    stream_url: str,
    parameters: Mapping[str, str] | None = None,
    *,
    status_callback: str | None = None,
) -> str:
    """Return TwiML that connects the call to ``stream_url`` until the socket closes.

    ``<Response><Connect><Stream url=… [statusCallback=…]><Parameter name=… value=…/>…``.
    With nothing after ``</Connect>``, closing the media socket ends the call.

    Args:
        stream_url: absolute ``wss://`` URL of the media socket, without a query string
            (``ws://`` only for a loopback host).
        parameters: custom parameters, in order; they come back in the ``start`` event's
            ``customParameters``.
        status_callback: absolute URL for Twilio's stream status events, if wanted.

    Raises:
        ConfigError: the URL is not an acceptable stream URL; a parameter name is empty or not
            a string, a value is not a string, a name + value reach 500 characters, or a text
            holds a character XML cannot carry. The message names the parameter but never
            shows its value (it may be a per-call secret).
    """
    _check_stream_url(stream_url)
    _check_text(stream_url, "<Stream url>")
    root = ET.Element("Response")
    stream = ET.SubElement(ET.SubElement(root, "Connect"), "Stream", {"url": stream_url})
    if status_callback:
        _check_text(status_callback, "<Stream statusCallback>")
        stream.set("statusCallback", status_callback)
    for name, value in (parameters or {}).items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"Twilio <Parameter>: name must be a non-empty string, not {name!r}")
        if not isinstance(value, str):
            raise ConfigError(
                f"Twilio <Parameter name={name!r}>: value must be a string, not "
                f"{type(value).__name__}"
            )
        size = len(name) + len(value)
        if size >= MAX_PARAMETER_CHARS:
            raise ConfigError(
                f"Twilio <Parameter name={name!r}>: name and value are {size} characters "
                f"together; Twilio allows fewer than {MAX_PARAMETER_CHARS}"
            )
        _check_text(name, f"<Parameter> name {name!r}")
        _check_text(value, f"<Parameter name={name!r}> value")
        ET.SubElement(stream, "Parameter", {"name": name, "value": value})
    return _XML_DECLARATION + ET.tostring(root, encoding="unicode")


_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


def dial(target: str) -> str:
    """TwiML that dials ``target``: an E.164 number (``<Number>``) or a ``sip:`` URI (``<Sip>``).

    Raises:
        ConfigError: ``target`` is neither.
    """
    root = ET.Element("Response")
    element = ET.SubElement(root, "Dial")
    if _E164.fullmatch(target):
        ET.SubElement(element, "Number").text = target
    elif target.startswith(("sip:", "sips:")) and len(target) > 4 and " " not in target:
        ET.SubElement(element, "Sip").text = target
    else:
        raise ConfigError(f"twilio: cannot dial {target!r}: give an E.164 number (+15551234567) "
                          "or a sip: URI")
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode")
