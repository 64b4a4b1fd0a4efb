"""Request signatures of the __carrier__ carrier: compute and verify ``X-__Carrier__-Signature``.

Depends on the standard library, ``telewire.carrier`` and ``telewire.errors``; sans-I/O.

The template's example scheme: the header holds ``base64(HMAC-SHA256(secret, url + body))``
over the full URL the carrier requested (``wss://`` for a media upgrade) and the raw body
(empty for an upgrade). Replace it with your carrier's documented scheme, and keep the rule
that an error names the header and URL checked, never the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from telewire.carrier import HttpRequest
from telewire.errors import AuthenticationError

__all__ = ["SIGNATURE_HEADER", "compute_signature", "verify_request"]

SIGNATURE_HEADER = "X-__Carrier__-Signature"


def compute_signature(secret: str, url: str, body: bytes = b"") -> str:
    """Return the signature the carrier sends for a request to ``url`` with ``body``."""
    mac = hmac.new(secret.encode("utf-8"), url.encode("utf-8") + body, hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def verify_request(request: HttpRequest, secret: str | None) -> bool:
    """Check ``request``'s signature header.

    Args:
        request: the request as the carrier addressed it.
        secret: the signing secret; ``None`` when none is configured.

    Returns:
        ``True`` when the signature is valid; ``False`` when ``secret`` is ``None`` (checking
        is off).

    Raises:
        AuthenticationError: the header is missing or does not match, naming the header and
            the URL checked.
    """
    if secret is None:
        return False
    given = request.header(SIGNATURE_HEADER)
    if not given:
        raise AuthenticationError(f"missing {SIGNATURE_HEADER} header on {request.url}")
    expected = compute_signature(secret, request.url, request.body)
    if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("ascii")):
        raise AuthenticationError(f"{SIGNATURE_HEADER} does not match the request to "
                                  f"{request.url} (wrong secret, or the URL or body changed "
                                  "on the way)")
    return True
