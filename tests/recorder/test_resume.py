"""Spooled archives resume when a server starts, with no call made, in the spool's own process."""

from __future__ import annotations

import asyncio
import json
import os

from conftest import ServeProcess
from recorder.kit import child_env, recorder_graph_file

from telewire.archive import INSTANCE_ID, LOCK, find_archive, read_wav_channel
from telewire.testing.simulator import CallSimulator

AUDIO = bytes((i * 11) & 0xFF for i in range(8000))  # 1 s


def _orphan(spool, name):
    """A partial archive of a process that died in a container whose host name is gone."""
    folder = spool / f"{name}.partial"
    folder.mkdir(parents=True)
    meta = {"archive_id": name, "carrier": "twilio", "stream_id": "MZ" + name, "call_id": "CA1",
            "account_id": "", "custom_parameters": {}, "tracks": ["inbound"],
            "media_format": {"codec": "pcmu", "sample_rate": 8000, "channels": 1},
            "started_at": 0, "store": None, "pid": 1, "host": "pod-7f9c-gone",
            "key": f"twilio/1970/01/01/CA1/MZ{name}/{name}"}
    return folder, meta


async def test_a_spooled_archive_is_stored_when_the_next_server_starts(rec_server, dirs):
    store, spool = dirs
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text("not a folder: every put fails")  # the store is broken ...
    graph = recorder_graph_file(store.parent / "g.toml", f"file://{store}", spool)
    serve = ServeProcess("--config", str(graph), env=child_env())
    try:
        result = await CallSimulator(serve.url, pace=0, expect_echo=True).run(AUDIO)
        await asyncio.sleep(0.3)  # the upload fails and waits to retry
    finally:
        log = serve.stop()  # ... so the archive stays spooled when this process ends
    assert serve.proc.returncode == 0, log
    assert "stay in the spool" in log
    (spooled,) = [p for p in spool.iterdir() if p.is_dir()]
    instance = (spool / INSTANCE_ID).read_text().strip()
    assert json.loads((spooled / "manifest.json").read_text())["instance_id"] == instance
    orphan, meta = _orphan(spool, "old")
    meta["store"] = f"file://{store}"
    (orphan / "call.json").write_text(json.dumps(meta))
    (orphan / "caller.track").write_bytes(AUDIO)
    (orphan / LOCK).touch()  # nobody holds it: its process is gone

    store.unlink()  # the store works again; a new server starts on the same spool
    await rec_server()
    for _ in range(500):  # no call is made: the start alone resumes the spool
        record = find_archive(result.stream_sid)
        if record is not None and record.status == "stored" and find_archive("MZold"):
            break
        await asyncio.sleep(0.02)
    assert record is not None and record.status == "stored", record
    wavs = {p.parent.parent.name: p for p in store.rglob("call.wav")}
    assert set(wavs) == {result.stream_sid, "MZold"}
    assert read_wav_channel(wavs[result.stream_sid], 0)[:len(AUDIO)] == AUDIO
    assert read_wav_channel(wavs["MZold"], 0) == AUDIO
    recovered = json.loads((wavs["MZold"].parent / "manifest.json").read_text())
    assert recovered["end_reason"] == "recovered"
    assert sorted(os.listdir(spool)) == [INSTANCE_ID]
    assert (spool / INSTANCE_ID).read_text().strip() == instance  # the same spool, kept
