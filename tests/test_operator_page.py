"""The operator page: its event feed, its HTTP surface, and the page itself in headless Chromium,
over real loopback sockets: the simulated Twilio call <-> `TelewireServer` <-> the fake realtime
server in talk mode."""

from __future__ import annotations

import asyncio
import json
import os
import re

import aiohttp
import pytest
from browser import CHROMIUM, Browser

from test_barge_in import twilio_rest  # noqa: F401  (the stand-in for Twilio's REST API)

from telewire.control import LocalControlPlane
from telewire.operator import ControlPlaneFeed, LocalFeed
from telewire.testing.fake_realtime import FakeRealtimeServer
from telewire.testing.simulator import CallSimulator

#: many processes or fresh venvs: `make test` runs these, `make test-lowest` leaves them out
pytestmark = pytest.mark.slow

TOKEN = "operator-page-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOSTILE = '<img src=x onerror="document.title=\'pwned\'">'
CALL = ("twilio", "CA" + "1" * 32)


async def live_call(srv, sim: CallSimulator, timeout: float = 10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not srv.live.get(("twilio", sim.call_sid)):
        assert loop.time() < deadline, "the call never went live"
        await asyncio.sleep(0.02)
    return srv.live[("twilio", sim.call_sid)]


async def talking(server, fake, *overrides: str, **settings):
    return await server("rt.config.provider=openai", f"rt.config.url={fake.url}",
                        "rt.config.transcription_model=", *overrides, **settings)


def a_long_call(srv) -> tuple[CallSimulator, asyncio.Task]:
    """A call that lasts until it is hung up (two minutes of silence at most)."""
    sim = CallSimulator(f"ws://127.0.0.1:{srv.port}/media/twilio", drain_s=0.5)
    return sim, asyncio.create_task(sim.run(b"\xff" * 8 * 120_000))


async def read_events(resp: aiohttp.ClientResponse, until, limit: int = 200) -> list[dict]:
    """The stream's events until ``until(events)`` is true."""
    events: list[dict] = []
    async for line in resp.content:
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
            if until(events):
                return events
        assert len(events) < limit
    raise AssertionError(f"the stream ended after {events}")


# ------------------------------------------------------------------------------ the feed


async def test_a_slow_subscriber_loses_events_and_is_told_and_the_publisher_never_waits():
    feed = LocalFeed(queue_limit=3)
    sub = feed.subscribe()
    assert (await sub.next(0))["type"] == "hello"
    for n in range(10):
        feed.publish(CALL, {"type": "transcript", "role": "caller", "text": str(n)})
    dropped = await sub.next(0)
    assert dropped == {"type": "dropped", "count": 8}  # the queue (4 with the replay) twice
    assert [(await sub.next(0))["text"] for _ in range(2)] == ["8", "9"]
    assert await sub.next(0) is None  # nothing waiting: a timeout, not a hang
    sub.close()
    assert feed.subscribers == 0


async def test_a_new_subscriber_gets_the_live_calls_state_and_recent_lines_and_ended_calls_go():
    feed = LocalFeed(retain=2)
    feed.publish(CALL, {"type": "call", "state": "live"})
    for n in range(4):
        feed.publish(CALL, {"type": "transcript", "role": "agent", "text": str(n)})
    feed.publish(CALL, {"type": "usage", "call_cost_usd": 0.5})
    other = ("twilio", "CA" + "2" * 32)
    feed.publish(other, {"type": "call", "state": "live"})
    sub = feed.subscribe(CALL)
    replay = [await sub.next(0) for _ in range(5)]
    assert [e["type"] for e in replay] == ["hello", "call", "transcript", "transcript", "usage"]
    assert [e["text"] for e in replay if e["type"] == "transcript"] == ["2", "3"]
    assert all(e["call_id"] == CALL[1] for e in replay[1:])
    assert await sub.next(0) is None  # the other call is not this subscription's
    feed.publish(CALL, {"type": "call", "state": "ended", "reason": "carrier_stop"})
    assert (await sub.next(0))["state"] == "ended"
    late = feed.subscribe()
    assert [(await late.next(0)).get("call_id") for _ in range(2)] == [None, other[1]]
    assert await late.next(0) is None


async def test_the_control_plane_feed_carries_events_between_publisher_and_page():
    control = LocalControlPlane()
    feed = ControlPlaneFeed(control, queue_limit=2)
    sub = feed.subscribe()
    assert (await sub.next(1))["type"] == "hello"
    feed.publish(CALL, {"type": "transcript", "role": "caller", "text": "hello"})
    event = await sub.next(5)
    assert event["text"] == "hello" and event["carrier"] == "twilio" and event["call_id"] == CALL[1]
    sub.close()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not control._subs


# ------------------------------------------------------------------------------ HTTP


async def test_the_page_is_off_without_a_token_and_strict_with_one(telewire_server):
    off = await telewire_server()
    async with aiohttp.ClientSession() as http:
        for path in ("/operator", "/operator/app.js", "/api/events"):
            async with http.get(f"http://127.0.0.1:{off.port}{path}", headers=AUTH) as r:
                assert r.status == 404, path
        srv = await telewire_server(operator_token=TOKEN)
        base = f"http://127.0.0.1:{srv.port}"
        async with http.get(f"{base}/operator") as r:  # static: no token needed, no data in it
            assert r.status == 200
            page = await r.text()
            csp = r.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "default-src 'none'" in csp and "form-action 'none'" in csp
            assert r.headers["X-Frame-Options"] == "DENY"
            assert r.headers["Cache-Control"] == "no-store"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert not re.search(r"<script(?![^>]*\bsrc=)", page), "an inline script"
        assert not re.search(r"<[^>]*\son[a-z]+\s*=", page), "an inline event handler"
        async with http.get(f"{base}/operator/app.js") as r:
            assert r.status == 200 and r.content_type == "text/javascript"
            script = await r.text()
            assert "innerHTML" not in script and "token" in script
        for path in ("/operator/index.html", "/operator/..%2fserver.py", "/operator/x.js"):
            async with http.get(base + path) as r:
                assert r.status == 404, path
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with http.get(f"{base}/api/events", headers=headers) as r:
                assert r.status == 401


async def test_the_page_moves_to_the_admin_listener_with_the_api(telewire_server):
    srv = await telewire_server(operator_token=TOKEN, admin_port=0)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{srv.port}/operator") as r:
            assert r.status == 404
        async with http.get(f"http://127.0.0.1:{srv.admin_port}/operator") as r:
            assert r.status == 200


async def test_event_streams_carry_a_calls_transcript_and_end_and_are_capped(telewire_server):
    async with FakeRealtimeServer(mode="talk", talk_after_appends=10**9) as fake:
        srv = await talking(telewire_server, fake, operator_token=TOKEN)
        srv.operator.max_streams = 2
        base = f"http://127.0.0.1:{srv.port}/api"
        sim, call = a_long_call(srv)
        try:
            await live_call(srv, sim)
            conn = await fake.wait_for_connection(0)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/events", headers=AUTH) as every, \
                        http.get(f"{base}/calls/twilio/{sim.call_sid}/events",
                                 headers=AUTH) as one:
                    assert every.status == one.status == 200
                    assert every.headers["Content-Type"].startswith("text/event-stream")
                    async with http.get(f"{base}/events", headers=AUTH) as third:
                        assert third.status == 503
                    for stream in (every, one):  # the replay: the call is live
                        await read_events(stream, lambda es: es[-1].get("type") == "call")
                    await conn.push_caller_transcript(HOSTILE)
                    for stream in (every, one):
                        (line,) = [e for e in await read_events(
                            stream, lambda es: es[-1].get("type") == "transcript")
                            if e["type"] == "transcript"]
                        assert line["text"] == HOSTILE and line["role"] == "caller"
                        assert line["call_id"] == sim.call_sid
                    async with http.post(f"{base}/calls/{sim.call_sid}/hangup", headers=AUTH,
                                         json={}) as r:
                        assert r.status == 200
                    ended = await read_events(one, lambda es: es[-1].get("state") == "ended")
                    assert ended[-1]["reason"] == "operator"
            await asyncio.wait_for(call, 15)
        finally:
            await srv.stop(drain_timeout_s=1)


async def test_a_stream_sends_heartbeats_and_ends_when_the_server_stops(telewire_server):
    srv = await telewire_server(operator_token=TOKEN)
    srv.operator.heartbeat_s = 0.05
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{srv.port}/api/events", headers=AUTH) as r:
            beats = 0
            async for line in r.content:
                beats += line == b":\n"
                if beats == 2:
                    break
            stopping = asyncio.create_task(srv.stop(drain_timeout_s=1))
            rest = await asyncio.wait_for(r.content.read(), 10)  # the stream ends
            assert b"data" not in rest
            await stopping
    assert srv.operator.open_streams == 0


async def test_transfer_takes_only_a_configured_target(telewire_server):
    async with FakeRealtimeServer(mode="talk", talk_after_appends=10**9) as fake:
        srv = await talking(telewire_server, fake, operator_token=TOKEN)
        api = f"http://127.0.0.1:{srv.port}/api/calls"
        sim, call = a_long_call(srv)
        try:
            await live_call(srv, sim)
            async with aiohttp.ClientSession() as http:
                for body, status in (({}, 400), ({"target": 5}, 400),
                                     ({"target": "+15550001111", "x": 1}, 400),
                                     ({"target": "+15550001111"}, 403)):
                    async with http.post(f"{api}/{sim.call_sid}/transfer", headers=AUTH,
                                         json=body) as r:
                        assert r.status == status, (body, await r.text())
                async with http.post(f"{api}/{sim.call_sid}/transfer", headers=AUTH,
                                     data="target=+1555") as r:
                    assert r.status == 415
                async with http.post(f"{api}/{sim.call_sid}/hangup", headers=AUTH,
                                     json={}) as r:
                    assert r.status == 200
            await asyncio.wait_for(call, 15)
        finally:
            await srv.stop(drain_timeout_s=1)
    assert not call.result().unexpected


async def test_an_operator_transfers_a_call_to_an_allowed_target(telewire_server, twilio_rest,
                                                                 log_lines):
    account, seen = twilio_rest
    async with FakeRealtimeServer(mode="talk", talk_after_appends=10**9) as fake:
        srv = await talking(telewire_server, fake, 'rt.config.transfer_targets=["+1555*"]',
                            operator_token=TOKEN)
        base = f"http://127.0.0.1:{srv.port}"
        sim = CallSimulator(f"ws://127.0.0.1:{srv.port}/media/twilio", drain_s=0.5,
                            hang_up=False, auth_token="rest-token",
                            answer_url=f"{base}/answer/twilio")
        call = asyncio.create_task(sim.run(b"\xff" * 8 * 120_000))
        try:
            await live_call(srv, sim)
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{base}/api/calls/{sim.call_sid}/transfer", headers=AUTH,
                                     json={"target": "+1 (555) 123-4567"}) as r:
                    assert r.status == 200, await r.text()
            result = await asyncio.wait_for(call, 15)
        finally:
            await srv.stop(drain_timeout_s=1)
    ((method, path, form, _),) = seen
    assert path == f"/2010-04-01/Accounts/{account}/Calls/{sim.call_sid}.json"
    assert form["Twiml"].endswith("<Dial><Number>+15551234567</Number></Dial></Response>")
    assert result.close_code == 1000
    assert any("call ended: transferred (+15551234567)" in line for line in log_lines)


# ------------------------------------------------------------------------------ in Chromium


@pytest.fixture
def chromium():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: `make test` installs Debian's package")
        pytest.skip("chromium is not installed (apt-get install chromium; `make test` does)")
    return CHROMIUM


async def test_the_page_in_chromium_steers_the_model_and_shows_the_transcript_as_text(
        chromium, telewire_server, tmp_path, log_lines):
    async with FakeRealtimeServer(mode="talk", talk_after_appends=10**9) as fake:
        srv = await talking(telewire_server, fake, operator_token=TOKEN)
        page_url = f"http://127.0.0.1:{srv.port}/operator"
        sim, call = a_long_call(srv)
        try:
            await live_call(srv, sim)
            conn = await fake.wait_for_connection(0)
            await conn.wait_for("session.update")
            async with Browser(tmp_path / "profile") as browser:
                page = await browser.new_page()
                await page.goto(page_url)
                # without a token: the login form, and nothing of any call
                assert await page.evaluate("document.getElementById('main').hidden")
                assert not await page.evaluate("document.getElementById('login').hidden")
                assert sim.call_sid not in await page.evaluate("document.body.innerText")
                assert await page.evaluate("document.querySelectorAll('#call-rows tr').length") == 0

                # a wrong token: an error, and still nothing
                await page.type("#token", "not-the-token")
                await page.click("#login-submit")
                await page.wait_for("!document.getElementById('error').hidden")
                assert "refused" in await page.evaluate(
                    "document.getElementById('error').textContent")
                assert await page.evaluate("document.getElementById('main').hidden")
                assert await page.evaluate("sessionStorage.length") == 0

                # the token: the call is listed, its events stream in
                await page.type("#token", TOKEN)
                await page.click("#login-submit")
                row = f"#call-rows tr[data-key='twilio/{sim.call_sid}']"
                await page.wait_for(f"document.querySelector({json.dumps(row)}) !== null")
                assert "live" in await page.evaluate(
                    f"document.querySelector({json.dumps(row)}).textContent")
                await page.wait_for("document.getElementById('stream-status').textContent "
                                    "=== 'live'")
                assert TOKEN not in await page.evaluate("location.href")
                assert await page.evaluate("document.cookie") == ""

                # a steer typed into the form reaches the model as session.update
                await page.type("#steer-instructions", "Speak like a pirate, matey.")
                await page.click("#steer-submit")
                await page.wait_for("document.getElementById('action-status').textContent "
                                    "=== 'steer: done'")
                for _ in range(200):
                    if [e for e in conn.events("session.update")
                            if e["session"].get("instructions") == "Speak like a pirate, matey."]:
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail("the steer typed into the page never reached the model")

                # the model speaks; a caller's hostile words are shown as text
                await conn.push_caller_transcript(HOSTILE)
                await conn.start_response()
                await conn.finish_response(transcript="Arr, how can I help ye?")
                await page.wait_for("document.getElementById('transcript').textContent"
                                    ".includes('Arr, how can I help ye?')")
                lines = await page.evaluate(
                    "[...document.querySelectorAll('#transcript li')].map(li => li.textContent)")
                assert "caller" + HOSTILE in lines and "agentArr, how can I help ye?" in lines
                images = "document.querySelectorAll('#transcript img').length"
                assert await page.evaluate(images) == 0
                assert await page.evaluate("document.title") == "telewire operator"

                # transfer to a target the graph does not allow: refused, shown
                await page.type("#transfer-target", "+15550001111")
                await page.click("#transfer-submit")
                await page.wait_for("document.getElementById('action-status').textContent"
                                    ".startsWith('transfer refused')")

                # hang up from the page: the call ends, the page says so
                await page.click("#hangup")
                result = await asyncio.wait_for(call, 15)
                await page.wait_for(f"document.querySelector({json.dumps(row)}).textContent"
                                    ".includes('ended (operator)')")
                problems = [p for p in page.problems()
                            if "status of 401" not in p and "status of 403" not in p]
                assert not problems, problems
                # the loopback only; the token never in an address, always in the header
                requests = page.requests()
                origin = f"http://127.0.0.1:{srv.port}/"
                assert requests and all(r["url"].startswith(origin) for r in requests), requests
                assert not [r for r in requests if TOKEN in r["url"]]
                api_calls = [r for r in requests if r["url"].startswith(origin + "api/")]
                assert {r["url"][len(origin):] for r in api_calls} >= {"api/calls", "api/events"}
                assert all(r["headers"].get("Authorization") in (f"Bearer {TOKEN}",
                                                                 "Bearer not-the-token")
                           for r in api_calls)
        finally:
            await srv.stop(drain_timeout_s=1)
    assert result.close_code == 1000
    assert not [line for line in log_lines if TOKEN in line]
