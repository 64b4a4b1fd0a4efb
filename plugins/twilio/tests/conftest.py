"""Fixtures of the twilio carrier's tests: a clean environment and the carrier facade."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from telewire.registry import Carrier, CarrierRegistry


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TELEWIRE_TWILIO_* from the outer environment or a stray .env file."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("TELEWIRE_TWILIO_"):
            monkeypatch.delenv(name)


@pytest.fixture
def twilio(carrier_registry: CarrierRegistry) -> Carrier:
    return carrier_registry.get("twilio")
