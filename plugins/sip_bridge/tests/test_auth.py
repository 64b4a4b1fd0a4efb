"""The sip_bridge media socket behind a shared secret: the check itself (sans-I/O), its settings
and start-up warnings, and real WebSocket upgrades over loopback refused and accepted."""

from __future__ import annotations

import asyncio
import base64
import json
from types import MappingProxyType
from typing import Iterator

import pytest
from loguru import logger
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from telewire.carrier import HttpRequest
from telewire.errors import AuthenticationError, ConfigError
from telewire.registry import Carrier, CarrierRegistry
from telewire.server import TelewireServer
from telewire_sip_bridge.settings import load_settings

SECRET = "s3cr3t-Of-The-Bridge-7f3a9c"
URL = "wss://voice.example.com/media/sip_bridge"
GUARD_S = 5  # a guard against hanging, never a timing assertion
START = {"event": "MEDIA_START", "connection_id": "e226e283-c90a", "channel_id": "pbx1-42",
         "format": "ulaw", "optimal_frame_size": 160, "ptime": 20}


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every log line written while the test runs."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="DEBUG")
    yield lines
    logger.remove(sink)


@pytest.fixture
def sip_bridge(carrier_registry: CarrierRegistry) -> Carrier:
    return carrier_registry.get("sip_bridge")


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TELEWIRE_SIP_BRIDGE_SECRET", SECRET)
    return SECRET


def upgrade(headers: dict[str, str] | None = None, query: dict[str, str] | None = None,
            ) -> HttpRequest:
    q = tuple((query or {}).items())
    url = URL + ("?" + "&".join(f"{k}={v}" for k, v in q) if q else "")
    return HttpRequest(method="GET", url=url, query=q,
                       headers=MappingProxyType({k.lower(): v for k, v in (headers or {}).items()}))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --------------------------------------------------------------------- the check


def test_without_a_secret_checking_is_off_and_the_server_is_warned(sip_bridge: Carrier) -> None:
    assert sip_bridge.authenticate(upgrade(), "websocket") is False
    (warning,) = sip_bridge.warnings()
    assert "TELEWIRE_SIP_BRIDGE_SECRET is not set" in warning and "/media/sip_bridge" in warning


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {SECRET}"},
    {"Authorization": f"bearer   {SECRET}  "},
    {"Authorization": basic("asterisk", SECRET)},
    {"Authorization": basic("", SECRET)},
])
def test_the_secret_in_the_authorization_header_is_accepted(sip_bridge: Carrier, secret: str,
                                                            headers: dict[str, str]) -> None:
    assert sip_bridge.authenticate(upgrade(headers), "websocket") is True
    assert sip_bridge.warnings() == []


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer wrong-secret-of-the-same-size!"},
    {"Authorization": f"Bearer {SECRET}x"},
    {"Authorization": f"Bearer {SECRET[:-1]}"},
    {"Authorization": f"Token {SECRET}"},
    {"Authorization": basic(SECRET, "nope")},  # the secret as the user name is not enough
    {"Authorization": "Basic !!not-base64!!"},
    {"X-Telewire-Token": SECRET},              # not the configured header
])
def test_a_missing_or_wrong_secret_is_refused(sip_bridge: Carrier, secret: str,
                                              headers: dict[str, str]) -> None:
    with pytest.raises(AuthenticationError) as caught:
        sip_bridge.authenticate(upgrade(headers, {"token": SECRET}), "websocket")
    text = str(caught.value)
    assert "Authorization" in text and URL in text
    assert SECRET not in text and SECRET[:-1] not in text and "?" not in text


def test_a_custom_header_carries_the_secret_as_its_value(sip_bridge: Carrier, secret: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEWIRE_SIP_BRIDGE_HEADER", "X-Telewire-Token")
    assert sip_bridge.authenticate(upgrade({"X-Telewire-Token": SECRET}), "websocket") is True
    with pytest.raises(AuthenticationError, match="X-Telewire-Token header"):
        sip_bridge.authenticate(upgrade({"Authorization": f"Bearer {SECRET}"}), "websocket")


def test_a_query_token_only_when_allowed(sip_bridge: Carrier, secret: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AuthenticationError):
        sip_bridge.authenticate(upgrade(query={"token": SECRET}), "websocket")
    monkeypatch.setenv("TELEWIRE_SIP_BRIDGE_QUERY_PARAMETER", "token")
    assert sip_bridge.authenticate(upgrade(query={"token": SECRET}), "websocket") is True
    assert sip_bridge.authenticate(upgrade({"Authorization": f"Bearer {SECRET}"}), "websocket")
    with pytest.raises(AuthenticationError) as caught:
        sip_bridge.authenticate(upgrade(query={"token": "guess"}), "websocket")
    assert "'token' query parameter" in str(caught.value) and "guess" not in str(caught.value)
    (warning,) = sip_bridge.warnings()
    assert "TELEWIRE_SIP_BRIDGE_QUERY_PARAMETER is set" in warning


@pytest.mark.parametrize("variable, value, problem", [
    ("SECRET", "short", "at least 16 characters"),
    ("HEADER", "X Bad Header", "HTTP header name"),
    ("QUERY_PARAMETER", "to&ken", "query parameter name"),
])
def test_bad_settings_are_config_errors_that_never_show_the_secret(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str) -> None:
    monkeypatch.setenv(f"TELEWIRE_SIP_BRIDGE_{variable}", value)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_settings()
    assert f"TELEWIRE_SIP_BRIDGE_{variable}" in str(caught.value)
    if variable == "SECRET":
        assert value not in str(caught.value)


# --------------------------------------------------------------------- real upgrades


def media_url(srv: TelewireServer) -> str:
    return f"ws://127.0.0.1:{srv.port}/media/sip_bridge"


async def echo_once(srv: TelewireServer, **connect_args: object) -> bytes:
    """Open a chan_websocket call, send one 20 ms frame and return what comes back."""
    async with connect(media_url(srv), open_timeout=GUARD_S, **connect_args) as ws:
        await ws.send(json.dumps(START))
        await ws.send(b"\x7f" * 160)
        got = b""
        while len(got) < 160:
            msg = await asyncio.wait_for(ws.recv(), GUARD_S)
            if isinstance(msg, bytes):
                got += msg
        return got


@pytest.mark.parametrize("headers", [
    None,
    {"Authorization": "Bearer not-the-secret-at-all-00"},
    {"Authorization": basic("asterisk", "not-the-secret-at-all-00")},
])
async def test_an_upgrade_without_the_secret_is_refused_with_403(telewire_server, secret: str,
                                                                 headers, log_lines) -> None:
    srv = await telewire_server("tel_in.config.envelope_spec=asterisk_chan_websocket")
    with pytest.raises(InvalidStatus) as caught:
        async with connect(media_url(srv), open_timeout=GUARD_S, additional_headers=headers):
            pass
    assert caught.value.response.status_code == 403
    assert not srv.calls
    assert not any(SECRET in line for line in log_lines)
    assert any("media socket for sip_bridge" in line and "refused" in line
               for line in log_lines)


async def test_an_upgrade_with_the_secret_is_a_call(telewire_server, secret: str) -> None:
    srv = await telewire_server("tel_in.config.envelope_spec=asterisk_chan_websocket")
    got = await echo_once(srv, additional_headers={"Authorization": f"Bearer {SECRET}"})
    assert got == b"\x7f" * 160


async def test_an_upgrade_with_the_secret_in_the_query_when_allowed(
        telewire_server, secret: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEWIRE_SIP_BRIDGE_QUERY_PARAMETER", "token")
    srv = await telewire_server("tel_in.config.envelope_spec=asterisk_chan_websocket")
    async with connect(media_url(srv) + f"?token={SECRET}", open_timeout=GUARD_S) as ws:
        await ws.send(json.dumps(START))
        await ws.send(b"\x7f" * 160)
        msg = await asyncio.wait_for(ws.recv(), GUARD_S)
        while not isinstance(msg, bytes):
            msg = await asyncio.wait_for(ws.recv(), GUARD_S)
        assert msg == b"\x7f" * 160
    with pytest.raises(InvalidStatus) as caught:
        async with connect(media_url(srv) + "?token=wrong", open_timeout=GUARD_S):
            pass
    assert caught.value.response.status_code == 403
