"""Realtime model providers: the interface the ``realtime_agent`` node drives, and the built-ins.

Depends on ``telewire.frames`` and ``telewire.errors``; providers are looked up by name here.
"""

from __future__ import annotations

from telewire.realtime.base import FrameSink, ProviderConfig, RealtimeSession, create_session

__all__ = ["FrameSink", "ProviderConfig", "RealtimeSession", "create_session"]
