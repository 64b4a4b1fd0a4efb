"""Admission and drain of a `telewire serve` process: SIGTERM during 20 live calls stops
admission, marks the process not ready, has each call say the drain goodbye and hang up, and
writes every archive before the process exits."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import ServeProcess

from telewire.testing.fake_realtime import FakeRealtimeServer
from telewire.testing.simulator import CallSimulator

TOKEN = "drain-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SILENCE = b"\xff" * 8  # one mu-law millisecond
CALLS = 20
GOODBYE = "Say that the line is closing for maintenance, and goodbye."


async def until(predicate, timeout: float = 60.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_sigterm_during_20_live_calls_ends_each_cleanly_and_writes_every_archive(
        tmp_path: Path):
    store, spool = tmp_path / "store", tmp_path / "spool"
    async with FakeRealtimeServer(mode="talk", talk_speed=4.0, response_audio_ms=400,
                                  talk_after_appends=25) as fake:
        proc = ServeProcess(
            "--set", "rt.config.provider=openai", "--set", f"rt.config.url={fake.url}",
            "--set", "rt.config.transcription_model=",
            "--set", f"rt.config.drain_goodbye={json.dumps(GOODBYE)}",
            "--set", f"recorder.config.store=file://{store}",
            "--set", f"recorder.config.spool_dir={spool}",
            env={"TELEWIRE_OPERATOR_TOKEN": TOKEN, "TELEWIRE_TWILIO_AUTH_TOKEN": "",
                 "TELEWIRE_DRAIN_TIMEOUT_S": "3", "TELEWIRE_DRAIN_GOODBYE_S": "20"})
        base = f"http://127.0.0.1:{proc.port}"
        sims = [CallSimulator(f"ws://127.0.0.1:{proc.port}/media/twilio", drain_s=0.5)
                for _ in range(CALLS)]
        calls = [asyncio.create_task(s.run(SILENCE * 120_000)) for s in sims]
        try:
            async with aiohttp.ClientSession() as http:
                async def all_live():
                    async with http.get(f"{base}/api/calls", headers=AUTH) as r:
                        return len(await r.json()) == CALLS

                await until(all_live, what=f"{CALLS} live calls")

                async def models_ready():
                    return len(fake.connections) == CALLS and all(
                        c.events("session.update") for c in fake.connections)

                await until(models_ready, what="every call's model session")
                async with http.get(f"{base}/readyz") as r:
                    assert r.status == 200
                proc.proc.send_signal(signal.SIGTERM)

                async def not_ready():
                    async with http.get(f"{base}/readyz") as r:
                        return r.status == 503 and (await r.json())["why"] == "draining"

                await until(not_ready, timeout=3, what="/readyz turning 503")
                # admission is stopped: the answer webhook and a new media socket get 503
                async with http.post(f"{base}/answer/twilio",
                                     data={"CallSid": "CA" + "2" * 32}) as r:
                    assert r.status == 503 and r.headers["Retry-After"]
            results = await asyncio.wait_for(asyncio.gather(*calls), 90)
        finally:
            for c in calls:
                c.cancel()
            log = proc.stop()
        assert proc.proc.returncode == 0, log
        said = {"telewire": "drain_goodbye"}
        goodbyes = [c for c in fake.connections
                    if any((e.get("response") or {}).get("metadata") == said
                           and e["response"].get("instructions") == GOODBYE
                           for e in c.events("response.create"))]
    # each call ended cleanly: the server closed the socket normally, after the goodbye played
    assert [r.close_code for r in results] == [1000] * CALLS, log
    assert all(r.sent_frames < 120_000 // 20 for r in results)  # ended early, by the server
    assert len(goodbyes) == CALLS
    assert f"drain timeout: {CALLS} call(s) still live" in log
    # every archive written whole (the manifest is uploaded last), each ended by the shutdown
    manifests = sorted(store.rglob("manifest.json"))
    assert len(manifests) == CALLS, log
    ids = set()
    for path in manifests:
        m = json.loads(path.read_text())
        assert m["end_reason"] == "shutdown", m
        for name in ("call.wav", "transcript.json", "events.jsonl"):
            assert (path.parent / name).stat().st_size > 0, (path, name)
        ids.add(m["call_id"])
    assert ids == {s.call_sid for s in sims}
    assert not list(spool.rglob("manifest.json")), "archives left in the spool"
    # and every call's spans were flushed to the span store before the process exited
    import sqlite3

    with sqlite3.connect(tmp_path / "telewire-spans.db") as db:
        traced = {row[0] for row in db.execute(
            "SELECT DISTINCT call_sid FROM workflow_spans WHERE parent_id IS NULL")}
    assert {s.call_sid for s in sims} <= traced
    assert "Traceback" not in log, log
