"""One-time call tokens: the answer webhook issues one, the call's start event must present it.

Depends on the standard library only; ``server`` issues and checks them.

A carrier's media-socket signature proves the carrier opened the socket, but Twilio signs only
the socket's URL, which is the same for every call: a captured upgrade can be replayed. So the
answer document, which the carrier fetches for one call over a signed webhook, carries a fresh
token as a stream parameter, and the start event that follows on the media socket must return
it. A token is ``v1.<expiry>.<nonce>.<mac>``: ``mac`` is HMAC-SHA256 over carrier, expiry and
nonce under the process's key, so any process holding the same key can check it; each token is
accepted once (remembered until it expires) and never after its expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Callable

__all__ = ["PARAMETER", "CallTokens"]

#: The stream parameter that carries the token (removed before the graph sees the start).
PARAMETER = "telewire_call_token"
_VERSION = "v1"
_MAX_LEN = 128


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class CallTokens:
    """Issues and checks one-time call tokens.

    Args:
        key: the signing key; a random one when ``None`` (then only this process can check).
        ttl_s: how long a token stays valid after it was issued.
        clock: wall-clock seconds (tests pass a fake).
    """

    def __init__(self, key: bytes | None = None, *, ttl_s: float = 120.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = key or secrets.token_bytes(32)
        self.ttl_s = ttl_s
        self._clock = clock
        self._used: dict[str, float] = {}  # nonce -> expiry

    def _mac(self, carrier: str, expiry: str, nonce: str) -> str:
        msg = f"{_VERSION}|{carrier}|{expiry}|{nonce}".encode()
        return _b64(hmac.new(self._key, msg, hashlib.sha256).digest())

    def issue(self, carrier: str) -> str:
        """A fresh token for one call of ``carrier``."""
        expiry = str(int(self._clock() + self.ttl_s))
        nonce = _b64(secrets.token_bytes(12))
        return f"{_VERSION}.{expiry}.{nonce}.{self._mac(carrier, expiry, nonce)}"

    def redeem(self, carrier: str, token: str | None) -> str | None:
        """Accept ``token`` for a call of ``carrier`` once.

        Returns:
            ``None`` when the token is valid (it is now spent), else why it is refused.
        """
        if not token:
            return f"the start event carries no {PARAMETER} parameter"
        if len(token) > _MAX_LEN:
            return f"{PARAMETER} is malformed"
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isdigit():
            return f"{PARAMETER} is malformed"
        _, expiry, nonce, mac = parts
        if not hmac.compare_digest(mac, self._mac(carrier, expiry, nonce)):
            return f"{PARAMETER} does not check out (wrong key or carrier)"
        now = self._clock()
        if int(expiry) < now:
            return f"{PARAMETER} expired {now - int(expiry):.0f} s ago"
        self._forget_expired(now)
        if nonce in self._used:
            return f"{PARAMETER} was already used by another call"
        self._used[nonce] = float(expiry)
        return None

    def _forget_expired(self, now: float) -> None:
        if len(self._used) > 64:
            for nonce in [n for n, exp in self._used.items() if exp < now]:
                del self._used[nonce]
