"""The provider kit's conformance tests for the ``openai`` provider, through the GA fake's
:class:`~telewire.testing.realtime_fake_adapter.RealtimeFake` (and what the adapter reports)."""

from __future__ import annotations

import pytest

from telewire.testing.provider_kit import ProviderTests
from telewire.testing.realtime_fake_adapter import (
    AzureRealtimeFake,
    RealtimeFake,
    XAIRealtimeFake,
    ga_problem,
)


class TestOpenAIConformance(ProviderTests):
    """The kit, run for ``openai`` against :class:`FakeRealtimeServer`."""

    provider = "openai"
    fake_class = RealtimeFake


class TestAzureConformance(ProviderTests):
    """The kit for ``azure`` (the GA protocol, a deployment name, the ``api-key`` header)."""

    provider = "azure"
    fake_class = AzureRealtimeFake


def test_rt_config_points_each_provider_at_its_fake() -> None:
    assert RealtimeFake.provider == "openai" and XAIRealtimeFake.provider == "xai"
    with pytest.raises(ValueError, match="mode"):
        RealtimeFake(mode="talk")


def test_ga_problem_names_what_is_not_a_ga_client_event() -> None:
    assert ga_problem({"type": "response.cancel"}) is None
    assert ga_problem({"type": "input_audio_buffer.append", "audio": "AAAA"}) is None
    assert "not a GA client event" in str(ga_problem({"type": "pong"}))
    assert ga_problem({"type": "session.update", "session": {"voice": "eve"}}) is not None
    assert "unknown" in str(ga_problem({"type": "response.cancel", "extra": 1}))
