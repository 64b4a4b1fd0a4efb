"""Shared fixtures: a Twilio-shaped envelope compiled from the plugin's own data file."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TWILIO_ENVELOPE = ROOT / "plugins" / "twilio" / "telewire_twilio" / "envelope.toml"


@pytest.fixture(scope="session")
def twilio_envelope():
    from telewire.envelope import load_envelope_file

    return load_envelope_file("twilio", TWILIO_ENVELOPE)
