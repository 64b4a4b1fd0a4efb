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
sent. The bar is a growth under 2 MB.

    .venv/bin/python bench/recorder_rss.py [--minutes 30] [--json out.json]
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
        found = [p for p in store.rglob("manifest.json") if p.parent.name == stream_sid]
        if found:
            return found[0].parent
        time.sleep(0.1)
    raise RuntimeError(f"no archive of {stream_sid} in {store} after {timeout} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="simulated call length")
    p.add_argument("--json", metavar="FILE", help="also write the result here")
    p.add_argument("--without-recorder", action="store_true",
                   help="the same call through a graph without the recorder (for comparison)")
    args = p.parse_args(argv)
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
            out["pass"] = (max(sampler.peak, after) - before < BAR_BYTES
                           and out["caller_channel_identical"] is not False)
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
