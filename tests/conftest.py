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


import os
import re
import subprocess
import sys
import time

from loguru import logger

TELEWIRE = [sys.executable, "-m", "telewire.cli"]


@pytest.fixture(autouse=True)
def _recordings_in_tmp(tmp_path, monkeypatch):
    """The default graph records every call: keep archives and spool out of the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def log_lines():
    """Every log line written while the test runs (message text, with level)."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(f"{m.record['level'].name} {m.record['message']}"),
                      level="DEBUG")
    yield lines
    logger.remove(sink)


class ServeProcess:
    """``telewire serve`` in a child process on a free loopback port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "TELEWIRE_LOG_LEVEL": "INFO", **(env or {})}
        self.proc = subprocess.Popen(
            [*TELEWIRE, "serve", "--host", "127.0.0.1", "--port", "0", *args],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=full_env)
        self.log: list[str] = []
        deadline = time.monotonic() + 30
        self.port = 0
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            self.stop()
            raise RuntimeError("telewire serve did not start:\n" + "".join(self.log))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/media/twilio"

    def stop(self) -> str:
        """SIGTERM, wait, and return everything it logged."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.log.append(err or "")
        return "".join(self.log)


# ------------------------------------------------------------------------------ a real Redis


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server():
    """A real ``redis-server`` (Debian's package; ``make test`` installs it) on 127.0.0.1 and a
    free port, with no persistence, for the whole session; yields its URL."""
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:  # pragma: no cover - make test installs it
        pytest.fail("redis-server is not installed: apt-get install -y redis-server "
                    "(make test does it)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import socket

    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"redis-server did not start: {proc.stderr.read()}")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, emptied before the test."""
    import socket

    host, port = redis_server.rsplit("/", 1)[0].rsplit(":", 1)
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as s:
        s.sendall(b"FLUSHALL\r\n")
        assert s.recv(16).startswith(b"+OK")
    return redis_server
