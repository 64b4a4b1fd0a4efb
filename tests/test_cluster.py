"""Many processes on one real Redis: the registry, operator commands and event webhooks across
`telewire serve` workers, a killed worker's calls expiring, and `serve --workers N`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time

import aiohttp
import pytest
from conftest import ServeProcess

from telewire.testing.fake_realtime import FakeRealtimeServer
from telewire.testing.simulator import CallSimulator

#: many processes or fresh venvs: `make test` runs these, `make test-lowest` leaves them out
pytestmark = pytest.mark.slow

TOKEN = "cluster-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SILENCE = b"\xff" * 8  # one mu-law millisecond


def worker(redis_url: str, name: str, fake: FakeRealtimeServer, *extra: str,
           **env: str) -> ServeProcess:
    return ServeProcess(
        "--set", "rt.config.provider=openai", "--set", f"rt.config.url={fake.url}",
        "--set", "rt.config.transcription_model=", *extra,
        env={"TELEWIRE_CONTROL_URL": redis_url, "TELEWIRE_WORKER_ID": name,
             "TELEWIRE_OPERATOR_TOKEN": TOKEN, "TELEWIRE_TWILIO_AUTH_TOKEN": "",
             "TELEWIRE_CONTROL_TTL_S": "1.5", **env})


async def listed(http: aiohttp.ClientSession, port: int) -> list[dict]:
    async with http.get(f"http://127.0.0.1:{port}/api/calls", headers=AUTH) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def until(predicate, timeout: float = 30.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(0.05)


async def test_a_steer_to_worker_a_reaches_the_call_on_worker_b(redis_url):
    async with FakeRealtimeServer(mode="talk", response_audio_ms=300,
                                  talk_after_appends=10) as fake:
        a = worker(redis_url, "worker-a", fake)
        b = worker(redis_url, "worker-b", fake)
        try:
            sim = CallSimulator(f"ws://127.0.0.1:{b.port}/media/twilio", drain_s=0.5)
            call = asyncio.create_task(sim.run(SILENCE * 60_000))
            async with aiohttp.ClientSession() as http:
                async def on_a():
                    return [c for c in await listed(http, a.port) if c["call_id"] == sim.call_sid]

                (row,) = await until(on_a, what="worker A listing worker B's call")
                assert row["worker"] == "worker-b" and row["carrier"] == "twilio"
                assert row["stream_id"] == sim.stream_sid and row["state"] == "live"
                conn = await asyncio.wait_for(fake.wait_for_connection(0), 30)
                await asyncio.wait_for(conn.wait_for("session.update"), 30)
                before = len(conn.events("session.update"))
                api = f"http://127.0.0.1:{a.port}/api/calls"
                async with http.post(f"{api}/{sim.call_sid}/steer", headers=AUTH,
                                     json={"instructions": "Speak like a pirate."}) as r:
                    assert r.status == 200, await r.text()
                    assert (await r.json())["action"] == "steer"

                async def steered():
                    return [e for e in conn.events("session.update")[before:]
                            if e.get("session", {}).get("instructions") == "Speak like a pirate."]

                await until(steered, what="the steer reaching the fake model as session.update")
                # a command for a call no worker holds: 404, quickly
                async with http.post(f"{api}/CA{'f' * 32}/steer", headers=AUTH,
                                     json={"instructions": "x"}) as r:
                    assert r.status == 404
                async with http.post(f"{api}/twilio/{sim.call_sid}/hangup", headers=AUTH,
                                     json={}) as r:
                    assert r.status == 200
                result = await asyncio.wait_for(call, 30)
                assert result.close_code == 1000  # hung up on worker B by worker A's API

                async def gone():
                    return not [c for c in await listed(http, a.port)
                                if c["call_id"] == sim.call_sid]

                await until(gone, what="the ended call leaving the registry")
        finally:
            a.stop()
            b.stop()


async def test_a_killed_workers_calls_leave_the_registry_within_the_ttl(redis_url):
    async with FakeRealtimeServer(mode="talk", response_audio_ms=300,
                                  talk_after_appends=10) as fake:
        a = worker(redis_url, "worker-a", fake)
        b = worker(redis_url, "worker-b", fake)
        sims = [CallSimulator(f"ws://127.0.0.1:{b.port}/media/twilio", drain_s=0.5)
                for _ in range(3)]
        calls = [asyncio.create_task(s.run(SILENCE * 60_000)) for s in sims]
        try:
            async with aiohttp.ClientSession() as http:
                async def all_on_a():
                    rows = [c for c in await listed(http, a.port) if c["worker"] == "worker-b"]
                    return len(rows) == 3

                await until(all_on_a, what="worker A listing B's 3 calls")
                # the entries outlive several TTLs while B refreshes them
                deadline = time.monotonic() + 3.5
                while time.monotonic() < deadline:
                    assert len([c for c in await listed(http, a.port)
                                if c["worker"] == "worker-b"]) == 3
                    await asyncio.sleep(0.25)
                b.proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()

                async def none_of_b():
                    return not [c for c in await listed(http, a.port)
                                if c["worker"] == "worker-b"]

                await until(none_of_b, timeout=30, what="B's calls expiring")
                # within the TTL (1.5 s) plus one refresh period's slack and the poll
                assert time.monotonic() - killed < 1.5 + 0.5 + 5.0
                # a command for one of them now: 404, not a hang
                async with http.post(
                        f"http://127.0.0.1:{a.port}/api/calls/{sims[0].call_sid}/interrupt",
                        headers=AUTH, json={}) as r:
                    assert r.status == 404
        finally:
            for c in calls:
                c.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            a.stop()
            b.stop()


async def test_the_cluster_cap_refuses_calls_on_every_worker(redis_url):
    async with FakeRealtimeServer(mode="talk", response_audio_ms=300,
                                  talk_after_appends=10) as fake:
        cap = {"TELEWIRE_MAX_CLUSTER_CALLS": "1"}
        a = worker(redis_url, "worker-a", fake, **cap)
        b = worker(redis_url, "worker-b", fake, **cap)
        try:
            sim = CallSimulator(f"ws://127.0.0.1:{a.port}/media/twilio", drain_s=0.5)
            call = asyncio.create_task(sim.run(SILENCE * 60_000))
            async with aiohttp.ClientSession() as http:
                async def one_live():
                    return len(await listed(http, b.port)) == 1

                await until(one_live, what="the first call registered")
                form = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "0" * 32}
                async with http.post(f"http://127.0.0.1:{b.port}/answer/twilio",
                                     data=form) as r:
                    assert r.status == 503 and r.headers["Retry-After"]
                    assert "cluster at capacity" in await r.text()
                async with http.get(f"http://127.0.0.1:{b.port}/media/twilio",
                                    headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                             "Sec-WebSocket-Version": "13",
                                             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
                                    ) as r:
                    assert r.status == 503
                call.cancel()
                await asyncio.gather(call, return_exceptions=True)
        finally:
            a.stop()
            b.stop()


@pytest.mark.parametrize("reuse_port", ["1", "0"], ids=["SO_REUSEPORT", "shared-socket"])
async def test_serve_workers_share_one_port_restart_a_dead_worker_and_drain_on_sigterm(
        redis_url, reuse_port):
    env = {**os.environ, "TELEWIRE_LOG_LEVEL": "INFO", "TELEWIRE_CONTROL_URL": redis_url,
           "TELEWIRE_OPERATOR_TOKEN": TOKEN, "TELEWIRE_WORKER_ID": "pod",
           "TELEWIRE_REUSE_PORT": reuse_port}
    import subprocess
    import sys
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "telewire.cli", "serve", "--host", "127.0.0.1",
                             "--port", "0", "--workers", "2"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")),
                              daemon=True)
    reader.start()

    async def logged(pattern: str, count: int = 1):
        async def seen():
            found = [m for line in list(lines) if (m := re.search(pattern, line))]
            return found if len(found) >= count else None
        return await until(seen, what=f"{count} log line(s) matching {pattern!r}")

    try:
        (sup,) = await logged(r"supervisor: 2 workers on http://127\.0\.0\.1:(\d+)")
        assert ("SO_REUSEPORT" if reuse_port == "1" else "one shared socket") in sup.string
        port = int(sup.group(1))
        listening = await logged(r"listening on http://127\.0\.0\.1:(\d+)", 2)
        assert {int(m.group(1)) for m in listening} == {port}
        started = await logged(r"worker (\d) started \(pid (\d+)\)", 2)
        pids = {int(m.group(1)): int(m.group(2)) for m in started}
        # a new connection per request: the kernel picks a worker per connection
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as http:
            async def both_answer():
                seen = set()
                for _ in range(40):
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                        seen.add((await r.json())["worker"])
                return seen if len(seen) == 2 else None

            workers = await until(both_answer, what="both workers answering on the one port")
            assert workers == {"pod-1", "pod-2"}
            os.kill(pids[1], signal.SIGKILL)
            await logged(r"worker 1 \(pid \d+\) exited with -9; restarting")
            await logged(r"worker 1 started \(pid (\d+)\)", 2)
            await until(both_answer, what="the restarted worker answering")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        await logged(r"supervisor: stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    assert not [line for line in lines if "Traceback" in line], "".join(lines)


async def test_an_event_webhook_at_one_worker_reaches_the_call_on_another(redis_url):
    """Bandwidth delivers DTMF by webhook to whichever process its load balancer picks."""
    from telewire_bandwidth.testing import dtmf_event, start_message
    from websockets.asyncio.client import connect

    async with FakeRealtimeServer(mode="talk", response_audio_ms=300,
                                  talk_after_appends=10) as fake:
        no_auth = {"TELEWIRE_CALL_TOKENS": "off", "TELEWIRE_BANDWIDTH_USERNAME": "",
                   "TELEWIRE_BANDWIDTH_PASSWORD": ""}
        a = worker(redis_url, "worker-a", fake, **no_auth)
        b = worker(redis_url, "worker-b", fake, **no_auth)
        try:
            call_id = "c-15ac29a2-1331029c-2cb0-4a07-b215-b22865662d85"
            async with connect(f"ws://127.0.0.1:{b.port}/media/bandwidth") as ws:
                await ws.send(start_message(stream_id="s-" + "a" * 8 + "-bbbb-cccc-dddd-"
                                            + "e" * 12, call_id=call_id))
                async with aiohttp.ClientSession() as http:
                    async def on_a():
                        return [c for c in await listed(http, a.port)
                                if c["call_id"] == call_id]

                    await until(on_a, what="the Bandwidth call on B listed by A")
                    conn = await asyncio.wait_for(fake.wait_for_connection(0), 30)
                    await asyncio.wait_for(conn.wait_for("session.update"), 30)
                    async with http.post(f"http://127.0.0.1:{a.port}/events/bandwidth",
                                         json=dtmf_event(call_id, "5")) as r:
                        assert r.status == 204, await r.text()

                    async def pressed():
                        return [e for e in conn.events("conversation.item.create")
                                if "pressed the key 5" in json.dumps(e)]

                    await until(pressed, what="the digit reaching the model on B")
                    async with http.post(f"http://127.0.0.1:{a.port}/events/bandwidth",
                                         json=dtmf_event("c-nobody", "5")) as r:
                        assert r.status == 404
        finally:
            a.stop()
            b.stop()
