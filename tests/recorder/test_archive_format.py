"""Archive files without a network: WAV headers, streamed interleaving, track files, spool recovery."""

from __future__ import annotations

import json
import os
import struct

import pytest

from telewire.archive import (
    TrackFile,
    Uploader,
    finalize,
    interleave_wav,
    read_wav_channel,
    wav_header,
    wav_info,
)
from telewire.wav import read_ulaw


def test_stereo_mulaw_header_is_format_tag_7():
    h = wav_header(320, codec="pcmu", sample_rate=8000, channels=2)
    assert h[:4] == b"RIFF" and h[8:12] == b"WAVE"
    tag, channels, rate, byte_rate, block, bits = struct.unpack("<HHIIHH", h[20:36])
    assert (tag, channels, rate, byte_rate, block, bits) == (7, 2, 8000, 16000, 2, 8)
    assert h[-8:] == b"data" + struct.pack("<I", 320)


def test_interleave_streams_pads_the_shorter_channel_and_reads_back_exactly(tmp_path):
    left, right = tmp_path / "l", tmp_path / "r"
    caller = bytes(range(256)) * 1000  # 256 000 bytes: several chunks
    agent = bytes(reversed(range(256))) * 300
    left.write_bytes(caller)
    right.write_bytes(agent)
    out = tmp_path / "call.wav"
    assert interleave_wav(left, right, out, codec="pcmu", sample_rate=8000,
                          chunk_bytes=4096) == len(caller)
    info = wav_info(out)
    assert (info.codec, info.channels, info.data_len) == ("pcmu", 2, 2 * len(caller))
    assert read_wav_channel(out, 0) == caller
    assert read_wav_channel(out, 1) == agent + b"\xff" * (len(caller) - len(agent))
    assert read_wav_channel(out, 0, start=1000, length=10) == caller[1000:1010]


def test_interleave_of_16_bit_pcm_keeps_samples_whole(tmp_path):
    left, right = tmp_path / "l", tmp_path / "r"
    left.write_bytes(struct.pack("<4h", 1, -2, 3, -4))
    right.write_bytes(struct.pack("<2h", 100, -200))
    out = tmp_path / "x.wav"
    interleave_wav(left, right, out, codec="l16", sample_rate=16000)
    raw = out.read_bytes()[wav_info(out).data_offset:]
    assert struct.unpack("<8h", raw) == (1, 100, -2, -200, 3, 0, -4, 0)


def test_track_file_fills_gaps_with_silence_overwrites_and_truncates(tmp_path):
    t = TrackFile(tmp_path / "t", b"\xff", buffer_bytes=4096)
    t.write_at(0, b"\x01" * 4)
    t.write_at(10, b"\x02" * 2)
    t.write_at(2, b"\x03" * 2)
    assert t.end == 12
    t.truncate(11)
    t.write_at(13, b"\x04")
    t.close()
    assert (tmp_path / "t").read_bytes() == (b"\x01\x01\x03\x03" + b"\xff" * 6 + b"\x02"
                                             + b"\xff\xff\x04")


def test_a_long_gap_is_filled_off_the_calling_thread_and_order_is_kept(tmp_path, monkeypatch):
    import threading

    from telewire import archive

    fill_threads = set()
    real_write = TrackFile._write

    def watched(self, offset, data):
        fill_threads.add(threading.current_thread().name)
        return real_write(self, offset, data)

    monkeypatch.setattr(TrackFile, "_write", watched)
    release = threading.Event()
    real_drain = TrackFile._drain
    monkeypatch.setattr(TrackFile, "_drain", lambda self: (release.wait(5), real_drain(self)))
    t = TrackFile(tmp_path / "t", b"\xff", buffer_bytes=4096)
    t.write_at(0, b"\x01" * 160)
    gap = archive.SYNC_GAP_BYTES * 20
    t.write_at(160 + gap, b"\x02" * 160)  # 10 s of silence first: handed to a worker
    assert t.busy
    t.write_at(320 + gap, b"\x03" * 160)  # queued behind it, in order
    t.write_at(100, b"\x04" * 10)  # a late chunk, before the end
    t.truncate(400 + gap)
    release.set()
    t.close()  # waits for the worker
    assert not t.busy and t.dropped == 0
    assert fill_threads and all(n.startswith("telewire-track") for n in fill_threads)
    data = (tmp_path / "t").read_bytes()
    assert data == (b"\x01" * 100 + b"\x04" * 10 + b"\x01" * 50 + b"\xff" * gap
                    + b"\x02" * 160 + b"\x03" * 80)


def test_writes_behind_a_long_fill_are_bounded(tmp_path, monkeypatch):
    import threading

    from telewire import archive

    release = threading.Event()
    real_drain = TrackFile._drain
    monkeypatch.setattr(TrackFile, "_drain", lambda self: (release.wait(5), real_drain(self)))
    monkeypatch.setattr(archive, "MAX_DEFERRED_WRITES", 10)
    t = TrackFile(tmp_path / "t", b"\xff")
    t.write_at(archive.SYNC_GAP_BYTES * 2, b"\x01")
    for i in range(1, 30):
        t.write_at(archive.SYNC_GAP_BYTES * 2 + i, b"\x01")
    release.set()
    t.close()
    assert t.dropped == 20
    assert (tmp_path / "t").stat().st_size == archive.SYNC_GAP_BYTES * 2 + 10


def test_a_single_channel_of_the_archive_wav_is_readable_by_telewire(tmp_path):
    left, right = tmp_path / "l", tmp_path / "r"
    left.write_bytes(b"\x10" * 8)
    right.write_bytes(b"")
    out = tmp_path / "call.wav"
    interleave_wav(left, right, out, codec="pcmu", sample_rate=8000)
    with pytest.raises(Exception, match="8000 Hz mono"):
        read_ulaw(out)  # the tool for mono input refuses stereo, precisely


def _partial(root, name, pid):
    folder = root / f"{name}.partial"
    folder.mkdir(parents=True)
    meta = {"archive_id": name, "carrier": "twilio", "stream_id": "MZ" + name, "call_id": "CA1",
            "account_id": "", "custom_parameters": {}, "tracks": ["inbound"],
            "media_format": {"codec": "pcmu", "sample_rate": 8000, "channels": 1},
            "started_at": 0, "store": f"file://{root.parent / 'store'}", "pid": pid,
            "key": f"twilio/1970/01/01/CA1/MZ{name}"}
    (folder / "call.json").write_text(json.dumps(meta))
    (folder / "caller.track").write_bytes(b"\x01" * 1600)
    (folder / "agent.track").write_bytes(b"\x02" * 800)
    events = [{"t": 0, "kind": "audio", "channel": "agent", "item_id": "a", "at_ms": 0.0,
               "end_ms": 100.0},
              {"t": 150, "kind": "transcript", "role": "caller", "text": "hi", "item_id": "c",
               "final": True}]
    (folder / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events)
                                         + '\n{"t": 3, "kind": "aud')  # torn last line
    return folder


async def test_partial_archive_of_a_dead_process_is_recovered_and_stored(tmp_path):
    spool = tmp_path / "spool"
    dead = _partial(spool, "dead", pid=2**22 + 12345)  # no such process
    alive = _partial(spool, "alive", pid=os.getppid())  # a live process's call: left alone
    up = Uploader(spool)
    states = {e.archive_id: e.state for e in up.entries()}
    assert states == {"alive": "recording", "dead": "orphaned"}
    stored, failed = await up.flush()
    assert failed == [] and [r.archive_id for r in stored] == ["dead"]
    assert not dead.exists() and alive.exists()
    folder = tmp_path / "store" / "twilio/1970/01/01/CA1/MZdead"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["end_reason"] == "recovered" and manifest["caller_bytes"] == 1600
    turns = json.loads((folder / "transcript.json").read_text())["turns"]
    assert [(t["role"], t["start_ms"], t["end_ms"]) for t in turns] == [
        ("agent", 0.0, 100.0), ("caller", 100.0, 150.0)]
    assert read_wav_channel(folder / "call.wav", 1) == b"\x02" * 800 + b"\xff" * 800


def test_finalize_builds_all_four_files(tmp_path):
    folder = _partial(tmp_path / "spool", "x", pid=1)
    ready = finalize(folder, end_reason="carrier_stop")
    assert sorted(p.name for p in ready.iterdir()) == [
        "call.json", "call.wav", "events.jsonl", "manifest.json", "transcript.json"]
