"""Soak: many simulated calls for minutes across worker processes on a real Redis control plane.

Depends on the standard library and ``telewire`` (installed in the venv that runs this), and on
Debian's ``redis-server`` (``make soak`` installs it). Linux only (reads ``/proc``).

What runs, all on 127.0.0.1:

* ``redis-server`` on a free port, no persistence: the control plane (``TELEWIRE_CONTROL_URL``);
* the fake Realtime model in ``talk`` mode: it answers each caller turn with two seconds of
  audio, transcripts and usage, and treats caller audio during a reply as a barge-in (VAD);
* ``telewire serve --workers W`` with the shipped graph (recorder on, into a temporary folder);
* ``--calls`` simulated Twilio calls kept up for ``--minutes``: each lasts ``--call-s`` seconds
  of real-time audio, presses ``*`` (the barge-in digit) and another digit once, hangs up, and
  is replaced by a new call.

Sampled every ``--every`` seconds: the resident set size of every server process (supervisor
and workers). At the end the server is stopped with SIGTERM (it drains), and every call is
checked against its archive: one archive per call, and the archive's caller frames equal the
frames the call sent (nothing lost). Written: a JSON report (``--json``) and beside it a PNG plot
of RSS over time; printed: the summary. The bar (``issues show 15``): RSS growth under 5 % over
the last 8 minutes of a 10-minute soak, zero lost frames, zero lost archives.

    .venv/bin/python bench/soak.py [--calls 200] [--minutes 10] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

from telewire.testing.simulator import CallSimulator

PY = sys.executable
TELEWIRE = str(Path(PY).parent / "telewire")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
GROWTH_BAR = 0.05  # RSS growth over the measured tail of the soak, as a fraction
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Soak"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:g} s")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def _process(cmd: list[str], *, env: dict[str, str], log: Path, what: str,
             port: int | None = None, cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        if port is not None:
            _wait_port(port, proc, what)
        yield proc
    finally:
        _stop(proc)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the supervisor and its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return out


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------------- the load


async def _one_call(url: str, seconds: float, rng: random.Random) -> dict[str, Any]:
    frames = int(seconds * 50)
    audio = bytes(((i * 13) ^ 0x55) & 0xFF for i in range(160)) * frames
    press = rng.uniform(0.3, 0.6) * seconds * 1000
    digits = [(press, "*"), (press + rng.uniform(500, 2000), str(rng.randrange(10)))]
    sim = CallSimulator(url, dtmf=digits, drain_s=1.0)
    try:
        result = await sim.run(audio)
    except Exception as exc:  # a refused or broken call is counted, the soak goes on
        return {"call_sid": sim.call_sid, "sent": 0, "error": f"{type(exc).__name__}: {exc}"}
    return {"call_sid": result.call_sid, "sent": result.sent_frames, "clears": result.clears,
            "received": result.received_frames, "close": result.close_code,
            "error": None}


async def _load(url: str, calls: int, minutes: float, call_s: float, seed: int,
                done: list[dict[str, Any]]) -> None:
    """Keep ``calls`` calls up for ``minutes``; a call that ends is replaced until then."""
    rng = random.Random(seed)
    stop_at = time.monotonic() + minutes * 60

    async def lane(index: int) -> None:
        await asyncio.sleep(index * call_s / calls)  # starts spread over one call's length
        while time.monotonic() < stop_at:
            length = min(call_s * rng.uniform(0.8, 1.2), max(5.0, stop_at - time.monotonic()))
            done.append(await _one_call(url, length, rng))

    await asyncio.gather(*(lane(i) for i in range(calls)))


# --------------------------------------------------------------------------------- checking


def _archives(store: Path) -> dict[str, dict[str, Any]]:
    """Every archive's manifest under ``store``, by call id."""
    out: dict[str, dict[str, Any]] = {}
    for manifest in store.rglob("manifest.json"):
        data = json.loads(manifest.read_text())
        out.setdefault(data["call_id"], data)
    return out


def _growth(samples: list[tuple[float, int]], tail_s: float) -> float | None:
    """RSS growth over the last ``tail_s`` seconds: the median of the last 30 s against the
    median of the 30 s starting ``tail_s`` before the end."""
    if not samples:
        return None
    end = samples[-1][0]
    start = end - tail_s
    first = [r for t, r in samples if start <= t < start + 30]
    last = [r for t, r in samples if t >= end - 30]
    if not first or not last:
        return None
    base = statistics.median(first)
    return (statistics.median(last) - base) / base if base else None


# --------------------------------------------------------------------------------- the plot


def plot_png(path: Path, series: list[tuple[float, float]], *, width: int = 640,
             height: int = 320) -> None:
    """A line plot of ``series`` ((seconds, MiB) pairs) as a PNG, with the standard library.

    Axes start at zero time and at zero MiB; grid lines every minute and every tenth of the
    largest value; the line is drawn dark blue on white."""
    img = [[(255, 255, 255)] * width for _ in range(height)]
    left, right, top, bottom = 40, 10, 10, 30
    pw, ph = width - left - right, height - top - bottom
    t_max = max((t for t, _ in series), default=1.0) or 1.0
    v_max = max((v for _, v in series), default=1.0) * 1.1 or 1.0

    def xy(t: float, v: float) -> tuple[int, int]:
        return left + int(t / t_max * (pw - 1)), top + ph - 1 - int(v / v_max * (ph - 1))

    for minute in range(int(t_max // 60) + 1):
        x = xy(minute * 60, 0)[0]
        for y in range(top, top + ph):
            img[y][x] = (225, 225, 225)
    for tenth in range(11):
        y = xy(0, v_max * tenth / 10)[1]
        for x in range(left, left + pw):
            img[y][x] = (225, 225, 225)
    for y in range(top, top + ph):
        img[y][left] = (0, 0, 0)
    for x in range(left, left + pw):
        img[top + ph - 1][x] = (0, 0, 0)
    points = [xy(t, v) for t, v in series]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(steps + 1):
            x, y = x0 + (x1 - x0) * i // steps, y0 + (y1 - y0) * i // steps
            for dy in (0, 1):
                if 0 <= y + dy < height:
                    img[y + dy][x] = (20, 40, 160)
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in img)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------------- the run


def soak(args: argparse.Namespace) -> dict[str, Any]:
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise RuntimeError("redis-server is not installed (make soak installs Debian's package)")
    work = Path(tempfile.mkdtemp(prefix="telewire-soak-"))
    store = work / "recordings"
    env = {**os.environ, "OPENAI_API_KEY": "placeholder", "TELEWIRE_LOG_LEVEL": "WARNING"}
    redis_port, fake_port, port = _free_port(), _free_port(), _free_port()
    samples: list[tuple[float, int]] = []
    per_process: dict[int, list[tuple[float, int]]] = {}
    done: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(_process(
            [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], env=env, log=work / "redis.log", what="redis-server",
            port=redis_port))
        stack.enter_context(_process(
            [PY, "-m", "telewire.testing.fake_realtime", "--port", str(fake_port), "--mode",
             "talk", "--no-record", "--barge-in-after-appends", "40"],
            env=env, log=work / "fake.log", what="the fake model", port=fake_port))
        server_env = {**env, "TELEWIRE_CONTROL_URL": f"redis://127.0.0.1:{redis_port}/0",
                      "TELEWIRE_SPANS_DB": str(work / "spans.db"),
                      "TELEWIRE_MAX_CALLS": str(args.calls * 2)}
        server = stack.enter_context(_process(
            [TELEWIRE, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers",
             str(args.workers), "--set", "rt.config.provider=openai",
             "--set", f"rt.config.url=ws://127.0.0.1:{fake_port}/v1/realtime",
             "--set", f"recorder.config.store=file://{store}"],
            env=server_env, log=work / "server.log", what="telewire serve", port=port,
            cwd=work))
        time.sleep(1.0)  # every worker listening
        url = f"ws://127.0.0.1:{port}/media/twilio"
        started = time.monotonic()

        async def run() -> None:
            load = asyncio.create_task(_load(url, args.calls, args.minutes, args.call_s,
                                             args.seed, done))
            while not load.done():
                pids = _tree(server.pid)
                rss = {p: _rss_kib(p) for p in pids}
                now = time.monotonic() - started
                for p, r in rss.items():
                    if r:
                        per_process.setdefault(p, []).append((now, r))
                samples.append((now, sum(rss.values())))
                await asyncio.wait({load}, timeout=args.every)
            await load

        asyncio.run(run())
        elapsed = time.monotonic() - started
        code = _stop(server, timeout=120)
    log = (work / "server.log").read_text(errors="replace")
    archives = _archives(store)
    lost_frames, lost_archives, mismatched = 0, 0, []
    ok_calls = [c for c in done if c["error"] is None and c["sent"]]
    for call in ok_calls:
        manifest = archives.get(call["call_sid"])
        if manifest is None:
            lost_archives += 1
            continue
        got = manifest["counters"]["caller_frames"]
        if got < call["sent"]:
            lost_frames += call["sent"] - got
            mismatched.append({"call_sid": call["call_sid"], "sent": call["sent"], "archived": got})
    errors = [line for line in log.splitlines() if "| ERROR" in line]
    report = {
        "calls": args.calls, "minutes": args.minutes, "workers": args.workers,
        "call_s": args.call_s, "elapsed_s": round(elapsed, 1),
        "calls_completed": len(ok_calls),
        "calls_failed": [c for c in done if c["error"] is not None][:20],
        "calls_failed_count": sum(1 for c in done if c["error"] is not None),
        "frames_sent": sum(c["sent"] for c in ok_calls),
        "frames_lost": lost_frames, "archives_written": len(archives),
        "archives_lost": lost_archives, "mismatched": mismatched[:20],
        "clears": sum(c.get("clears", 0) for c in ok_calls),
        "server_exit_code": code, "errors_logged": len(errors), "errors": errors[:20],
        "rss_mib": [(round(t, 1), round(r / 1024, 2)) for t, r in samples],
        "rss_mib_by_process": {
            ("supervisor" if p == server.pid else f"worker {p}"):
                [(round(t, 1), round(r / 1024, 2)) for t, r in series]
            for p, series in per_process.items()},
        "rss_growth_tail": _growth(samples, min(8 * 60, max(30.0, elapsed - 60))),
        "tail_s": min(8 * 60, max(30.0, elapsed - 60)),
    }
    report["pass"] = bool(report["frames_lost"] == 0 and report["archives_lost"] == 0
                          and report["calls_completed"] > 0
                          and report["rss_growth_tail"] is not None
                          and report["rss_growth_tail"] < GROWTH_BAR)
    shutil.rmtree(work, ignore_errors=True)
    return report


def render_section(report: dict[str, Any], command: str) -> str:
    """The ``## Soak`` section of docs/benchmarks.md for ``report`` (``make bench`` keeps it)."""
    growth = report["rss_growth_tail"]
    lines = [
        SECTION, "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}` "
        "(`bench/soak.py`; its docstring says what runs). The bar (issue 15): RSS growth under "
        f"{GROWTH_BAR:.0%} over the last 8 minutes, no lost frame, no lost archive.", "",
        f"* {report['calls']} concurrent calls for {report['minutes']:g} min on "
        f"{report['workers']} workers and a real Redis control plane: "
        f"{report['calls_completed']} calls completed, {report['calls_failed_count']} failed.",
        f"* Frames sent {report['frames_sent']}, lost {report['frames_lost']}; archives written "
        f"{report['archives_written']}, lost {report['archives_lost']}; barge-in clears "
        f"{report['clears']}; errors logged {report['errors_logged']}; server exit code "
        f"{report['server_exit_code']}.",
        "* RSS of all server processes (MiB, time in s): "
        + ", ".join(f"{r:g} at {t:g}" for t, r in report["rss_mib"][:: max(1, len(
            report["rss_mib"]) // 8)]) + ".",
    ]
    for name, series in sorted(report.get("rss_mib_by_process", {}).items()):
        if series:
            lines.append(f"  * {name}: {series[0][1]:g} → {series[-1][1]:g} MiB")
    lines += [
        f"* RSS growth over the last {report['tail_s']:g} s: "
        + (f"{growth:.1%}" if growth is not None else "n/a")
        + f" — **{'PASS' if report['pass'] else 'FAIL'}**.", ""]
    return "\n".join(lines)


def keep_section(text: str, section: str) -> str:
    """``section`` (from its heading to the next ``## `` heading or the end) out of ``text``,
    or ``""``: what a rewrite of the page carries over."""
    start = text.find(section + "\n")
    if start < 0:
        return ""
    end = text.find("\n## ", start + len(section))
    return text[start:] if end < 0 else text[start:end + 1]


def write_docs(section: str, path: Path = DOCS) -> None:
    """Put ``section`` in place of the page's ``## Soak`` section, or at its end."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    old = keep_section(text, SECTION)
    if old:
        text = text.replace(old, section if section.endswith("\n") else section + "\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200, help="concurrent calls")
    p.add_argument("--minutes", type=float, default=10.0, help="how long calls are kept up")
    p.add_argument("--workers", type=int, default=2, help="telewire serve --workers")
    p.add_argument("--call-s", type=float, default=60.0, help="seconds of audio per call")
    p.add_argument("--every", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", type=Path, help="write the report here (and the plot beside it)")
    p.add_argument("--docs", action="store_true",
                   help="write the results into docs/benchmarks.md (make soak does)")
    args = p.parse_args(argv)
    if args.calls < 1 or args.minutes <= 0 or args.workers < 1 or args.call_s < 5:
        p.error("--calls and --workers must be positive, --minutes > 0, --call-s at least 5")
    report = soak(args)
    out = args.json or RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot = out.with_suffix(".png")
    plot_png(plot, [(t, r) for t, r in report["rss_mib"]])
    growth = report["rss_growth_tail"]
    print(f"soak: {report['calls_completed']} calls completed ({report['calls_failed_count']} "
          f"failed) over {report['elapsed_s']:g} s on {args.workers} workers; frames sent "
          f"{report['frames_sent']}, lost {report['frames_lost']}; archives "
          f"{report['archives_written']}, lost {report['archives_lost']}; barge-in clears "
          f"{report['clears']}; errors logged {report['errors_logged']}; RSS growth over the last "
          f"{report['tail_s']:g} s: "
          + (f"{growth:.1%}" if growth is not None else "n/a")
          + f"; {'PASS' if report['pass'] else 'FAIL'}")
    print(f"soak: report {out}, plot {plot}")
    if args.docs:
        args_text = " ".join(sys.argv[1:] if argv is None else argv)
        write_docs(render_section(report, f"bench/soak.py {args_text}"))
        print(f"soak: results in {DOCS}")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
