"""Fixtures for the recorder tests: recorder servers on a tmp store and a real moto S3 server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest
from recorder.kit import MotoServer, free_port, recorder_graph

from telewire.server import TelewireServer


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(store folder, spool folder) under the test's tmp dir."""
    return tmp_path / "store", tmp_path / "spool"


@pytest.fixture
def rec_server(monkeypatch, dirs, telewire_server):
    """Factory: an in-process server on 127.0.0.1 running the recorder graph."""
    monkeypatch.delenv("TELEWIRE_TWILIO_AUTH_TOKEN", raising=False)

    async def make(*overrides: str, store: str | None = None, **config: Any) -> TelewireServer:
        graph = recorder_graph(store or f"file://{dirs[0]}", dirs[1], *overrides, **config)
        return await telewire_server(graph=graph)

    return make


@pytest.fixture
def aws_env(monkeypatch) -> None:
    """Dummy credentials; nothing from the developer's AWS set-up leaks in."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                 "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


@pytest.fixture
def moto(aws_env) -> Iterator[MotoServer]:
    server = MotoServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
