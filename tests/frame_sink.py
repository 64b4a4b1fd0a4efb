"""A frame sink for session tests: collects the frames a realtime session emits.

Re-exports the conformance kit's ``Sink`` (``telewire.testing.provider_kit``) so there is one copy.
"""

from __future__ import annotations

from telewire.testing.provider_kit import Sink

__all__ = ["Sink"]
