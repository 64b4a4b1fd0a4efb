"""A shared secret on a bridge's media WebSocket upgrade, checked in constant time.

Depends on the standard library and telewire's public API (``carrier``, ``errors``); sans-I/O.

SIP bridges sign nothing, so the check is a secret the operator configures on both sides
(``TELEWIRE_SIP_BRIDGE_SECRET``) that the bridge presents in a header (``Authorization: Bearer
…`` by default) or, when allowed, in a query parameter. Every place the secret may be is
compared, always all of them, with :func:`hmac.compare_digest`, so the time taken says nothing
about which part differed. Errors name the header, the query parameter and the URL (without its
query string), never a secret.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Literal

from telewire.carrier import HttpRequest
from telewire.errors import AuthenticationError

from telewire_sip_bridge.settings import ENV_PREFIX, SipBridgeSettings

__all__ = ["verify_secret"]


def _presented(request: HttpRequest, settings: SipBridgeSettings) -> list[bytes]:
    """Every value in the request that claims to be the secret."""
    found: list[bytes] = []
    value = request.header(settings.header)
    if value is not None:
        value = value.strip()
        if settings.header.lower() == "authorization":
            scheme, _, rest = value.partition(" ")
            rest = rest.strip()
            if scheme.lower() == "bearer":
                found.append(rest.encode("utf-8", "surrogateescape"))
            elif scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(rest, validate=True)
                except (binascii.Error, ValueError):
                    decoded = b""
                _, sep, password = decoded.partition(b":")
                if sep:
                    found.append(password)
        else:
            found.append(value.encode("utf-8", "surrogateescape"))
    if settings.query_parameter is not None:
        found += [v.encode("utf-8", "surrogateescape") for k, v in request.query
                  if k == settings.query_parameter]
    return found


def _places(settings: SipBridgeSettings) -> str:
    """Where the secret is looked for, for error messages."""
    if settings.header.lower() == "authorization":
        places = "the Authorization header (Bearer, or Basic with the secret as password)"
    else:
        places = f"the {settings.header} header"
    if settings.query_parameter is not None:
        places += f" or the {settings.query_parameter!r} query parameter"
    return places


def verify_secret(request: HttpRequest, purpose: Literal["webhook", "websocket"],
                  settings: SipBridgeSettings) -> bool:
    """Check that ``request`` carries the shared secret; the body of ``telewire_authenticate``.

    Args:
        request: the upgrade (or webhook) as the bridge addressed it (lower-cased headers).
        purpose: ``"webhook"`` or ``"websocket"``, for the error message.
        settings: the carrier's settings (secret, header, query parameter).

    Returns:
        ``True`` when the secret matches; ``False`` when no secret is configured (checking is
        off).

    Raises:
        AuthenticationError: the secret is missing or wrong. The message names where it was
            looked for and the URL without its query string, never a secret.
    """
    if settings.secret is None:
        return False
    expected = settings.secret.get_secret_value().encode("utf-8")
    where = f"{purpose} request to {request.url.split('?', 1)[0]!r}"
    places = _places(settings)
    presented = _presented(request, settings)
    if not presented:
        raise AuthenticationError(f"{where} carries no shared secret in {places} "
                                  f"({ENV_PREFIX}SECRET is set, so the bridge must send it)")
    matched = False
    for candidate in presented:  # every one is compared, whatever the others gave
        matched |= hmac.compare_digest(candidate, expected)
    if not matched:
        raise AuthenticationError(f"{where}: {places} does not carry the shared secret "
                                  f"({ENV_PREFIX}SECRET)")
    return True
