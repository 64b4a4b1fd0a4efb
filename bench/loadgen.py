"""The benchmark's load generator: N simulated Twilio calls at real-time pace, round trips measured.

Depends on the standard library only (uvloop when installed); ``bench/run.py`` starts it as a
separate process and reads one JSON document from its stdout.

Each call behaves like the carrier's side of a bidirectional Media Stream, as
``telewire.testing.simulator.CallSimulator`` does: ``connected`` and ``start``, then a 160-byte
(20 ms) ``media`` frame every 20 ms on a steady clock, ``stop`` at the end. The WebSocket client is
a minimal one written on ``asyncio.Protocol`` so that 200 calls (10,000 frames a second each way)
cost the shared core little: no task per call, one timer per frame, frames written whole
(masked with an all-zero key, which the protocol allows and every server must unmask).

Round trips are measured the way ``CallSimulator`` measures them, by matching the echoed payload:
the first three audio bytes of every frame carry the call's frame number, so the first four
base64 characters of an echoed payload name the frame and its send time. A round trip is carrier
send to the echoed payload's arrival at the simulated carrier.

Timeline (one clock for all calls): calls start staggered over ``--stagger`` seconds; after
``--warmup`` more seconds the measured window opens and lasts ``--seconds``; sending stops when it
closes. Server CPU (``/proc/<pid>/stat`` utime+stime) is read at the window's edges and RSS
(``/proc/<pid>/status`` VmRSS) every half second inside it. Round-trip statistics cover the frames
sent inside the window. Then every call waits up to ``--drain`` seconds for its outstanding echoes
(lost = sent - echoed, over the whole call), sends ``stop`` and closes.

Several servers at once (``--port A,B,...`` with one ``--sut-pid`` and ``--fake-pid`` each): a
shared machine's speed drifts by tens of percent over tens of seconds, so servers measured one
after the other are not measured on the same machine. Here every server gets ``--calls`` calls,
all connected for the whole run, and the servers take turns: time is cut into slots of
``--slot`` seconds of sending followed by ``--gap`` seconds of silence (for the last server to
work off what it was sent), one slot per server in turn. Only the calls of the server whose slot
it is send media; the others stay connected and idle. After ``--warmup`` (rounded up to whole
turns) the measured window opens at the start of a turn and lasts until every server has had
``--seconds`` of sending in it. CPU, core and harness figures are read at every slot's edges and
charged to the slot's server (its gap included); its round trips are those of the frames its calls
sent in its slots. The result is one document per server, in ``--port`` order.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import resource
import sys
import time
from array import array
from typing import Any

FRAME_S = 0.020
FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
_SILENCE_TAIL = base64.b64encode(b"\xff" * (FRAME_BYTES - 3)).decode("ascii")
_B64_INDEX = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_PAYLOAD_KEY = b'"payload":"'
_MARK_EVENT = b'"event":"mark"'
_MARK_NAME = b'"name":"'
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # fields 14 and 15 of stat(5)


def rss_kib(pid: int) -> int:
    """VmRSS of process ``pid`` in KiB."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0


def core_ticks(core: int) -> list[int]:
    """``/proc/stat`` ticks of one core (``-1``: all cores): user nice system idle iowait irq
    softirq steal."""
    prefix = b"cpu " if core < 0 else b"cpu%d " % core
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(prefix):
                return [int(x) for x in line.split()[1:9]]
    return [0] * 8


def _core_use(a: list[int], b: list[int]) -> dict[str, float]:
    d = [y - x for x, y in zip(a, b)]
    total = sum(d) or 1
    return {"busy": round((total - d[3] - d[4]) / total, 3),
            "softirq": round(d[6] / total, 3), "steal": round(d[7] / total, 3)}


def _busy_s(a: list[int], b: list[int]) -> float:
    """Seconds all cores were busy (user nice system irq) between two ``core_ticks(-1)``."""
    d = [y - x for x, y in zip(a, b)]
    return (d[0] + d[1] + d[2] + d[5]) / _TICKS


def _frame_header(length: int, opcode: int = 0x1) -> bytes:
    """A client frame header: FIN, ``opcode``, masked with the all-zero key."""
    if length < 126:
        return bytes((0x80 | opcode, 0x80 | length)) + b"\0\0\0\0"
    if length < 65536:
        return bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big") + b"\0\0\0\0"
    return bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big") + b"\0\0\0\0"


class Schedule:
    """Whose turn it is to send: one server always (``systems == 1``), or slots of ``slot``
    seconds followed by ``gap`` seconds of silence, one per server in turn, from ``start``
    (loop time)."""

    def __init__(self, systems: int, start: float, slot: float, gap: float) -> None:
        self.systems, self.start, self.slot, self.gap = systems, start, slot, gap
        self.period = slot + gap

    def sending_at(self, system: int, t: float) -> float:
        """``t`` if ``system`` may send at ``t``, else the start of its next slot."""
        if self.systems == 1:
            return t
        rel = t - self.start
        if rel < 0:
            return self.start + system * self.period
        turn = self.period * self.systems
        n, into = divmod(rel, turn)
        begin = system * self.period
        if begin <= into < begin + self.slot:
            return t
        return self.start + (n + (into >= begin)) * turn + begin


class Stats:
    """What all calls share: the clock, the window, the round trips."""

    def __init__(self, window_start: float, window_end: float) -> None:
        self.window_start = window_start
        self.window_end = window_end
        self.latencies_ms = array("d")
        self.sent_times = array("d")  # for --dump only
        self.dump = False
        self.other_messages = 0
        self.marks_echoed = 0
        self.offset = 0.0  # perf_counter - loop.time()
        self.late_max = 0.0
        self.late_5ms = 0
        self.errors: list[str] = []


class Call(asyncio.Protocol):
    """One simulated call: a WebSocket client protocol that sends frames on timers."""

    def __init__(self, index: int, host: str, port: int, path: str, stats: Stats,
                 loop: asyncio.AbstractEventLoop, system: int = 0,
                 schedule: Schedule | None = None) -> None:
        self.index = index
        self.host, self.port, self.path = host, port, path
        self.stats = stats
        self.loop = loop
        self.system = system
        self.schedule = schedule
        self.tick = 0  # 20 ms ticks since t0, sent or skipped (not this server's slot)
        self.stream_sid = f"MZ{index:032x}"
        self.call_sid = f"CA{index:032x}"
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = asyncio.Event()
        self.closed = asyncio.Event()
        self.handshake_status = 0
        self.sent_at = array("d")
        self.echoed = bytearray()
        self.received = 0
        self.duplicates = 0
        self.seq = 0
        self.t0 = 0.0
        self.stop_at = 0.0
        self.sending_done = asyncio.Event()
        self.close_sent = False
        self.close_received = False
        self.server_closed_early = False
        self.timer: asyncio.TimerHandle | None = None
        self.head = ('{"event":"media","sequenceNumber":"')
        self.mid = '","streamSid":"' + self.stream_sid + '","media":{"track":"inbound","chunk":"'

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"  # type: ignore[attr-defined]
                         "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buf
        buf += data
        if not self.upgraded.is_set():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = bytes(buf[:buf.find(b"\r\n")])
            parts = status_line.split()
            self.handshake_status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            del buf[:end + 4]
            self.upgraded.set()
            if self.handshake_status != 101:
                self.stats.errors.append(f"call {self.index}: handshake {status_line!r}")
                self.transport.close()  # type: ignore[union-attr]
                return
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            off = pos + 2
            if length == 126:
                if n - off < 2:
                    break
                length = int.from_bytes(buf[off:off + 2], "big")
                off += 2
            elif length == 127:
                if n - off < 8:
                    break
                length = int.from_bytes(buf[off:off + 8], "big")
                off += 8
            if b1 & 0x80:  # a server must not mask; tolerate it anyway
                if n - off < 4:
                    break
                mask = bytes(buf[off:off + 4])
                off += 4
            else:
                mask = None
            if n - off < length:
                break
            payload = bytes(buf[off:off + length])
            if mask is not None:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            pos = off + length
            opcode = b0 & 0x0F
            if opcode == 0x1 or opcode == 0x0:
                self._text(payload, now)
            elif opcode == 0x8:
                self.close_received = True
                if not self.close_sent:
                    self.server_closed_early = self.loop.time() < self.stop_at
                    self._send_close()
                self.transport.close()  # type: ignore[union-attr]
            elif opcode == 0x9:
                self._write(payload, 0xA)
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.close_received and not self.close_sent:
            self.server_closed_early = True
        self.upgraded.set()
        self.sending_done.set()
        self.closed.set()

    # -- messages --------------------------------------------------------------------------------

    def _text(self, payload: bytes, now: float) -> None:
        i = payload.find(_PAYLOAD_KEY)
        if i < 0:
            self.stats.other_messages += 1
            if _MARK_EVENT in payload:
                # Twilio echoes a mark once the audio before it has played; echo it at once
                # (this load generator does not simulate playout), so the server handles the
                # same message traffic it would on a real call.
                j = payload.find(_MARK_NAME)
                if j >= 0:
                    name = payload[j + len(_MARK_NAME):payload.index(b'"', j + len(_MARK_NAME))]
                    self._write(b'{"event":"mark","sequenceNumber":"0","streamSid":"'
                                + self.stream_sid.encode() + b'","mark":{"name":"' + name + b'"}}')
                    self.stats.marks_echoed += 1
            return
        i += len(_PAYLOAD_KEY)
        c = payload[i:i + 4].decode("ascii")
        frame = ((_B64_INDEX[c[0]] << 18) | (_B64_INDEX[c[1]] << 12) | (_B64_INDEX[c[2]] << 6)
                 | _B64_INDEX[c[3]])
        if frame >= len(self.sent_at) or self.echoed[frame]:
            self.duplicates += 1
            return
        self.echoed[frame] = 1
        self.received += 1
        sent = self.sent_at[frame]
        if self.stats.window_start <= sent < self.stats.window_end:
            self.stats.latencies_ms.append((now - sent) * 1000.0)
            if self.stats.dump:
                self.stats.sent_times.append(sent - self.stats.window_start)

    def _write(self, data: bytes, opcode: int = 0x1) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(_frame_header(len(data), opcode) + data)

    def _send_close(self) -> None:
        if not self.close_sent:
            self.close_sent = True
            self._write((1000).to_bytes(2, "big"), 0x8)

    def send_json(self, text: str) -> None:
        self._write(text.encode())

    def start(self, t0: float, stop_at: float) -> None:
        """Send ``connected`` and ``start``; media frames from ``t0`` (loop time) to ``stop_at``."""
        self.t0, self.stop_at = t0, stop_at
        self.send_json('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        self.seq = 1
        self.send_json(json.dumps({
            "event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid,
            "start": {"accountSid": "AC" + "0" * 32, "streamSid": self.stream_sid,
                      "callSid": self.call_sid, "tracks": ["inbound"], "customParameters": {},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                      "channels": 1}}}, separators=(",", ":")))
        self.timer = self.loop.call_at(t0, self._tick)

    def _tick(self) -> None:
        frame = len(self.sent_at)
        due = self.t0 + self.tick * FRAME_S
        if due >= self.stop_at or self.transport is None or self.transport.is_closing():
            self.timer = None
            self.sending_done.set()
            return
        schedule = self.schedule
        if schedule is not None and schedule.systems > 1:
            at = schedule.sending_at(self.system, due)
            if at != due:  # not this server's slot: sleep to the first tick of the next one
                self.tick += max(1, math.ceil((at - due) / FRAME_S - 1e-9))
                self.timer = self.loop.call_at(self.t0 + self.tick * FRAME_S, self._tick)
                return
        self.tick += 1
        self.seq += 1
        payload = base64.b64encode(frame.to_bytes(3, "big")).decode("ascii") + _SILENCE_TAIL
        seq = str(self.seq)
        msg = (self.head + seq + self.mid + str(frame + 1) + '","timestamp":"'
               + str(frame * 20) + '","payload":"' + payload + '"}}')
        data = msg.encode()
        self.echoed.append(0)
        now = time.perf_counter()
        self.sent_at.append(now)
        stats = self.stats
        if stats.window_start <= now < stats.window_end:
            late = now - stats.offset - due  # how late this process sent it: its own stalls
            if late > stats.late_max:
                stats.late_max = late
            if late > 0.005:
                stats.late_5ms += 1
        self.transport.write(_frame_header(len(data)) + data)
        self.timer = self.loop.call_at(self.t0 + self.tick * FRAME_S, self._tick)

    def finish(self) -> None:
        """Send ``stop`` and a close frame."""
        self.seq += 1
        self.send_json('{"event":"stop","sequenceNumber":"' + str(self.seq) + '","streamSid":"'
                       + self.stream_sid + '","stop":{"accountSid":"AC' + "0" * 32
                       + '","callSid":"' + self.call_sid + '"}}')
        self._send_close()


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 3)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    # perf_counter and the loop clock are both CLOCK_MONOTONIC; keep them as one clock
    offset = time.perf_counter() - loop.time()
    systems = len(args.port)
    begin = loop.time() + 0.05
    if systems == 1:
        schedule = Schedule(1, begin, args.seconds, 0.0)
        window_start = begin + args.stagger + args.warmup
        window_end = window_start + args.seconds
        edges = [window_start, window_end]
    else:  # turns of one slot per server; the window is whole turns
        first = begin + args.stagger + 0.2  # every call connected and started
        schedule = Schedule(systems, first, args.slot, args.gap)
        turn = schedule.period * systems
        window_start = first + math.ceil(args.warmup / turn) * turn
        turns = max(1, math.ceil(args.seconds / args.slot - 1e-9))
        window_end = window_start + turns * turn
        edges = [window_start + i * schedule.period for i in range(turns * systems + 1)]
    stats = [Stats(window_start + offset, window_end + offset) for _ in range(systems)]
    for st in stats:
        st.dump = bool(args.dump)
        st.offset = offset
    calls = [Call(i, args.host, args.port[k], args.path, stats[k], loop, k, schedule)
             for k in range(systems) for i in range(args.calls)]
    suts, fakes = args.sut_pid, args.fake_pid
    me = os.getpid()
    rss: list[list[tuple[float, int]]] = [[] for _ in range(systems)]
    readings: list[dict[str, Any]] = []

    async def one(call: Call) -> None:
        at = begin + args.stagger * call.index / max(1, args.calls)
        await asyncio.sleep(max(0.0, at - loop.time()))
        try:
            await loop.create_connection(lambda: call, args.host, call.port)
            await asyncio.wait_for(call.upgraded.wait(), 10)
        except (OSError, asyncio.TimeoutError) as exc:
            call.stats.errors.append(f"call {call.index}: connect: {type(exc).__name__}: {exc}")
            call.closed.set()
            call.sending_done.set()
            return
        if call.handshake_status != 101 or call.transport is None or call.transport.is_closing():
            call.closed.set()
            call.sending_done.set()
            return
        call.start(loop.time(), window_end)
        await call.sending_done.wait()
        deadline = loop.time() + args.drain
        while call.received < len(call.sent_at) and loop.time() < deadline \
                and not call.closed.is_set():
            await asyncio.sleep(0.05)
        call.finish()
        try:
            await asyncio.wait_for(call.closed.wait(), 5)
        except asyncio.TimeoutError:
            call.stats.errors.append(f"call {call.index}: no close from the server within 5 s")
            if call.transport is not None:
                call.transport.close()

    def read_edge() -> None:
        readings.append({
            "t": time.perf_counter(),
            "sut_cpu_s": [cpu_seconds(pid) for pid in suts],
            "fake_cpu_s": [cpu_seconds(pid) if pid else 0.0 for pid in fakes],
            "loadgen_cpu_s": _self_cpu(),
            "live_calls": [sum(1 for c in calls if c.system == k and c.timer is not None)
                           for k in range(systems)],
            "core": core_ticks(args.sut_core) if args.sut_core >= 0 else None,
            "all": core_ticks(-1)})

    async def sample_rss() -> None:
        await asyncio.sleep(max(0.0, window_start - loop.time()))
        while loop.time() < window_end - 0.25:
            t = loop.time()
            for k, pid in enumerate(suts):
                rss[k].append((t, rss_kib(pid)))
            await asyncio.sleep(0.5)

    for t in edges:
        loop.call_at(t, read_edge)
    sampler = asyncio.ensure_future(sample_rss())
    await asyncio.gather(*(one(c) for c in calls))
    await sampler
    if args.dump:
        with open(args.dump, "w") as f:
            json.dump([{"sent_s": list(st.sent_times), "rtt_ms": list(st.latencies_ms),
                        "window_start_t": window_start + offset} for st in stats], f)
    out = []
    for k in range(systems):
        # this server's slots: reading i to i + 1 for i = k, k + K, k + 2K, ...
        mine = [(readings[i], readings[i + 1]) for i in range(k, len(readings) - 1, systems)]
        others = [(readings[i], readings[i + 1]) for i in range(len(readings) - 1)
                  if i % systems != k]
        out.append(_result(k, [c for c in calls if c.system == k], stats[k], mine, others,
                           schedule, rss[k], args, me))
    return out


def _result(k: int, calls: list[Call], stats: Stats, mine: list[tuple[dict, dict]],
            others: list[tuple[dict, dict]], schedule: Schedule,
            rss: list[tuple[float, int]], args: argparse.Namespace, me: int) -> dict[str, Any]:
    """One server's figures over its own slots of the window."""
    def total(pairs: list[tuple[dict, dict]], get: Any) -> float:
        return sum(get(b) - get(a) for a, b in pairs)

    lat = sorted(stats.latencies_ms)
    sent = sum(len(c.sent_at) for c in calls)
    received = sum(c.received for c in calls)
    completed = sum(1 for c in calls if c.handshake_status == 101 and not c.server_closed_early
                    and c.close_received and c.received == len(c.sent_at) and c.sent_at)
    in_window = sum(1 for c in calls for t in c.sent_at
                    if stats.window_start <= t < stats.window_end)
    sending_s = (len(mine) * schedule.slot if schedule.systems > 1
                 else (mine[0][1]["t"] - mine[0][0]["t"] if mine else 0.0))
    measured = bool(mine)
    sut_cpu = total(mine, lambda r: r["sut_cpu_s"][k]) if measured else None
    fake_cpu = total(mine, lambda r: sum(r["fake_cpu_s"])) if measured else None
    loadgen_cpu = total(mine, lambda r: r["loadgen_cpu_s"]) if measured else None
    core = None
    foreign = None
    if measured and mine[0][0]["core"] is not None:
        a = [sum(x) for x in zip(*(r[0]["core"] for r in mine))]
        b = [sum(x) for x in zip(*(r[1]["core"] for r in mine))]
        core = _core_use(a, b)
        if schedule.systems > 1 and sending_s:  # per second of sending, like the process figure
            scale = sum(y["t"] - x["t"] for x, y in mine) / sending_s
            core = {key: round(v * scale, 3) for key, v in core.items()}
    if measured and any(args.fake_pid):  # machine busy time minus everything of the benchmark
        busy = sum(_busy_s(a["all"], b["all"]) for a, b in mine)
        suts = total(mine, lambda r: sum(r["sut_cpu_s"]))
        foreign = round(max(0.0, busy - suts - fake_cpu - loadgen_cpu), 3)
    # the CPU this server used while another's calls were sending: its backlog spilling over
    spill = (total(others, lambda r: r["sut_cpu_s"][k]) if others else 0.0)
    return {
        "calls": args.calls,
        "port": args.port[k],
        "calls_connected": sum(1 for c in calls if c.handshake_status == 101),
        "calls_completed": completed,
        "calls_closed_by_server_early": sum(1 for c in calls if c.server_closed_early),
        "live_calls_at_window_start": mine[0][0]["live_calls"][k] if measured else None,
        "window_s": round(sending_s, 3) if measured else None,
        "measured_s": round(sum(b["t"] - a["t"] for a, b in mine), 3) if measured else None,
        "slots": len(mine) if schedule.systems > 1 else None,
        "call_s_in_window": round(in_window * FRAME_S, 3),
        "frames_sent": sent,
        "frames_echoed": received,
        "frames_lost": sent - received,
        "duplicates": sum(c.duplicates for c in calls),
        "other_messages": stats.other_messages,
        "marks_echoed": stats.marks_echoed,
        "round_trips_measured": len(lat),
        "rtt_ms": {"p50": _quantile(lat, 0.50), "p90": _quantile(lat, 0.90),
                   "p99": _quantile(lat, 0.99), "max": round(lat[-1], 3) if lat else None,
                   "mean": round(sum(lat) / len(lat), 3) if lat else None},
        "send_late_ms_max": round(stats.late_max * 1000.0, 3),
        "sends_late_over_5ms": stats.late_5ms,
        "sut_cpu_s": round(sut_cpu, 3) if sut_cpu is not None else None,
        "sut_cpu_s_in_others_slots": round(spill, 3),
        "loadgen_cpu_s": round(loadgen_cpu, 3) if loadgen_cpu is not None else None,
        "fake_cpu_s": round(fake_cpu, 3) if fake_cpu is not None and any(args.fake_pid) else None,
        "sut_core": core,
        "foreign_cpu_s": foreign,
        "rss_kib_samples": [v for _, v in rss],
        "errors": stats.errors[:20],
        "error_count": len(stats.errors),
        "loadgen_pid": me,
    }


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", required=True, help="the server's port; several: A,B,... take turns")
    p.add_argument("--path", default="/media/twilio")
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5.0, help="measured window")
    p.add_argument("--stagger", type=float, default=1.0, help="call starts spread over this")
    p.add_argument("--warmup", type=float, default=1.0, help="after the last start, before the window")
    p.add_argument("--drain", type=float, default=5.0, help="wait for outstanding echoes")
    p.add_argument("--sut-pid", required=True,
                   help="the server process measured (comma-separated, one per --port)")
    p.add_argument("--fake-pid", default="0",
                   help="the fake model process of each server (CPU noted; 0: none)")
    p.add_argument("--slot", type=float, default=2.0,
                   help="several servers: seconds of sending in each server's turn")
    p.add_argument("--gap", type=float, default=0.5,
                   help="several servers: seconds of silence after each slot")
    p.add_argument("--sut-core", type=int, default=-1,
                   help="the core the server is pinned to: its whole use is read from /proc/stat")
    p.add_argument("--dump", help="write every round trip (send time in the window, ms) here: "
                                  "a JSON list, one entry per server")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = p.parse_args(argv)
    try:
        args.port = [int(x) for x in args.port.split(",")]
        args.sut_pid = [int(x) for x in args.sut_pid.split(",")]
        args.fake_pid = [int(x) for x in args.fake_pid.split(",")]
    except ValueError as exc:
        p.error(f"--port, --sut-pid and --fake-pid take comma-separated integers: {exc}")
    if len(args.fake_pid) == 1 and len(args.port) > 1:
        args.fake_pid *= len(args.port)
    if not len(args.port) == len(args.sut_pid) == len(args.fake_pid):
        p.error("give one --sut-pid and one --fake-pid per --port")
    if args.slot <= 0 or args.gap < 0:
        p.error("--slot must be positive and --gap not negative")
    if args.loop == "uvloop":
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
