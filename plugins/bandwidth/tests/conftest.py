"""Fixtures for the bandwidth plugin's tests: a clean environment and the log lines of a test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
from loguru import logger


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TELEWIRE_BANDWIDTH_* from the outer environment or a stray .env file."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("TELEWIRE_BANDWIDTH_"):
            monkeypatch.delenv(name)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every log line written while the test runs (level and message)."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(f"{m.record['level'].name} {m.record['message']}"),
                      level="DEBUG")
    yield lines
    logger.remove(sink)
