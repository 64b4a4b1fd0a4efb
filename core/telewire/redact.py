"""Which names and values are secrets, and how they are masked wherever configuration is shown.

Depends on ``pydantic`` only (for ``SecretStr``); settings, graph loading and the CLI depend on it.

A value is secret when its own name, or the name of any table it sits in, looks like a secret's
(``api_key``, ``authToken``, ``X-Api-Key``, ``password``, ``credentials`` …), or when it is a
``SecretStr``. URLs are masked wherever they appear: their userinfo (``s3://AKIA:…@host``) and
the values of secret-like query parameters (``?api-key=…``, ``&sig=…``, ``X-Amz-Signature``).
Over-masking is the safe side: ``key_prefix`` is masked too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

__all__ = ["MASK", "is_secret_name", "mask", "mask_text", "shown"]

#: What a masked value prints as.
MASK = "**********"

# Matched against the name with camelCase split (``apiKey`` -> ``api_key``), case-insensitive.
# ``token(?!s)`` leaves ``max_output_tokens`` alone; ``key`` and ``sig`` must be whole words
# (``monkey``, ``signal`` are not secrets).
_SECRET_NAME = re.compile(
    r"secret|passw|pwd|credential|auth|api_?key|private|signature|token(?!s)"
    r"|(?<![a-z])(?:key|sig|sas|cookie|session_?id)(?![a-z])",
    re.IGNORECASE)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# A URL with a scheme, up to whitespace or a quote: enough to find userinfo and a query.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`]+")


def is_secret_name(name: object) -> bool:
    """``True`` when ``name`` (a config key, a query parameter, a header) looks like a secret's."""
    if not isinstance(name, str) or not name:
        return False
    return _SECRET_NAME.search(_CAMEL.sub("_", name)) is not None


def _mask_url(match: re.Match[str]) -> str:
    url = match.group(0)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:  # not parseable as a URL: keep only its scheme
        return url.split("://", 1)[0] + "://" + MASK
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_name(k) for k, _ in pairs):
            query = "&".join(f"{quote(k, safe='-_.~')}="
                             + (MASK if is_secret_name(k) and v else quote(v, safe="-_.~:/"))
                             for k, v in pairs)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_text(text: str) -> str:
    """``text`` with every URL in it masked (userinfo, secret-like query parameters)."""
    if "://" not in text:
        return text
    return _URL.sub(_mask_url, text)


def mask(value: Any, *, secret: bool = False) -> Any:
    """A copy of ``value`` fit to print: JSON-like data (models become dicts, paths strings)
    with every secret masked.

    Strings, bytes and ``SecretStr`` under a secret-like name (at any depth: everything inside a
    ``credentials`` table is secret) print as :data:`MASK` (``""`` when empty); numbers, booleans
    and ``None`` print as they are (``call_token_ttl_s`` is not a secret). Every other string has
    its URLs masked.

    Args:
        value: settings, a node config, or any JSON-like value.
        secret: ``value`` itself sits under a secret-like name.
    """
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if isinstance(value, (str, bytes)):
        if secret:
            return MASK if value else ""
        return mask_text(value) if isinstance(value, str) else value
    if isinstance(value, BaseModel):
        return {k: mask(getattr(value, k), secret=secret or is_secret_name(k))
                for k in type(value).model_fields}
    if isinstance(value, dict):
        return {k: mask(v, secret=secret or is_secret_name(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [mask(v, secret=secret) for v in value]
    if isinstance(value, Path):
        return mask_text(str(value))
    return value


def shown(value: Any, *path: object) -> str:
    """``repr`` of ``value`` for an error message, or :data:`MASK` when any name on ``path``
    (the keys that lead to it) is secret-like. Unlike :func:`mask`, a secret number is masked
    too: an error is often about a value of the wrong type (``api_key = 12345``)."""
    if any(is_secret_name(p) for p in path) or isinstance(value, SecretStr):
        return MASK
    return repr(mask(value))
