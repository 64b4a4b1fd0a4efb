"""HTTP Basic authentication of Bandwidth's callbacks (and, opt-in, of the media WebSocket upgrade).

Depends on the standard library, ``telewire.carrier`` and ``telewire.errors``; sans-I/O.

Bandwidth signs nothing: it authenticates its webhooks with HTTP Basic credentials that you
configure (on the application, or as ``username``/``password`` attributes of a BXML verb). The
check here compares user name and password in constant time, and its errors name the header and
the URL, never a credential.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Literal

from telewire.carrier import HttpRequest
from telewire.errors import AuthenticationError

__all__ = ["AUTHORIZATION_HEADER", "basic_authorization", "verify_basic"]

AUTHORIZATION_HEADER = "Authorization"


def basic_authorization(username: str, password: str) -> str:
    """The ``Authorization`` header value Bandwidth sends for these credentials."""
    token = base64.b64encode(f"{username}:{password}".encode("utf-8")).decode("ascii")
    return f"Basic {token}"


def verify_basic(
    request: HttpRequest,
    purpose: Literal["webhook", "websocket"],
    credentials: tuple[str, str] | None,
) -> bool:
    """Verify ``request``'s HTTP Basic credentials; the body of ``telewire_authenticate``.

    Args:
        request: the request as Bandwidth addressed it (lower-cased headers).
        purpose: ``"webhook"`` or ``"websocket"``, for the error message.
        credentials: the configured ``(username, password)``, or ``None`` when not configured.

    Returns:
        ``True`` when the credentials match; ``False`` when none are configured (checking is off).

    Raises:
        AuthenticationError: the ``Authorization`` header is missing, is not Basic credentials,
            or carries other credentials. The message names the header and URL, never a secret.
    """
    if credentials is None:
        return False
    header = request.header(AUTHORIZATION_HEADER)
    where = f"{purpose} request to {request.url!r}"
    if not header:
        raise AuthenticationError(f"{where} has no {AUTHORIZATION_HEADER} header (HTTP Basic "
                                  "credentials are configured, so Bandwidth must send them)")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        raise AuthenticationError(f"{where}: the {AUTHORIZATION_HEADER} header is not HTTP "
                                  f"Basic credentials (scheme {scheme[:16]!r})")
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise AuthenticationError(f"{where}: the {AUTHORIZATION_HEADER} header's Basic "
                                  "credentials are not valid base64") from None
    user, sep, password = decoded.partition(b":")
    # RFC 7617 leaves the charset of non-ASCII credentials to the sender; which one Bandwidth
    # uses is undocumented, so both common ones are accepted. Every comparison always runs,
    # so the time taken does not tell which part failed.
    matched = False
    for charset in ("utf-8", "latin-1"):
        try:
            expected_user, expected_password = (s.encode(charset) for s in credentials)
        except UnicodeEncodeError:
            continue
        same_user = hmac.compare_digest(user, expected_user)
        same_password = hmac.compare_digest(password, expected_password)
        matched |= same_user & same_password
    if not (sep and matched):
        raise AuthenticationError(f"{where}: the {AUTHORIZATION_HEADER} header does not carry "
                                  "the configured credentials (TELEWIRE_BANDWIDTH_USERNAME / "
                                  "TELEWIRE_BANDWIDTH_PASSWORD)")
    return True
