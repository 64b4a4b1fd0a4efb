"""X-Twilio-Signature: compute and verify Twilio's request signatures (webhooks, media upgrades).

Depends on the standard library, ``telewire.carrier`` and ``telewire.errors``; sans-I/O.

The signed string is the full URL Twilio requested followed by ``name + value`` of every POST
parameter, sorted by name (and, for a repeated name, by value); the signature is
``base64(HMAC(key, signed string))``. The key is the account Auth Token with HMAC-SHA1, or a
webhook SharedKey secret with the algorithm named in ``X-Twilio-Webhooks-Signature-Settings``.
A WebSocket upgrade is signed over its ``wss://`` URL alone. A JSON webhook is signed over its
URL alone, and the URL carries ``bodySHA256``, the SHA-256 hex digest of the raw body. Because
Twilio signs some URLs with the default port and some without, both forms are accepted, as
Twilio's own validators do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any, Callable, Iterable, Literal, Mapping
from urllib.parse import parse_qs, urlsplit

from telewire.carrier import HttpRequest
from telewire.errors import AuthenticationError

__all__ = [
    "ALGORITHMS",
    "SETTINGS_HEADER",
    "SIGNATURE_HEADER",
    "compute_signature",
    "signature_algorithm",
    "url_variants",
    "verify_request",
]

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
#: Signing algorithms Twilio uses, by the name its settings header gives them.
ALGORITHMS: Mapping[str, Callable[..., Any]] = {
    "HMAC_SHA1": hashlib.sha1,
    "HMAC_SHA256": hashlib.sha256,
}
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_WS_SCHEMES = {"http": "ws", "https": "wss"}


def compute_signature(
    key: str,
    url: str,
    params: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    *,
    algorithm: str = "HMAC_SHA1",
) -> str:
    """Return the signature Twilio would send for a request to ``url`` with POST ``params``.

    Args:
        key: the Auth Token (or SharedKey secret).
        url: the full URL, exactly as Twilio requested it.
        params: POST parameters as a mapping or as ``(name, value)`` pairs (a name may repeat);
            empty for a WebSocket upgrade or a JSON body.
        algorithm: ``"HMAC_SHA1"`` or ``"HMAC_SHA256"``.

    Raises:
        ValueError: ``algorithm`` is not one Twilio uses.
    """
    digest = ALGORITHMS.get(algorithm.upper())
    if digest is None:
        raise ValueError(f"unsupported signature algorithm {algorithm!r}; "
                         f"known: {sorted(ALGORITHMS)}")
    grouped: dict[str, set[str]] = {}
    for name, value in params.items() if isinstance(params, Mapping) else params:
        grouped.setdefault(name, set()).add(value)
    parts = [url]
    for name in sorted(grouped):
        for value in sorted(grouped[name]):
            parts.append(name)
            parts.append(value)
    mac = hmac.new(key.encode("utf-8"), "".join(parts).encode("utf-8"), digest)
    return base64.b64encode(mac.digest()).decode("ascii")


def url_variants(url: str) -> tuple[str, ...]:
    """The URL as given, without its port, and with its scheme's default port (no duplicates).

    Only the authority is changed; path and query are kept byte for byte.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # an unparsable port: the URL as given is the only candidate
        return (url,)
    head, sep, tail = url.partition("://")
    if not sep or not parts.netloc or not tail.startswith(parts.netloc):
        return (url,)
    rest = tail[len(parts.netloc):]
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if port is None:
        default = _DEFAULT_PORTS.get(parts.scheme.lower())
        bare = url
        ported = f"{head}://{parts.netloc}:{default}{rest}" if default else url
    else:
        bare = f"{head}://{userinfo}{at}{hostport[: hostport.rfind(':')]}{rest}"
        ported = url
    return tuple(dict.fromkeys((url, bare, ported)))


def signature_algorithm(settings_header: str | None) -> str:
    """The algorithm named in ``X-Twilio-Webhooks-Signature-Settings`` (``key=…,algorithm=…``);
    ``"HMAC_SHA1"`` when the header is absent or names none."""
    for part in (settings_header or "").split(","):
        name, eq, value = part.partition("=")
        if eq and name.strip().lower() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def verify_request(
    request: HttpRequest,
    purpose: Literal["webhook", "websocket"],
    *,
    auth_token: str | None,
    shared_key_secret: str | None = None,
) -> bool:
    """Verify ``request``'s ``X-Twilio-Signature``; the body of ``telewire_authenticate``.

    Args:
        request: the request as Twilio addressed it: public URL, lower-cased headers, form body.
        purpose: ``"webhook"`` (URL + POST parameters, or URL + ``bodySHA256`` for JSON) or
            ``"websocket"`` (the ``wss://`` URL alone; an ``http(s)`` scheme is read as
            ``ws(s)``, since Twilio signs the URL written in the TwiML).
        auth_token: the account Auth Token, or ``None`` when not configured.
        shared_key_secret: the webhook SharedKey secret, or ``None`` when not configured.

    Returns:
        ``True`` when the signature is valid; ``False`` when no key is configured (checking is
        off).

    Raises:
        AuthenticationError: the signature header is missing or does not match, the body does
            not match ``bodySHA256``, or the request is signed with a key or algorithm we do
            not have. The message names the header and the URL, never a key.
    """
    if auth_token is None and shared_key_secret is None:
        return False
    url = request.url
    if purpose == "websocket":
        scheme, sep, rest = url.partition("://")
        if sep and scheme.lower() in _WS_SCHEMES:
            url = f"{_WS_SCHEMES[scheme.lower()]}://{rest}"

    settings = request.header(SETTINGS_HEADER)
    if settings:
        algorithm, key = signature_algorithm(settings), shared_key_secret
        if algorithm not in ALGORITHMS:
            raise AuthenticationError(
                f"{purpose} request to {url!r}: {SETTINGS_HEADER} names signature algorithm "
                f"{algorithm!r}, which we do not support (supported: "
                f"{', '.join(sorted(ALGORITHMS))})"
            )
        if key is None:
            raise AuthenticationError(
                f"{purpose} request to {url!r} is signed with a webhook SharedKey "
                f"({SETTINGS_HEADER} is present) but TELEWIRE_TWILIO_SHARED_KEY_SECRET is not set"
            )
    else:
        algorithm, key = "HMAC_SHA1", auth_token
        if key is None:
            raise AuthenticationError(
                f"{purpose} request to {url!r} is signed with the account Auth Token (no "
                f"{SETTINGS_HEADER} header) but TELEWIRE_TWILIO_AUTH_TOKEN is not set"
            )

    signature = request.header(SIGNATURE_HEADER)
    if not signature:
        raise AuthenticationError(f"{purpose} request to {url!r} has no {SIGNATURE_HEADER} header")

    params: tuple[tuple[str, str], ...] = ()
    body_hash: str | None = None
    if purpose == "webhook":
        body_hashes = parse_qs(urlsplit(url).query).get("bodySHA256")
        if body_hashes:
            body_hash = body_hashes[0]
        else:
            params = request.form

    candidates = url_variants(url)
    if not any(_same(compute_signature(key, c, params, algorithm=algorithm), signature)
               for c in candidates):
        tried = " or ".join(repr(c) for c in candidates)
        what = "URL" if not params else f"URL and {len(params)} POST parameter(s)"
        raise AuthenticationError(
            f"{SIGNATURE_HEADER} does not match the {purpose} request: checked the {what} "
            f"{tried} with {algorithm}; the URL must be exactly the public URL Twilio called and "
            f"the key the one Twilio signs with"
        )
    if body_hash is not None and not _same(hashlib.sha256(request.body).hexdigest(), body_hash):
        raise AuthenticationError(
            f"{purpose} request to {url!r}: the body ({len(request.body)} bytes) does not match "
            f"the bodySHA256 query parameter"
        )
    return True
