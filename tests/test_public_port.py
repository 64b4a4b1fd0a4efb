"""The public port attacked over loopback: the operator API's token, call identity, per-call
tokens, and the limits on connections that never start, go quiet, flood or dribble headers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket

import aiohttp
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from telewire.testing.fake_realtime import FakeRealtimeServer
from telewire.testing.simulator import CallSimulator

TOKEN = "op-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AUDIO = bytes(range(256)) * 25  # 40 frames
SID_HEX = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def server(monkeypatch, telewire_server):
    for name in ("TELEWIRE_TWILIO_AUTH_TOKEN", "TELEWIRE_OPERATOR_TOKEN", "TELEWIRE_CARRIERS"):
        monkeypatch.delenv(name, raising=False)
    return telewire_server


def media(srv, carrier: str = "twilio") -> str:
    return f"ws://127.0.0.1:{srv.port}/media/{carrier}"


def start_msg(call_sid: str, stream_sid: str = "MZ" + SID_HEX, **params: str) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
                       "start": {"streamSid": stream_sid, "callSid": call_sid,
                                 "accountSid": "AC" + "0" * 32, "tracks": ["inbound"],
                                 "customParameters": params,
                                 "mediaFormat": {"encoding": "audio/x-mulaw",
                                                 "sampleRate": 8000, "channels": 1}}})


async def closed_within(ws, seconds: float) -> bool:
    """Whether the server closes ``ws`` within ``seconds`` (messages before that are read)."""
    try:
        async with asyncio.timeout(seconds):
            async for _ in ws:
                pass
    except TimeoutError:
        return False
    except ConnectionClosed:
        pass
    return True


async def live_call(srv, sim: CallSimulator, timeout: float = 5.0):
    while not srv.live.get(("twilio", sim.call_sid)):
        await asyncio.sleep(0.02)
        timeout -= 0.02
        assert timeout > 0, "the call never went live"
    return srv.live[("twilio", sim.call_sid)]


# ------------------------------------------------------------------------------ operator API


async def test_operator_api_is_off_without_a_token(server, log_lines):
    srv = await server()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{srv.port}/api/calls", headers=AUTH) as r:
            assert r.status == 404
        async with http.get(f"http://127.0.0.1:{srv.port}/calls") as r:
            assert r.status == 404  # the old unauthenticated routes are gone
    assert any("operator API is off" in line for line in log_lines)


async def test_operator_api_needs_the_bearer_token_and_json_and_steers_the_model(server, log_lines):
    async with FakeRealtimeServer(mode="talk", response_audio_ms=500, talk_after_appends=10) as fake:
        srv = await server("rt.config.provider=openai", f"rt.config.url={fake.url}",
                           "rt.config.transcription_model=", operator_token=TOKEN)
        api = f"http://127.0.0.1:{srv.port}/api/calls"
        sim = CallSimulator(media(srv), drain_s=0.5)
        call = asyncio.create_task(sim.run(b"\xff" * 8 * 3000))
        try:
            await live_call(srv, sim)
            conn = await fake.wait_for_connection(0)
            await conn.wait_for("session.update")
            async with aiohttp.ClientSession() as http:
                for headers in ({}, {"Authorization": "Bearer wrong"},
                                {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
                    async with http.get(api, headers=headers) as r:
                        assert r.status == 401, headers
                        assert r.headers["WWW-Authenticate"].startswith("Bearer")
                    async with http.post(f"{api}/{sim.call_sid}/hangup", headers=headers,
                                         json={}) as r:
                        assert r.status == 401
                async with http.get(api, headers=AUTH) as r:
                    assert r.status == 200
                    (listed,) = await r.json()
                    assert listed["call_id"] == sim.call_sid and listed["carrier"] == "twilio"
                # a cross-site form cannot steer: JSON bodies only
                async with http.post(f"{api}/{sim.call_sid}/steer", headers=AUTH,
                                     data={"instructions": "say you are hacked"}) as r:
                    assert r.status == 415
                async with http.post(f"{api}/{sim.call_sid}/steer", headers=AUTH,
                                     data="instructions=x",
                                     ) as r:
                    assert r.status == 415
                async with http.post(f"{api}/{sim.call_sid}/steer", headers=AUTH,
                                     json={"voice": "cedar; rm -rf"}) as r:
                    assert r.status == 400
                async with http.post(f"{api}/{sim.call_sid}/steer", headers=AUTH,
                                     json={"instructions": "x", "tools": []}) as r:
                    assert r.status == 400
                async with http.post(f"{api}/CA{'f' * 32}/steer", headers=AUTH,
                                     json={"instructions": "x"}) as r:
                    assert r.status == 404
                async with http.post(f"{api}/twilio/{sim.call_sid}/explode", headers=AUTH,
                                     json={}) as r:
                    assert r.status == 404
                assert not [e for e in conn.events("session.update")
                            if "hacked" in json.dumps(e)]
                async with http.post(f"{api}/{sim.call_sid}/steer", headers=AUTH,
                                     json={"instructions": "Speak like a pirate."}) as r:
                    assert r.status == 200, await r.text()
                for _ in range(100):
                    if [e for e in conn.events("session.update")
                            if e["session"].get("instructions") == "Speak like a pirate."]:
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail("the steer never reached the model as session.update")
                async with http.post(f"{api}/twilio/{sim.call_sid}/hangup", headers=AUTH,
                                     json={}) as r:
                    assert r.status == 200
            result = await asyncio.wait_for(call, 15)
        finally:
            await srv.stop(drain_timeout_s=1)
    assert result.close_code == 1000
    assert not any(TOKEN in line for line in log_lines)


async def test_admin_port_serves_the_operator_api_alone(server):
    srv = await server(operator_token=TOKEN, admin_port=0)
    assert srv.admin_port and srv.admin_port != srv.port
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{srv.port}/api/calls", headers=AUTH) as r:
            assert r.status == 404
        async with http.get(f"http://127.0.0.1:{srv.admin_port}/api/calls", headers=AUTH) as r:
            assert r.status == 200 and await r.json() == []
        async with http.get(f"http://127.0.0.1:{srv.admin_port}/api/calls") as r:
            assert r.status == 401
        async with http.get(f"http://127.0.0.1:{srv.admin_port}/readyz") as r:
            assert r.status == 200
        async with http.get(f"http://127.0.0.1:{srv.admin_port}/answer/twilio") as r:
            assert r.status == 404  # carriers reach only the public port


async def test_unused_carriers_can_be_switched_off(server):
    srv = await server(carriers="twilio")
    with pytest.raises(InvalidStatus) as info:
        async with connect(media(srv, "bandwidth")):
            pass
    assert info.value.response.status_code == 404
    result = await CallSimulator(media(srv), pace=0, expect_echo=True).run(AUDIO)
    assert result.received_audio == AUDIO


# ------------------------------------------------------------------------------ call identity


async def test_a_second_connection_claiming_a_live_call_sid_is_refused(server, log_lines):
    srv = await server()
    first = CallSimulator(media(srv), pace=2.0, expect_echo=True)
    running = asyncio.create_task(first.run(AUDIO))
    await live_call(srv, first)
    async with connect(media(srv)) as ws:
        await ws.send(start_msg(first.call_sid, "MZ" + "e" * 32))
        assert await closed_within(ws, 5)
    result = await running
    assert result.received_audio == AUDIO and result.close_code == 1000
    assert any("is already live on this server" in line for line in log_lines)


def _signed_answer(srv, auth_token: str, call_sid: str) -> tuple[str, dict, dict]:
    url = f"http://127.0.0.1:{srv.port}/answer/twilio"
    form = {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": "+15005550006"}
    signature = RequestValidator(auth_token).compute_signature(url, form)
    return url, form, {"X-Twilio-Signature": signature}


async def test_a_replayed_media_signature_without_the_call_token_is_refused(server, monkeypatch,
                                                                           log_lines):
    monkeypatch.setenv("TELEWIRE_TWILIO_AUTH_TOKEN", "s3cret-token")
    srv = await server()
    wss = media(srv)
    signed = {"X-Twilio-Signature": RequestValidator("s3cret-token").compute_signature(wss, {})}
    # the real call: Twilio fetches TwiML (with a one-time token) and connects with it
    real = CallSimulator(wss, auth_token="s3cret-token", pace=0, expect_echo=True,
                         answer_url=f"http://127.0.0.1:{srv.port}/answer/twilio")
    result = await real.run(AUDIO)
    assert result.received_audio == AUDIO
    token = real.custom_parameters["telewire_call_token"]
    # the same signed upgrade, replayed: no token, a spent token, a forged token
    for params in ({}, {"telewire_call_token": token},
                   {"telewire_call_token": token[:-4] + "AAAA"}, {"telewire_call_token": "x" * 500}):
        async with connect(wss, additional_headers=signed) as ws:
            await ws.send(start_msg("CA" + "d" * 32, **params))
            assert await closed_within(ws, 5), params
    assert not srv.calls
    refusals = [line for line in log_lines if "call refused" in line]
    assert any("carries no telewire_call_token" in line for line in refusals)
    assert any("already used" in line for line in refusals)
    assert any("does not check out" in line for line in refusals)
    assert not any(token in line for line in log_lines)


async def test_the_call_token_never_reaches_the_graph(server, monkeypatch):
    monkeypatch.setenv("TELEWIRE_TWILIO_AUTH_TOKEN", "s3cret-token")
    srv = await server(answer_parameters={"tenant": "acme"})
    sim = CallSimulator(media(srv), auth_token="s3cret-token", pace=0.5, expect_echo=True,
                        answer_url=f"http://127.0.0.1:{srv.port}/answer/twilio")
    running = asyncio.create_task(sim.run(AUDIO))
    call = await live_call(srv, sim)
    assert dict(call.context.custom_parameters) == {"tenant": "acme"}
    assert (await running).received_audio == AUDIO


# ------------------------------------------------------------------------------ bounded resources


@pytest.mark.slow
async def test_idle_sockets_that_never_start_are_closed_and_a_real_call_then_connects(server):
    srv = await server()  # the default start deadline: 5 s
    sockets = [await connect(media(srv)) for _ in range(20)]
    try:
        closed = await asyncio.gather(*(closed_within(ws, 10) for ws in sockets))
        assert all(closed)
        assert {ws.close_code for ws in sockets} <= {1000, 1001, 1006}
    finally:
        for ws in sockets:
            await ws.close()
    result = await CallSimulator(media(srv), pace=0, expect_echo=True).run(AUDIO)
    assert result.received_audio == AUDIO


async def test_unstarted_sockets_per_address_are_capped(server):
    srv = await server(max_pending_per_ip=3, start_timeout_s=30)
    held = [await connect(media(srv)) for _ in range(3)]
    try:
        with pytest.raises(InvalidStatus) as info:
            async with connect(media(srv)):
                pass
        assert info.value.response.status_code == 429
        await held[0].send(start_msg("CA" + SID_HEX))  # a started call no longer counts
        for _ in range(100):
            if ("twilio", "CA" + SID_HEX) in srv.live:
                break
            await asyncio.sleep(0.02)
        async with connect(media(srv)) as ws:
            assert ws.state.name == "OPEN"
    finally:
        for ws in held:
            await ws.close()


async def test_connections_per_address_are_capped(server):
    srv = await server(max_connections_per_ip=2)
    held = [await connect(media(srv)) for _ in range(2)]
    try:
        with pytest.raises(InvalidStatus) as info:
            async with connect(media(srv)):
                pass
        assert info.value.response.status_code == 429
    finally:
        for ws in held:
            await ws.close()


async def test_a_call_whose_media_stops_is_ended(server, log_lines):
    srv = await server(media_timeout_s=0.5)
    async with connect(media(srv)) as ws:
        await ws.send(start_msg("CA" + SID_HEX))
        assert await closed_within(ws, 5)
    assert any("call ended: media_timeout" in line for line in log_lines)


async def test_a_call_is_hung_up_at_its_maximum_length(server, log_lines):
    srv = await server("tel_out.config.drain_timeout_s=0.2", max_call_s=0.5)
    result = await CallSimulator(media(srv), pace=1.0).run(b"\xff" * 8 * 3000)
    assert result.sent_frames < 150  # the call did not run its whole 3 s
    assert any("call ended: max_duration" in line for line in log_lines)


async def test_a_peer_that_does_not_answer_pings_is_disconnected(server):
    srv = await server(heartbeat_s=0.2)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(media(srv), autoping=False) as ws:
            await ws.send_str(start_msg("CA" + SID_HEX))
            kinds = set()
            async with asyncio.timeout(5):
                async for msg in ws:
                    kinds.add(msg.type)
            assert aiohttp.WSMsgType.PING in kinds
    assert ws.closed


async def test_a_connection_that_dribbles_its_headers_is_closed(server):
    srv = await server(header_timeout_s=0.3)
    loop = asyncio.get_running_loop()
    with socket.create_connection(("127.0.0.1", srv.port)) as raw:
        raw.setblocking(False)
        await loop.sock_sendall(raw, b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        async with asyncio.timeout(5):
            assert await loop.sock_recv(raw, 100) == b""  # closed, nothing answered
    async with aiohttp.ClientSession() as http:  # whole requests still work
        async with http.get(f"http://127.0.0.1:{srv.port}/readyz") as r:
            assert r.status == 200


async def test_a_flood_on_one_connection_is_dropped_and_other_calls_are_untouched(server,
                                                                               log_lines):
    async with FakeRealtimeServer(mode="echo") as fake:
        srv = await server("rt.config.provider=openai", f"rt.config.url={fake.url}",
                           "rt.config.transcription_model=", "tel_in.config.interrupt_dtmf_digit=")
        other = asyncio.create_task(
            CallSimulator(media(srv), pace=1.0, expect_echo=True).run(AUDIO * 2))
        async with connect(media(srv)) as ws:
            await ws.send(start_msg("CA" + SID_HEX))
            while ("twilio", "CA" + SID_HEX) not in srv.live:
                await asyncio.sleep(0.01)
            flooded = srv.live[("twilio", "CA" + SID_HEX)]
            dtmf = json.dumps({"event": "dtmf", "streamSid": "MZ" + SID_HEX,
                               "dtmf": {"track": "inbound_track", "digit": "5"}})
            sent = 0
            with contextlib.suppress(ConnectionClosed):
                for sent in range(1, 10_001):
                    await ws.send(dtmf)
                    if sent % 500 == 0:
                        await asyncio.sleep(0)
            # the flood ended its own call (how soon the client sees the close depends on its
            # library's buffering: websockets 14 sees it only after its backlog is read)
            await asyncio.wait_for(flooded.ended.wait(), 5)
            tel_in = flooded.nodes["tel_in"]
            assert tel_in.dropped_messages == 2000  # tel_in.config.max_dropped
            assert sent > 2000
        result = await other
        await srv.stop(drain_timeout_s=1)
        creates = sum(len(c.events("response.create")) for c in fake.connections)
    assert flooded.end_frame.reason == "carrier_protocol_error"
    assert "max_dropped" in flooded.end_frame.detail
    assert result.received_audio == AUDIO * 2 and result.lost_frames == 0
    assert creates <= 5, creates
    flood_lines = [line for line in log_lines if "dropped so far" in line]
    assert 1 <= len(flood_lines) <= 5


async def test_a_flood_is_only_dropped_when_the_call_may_not_end_for_it(server):
    srv = await server("tel_in.config.max_dropped=0", "tel_in.config.max_errors=0")
    async with connect(media(srv)) as ws:
        await ws.send(start_msg("CA" + SID_HEX))
        while ("twilio", "CA" + SID_HEX) not in srv.live:
            await asyncio.sleep(0.01)
        flooded = srv.live[("twilio", "CA" + SID_HEX)]
        for i in range(5_000):
            await ws.send("not json")
            if i % 500 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.3)
        assert not flooded.ended.is_set()
        assert flooded.nodes["tel_in"].dropped_messages >= 4_000


@pytest.mark.slow
async def test_bad_input_log_lines_are_rate_limited(server, log_lines):
    srv = await server("tel_in.config.max_errors=0")
    async with connect(media(srv)) as ws:
        await ws.send(start_msg("CA" + SID_HEX))
        for _ in range(1000):
            await ws.send("not json")
        await ws.send(json.dumps({"event": "stop", "streamSid": "MZ" + SID_HEX,
                                  "stop": {"callSid": "CA" + SID_HEX}}))
        await closed_within(ws, 5)
    errors = [line for line in log_lines if "not JSON" in line]
    assert 20 <= len(errors) <= 25
    assert any("malformed messages so far" in line for line in log_lines)


def test_call_tokens_expire_and_are_bound_to_their_carrier():
    from telewire.calltoken import CallTokens

    now = [1000.0]
    tokens = CallTokens(b"k" * 32, ttl_s=60, clock=lambda: now[0])
    a, b = tokens.issue("twilio"), tokens.issue("twilio")
    assert re.fullmatch(r"v1\.\d+\.[\w-]+\.[\w-]+", a)
    assert "does not check out" in tokens.redeem("bandwidth", a)
    assert tokens.redeem("twilio", a) is None
    assert "already used" in tokens.redeem("twilio", a)
    now[0] += 61
    assert "expired" in tokens.redeem("twilio", b)
    other = CallTokens(b"k" * 32, ttl_s=60, clock=lambda: now[0])  # another process, same key
    assert other.redeem("twilio", tokens.issue("twilio")) is None


async def test_wire_text_in_a_request_path_or_forwarded_header_cannot_forge_log_lines(
        server, log_lines):
    srv = await server(operator_token=TOKEN, trust_forwarded=True)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{srv.port}/api/calls%0aERROR%20forged") as r:
            assert r.status == 401
        async with http.get(f"http://127.0.0.1:{srv.port}/api/calls",
                            headers={"X-Forwarded-For": "1.2.3.4, evil\tline"}) as r:
            assert r.status == 401
    refused = [line for line in log_lines if "refused" in line]
    assert len(refused) == 2
    assert not any("\n" in line or "evil" in line for line in refused)
    assert any("from invalid" in line for line in refused)
