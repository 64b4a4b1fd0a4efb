"""The event log's second format: audio by reference into call.wav, files opened off the loop, and
the first format (base64 payloads) still read and replayed."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from loguru import logger
from recorder.kit import recorder_graph
from websockets.asyncio.client import connect

from telewire.archive import (
    EVENTS_FORMAT,
    ArchiveReader,
    Uploader,
    find_archive,
    iter_events,
    read_wav_channel,
    wav_info,
)
from telewire.frames import AudioFrame, DTMFFrame, EndFrame, StartFrame
from telewire.nodes import recorder as recorder_module
from telewire.nodes.recorder import Recorder
from telewire.replay import replay
from telewire.testing.simulator import CallSimulator

#: an archive recorded by the first-format recorder (3 s of audio, digits 5 at 600 ms and 7 at
#: 1900 ms, custom parameter tenant=acme); never rewritten
V1_ARCHIVE = Path(__file__).parent / "data" / "v1-archive"
AUDIO = bytes((i * 7 + i // 160) & 0xFF for i in range(3 * 8000))  # 3 s
FAST = "tel_in.config.max_messages_per_s=100000"


def url(srv) -> str:
    return f"ws://127.0.0.1:{srv.port}/media/twilio"


def stored_folder(stream_sid: str) -> Path:
    record = find_archive(stream_sid)
    assert record is not None and record.status == "stored", record
    return Path(record.locations["manifest.json"]).parent


async def test_a_new_archive_says_format_2_and_logs_audio_without_payloads(rec_server):
    srv = await rec_server(FAST)
    result = await CallSimulator(url(srv), pace=0, expect_echo=True).run(AUDIO)
    await srv.stop(drain_timeout_s=5)
    folder = stored_folder(result.stream_sid)
    reader = ArchiveReader(folder)
    assert reader.manifest["events_format"] == EVENTS_FORMAT == 2 == reader.events_format
    events = list(reader.events())
    assert events[0]["kind"] == "format" and events[0]["events_format"] == 2
    audio = [e for e in events if e["kind"] == "audio"]
    assert audio and all("payload" not in e for e in audio)
    frames = {c: sum(e["frames"] for e in audio if e["channel"] == c) for c in ("caller", "agent")}
    assert frames == {"caller": 150, "agent": reader.manifest["counters"]["agent_frames"]}
    assert len(audio) * 10 <= sum(frames.values())
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def test_references_resolve_to_the_exact_bytes_of_the_wav(rec_server):
    """Caller audio with a gap in its timestamps: two caller runs, each resolving to the bytes
    sent, at the byte offsets of the interleaved WAV; the agent's runs resolve to the echo."""
    srv = await rec_server()
    sid = "MZ" + "7" * 32
    chunks = [bytes((i * 13 + j) & 0xFF for j in range(160)) for i in range(6)]
    stamps = [0, 20, 40, 200, 220, 240]  # 120 ms of silence after the third chunk

    async with connect(url(srv)) as ws:
        await ws.send(json.dumps({
            "event": "start", "streamSid": sid, "start": {
                "streamSid": sid, "callSid": "CA" + "7" * 32, "accountSid": "AC" + "0" * 32,
                "tracks": ["inbound"], "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                "channels": 1}}}))
        for chunk, stamp in zip(chunks, stamps):
            await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {
                "timestamp": str(stamp), "payload": base64.b64encode(chunk).decode()}}))
        received = 0
        while received < len(chunks):
            received += json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "media"
        await ws.send(json.dumps({"event": "stop", "streamSid": sid, "stop": {}}))
    await srv.stop(drain_timeout_s=5)
    folder = stored_folder(sid)
    reader = ArchiveReader(folder)
    caller = [e for e in reader.events() if e.get("channel") == "caller"]
    assert [(e["at"], e["len"], e["frames"], e["timestamp_ms"]) for e in caller] == [
        (0, 480, 3, 0), (1600, 480, 3, 200)]
    assert [reader.audio_of(e) for e in caller] == [b"".join(chunks[:3]), b"".join(chunks[3:])]
    raw = (folder / "call.wav").read_bytes()
    data = raw[wav_info(folder / "call.wav").data_offset:]
    for e in caller:  # channel byte b of the stereo G.711 WAV is data byte 2 * b (+1: agent)
        assert data[2 * e["at"]:2 * (e["at"] + e["len"]):2] == reader.audio_of(e)
    agent = [e for e in reader.events() if e.get("channel") == "agent"]
    assert b"".join(reader.audio_of(e) for e in agent) == b"".join(chunks)
    for e in agent:
        assert data[2 * e["at"] + 1:2 * (e["at"] + e["len"]):2] == reader.audio_of(e)


async def test_the_old_format_archive_is_read_and_replays_into_a_new_one(tmp_path, monkeypatch):
    monkeypatch.delenv("TELEWIRE_TWILIO_AUTH_TOKEN", raising=False)
    source = tmp_path / "v1"
    shutil.copytree(V1_ARCHIVE, source)  # replay must not need to write to its source
    old = ArchiveReader(source)
    assert old.events_format == 1 and "events_format" not in old.manifest
    caller = [e for e in old.events() if e.get("channel") == "caller"]
    assert len(caller) == 150 and all("payload" in e for e in caller)
    assert b"".join(old.audio_of(e) for e in caller) == old.caller_audio() == AUDIO
    assert old.dtmf() == [(600.0, "5"), (1900.0, "7")]
    graph = recorder_graph(f"file://{tmp_path / 'store'}", tmp_path / "spool")
    summary = await replay(str(source), graph, pace=0)
    assert summary["sent_bytes"] == len(AUDIO) and summary["dtmf"] == 2
    assert summary["source_events_format"] == 1
    new = ArchiveReader(Path(summary["archive"]["locations"]["manifest.json"]).parent)
    assert new.events_format == 2
    assert new.caller_audio() == old.caller_audio()
    assert [d for _, d in new.dtmf()] == ["5", "7"]
    assert new.manifest["custom_parameters"]["replay_of"] == old.manifest["archive_id"]
    assert new.manifest["custom_parameters"]["tenant"] == "acme"


def _recorder(tmp_path: Path) -> Recorder:
    graph = recorder_graph(f"file://{tmp_path / 'store'}", tmp_path / "spool")
    spec = graph.nodes["recorder"]
    return Recorder("recorder", spec.config, SimpleNamespace(graph=graph, log=logger))


def _caller(i: int) -> AudioFrame:
    return AudioFrame(payload=base64.b64encode(bytes([i % 251]) * 160).decode(),
                      timestamp_ms=20 * i, sequence=i + 1)


async def test_files_open_in_a_thread_and_no_frame_seen_meanwhile_is_lost(tmp_path, monkeypatch):
    release, entered = threading.Event(), threading.Event()
    opened_in = []
    real = Uploader.new_partial

    def slow_new_partial(self, archive_id):
        opened_in.append(threading.current_thread())
        entered.set()
        assert release.wait(10)
        return real(self, archive_id)

    monkeypatch.setattr(Uploader, "new_partial", slow_new_partial)
    rec = _recorder(tmp_path)
    await rec.on_call_start(StartFrame(carrier="twilio", stream_id="MZ" + "f" * 32))
    for i in range(50):  # the loop runs on while the thread waits: frames are kept in order
        rec.observe("tel_in", "audio", _caller(i))
        if i == 25:
            rec.observe("tel_in", "dtmf", DTMFFrame(digit="4"))
        await asyncio.sleep(0)
    assert await asyncio.to_thread(entered.wait, 10)
    assert not list((tmp_path / "spool").glob("*.partial"))
    assert opened_in and opened_in[0] is not threading.main_thread()
    release.set()
    deadline = time.monotonic() + 10
    while rec._opened is None:  # the thread is done, but the loop never lets the task resume
        assert time.monotonic() < deadline
        time.sleep(0.005)
    rec.observe("tel_in", "audio", _caller(50))  # this frame puts the files in place
    assert rec._early is None and not isinstance(rec._caller, recorder_module._Early)
    assert await rec.opening
    for i in range(51, 100):
        rec.observe("tel_in", "audio", _caller(i))
    await rec.on_call_end(EndFrame(reason="carrier_stop"))
    ready = rec.ready
    assert ready is not None
    sent = b"".join(_caller(i).data for i in range(100))
    assert read_wav_channel(ready / "call.wav", 0) == sent
    events = list(iter_events(ready / "events.jsonl"))
    kinds = [(e["kind"], e.get("at")) for e in events]
    assert kinds == [("format", None), ("start", None), ("audio", 0), ("dtmf", None),
                     ("audio", 26 * 160), ("audio", 76 * 160), ("end", None)]  # runs <= 1 s
    assert sum(e.get("frames", 0) for e in events) == 100
    assert json.loads((ready / "manifest.json").read_text())["counters"]["frames_dropped"] == 0


async def test_what_waits_for_the_files_is_bounded_and_the_excess_counted(tmp_path, monkeypatch):
    release = threading.Event()
    real = Uploader.new_partial

    def slow_new_partial(self, archive_id):
        assert release.wait(10)
        return real(self, archive_id)

    monkeypatch.setattr(Uploader, "new_partial", slow_new_partial)
    monkeypatch.setattr(recorder_module, "MAX_EARLY_BYTES", 2000)
    rec = _recorder(tmp_path)
    await rec.on_call_start(StartFrame(carrier="twilio", stream_id="MZ" + "d" * 32))
    for i in range(20):  # 3200 bytes of audio against a 2000-byte bound
        rec.observe("tel_in", "audio", _caller(i))
    release.set()
    assert await rec.opening
    await rec.on_call_end(EndFrame(reason="carrier_stop"))
    manifest = json.loads((rec.ready / "manifest.json").read_text())
    dropped = manifest["counters"]["frames_dropped"]
    assert 8 <= dropped <= 12
    caller = read_wav_channel(rec.ready / "call.wav", 0)
    assert caller[:160 * (20 - dropped)] == b"".join(_caller(i).data for i in range(20 - dropped))


async def test_a_format_2_log_rebuilds_the_transcript_of_a_call_whose_process_died(tmp_path):
    """Recovery reads the runs as it read format 1's frames: the same turns as the live call's,
    up to the last record written (runs still open when a process dies are not in the log)."""
    from telewire.archive import finalize
    from telewire.frames import InterruptFrame, TranscriptFrame

    rec = _recorder(tmp_path)
    await rec.on_call_start(StartFrame(carrier="twilio", stream_id="MZ" + "6" * 32))
    assert await rec.opening
    for i in range(40):
        rec.observe("tel_in", "audio", _caller(i))
        rec.observe("rt", "audio_out", AudioFrame(payload=_caller(i).payload, track="outbound",
                                                  item_id="a1" if i < 20 else "a2"))
        if i == 30:
            rec.observe("tel_in", "interrupt", InterruptFrame(source="dtmf", reason="digit *"))
    rec.observe("rt", "transcript", TranscriptFrame(role="caller", text="hello", final=True))
    live = [t.as_dict() for t in rec.turns.turns()]
    for f in (rec._events, rec._caller._f, rec._agent._f):  # what a dying process had written
        f.flush()
    recovered = finalize(rec.partial, end_reason="recovered")
    turns = json.loads((recovered / "transcript.json").read_text())["turns"]
    assert turns == live and [t["role"] for t in turns] == ["agent", "caller", "agent"]
    assert turns[2]["item_id"] == "a2" and turns[2]["interrupted"]
    assert read_wav_channel(recovered / "call.wav", 0)[:40 * 160] == b"".join(
        _caller(i).data for i in range(40))
