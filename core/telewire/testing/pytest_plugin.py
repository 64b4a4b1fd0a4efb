"""The ``telewire`` pytest plugin (entry point ``pytest11``): fixtures for carrier and app tests.

Depends on pytest at import time only; telewire's registry is imported when a fixture is first used.

Installed with telewire, so it loads in every pytest run of the environment: it defines fixtures
and nothing else (no hooks, no options, no imports of plugins), so unrelated suites pay nothing.
The carrier conformance kit itself is :mod:`telewire.testing.conformance`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pytest

if TYPE_CHECKING:
    from telewire.carrier import CallContext
    from telewire.registry import CarrierRegistry

__all__ = ["carrier_registry", "new_call"]


@pytest.fixture(scope="session")
def carrier_registry() -> CarrierRegistry:
    """The installed carriers, discovered through entry points once per test session."""
    from telewire.registry import CarrierRegistry

    return CarrierRegistry()


@pytest.fixture
def new_call(carrier_registry: CarrierRegistry) -> Callable[[str], CallContext]:
    """Factory: ``new_call("twilio")`` is a fresh per-call context for that carrier."""

    def make(carrier: str) -> CallContext:
        return carrier_registry.get(carrier).new_call()

    return make
