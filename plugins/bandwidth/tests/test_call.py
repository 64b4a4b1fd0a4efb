"""Simulated Bandwidth calls against a real telewire server over loopback sockets.

Each test answers the call through ``/answer/bandwidth``, takes the media socket and DTMF URLs
from the BXML it got back (as Bandwidth would), and plays Bandwidth's side: ``start``, 20 ms
``media`` messages, DTMF webhooks, ``stop``. The model is the built-in ``echo`` provider.
"""

from __future__ import annotations

import asyncio
import base64
import json
import xml.etree.ElementTree as ET
from typing import Awaitable, Callable

import aiohttp
import pytest
from websockets.exceptions import InvalidStatus

from telewire.frames import DTMFFrame, Frame
from telewire.server import TelewireServer
from telewire_bandwidth.auth import basic_authorization
from telewire_bandwidth.testing import BandwidthCall, dtmf_event

AUDIO = bytes(range(256)) * 25  # 6400 bytes = 40 media messages of 20 ms, every byte value
CHUNKS = [AUDIO[i:i + 160] for i in range(0, len(AUDIO), 160)]
USER, PASSWORD = "bw-user", "pw-0f9e8d7c6b5a"

ServerFactory = Callable[..., Awaitable[TelewireServer]]


@pytest.fixture
def server(telewire_server) -> ServerFactory:
    async def make(observers: list[tuple[str, str, Frame]] | None = None,
                   **settings: object) -> TelewireServer:
        def factory() -> dict[tuple[str, str], list[Callable[[str, str, Frame], None]]]:
            if observers is None:
                return {}
            return {("tel_in", "dtmf"): [lambda n, p, f: observers.append((n, p, f))]}

        return await telewire_server(observers=factory, **settings)

    return make


async def answer(srv: TelewireServer, *, credentials: tuple[str, str] | None = None
                 ) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if credentials:
        headers["Authorization"] = basic_authorization(*credentials)
    body = json.dumps({"eventType": "initiate", "callId": "c-answer", "accountId": "9900000"})
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{srv.port}/answer/bandwidth", data=body,
                             headers=headers) as r:
            return r.status, await r.text()


async def answered_call(srv: TelewireServer, *, credentials: tuple[str, str] | None = None,
                        call_id: str | None = None) -> BandwidthCall:
    """A call set up from the BXML the server answers with, as Bandwidth would."""
    status, body = await answer(srv, credentials=credentials)
    assert status == 200, body
    gather, stream, stop = ET.fromstring(body)
    assert stop.attrib == {"name": stream.get("name"), "wait": "true"}
    params = {p.get("name", ""): p.get("value", "") for p in stream}
    return BandwidthCall(stream.get("destination", ""), gather.get("dtmfUrl", ""),
                         stream_params=params, credentials=credentials, call_id=call_id)


async def test_echo_is_byte_identical_and_in_order(server: ServerFactory) -> None:
    srv = await server(answer_parameters={"tenant": "acme"})
    call = await answered_call(srv)
    assert call.media_url == f"ws://127.0.0.1:{srv.port}/media/bandwidth"
    assert call.events_url == f"http://127.0.0.1:{srv.port}/events/bandwidth"
    token = call.stream_params.pop("telewire_call_token")  # the server's one-time call token
    assert token.startswith("v1.")
    assert call.stream_params == {"tenant": "acme"}
    async with call:
        assert await call.send_audio(AUDIO) == 40
        assert await call.collect_audio(len(AUDIO)) == AUDIO
    # One playAudio per media message, each payload the very base64 text that was sent.
    assert call.received.payloads == [base64.b64encode(c).decode() for c in CHUNKS]
    assert call.received.clears == 0 and call.received.other == []
    assert call.ws.close_code == 1000
    assert not srv.calls and not srv.live


async def test_interrupt_digit_by_webhook_clears_the_call(server: ServerFactory,
                                                          log_lines: list[str]) -> None:
    srv = await server()
    async with await answered_call(srv) as call:
        await call.send_audio(CHUNKS[0])
        await call.collect_audio(160)
        assert await call.press("*") == (204, "")
        await call.wait_for_clear()
        # The call goes on after the barge-in.
        await call.send_audio(CHUNKS[1])
        assert (await call.collect_audio(320))[160:] == CHUNKS[1]
    assert call.received.clears == 1


async def test_other_digits_reach_the_call_as_dtmf_frames(server: ServerFactory) -> None:
    seen: list[tuple[str, str, Frame]] = []
    srv = await server(observers=seen)
    async with await answered_call(srv) as call:
        await call.send_audio(CHUNKS[0])
        await call.collect_audio(160)
        assert await call.press("5") == (204, "")
        assert await call.press("#") == (204, "")
        await call.send_audio(CHUNKS[1])
        await call.collect_audio(320)
    assert seen == [("tel_in", "dtmf", DTMFFrame(digit="5")),
                    ("tel_in", "dtmf", DTMFFrame(digit="#"))]
    assert call.received.clears == 0


async def test_digits_go_only_to_the_call_they_name(server: ServerFactory) -> None:
    srv = await server()
    async with await answered_call(srv) as a, await answered_call(srv) as b:
        for call in (a, b):
            await call.send_audio(CHUNKS[0])
            await call.collect_audio(160)
        assert (await a.press("*"))[0] == 204
        await a.wait_for_clear()
        await b.send_audio(CHUNKS[1])
        assert (await b.collect_audio(320))[160:] == CHUNKS[1]
    assert (a.received.clears, b.received.clears) == (1, 0)


async def test_webhook_for_a_call_that_is_not_live_is_404(server: ServerFactory,
                                                          log_lines: list[str]) -> None:
    srv = await server()
    call = BandwidthCall(f"ws://127.0.0.1:{srv.port}/media/bandwidth",
                         f"http://127.0.0.1:{srv.port}/events/bandwidth", call_id="c-nobody")
    status, text = await call.press("5")
    assert status == 404 and "c-nobody" in text
    async with call:  # once the call has started, the same webhook is routed
        await call.send_audio(CHUNKS[0])
        await call.collect_audio(160)
        assert (await call.press("5"))[0] == 204
    for _ in range(100):  # the server unregisters the call once the socket has closed
        if not srv.live:
            break
        await asyncio.sleep(0.02)
    assert (await call.press("5"))[0] == 404, "a call that has ended is no longer live"
    assert any("names call 'c-nobody', which is not live" in line for line in log_lines)


async def test_malformed_webhook_is_400_naming_the_field(server: ServerFactory) -> None:
    srv = await server()
    async with await answered_call(srv) as call:
        await call.send_audio(CHUNKS[0])
        await call.collect_audio(160)
        status, text = await call.press("5", body={**dtmf_event(call.call_id, "5"), "digit": "Z"})
        assert status == 400 and "'digit'" in text and "'Z'" in text
        status, text = await call.press("5", body={"eventType": "dtmf", "digit": "5"})
        assert status == 400 and "'callId'" in text


async def test_basic_auth_enforced_when_configured(server: ServerFactory,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   log_lines: list[str]) -> None:
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_USERNAME", USER)
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_PASSWORD", PASSWORD)
    srv = await server()
    assert (await answer(srv))[0] == 403
    assert (await answer(srv, credentials=(USER, "wrong")))[0] == 403
    async with await answered_call(srv, credentials=(USER, PASSWORD)) as call:
        # 3.2 s of agent audio, so that something is still playing when the digit arrives
        # (the core sends no clear once the paced playout has drained)
        await call.send_audio(AUDIO * 4)
        await call.collect_audio(160)
        assert (await call.press("*", credentials=None))[0] == 403
        assert (await call.press("*", credentials=(USER, "wrong")))[0] == 403
        assert call.received.clears == 0
        assert await call.press("*") == (204, "")
        await call.wait_for_clear()
    refusals = [line for line in log_lines if "refused" in line]
    assert len(refusals) == 4 and all("Authorization" in line for line in refusals)
    assert not any(PASSWORD in line for line in log_lines)


async def test_media_socket_credentials_when_asked(server: ServerFactory,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_USERNAME", USER)
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_PASSWORD", PASSWORD)
    monkeypatch.setenv("TELEWIRE_BANDWIDTH_WEBSOCKET_AUTH", "true")
    srv = await server()
    call = await answered_call(srv, credentials=(USER, PASSWORD))
    assert call.media_url == f"ws://{USER}:{PASSWORD}@127.0.0.1:{srv.port}/media/bandwidth"
    bare = BandwidthCall(f"ws://127.0.0.1:{srv.port}/media/bandwidth", call.events_url)
    with pytest.raises(InvalidStatus) as info:
        async with bare:
            pass
    assert info.value.response.status_code == 403
    async with call:
        await call.send_audio(AUDIO[:1600])
        assert await call.collect_audio(1600) == AUDIO[:1600]
