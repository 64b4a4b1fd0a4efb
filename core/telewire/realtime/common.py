"""What every realtime provider's session shares: close codes worth a reconnect, bounded and
escaped complaints about what a provider sends, and the hosts that need no API key.

Depends on ``websockets`` only; ``telewire.realtime.openai`` and the other providers import it.
"""

from __future__ import annotations

import time
from typing import Any

from websockets.exceptions import ConnectionClosed

__all__ = ["COMPLAINT_INTERVAL_S", "HARD_LIMIT_FACTOR", "LOOPBACK_HOSTS", "RECONNECT_CLOSE_CODES",
           "Throttle", "clean", "close_text", "describe", "error_fields"]

#: Close codes after which the session reconnects and replays the conversation: normal (the
#: provider has no business ending a live call's session; ``end_call`` is how the model hangs
#: up), going away, abnormal (no close frame), internal error, service restart, try again later.
#: Other codes (policy violation 1008, the beta refusal 4000 …) end the call.
RECONNECT_CLOSE_CODES = frozenset({1000, 1001, 1006, 1011, 1012, 1013})
#: Hosts on which a missing API key is replaced by a placeholder (local fake servers).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: The socket itself refuses messages this many times ``max_message_bytes`` (close 1009); messages
#: between the two limits are dropped with an error log and the session goes on.
HARD_LIMIT_FACTOR = 4
#: At most one log line per this many seconds about each kind of bad provider message.
COMPLAINT_INTERVAL_S = 10.0


class Throttle:
    """Allows one event per ``interval`` seconds and counts the ones it held back."""

    __slots__ = ("interval", "next_at", "held")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = 0.0
        self.held = 0

    def held_back(self) -> int | None:
        """``None`` when this event must be held back; else how many were held back since the
        last one allowed."""
        now = time.monotonic()
        if now < self.next_at:
            self.held += 1
            return None
        held, self.held = self.held, 0
        self.next_at = now + self.interval
        return held


def clean(text: str, limit: int = 300) -> str:
    """Provider (or other wire) text made safe to put in a log line or an end reason: control
    and other unprintable characters escaped, at most ``limit`` characters."""
    text = text[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def error_fields(event: dict[str, Any]) -> tuple[str, str]:
    """``error.code`` (or ``type``) and ``error.message`` of an ``error`` event, cleaned."""
    error = event.get("error") or {}
    code = error.get("code") or error.get("type") or "unknown_error"
    return clean(str(code), 80), clean(str(error.get("message", "")))


def close_text(exc: ConnectionClosed) -> str:
    close = exc.rcvd or exc.sent
    if close is None:
        return "no close frame"
    return f"close code {close.code}" + (f": {close.reason!r}" if close.reason else "")


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
