"""Recorder memory bound: RSS growth of a server process over one long recorded call, fast-forwarded.

Depends on the standard library and ``telewire`` (installed in the venv that runs this); nothing
depends on it. Linux only (reads ``/proc/<pid>/status``).

A ``telewire serve`` child on a free loopback port runs the default graph with a ``recorder``
node storing into a temporary folder and the ``echo`` provider. After one short warm-up call,
one call of ``--minutes`` simulated minutes (default 30) is played as fast as the server takes
it, the simulated carrier "playing" the agent's audio as fast too; the server's resident set
size is sampled every 50 ms. ``--without-recorder`` runs the same without the recorder node, to
tell the recorder's share from the rest of the server's. Printed (and written as JSON with
``--json``): the RSS before the call, its peak during the call and at the archive's end, the
growth, the archive's size, and whether the WAV's caller channel is byte-identical to what was
sent. The bar is a growth under 2 MB, and an event log (``events_bytes``) at most a tenth of
the first format's for the same call (85,761,522 bytes for 30 minutes, measured 2026-12-07 with
the recorder that repeated every frame's base64; scaled to ``--minutes``).

``--per-frame`` instead times the recorder's own work per frame, in this process, with no
server: ``Recorder.observe`` fed alternating caller and agent frames (160 bytes of base64 text,
as from Twilio and the echo provider), best of five runs, in microseconds per frame.

    .venv/bin/python bench/recorder_rss.py [--minutes 30] [--json out.json]
    .venv/bin/python bench/recorder_rss.py --per-frame [--frames 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BAR_BYTES = 2 * 1024 * 1024
#: events.jsonl of this call (30 minutes) in the first event-log format, which repeated every
#: audio frame's base64 payload (measured 2026-12-07); the bar is a tenth of it
EVENTS_V1_BYTES_30_MIN = 85_761_522

# The child: `telewire serve`, except that the recorder node type is supplied directly when the
# installed telewire does not declare it as an entry point yet.
_SERVE = """
import sys
from telewire import cli
from telewire.graph import NodeTypeInfo, node_types
import telewire.graph as graph_module
from telewire.nodes.recorder import Recorder
found = node_types()
if "recorder" not in found:
    found["recorder"] = NodeTypeInfo("recorder", Recorder, "telewire.nodes.recorder:Recorder",
                                     "telewire", "")
    graph_module.node_types = lambda: found
sys.exit(cli.main(sys.argv[1:]))
"""


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Sampler(threading.Thread):
    """Samples a process's RSS every ``interval`` seconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(self.interval)


def graph_file(folder: Path, recorder: bool = True) -> Path:
    """The default graph plus a recorder node writing under ``folder`` (or without one)."""
    from telewire.graph import default_graph_path

    text = default_graph_path().read_text()
    if not recorder:
        text = text.split("[nodes.recorder]", 1)[0]
        path = folder / "graph.toml"
        path.write_text(text)
        return path
    if "[nodes.recorder]" not in text:
        text += '\n[nodes.recorder]\ntype = "recorder"\n'
    text += (f'[nodes.recorder.config]\nstore = "file://{folder / "store"}"\n'
             f'spool_dir = "{folder / "spool"}"\n')
    path = folder / "graph.toml"
    path.write_text(text)
    return path


def start_server(graph: Path) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "TELEWIRE_LOG_LEVEL": "WARNING"}
    env.pop("TELEWIRE_LOG_JSON", None)
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, "serve", "--config", str(graph),
                             "--host", "127.0.0.1", "--port", "0", "--set",
                             "rt.config.provider=echo",
                             # a fast-forwarded call is no flood: lift the inbound bucket
                             "--set", "tel_in.config.max_messages_per_s=1e9",
                             "--set", "tel_in.config.message_burst=1000000000"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**env, "TELEWIRE_LOG_LEVEL": "INFO"})
    deadline = time.monotonic() + 30
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe empty
            return proc, int(m.group(1))
    proc.kill()
    raise RuntimeError("telewire serve did not start")


async def call(port: int, audio: bytes) -> Any:
    from telewire.testing.simulator import CallSimulator

    # Fast-forward both directions: the caller's audio and the carrier's playout of the agent's
    # (marks are acknowledged as fast as the audio is "played"); real-time marks against a
    # fast-forwarded call would pile up 30 minutes of unacknowledged marks in carrier_out.
    sim = CallSimulator(f"ws://127.0.0.1:{port}/media/twilio", pace=0, expect_echo=True,
                        drain_s=30, playout_rate=1000.0)
    return await sim.run(audio)


def wait_for_archive(store: Path, stream_sid: str, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # <store>/<carrier>/<YYYY>/<MM>/<DD>/<call id>/<stream id>/<archive id>/manifest.json
        found = [p for p in store.rglob("manifest.json") if p.parent.parent.name == stream_sid]
        if found:
            return found[0].parent
        time.sleep(0.1)
    raise RuntimeError(f"no archive of {stream_sid} in {store} after {timeout} s")


async def per_frame(frames: int, repeats: int = 5) -> dict[str, Any]:
    """The recorder's cost per observed frame (see the module docstring)."""
    import base64
    from types import SimpleNamespace

    from loguru import logger

    from telewire.frames import AudioFrame, StartFrame
    from telewire.graph import build_graph
    from telewire.nodes.recorder import Recorder

    best = float("inf")
    with tempfile.TemporaryDirectory(prefix="telewire-recorder-frame-") as tmp:
        folder = Path(tmp)
        import tomllib

        raw = tomllib.loads(graph_file(folder).read_text())
        graph = build_graph(raw, source="bench")
        spec = graph.nodes["recorder"]
        payloads = [base64.b64encode(bytes((i * 7 + j) & 0xFF for j in range(160))).decode()
                    for i in range(50)]
        for r in range(repeats):
            call = SimpleNamespace(graph=graph, log=logger)
            rec = Recorder("recorder", spec.config, call)
            await rec.on_call_start(StartFrame(carrier="twilio", stream_id=f"MZbench{r}",
                                               call_id="CAbench"))
            opening = getattr(rec, "opening", None)  # files open in a thread (events format 2)
            if opening is not None:
                await opening
            caller = [AudioFrame(payload=payloads[i % 50], timestamp_ms=20 * i, sequence=i + 1)
                      for i in range(frames // 2)]
            agent = [AudioFrame(payload=payloads[i % 50], track="outbound", item_id="echo")
                     for i in range(frames // 2)]
            observe = rec.observe
            t0 = time.perf_counter()
            for c, a in zip(caller, agent):
                observe("tel_in", "audio", c)
                observe("rt", "audio_out", a)
            elapsed = time.perf_counter() - t0
            best = min(best, elapsed)
            rec._close_files()
            del caller, agent
    return {"frames": frames // 2 * 2, "repeats": repeats,
            "us_per_frame": round(best / (frames // 2 * 2) * 1e6, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="simulated call length")
    p.add_argument("--per-frame", action="store_true",
                   help="time Recorder.observe per frame in this process instead")
    p.add_argument("--frames", type=int, default=100_000, help="frames for --per-frame")
    p.add_argument("--json", metavar="FILE", help="also write the result here")
    p.add_argument("--without-recorder", action="store_true",
                   help="the same call through a graph without the recorder (for comparison)")
    args = p.parse_args(argv)
    if args.per_frame:
        out = asyncio.run(per_frame(args.frames))
        print(json.dumps(out, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        return 0
    from telewire.archive import read_wav_channel

    with tempfile.TemporaryDirectory(prefix="telewire-recorder-rss-") as tmp:
        folder = Path(tmp)
        recording = not args.without_recorder
        proc, port = start_server(graph_file(folder, recorder=recording))
        try:
            warm = bytes(range(256)) * 250  # 8 s
            r = asyncio.run(call(port, warm))
            if recording:
                wait_for_archive(folder / "store", r.stream_sid)
            time.sleep(0.5)
            before = rss_bytes(proc.pid)
            n = int(args.minutes * 60 * 8000)
            audio = bytes((i * 31 + (i >> 11)) & 0xFF for i in range(n))
            sampler = Sampler(proc.pid)
            sampler.start()
            t0 = time.perf_counter()
            result = asyncio.run(call(port, audio))
            archive = wait_for_archive(folder / "store", result.stream_sid) if recording else None
            elapsed = time.perf_counter() - t0
            time.sleep(0.5)
            sampler.stop_event.set()
            sampler.join()
            after = rss_bytes(proc.pid)
            caller = (read_wav_channel(archive / "call.wav", 0, length=len(audio))
                      if archive is not None else None)
            out = {
                "recorder": recording,
                "simulated_minutes": args.minutes,
                "wall_seconds": round(elapsed, 1),
                "frames_sent": result.sent_frames,
                "frames_echoed": result.received_frames,
                "rss_before_mb": round(before / 2**20, 2),
                "rss_peak_mb": round(max(sampler.peak, after) / 2**20, 2),
                "rss_after_mb": round(after / 2**20, 2),
                "rss_growth_peak_mb": round((max(sampler.peak, after) - before) / 2**20, 2),
                "rss_growth_after_mb": round((after - before) / 2**20, 2),
                "archive_bytes": ({f.name: f.stat().st_size for f in archive.iterdir()}
                                  if archive is not None else None),
                "caller_channel_identical": caller == audio if recording else None,
                "bar_mb": BAR_BYTES / 2**20,
            }
            events_bar = EVENTS_V1_BYTES_30_MIN * args.minutes / 30 / 10
            if archive is not None:
                out["events_bytes"] = (archive / "events.jsonl").stat().st_size
                out["events_bar_bytes"] = int(events_bar)
                out["events_vs_format_1"] = round(
                    out["events_bytes"] / (EVENTS_V1_BYTES_30_MIN * args.minutes / 30), 4)
            out["pass"] = (max(sampler.peak, after) - before < BAR_BYTES
                           and out["caller_channel_identical"] is not False
                           and out.get("events_bytes", 0) <= events_bar)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
