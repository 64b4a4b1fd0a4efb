"""The recorder node over real loopback sockets: the 60-second bar, drops, cuts, hostile ids."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest
from recorder.kit import recorder_graph
from websockets.asyncio.client import connect

from telewire.archive import ArchiveReader, find_archive, iter_events, read_wav_channel, wav_info
from telewire.errors import GraphError
from telewire.testing.simulator import CallSimulator

AUDIO = bytes(range(256)) * 25  # 800 ms, every byte value
#: fast-forwarded calls send far more than the 50 media messages a second of a real one
FAST = "tel_in.config.max_messages_per_s=100000"


def url(srv) -> str:
    return f"ws://127.0.0.1:{srv.port}/media/twilio"


def stored(stream_sid: str) -> dict[str, Path]:
    record = find_archive(stream_sid)
    assert record is not None and record.status == "stored", record
    return {name: Path(p) for name, p in record.locations.items()}


@pytest.mark.slow
async def test_sixty_second_call_caller_channel_is_byte_identical_and_length_matches(rec_server):
    srv = await rec_server(FAST)
    audio = bytes((i * 7 + i // 160) & 0xFF for i in range(60 * 8000))  # 60 s of mu-law
    result = await CallSimulator(url(srv), pace=10, expect_echo=True).run(audio)
    assert result.received_audio == audio
    await srv.stop(drain_timeout_s=5)
    files = stored(result.stream_sid)
    info = wav_info(files["call.wav"])
    assert (info.codec, info.channels, info.sample_rate) == ("pcmu", 2, 8000)
    caller = read_wav_channel(files["call.wav"], 0)
    assert caller[:len(audio)] == audio
    assert set(caller[len(audio):]) <= {0xFF}  # only padding to the agent's end
    wav_ms = info.data_len / 2 / 8
    assert abs(wav_ms - 60_000) <= 40, wav_ms
    agent = read_wav_channel(files["call.wav"], 1)
    assert audio in agent  # the echo, whole, once its playout started
    manifest = json.loads(files["manifest.json"].read_text())
    assert manifest["caller_bytes"] == len(audio) and manifest["end_reason"] == "carrier_stop"
    kinds, frames = {}, {}
    for e in iter_events(files["events.jsonl"]):
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
        if e["kind"] == "audio":
            frames[e["channel"]] = frames.get(e["channel"], 0) + e["frames"]
    assert kinds["start"] == kinds["end"] == 1 and frames == {"caller": 3000, "agent": 3000}
    assert kinds["audio"] < 6000 // 10  # audio is logged in runs, not a line per frame
    transcript = json.loads(files["transcript.json"].read_text())
    assert [t["role"] for t in transcript["turns"]] == ["agent"]


async def test_event_log_references_the_wav_and_keeps_every_frames_media_time(rec_server):
    srv = await rec_server()
    result = await CallSimulator(url(srv), pace=0, expect_echo=True).run(AUDIO)
    await srv.stop(drain_timeout_s=5)
    reader = ArchiveReader(stored(result.stream_sid)["manifest.json"].parent)
    caller = [e for e in reader.events() if e.get("channel") == "caller"]
    assert all("payload" not in e for e in caller)
    stamps = [e["timestamp_ms"] + k * e["frame_bytes"] // 8 for e in caller
              for k in range(e["frames"])]  # each frame's timestamp follows from the first's
    assert stamps == list(range(0, 800, 20))
    assert [(e["at"], e["at_ms"]) for e in caller] == [(e["at_ms"] * 8, e["at_ms"])
                                                      for e in caller]
    assert b"".join(reader.audio_of(e) for e in caller) == AUDIO
    assert caller[0]["src"] == "tel_in.audio" and caller[0]["at"] == 0


async def test_call_dropped_without_stop_is_archived(rec_server):
    srv = await rec_server()
    sim = CallSimulator(url(srv), pace=0, expect_echo=True, hang_up=False)
    result = await sim.run(AUDIO)
    for _ in range(200):
        if find_archive(result.stream_sid) is not None:
            break
        await asyncio.sleep(0.02)
    files = stored(result.stream_sid)
    manifest = json.loads(files["manifest.json"].read_text())
    assert manifest["end_reason"] == "socket_closed"
    assert read_wav_channel(files["call.wav"], 0)[:len(AUDIO)] == AUDIO


async def test_dtmf_interrupt_cuts_the_agent_channel_where_the_clear_went(rec_server):
    srv = await rec_server()
    sid = "MZ" + "c" * 32

    def media(i: int, byte: int) -> str:
        return json.dumps({"event": "media", "streamSid": sid, "media": {
            "timestamp": str(i * 20), "payload": base64.b64encode(bytes([byte]) * 160).decode()}})

    async with connect(url(srv)) as ws:
        await ws.send(json.dumps({
            "event": "start", "streamSid": sid, "start": {
                "streamSid": sid, "callSid": "CA" + "c" * 32, "accountSid": "AC" + "0" * 32,
                "tracks": ["inbound"],
                "customParameters": {}, "mediaFormat": {"encoding": "audio/x-mulaw",
                                                        "sampleRate": 8000, "channels": 1}}}))
        for i in range(5):
            await ws.send(media(i, i + 1))
        received = 0
        while received < 5:
            received += json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] == "media"
        for i in range(5, 8):  # the caller goes on: media time reaches 160 ms
            await ws.send(media(i, 0x7E))
        await ws.send(json.dumps({"event": "dtmf", "streamSid": sid,
                                  "dtmf": {"track": "inbound_track", "digit": "*"}}))
        while json.loads(await asyncio.wait_for(ws.recv(), 5))["event"] != "clear":
            pass  # echoes and playback marks come first
        await ws.send(json.dumps({"event": "stop", "streamSid": sid, "stop": {}}))
    await srv.stop(drain_timeout_s=5)
    files = stored(sid)
    events = list(iter_events(files["events.jsonl"]))
    (cut,) = [e for e in events if e["kind"] == "interrupt" and e["src"] == "tel_in.interrupt"]
    assert cut["source"] == "dtmf" and cut["cut_ms"] == 160.0 and cut["discarded_ms"] > 0
    echoed = b"".join(bytes([i + 1]) * 160 for i in range(5)) + b"\x7e" * 480
    expected = bytearray()
    for e in events:  # the agent track as placed (the echo, in order), then cut at the clear
        if e.get("channel") == "agent":
            at, n = e["at"], e["len"]
            expected += b"\xff" * (at + n - len(expected))
            expected[at:at + n] = echoed[:n]
            echoed = echoed[n:]
    del expected[int(cut["cut_ms"] * 8):]
    agent = read_wav_channel(files["call.wav"], 1)
    assert agent[:len(expected)] == bytes(expected) and set(agent[len(expected):]) <= {0xFF}
    turns = json.loads(files["transcript.json"].read_text())["turns"]
    assert turns[0]["role"] == "agent" and turns[0]["interrupted"]
    assert turns[0]["end_ms"] == 160.0
    manifest = json.loads(files["manifest.json"].read_text())
    assert manifest["counters"]["agent_cuts"] == 1


async def test_hostile_ids_are_refused_before_anything_is_recorded(rec_server, dirs):
    srv = await rec_server()
    sim = CallSimulator(url(srv), pace=0, expect_echo=False, stream_sid="../../../escape",
                        call_sid="..\\..//x\x00", drain_s=0.2)
    try:
        await sim.run(AUDIO[:1600])
    except Exception:  # the carrier refuses the start event and closes the socket
        pass
    await srv.stop(drain_timeout_s=5)
    assert find_archive("../../../escape") is None
    assert not dirs[0].exists() or not any(dirs[0].rglob("*"))
    assert not (dirs[0].parent / "escape").exists()
    assert not any(p.name.endswith(".partial") for p in dirs[1].glob("*"))


async def test_the_same_ids_twice_make_two_archives_side_by_side(rec_server, dirs):
    """A carrier retry (or a replayed start) reusing a call's ids gets its own archive: the
    key ends with the archive's unique id."""
    srv = await rec_server()
    ids = {"stream_sid": "MZ" + "1" * 32, "call_sid": "CA" + "1" * 32}
    first = await CallSimulator(url(srv), pace=0, expect_echo=True, **ids).run(AUDIO)
    second = await CallSimulator(url(srv), pace=0, expect_echo=True, **ids).run(AUDIO[::-1])
    await srv.stop(drain_timeout_s=5)
    assert first.stream_sid == second.stream_sid
    wavs = sorted(dirs[0].rglob("call.wav"))
    assert len(wavs) == 2 and wavs[0].parent != wavs[1].parent
    assert {w.parent.parent.name for w in wavs} == {ids["stream_sid"]}
    callers = {read_wav_channel(w, 0)[:len(AUDIO)] for w in wavs}
    assert callers == {AUDIO, AUDIO[::-1]}
    for wav in wavs:
        manifest = json.loads((wav.parent / "manifest.json").read_text())
        assert manifest["key"].endswith("/" + manifest["archive_id"])
        assert wav.parent.name == manifest["archive_id"]


async def test_timestamps_599_s_apart_leave_a_recording_no_longer_than_the_call(rec_server,
                                                                              log_lines):
    """30 media messages stamped 599 s apart (nine hours of timeline, 278 MB of silence when
    they were believed) beside an honest call: the recording is about as long as the call was,
    and the other call's audio all comes back and is archived."""
    srv = await rec_server()
    sid, cid = "MZ" + "e" * 32, "CA" + "e" * 32
    honest = asyncio.ensure_future(
        CallSimulator(url(srv), pace=1, expect_echo=True).run(AUDIO * 2))  # 1.6 s, real time

    def media(i: int) -> str:
        return json.dumps({"event": "media", "streamSid": sid, "media": {
            "timestamp": str(i * 599_000), "payload": base64.b64encode(bytes([i]) * 160).decode()}})

    t0 = time.monotonic()
    async with connect(url(srv), max_queue=None) as ws:  # unread echoes never stall the close
        await ws.send(json.dumps({
            "event": "start", "streamSid": sid, "start": {
                "streamSid": sid, "callSid": cid, "accountSid": "AC" + "0" * 32,
                "tracks": ["inbound"], "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
        for i in range(30):
            await ws.send(media(i))
        await asyncio.sleep(0.2)
        await ws.send(json.dumps({"event": "stop", "streamSid": sid, "stop": {}}))
    for _ in range(500):
        if find_archive(sid) is not None:
            break
        await asyncio.sleep(0.02)
    wall_s = time.monotonic() - t0
    result = await honest
    await srv.stop(drain_timeout_s=5)
    files = stored(sid)
    info = wav_info(files["call.wav"])
    assert info.data_len / 2 / 8000 <= wall_s + 10, (info.data_len, wall_s)
    assert files["call.wav"].stat().st_size < 1_000_000
    manifest = json.loads(files["manifest.json"].read_text())
    assert manifest["counters"]["caller_jumps"] == 29
    caller = read_wav_channel(files["call.wav"], 0)
    assert [b for b in caller if b != 0xFF] == [b for i in range(30) for b in bytes([i]) * 160
                                                if b != 0xFF]  # every chunk, in order
    clamped = [line for line in log_lines if "not believed" in line]
    assert len(clamped) == 1 and clamped[0].startswith("WARNING")  # once, not 29 times
    assert result.received_audio == AUDIO * 2  # the other call kept flowing ...
    honest_wav = stored(result.stream_sid)["call.wav"]  # ... and its recorder finished
    assert read_wav_channel(honest_wav, 0)[:len(AUDIO) * 2] == AUDIO * 2


def test_unknown_store_scheme_fails_when_the_graph_loads(tmp_path):
    with pytest.raises(GraphError, match=r"recorder.config.store: .*no store for scheme 'ftp'"):
        recorder_graph("ftp://somewhere", tmp_path / "spool")
