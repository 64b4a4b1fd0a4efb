"""Which asyncio event loop a telewire process runs on (``TELEWIRE_LOOP``).

Depends on ``telewire.errors`` only, so that light processes (the benchmark's bare relay) choose
their loop exactly as ``telewire serve`` does without importing the rest of telewire.
"""

from __future__ import annotations

import asyncio

from telewire.errors import ConfigError

__all__ = ["use_event_loop"]


def use_event_loop(choice: str) -> str:
    """Install the event loop policy for ``choice`` and return the loop's name.

    ``auto`` uses uvloop when it is installed, else asyncio's own loop; ``uvloop`` requires it;
    ``asyncio`` is the standard library's loop.

    Raises:
        ConfigError: ``uvloop`` was asked for and is not installed.
    """
    if choice in ("auto", "uvloop"):
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return "uvloop"
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("TELEWIRE_LOOP=uvloop but uvloop is not installed "
                                  "(pip install 'telewire[uvloop]')") from None
    return "asyncio"
