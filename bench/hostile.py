"""``make bench``, hostile part: what one attacking connection costs the other calls.

Depends on the standard library, ``telewire`` (installed in the venv that runs this) and its
testing kit; nothing depends on it.

``telewire serve`` (the default graph, recorder included) runs in its own process against a fake
OpenAI Realtime server in echo mode. ``--calls`` victim calls (``telewire.testing.simulator``,
real-time pace) run for ``--seconds`` each, first alone, then beside one hostile connection, in
alternating rounds (``--repeat`` of each) so that the machine's drift hits both alike:

* ``flood``: one connection sends 10,000 DTMF messages as fast as it can, then keeps flooding
  media messages until the victims finish;
* ``timestamps``: one connection sends 30 media messages stamped 599 s apart (a recorder that
  trusted them would write hours of silence on the event loop).

Reports each condition's victim round-trip p50/p99 and its ratio to the quiet rounds measured in
the same run, the ``response.create`` the flood caused, and the hostile call's recording length.
Writes ``bench/results/hostile-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from telewire.archive import wav_info
from telewire.testing.fake_realtime import FakeRealtimeServer
from telewire.testing.simulator import CallSimulator

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
TELEWIRE = str(Path(sys.executable).parent / "telewire")
FRAME = base64.b64encode(b"\xff" * 160).decode()


def _start(call_sid: str, stream_sid: str) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
                       "start": {"streamSid": stream_sid, "callSid": call_sid,
                                 "accountSid": "AC" + "0" * 32, "tracks": ["inbound"],
                                 "customParameters": {},
                                 "mediaFormat": {"encoding": "audio/x-mulaw",
                                                 "sampleRate": 8000, "channels": 1}}})


def _media(stream_sid: str, timestamp_ms: int, chunk: int) -> str:
    return ('{"event":"media","streamSid":"' + stream_sid + '","media":{"track":"inbound",'
            '"chunk":"' + str(chunk) + '","timestamp":"' + str(timestamp_ms) + '","payload":"'
            + FRAME + '"}}')


async def _flood(url: str, index: int, stop: asyncio.Event) -> int:
    stream, call = f"MZ{index:032x}", f"CA{index:032x}"
    dtmf = json.dumps({"event": "dtmf", "streamSid": stream,
                       "dtmf": {"track": "inbound_track", "digit": "5"}})
    sent = 0
    try:
        async with connect(url, max_size=None) as ws:
            await ws.send(_start(call, stream))
            for i in range(10_000):
                await ws.send(dtmf)
                sent += 1
                if i % 200 == 0:
                    await asyncio.sleep(0)
            chunk = 0
            while not stop.is_set():
                for _ in range(200):
                    chunk += 1
                    await ws.send(_media(stream, chunk * 20, chunk))
                    sent += 1
                await asyncio.sleep(0)
    except ConnectionClosed:
        pass
    return sent


async def _timestamps(url: str, index: int, stop: asyncio.Event) -> int:
    stream, call = f"MZ{index:032x}", f"CA{index:032x}"
    async with connect(url, max_size=None) as ws:
        await ws.send(_start(call, stream))
        for i in range(30):
            await ws.send(_media(stream, i * 599_000, i + 1))
            await asyncio.sleep(0.05)
        await stop.wait()
        await ws.send(json.dumps({"event": "stop", "streamSid": stream,
                                  "stop": {"callSid": call}}))
    return 30


ATTACKS = {"flood": _flood, "timestamps": _timestamps}


async def _round(url: str, calls: int, seconds: float, attack: str | None, index: int
                 ) -> dict[str, Any]:
    attacker = None
    if attack:  # its own process, so that it does not slow the victims' event loop down
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--attack", attack, "--url", url, "--index",
            str(10_000 + index), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(0.3)
    audio = b"\xff" * int(8000 * seconds)
    results = await asyncio.gather(*(CallSimulator(url, pace=1.0, drain_s=1.0, expect_echo=True)
                                     .run(audio) for _ in range(calls)))
    sent = 0
    if attacker is not None:
        out, _ = await attacker.communicate(b"stop\n")
        sent = int(out.decode().strip() or 0)
    latencies = sorted(x for r in results for x in r.latencies_ms)
    return {"attack": attack, "hostile_messages": sent,
            "lost_frames": sum(r.lost_frames for r in results),
            "latencies_ms": latencies}


def _pct(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else float("nan")


def _wav_seconds(root: Path, index: int) -> float | None:
    for path in root.rglob(f"CA{index:032x}/**/*.wav"):
        info = wav_info(path)  # mu-law (format 7), which the stdlib's wave cannot read
        return round(info.data_len / (info.sample_rate * info.channels), 1)
    return None


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="telewire-hostile-"))
    async with FakeRealtimeServer(mode="echo", record=True) as fake:
        env = {**os.environ, "OPENAI_API_KEY": "placeholder", "TELEWIRE_LOG_LEVEL": "WARNING"}
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        log = (work / "serve.log").open("w")
        proc = subprocess.Popen(
            [TELEWIRE, "serve", "--host", "127.0.0.1", "--port", str(port),
             "--set", "rt.config.provider=openai", "--set", f"rt.config.url={fake.url}",
             "--set", "tel_in.config.interrupt_dtmf_digit=",
             "--set", f"recorder.config.store=file://{work / 'recordings'}",
             "--set", f"recorder.config.spool_dir={work / 'spool'}"],
            stderr=log, stdout=subprocess.DEVNULL, env=env, cwd=work)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("telewire serve did not start; see "
                                           f"{work / 'serve.log'}") from None
                    await asyncio.sleep(0.1)
            url = f"ws://127.0.0.1:{port}/media/twilio"
            rounds: list[dict[str, Any]] = []
            conditions = [None, *ATTACKS]
            for rep in range(args.repeat):
                order = conditions[rep % len(conditions):] + conditions[:rep % len(conditions)]
                for attack in order:
                    creates_before = sum(len(c.events("response.create"))
                                         for c in fake.connections)
                    r = await _round(url, args.calls, args.seconds, attack, len(rounds))
                    r["response_creates"] = sum(len(c.events("response.create"))
                                                for c in fake.connections) - creates_before
                    r["index"] = 10_000 + len(rounds)
                    rounds.append(r)
                    print(f"round {len(rounds)}: {attack or 'quiet'} p99 "
                          f"{_pct(r['latencies_ms'], 0.99)} ms", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            log.close()
    out: dict[str, Any] = {"calls": args.calls, "seconds": args.seconds, "repeat": args.repeat,
                           "conditions": {}}
    for attack in [None, *ATTACKS]:
        mine = [r for r in rounds if r["attack"] == attack]
        lat = sorted(x for r in mine for x in r["latencies_ms"])
        out["conditions"][attack or "quiet"] = {
            "p50_ms": _pct(lat, 0.50), "p99_ms": _pct(lat, 0.99),
            "round_p99_ms": [_pct(r["latencies_ms"], 0.99) for r in mine],
            "lost_frames": sum(r["lost_frames"] for r in mine),
            "hostile_messages": sum(r["hostile_messages"] for r in mine),
            "response_creates": [r["response_creates"] for r in mine],
            "hostile_recording_s": [_wav_seconds(work / "recordings", r["index"]) for r in mine]
            if attack else None,
        }
    quiet = out["conditions"]["quiet"]
    for attack in ATTACKS:
        c = out["conditions"][attack]
        c["p99_ratio"] = round(c["p99_ms"] / quiet["p99_ms"], 2) if quiet["p99_ms"] else None
        c["p50_ratio"] = round(c["p50_ms"] / quiet["p50_ms"], 2) if quiet["p50_ms"] else None
    return out


async def _attack_main(attack: str, url: str, index: int) -> int:
    """The attacker process: attack until a line arrives on stdin; print messages sent."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), stop.set)
    return await ATTACKS[attack](url, index, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="victim calls per round")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per victim call")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each condition")
    parser.add_argument("--json", type=Path, default=None, help="where to write the figures")
    parser.add_argument("--attack", choices=sorted(ATTACKS), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.attack:
        print(asyncio.run(_attack_main(args.attack, args.url, args.index)), flush=True)
        return 0
    out = asyncio.run(main_async(args))
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = args.json or RESULTS / f"hostile-{stamp}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for name, c in out["conditions"].items():
        extra = (f", p99 {c['p99_ratio']}x quiet, response.create {c['response_creates']}, "
                 f"hostile recording {c['hostile_recording_s']} s" if name != "quiet" else "")
        print(f"{name}: victim p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms, lost "
              f"{c['lost_frames']}{extra}")
    print(f"figures in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
