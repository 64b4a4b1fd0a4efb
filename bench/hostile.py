"""``make bench``, hostile part: what one attacking connection costs the other calls.

Depends on the standard library, ``telewire`` (installed in the venv that runs this) and its
testing kit; nothing depends on it.

``telewire serve`` (the default graph, recorder included) runs in its own process against a fake
OpenAI Realtime server in echo mode. ``--calls`` victim calls (``telewire.testing.simulator``,
real-time pace) run for ``--seconds`` each, first alone, then beside one hostile connection, in
alternating rounds (``--repeat`` of each) so that the machine's drift hits both alike:

* ``flood``: one connection sends 10,000 DTMF messages as fast as it can, then media messages;
  whenever the server ends its call for flooding it connects again and goes on, until the
  victims finish;
* ``timestamps``: one connection sends 30 media messages stamped 599 s apart (a recorder that
  trusted them would write hours of silence on the event loop).

The attacker is a process of its own, connected and started before the victims begin and
told to attack a second into their calls, so that neither its start-up nor its send loop is
counted as the server's cost. On two or more cores the server runs alone on core 0 and
everything else on core 1.

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


async def _flood(url: str, index: int, go: asyncio.Event, stop: asyncio.Event) -> int:
    """10,000 DTMF messages as fast as they go, then media floods; reconnect whenever the
    server ends the call, until told to stop."""
    dtmf_budget = 10_000
    sent = 0
    ready = True
    while not stop.is_set():
        stream, call = f"MZ{index:032x}", f"CA{index:032x}"
        index += 1
        dtmf = json.dumps({"event": "dtmf", "streamSid": stream,
                           "dtmf": {"track": "inbound_track", "digit": "5"}})
        try:
            async with connect(url, max_size=None) as ws:
                await ws.send(_start(call, stream))
                if ready:
                    print("ready", flush=True)
                    ready = False
                    await go.wait()
                chunk = 0
                while not stop.is_set():
                    for _ in range(200):
                        if dtmf_budget > 0:
                            dtmf_budget -= 1
                            await ws.send(dtmf)
                        else:
                            chunk += 1
                            await ws.send(_media(stream, chunk * 20, chunk))
                        sent += 1
                    await asyncio.sleep(0)
        except (ConnectionClosed, OSError):
            await asyncio.sleep(0.01)
    return sent


async def _timestamps(url: str, index: int, go: asyncio.Event, stop: asyncio.Event) -> int:
    """30 media messages stamped 599 s apart, then a stop at the end."""
    stream, call = f"MZ{index:032x}", f"CA{index:032x}"
    async with connect(url, max_size=None) as ws:
        await ws.send(_start(call, stream))
        print("ready", flush=True)
        await go.wait()
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
            str(10_000 + 100 * index), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        assert attacker.stdout is not None and attacker.stdin is not None
        await attacker.stdout.readline()  # "ready": started, connected, its call begun
    audio = b"\xff" * int(8000 * seconds)
    victims = asyncio.gather(*(CallSimulator(url, pace=1.0, drain_s=1.0, expect_echo=True)
                               .run(audio) for _ in range(calls)))
    if attacker is not None:
        await asyncio.sleep(1.0)  # the attack starts while every victim is talking
        attacker.stdin.write(b"go\n")
        await attacker.stdin.drain()
    results = await victims
    sent = 0
    if attacker is not None:
        out, _ = await attacker.communicate(b"stop\n")
        sent = int(out.decode().split()[-1] or 0)
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
    pinned = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
    if pinned:
        os.sched_setaffinity(0, {1})
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
        if pinned:  # the server alone on core 0; victims, fake model and attacker on core 1
            os.sched_setaffinity(proc.pid, {0})
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
                    r["index"] = 10_000 + 100 * len(rounds)  # the attacker's first call
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
    """The attacker process: prints ``ready`` once connected, attacks on a ``go`` line on
    stdin, stops on the next line; prints how many messages it sent."""
    go, stop = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        await reader.readline()
        go.set()
        await reader.readline()
        stop.set()

    task = asyncio.ensure_future(commands())
    try:
        return await ATTACKS[attack](url, index, go, stop)
    finally:
        task.cancel()


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
