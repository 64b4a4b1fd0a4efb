"""The CLI in child processes: SIGTERM leaves nothing behind, archive status/flush, replay."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ServeProcess
from recorder.kit import child_env, recorder_graph_file

from telewire.archive import ArchiveReader, read_wav_channel
from telewire.testing.simulator import CallSimulator

TELEWIRE = [sys.executable, "-m", "telewire.cli"]
AUDIO = bytes((i * 13) & 0xFF for i in range(8000 * 3))  # 3 s


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TELEWIRE, *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.slow
async def test_sigterm_with_the_store_down_spools_then_archive_flush_stores_it(moto, tmp_path):
    moto.make_bucket("calls")
    store = f"s3://calls/p?endpoint_url={moto.endpoint}&region=us-east-1"
    spool = tmp_path / "spool"
    graph = recorder_graph_file(tmp_path / "g.toml", store, spool)
    env = child_env()
    serve = ServeProcess("--config", str(graph), env=env)
    try:
        moto.stop()
        sim = CallSimulator(serve.url, pace=0, expect_echo=True, hang_up=False)
        result = await sim.run(AUDIO)
        await asyncio.sleep(0.3)  # the call ends when the socket drops; the upload fails
    finally:
        log = serve.stop()  # SIGTERM: waits for in-flight uploads, then leaves them spooled
    assert serve.proc.returncode == 0, log
    assert "stay in the spool" in log
    status = cli("archive", "status", "--spool", str(spool), "--json", env=env)
    (entry,) = json.loads(status.stdout)
    assert entry["state"] == "ready" and entry["stream_id"] == result.stream_sid
    assert entry["attempts"] >= 1 and "upload failed" in entry["last_error"]
    assert cli("archive", "flush", "--spool", str(spool), env=env).returncode == 1  # still down
    moto.start()
    moto.make_bucket("calls")
    flushed = cli("archive", "flush", "--config", str(graph), env=env)
    assert flushed.returncode == 0, flushed.stderr
    (stored,) = json.loads(flushed.stdout)["stored"]
    assert stored["stream_id"] == result.stream_sid
    assert json.loads(cli("archive", "status", "--spool", str(spool), "--json",
                          env=env).stdout) == []
    objects = moto.objects("calls", "p/")
    wav = tmp_path / "call.wav"
    wav.write_bytes(objects[stored["locations"]["call.wav"].split("/", 3)[3]])
    assert read_wav_channel(wav, 0)[:len(AUDIO)] == AUDIO


async def test_sigterm_flushes_an_archive_in_flight_to_the_store(tmp_path):
    store, spool = tmp_path / "store", tmp_path / "spool"
    graph = recorder_graph_file(tmp_path / "g.toml", f"file://{store}", spool)
    serve = ServeProcess("--config", str(graph), env=child_env())
    try:
        result = await CallSimulator(serve.url, pace=0, expect_echo=True).run(AUDIO)
    finally:
        log = serve.stop()
    assert serve.proc.returncode == 0, log
    (wav,) = store.rglob("call.wav")
    assert wav.parent.parent.name == result.stream_sid  # .../<stream id>/<archive id>/call.wav
    assert read_wav_channel(wav, 0)[:len(AUDIO)] == AUDIO
    assert [p.name for p in spool.iterdir()] == ["instance-id"]  # no archive left


async def test_replay_against_echo_reproduces_the_caller_channel(tmp_path):
    store, spool = tmp_path / "store", tmp_path / "spool"
    graph = recorder_graph_file(tmp_path / "g.toml", f"file://{store}", spool)
    env = child_env()
    serve = ServeProcess("--config", str(graph), env=env)
    try:
        original = await CallSimulator(serve.url, pace=0, expect_echo=True,
                                       custom_parameters={"tenant": "acme"}).run(AUDIO)
    finally:
        serve.stop()
    (first,) = [p.parent for p in store.rglob("manifest.json")]
    proc = cli("replay", f"file://{first}", "--config", str(graph), "--pace", "0",
               "--set", "rt.config.provider=echo", env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["sent_bytes"] == len(AUDIO) and summary["from_ms"] == 0.0
    new = Path(summary["archive"]["locations"]["manifest.json"]).parent
    assert new != first and summary["stream_sid"] != original.stream_sid
    old_reader, new_reader = ArchiveReader(first), ArchiveReader(new)
    assert new_reader.caller_audio() == old_reader.caller_audio() == AUDIO
    params = new_reader.manifest["custom_parameters"]
    assert params["tenant"] == "acme" and params["replay_of"] == old_reader.manifest["archive_id"]


async def test_replay_turn_out_of_range_names_the_number_of_turns(tmp_path):
    store, spool = tmp_path / "store", tmp_path / "spool"
    graph = recorder_graph_file(tmp_path / "g.toml", f"file://{store}", spool)
    env = child_env()
    serve = ServeProcess("--config", str(graph), env=env)
    try:
        await CallSimulator(serve.url, pace=0, expect_echo=True).run(AUDIO[:1600])
    finally:
        serve.stop()
    (folder,) = [p.parent for p in store.rglob("manifest.json")]
    proc = cli("replay", str(folder), "--config", str(graph), "--turn", "9", env=env)
    assert proc.returncode == 2
    assert "--turn 9" in proc.stderr and "caller turn(s)" in proc.stderr
