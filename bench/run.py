"""``make bench``: telewire against a bare relay, N concurrent simulated calls, in one run.

Depends on the standard library, ``telewire`` (installed in the venv that runs this) and its
siblings ``bench/loadgen.py`` and ``bench/bare_relay.py``; nothing depends on it.

For each N (``--calls 50,200``) one *round* runs every system under test side by side, each in its
own fresh process with its own fresh fake OpenAI Realtime server in echo mode
(``telewire.testing.fake_realtime``): the bare relay, ``telewire serve`` on the default graph,
``telewire serve`` on the default graph cut down to the relay path and, at the largest N, the bare
relay on telewire's model connection and the relay graph on the stdlib asyncio loop
(``TELEWIRE_LOOP=asyncio``, to show whether uvloop pays). ``bench/loadgen.py`` connects N calls to
each and lets the systems take turns (``--slot`` seconds of sending each, then ``--gap`` seconds of
silence) until each has had ``--seconds`` of sending in the measured window. A shared machine's
speed drifts by tens of percent from one half-minute to the next; taking turns every few seconds
measures every system on the same machine. Rounds are repeated ``--repeat`` times with a new turn
order each (see :func:`turn_orders`). Before each round the script waits for other processes to
go quiet, and runs again a round they disturbed (``--quiet``, ``--patience``, ``--retries``). On
a machine with two or more cores the systems under test are pinned to core 0 and everything else
(fake models, load generator, this script) to core 1, so that the harness does not steal the
measured core.

Writes ``bench/results/<timestamp>.json`` and rewrites ``docs/benchmarks.md`` (not with
``--quick``, a smoke run of 10 calls for 5 s, unless ``--docs`` is given). Every child process is
ended on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from loadgen import rss_kib  # bench/ is the script's folder, first on sys.path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
TELEWIRE = str(Path(PY).parent / "telewire")
RESULTS = BENCH / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
BAR = 1.5  # telewire may cost at most this many times the bare relay (CPU and p99)
SYSTEMS = ("baseline", "baseline-lean", "telewire", "telewire-relay", "telewire-asyncio",
           "telewire-relay-asyncio", "telewire-relay-live")
NAMES = {"baseline": "bare relay", "baseline-lean": "bare relay, lean model connection",
         "telewire": "telewire", "telewire-relay": "telewire, relay graph",
         "telewire-asyncio": "telewire, asyncio loop",
         "telewire-relay-asyncio": "telewire, relay graph, asyncio loop",
         "telewire-relay-live": "telewire, relay graph, openai_live (GPT-Live)"}
#: the openai_live provider's bar: its relay graph within this many times the bare relay's CPU
BAR_LIVE = 1.1
#: the uvloop check: a system on the stdlib loop and the same system on uvloop
LOOP_PAIRS = (("telewire-relay-asyncio", "telewire-relay"), ("telewire-asyncio", "telewire"))
SATURATED = 0.95  # a server process this busy (cores) cannot keep up: its figures are floors

# The fake model runs on uvloop when it is installed: it is harness, not the system measured.
_FAKE = ("import asyncio, sys\n"
         "try:\n    import uvloop\n    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\n"
         "except ImportError:\n    pass\n"
         "from telewire.testing.{module} import main\nmain(sys.argv[1:])\n")

_children: list[subprocess.Popen[bytes]] = []
#: ``--tree``: a telewire source tree to run instead of the installed one (PYTHONPATH first).
_tree: Path | None = None


# --------------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    """The parent's environment without any TELEWIRE_* / OPENAI_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TELEWIRE_", "OPENAI_"))}
    if _tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(_tree / "core"), *(str(p) for p in sorted((_tree / "plugins").glob("*"))
                                    if p.is_dir() and not p.name.startswith("_"))])
    env.update(extra)
    return env


def _preflight() -> dict[str, Any]:
    """Import what the runs need, in a child with the runs' environment; fail fast if broken."""
    code = ("import json, telewire, telewire.cli, telewire.realtime.openai, "
            "telewire.testing.fake_realtime, telewire_twilio\n"
            "from telewire import jsonfast\n"
            "print(json.dumps({'json_parser': jsonfast.PARSER, 'telewire_from': "
            "str(__import__('pathlib').Path(telewire.__file__).parent.parent)}))\n")
    r = subprocess.run([PY, "-c", code], env=_env(), capture_output=True, text=True, timeout=60,
                       cwd=tempfile.gettempdir())
    if r.returncode != 0:
        raise RuntimeError("telewire does not import, nothing to measure:\n"
                           + "\n".join(r.stderr.splitlines()[-6:]))
    return json.loads(r.stdout.strip().splitlines()[-1])


def _source() -> dict[str, Any]:
    """Which telewire was measured: the git commit and whether core/plugins had local changes."""
    where = _tree if _tree is not None else ROOT
    out: dict[str, Any] = {"tree": "--tree " + str(_tree) if _tree is not None else "working tree"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never refresh the index
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, env=env)
        if head.returncode == 0:
            out["commit"] = head.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--",
                                    "core", "plugins"], capture_output=True, text=True,
                                   timeout=10, env=env)
            out["local_changes"] = bool(dirty.stdout.strip())
    return out


def _spawn(cmd: list[str], *, cpus: set[int] | None, env: dict[str, str], log: Path,
           stdout: int | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    err = open(log, "ab")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd or tempfile.gettempdir(), preexec_fn=pin,
                            stdout=stdout if stdout is not None else err, stderr=err,
                            stdin=subprocess.DEVNULL)
    err.close()
    _children.append(proc)
    return proc


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    with contextlib.suppress(ValueError):
        _children.remove(proc)


def _stop_all() -> None:
    for proc in list(_children):
        with contextlib.suppress(Exception):
            _stop(proc, 5.0)


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0,
               health: bool = False) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if health:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            else:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:g} s:\n{_tail(log)}")


def _machine_busy_ticks() -> int:
    """Busy ticks of all cores so far (user nice system irq softirq steal)."""
    with open("/proc/stat", "rb") as f:
        d = [int(x) for x in f.readline().split()[1:9]]
    return d[0] + d[1] + d[2] + d[5] + d[6] + d[7]


def other_load(seconds: float = 2.0) -> float:
    """Cores the rest of the machine keeps busy, sampled over ``seconds`` (between runs, when
    this benchmark runs nothing)."""
    a = _machine_busy_ticks()
    time.sleep(seconds)
    return (_machine_busy_ticks() - a) / os.sysconf("SC_CLK_TCK") / seconds


def wait_for_quiet(threshold: float, patience: float) -> float:
    """Wait (up to ``patience`` seconds) until other processes use less than ``threshold`` cores.

    Returns:
        the last load measured.
    """
    deadline = time.monotonic() + patience
    load = other_load()
    told = False
    while load >= threshold and time.monotonic() < deadline:
        if not told:
            print(f"(machine busy: other processes use {load:.2f} cores; waiting up to "
                  f"{patience:.0f} s for them) ", end="", flush=True)
            told = True
        load = other_load()
    return load


def _loadgen(ports: list[int], suts: list[int], fakes: list[int], *, calls: int,
             seconds: float, stagger: float, warmup: float, drain: float, slot: float,
             gap: float, cpus: set[int] | None, log: Path,
             sut_core: int = -1) -> list[dict[str, Any]]:
    """Run the load generator against ``ports`` (taking turns when several); one result each."""
    def csv(xs: list[int]) -> str:
        return ",".join(map(str, xs))

    cmd = [PY, str(BENCH / "loadgen.py"), "--port", csv(ports), "--sut-pid", csv(suts),
           "--fake-pid", csv(fakes), "--sut-core", str(sut_core), "--calls", str(calls),
           "--seconds", str(seconds), "--stagger", str(stagger), "--warmup", str(warmup),
           "--drain", str(drain), "--slot", str(slot), "--gap", str(gap)]
    turns = len(ports) * (slot + gap) * (seconds / slot + 1) if len(ports) > 1 else seconds
    proc = _spawn(cmd, cpus=cpus, env=_env(), log=log, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=stagger + warmup + turns + drain + 60)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"load generator did not finish in time:\n{_tail(log)}") from None
    finally:
        _stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}):\n{_tail(log)}")
    return json.loads(out.decode().strip().splitlines()[-1])


@contextlib.contextmanager
def _fake_model(cpus: set[int] | None, log: Path, *,
                live: bool = False) -> Iterator[tuple[int, int]]:
    """The fake model a system talks to: the Realtime GA fake, or GPT-Live's (``live``)."""
    port = _free_port()
    cmd = ([PY, "-c", _FAKE.format(module="fake_live"), "--port", str(port), "--mode", "echo"]
           if live else [PY, "-c", _FAKE.format(module="fake_realtime"), "--port", str(port),
                         "--mode", "echo", "--no-record"])
    proc = _spawn(cmd, cpus=cpus, env=_env(), log=log)
    try:
        _wait_port(port, proc, log)
        yield port, proc.pid
    finally:
        _stop(proc)


def _system_cmd(system: str, port: int, fake_port: int) -> tuple[list[str], dict[str, str]]:
    model = f"ws://127.0.0.1:{fake_port}/v1/realtime"
    env = _env(OPENAI_API_KEY="placeholder", TELEWIRE_LOG_LEVEL="WARNING",
               TELEWIRE_DRAIN_TIMEOUT_S="2")
    if system in ("baseline", "baseline-lean"):
        env["TELEWIRE_LOOP"] = "auto"
        lean = ["--lean-model-connection"] if system == "baseline-lean" else []
        return [PY, str(BENCH / "bare_relay.py"), "--port", str(port),
                "--model-url", model + "?model=gpt-realtime", *lean], env
    env["TELEWIRE_LOOP"] = "asyncio" if system.endswith("-asyncio") else "auto"
    graph = ["--config", str(_relay_graph)] if system.startswith("telewire-relay") else []
    if system.endswith("-live"):
        return [TELEWIRE, "serve", "--host", "127.0.0.1", "--port", str(port), *graph,
                "--set", "rt.config.provider=openai_live",
                "--set", f"rt.config.url=ws://127.0.0.1:{fake_port}/v1/live/sessions"], env
    return [TELEWIRE, "serve", "--host", "127.0.0.1", "--port", str(port), *graph,
            "--set", "rt.config.provider=openai", "--set", f"rt.config.url={model}"], env


#: The default graph cut down to the relay path (``--relay-graph``), written by :func:`relay_graph`.
_relay_graph: Path | None = None
RELAY_TYPES = ("carrier_in", "realtime_agent", "carrier_out")


def relay_graph(default: Path, out: Path) -> list[str]:
    """Write ``default`` without the nodes that are not on the relay path (types
    ``carrier_in``, ``realtime_agent``, ``carrier_out``) and their edges.

    Returns:
        the names (and types) of the nodes left out.
    """
    import tomllib

    raw = tomllib.loads(default.read_text(encoding="utf-8"))
    nodes = raw.get("nodes", {})
    keep = {n for n, body in nodes.items() if body.get("type") in RELAY_TYPES}
    dropped = [f"{n} ({nodes[n].get('type')})" for n in nodes if n not in keep]
    lines = ['description = "the default graph cut down to the relay path, for bench/run.py"', "",
             "edges = ["]
    for edge in raw.get("edges", []):
        src, dst = (part.strip().split(".")[0] for part in edge.split("->"))
        if src in keep and dst in keep:
            lines.append(f"    {json.dumps(edge)},")
    lines.append("]")
    for name in sorted(keep):
        lines += ["", f"[nodes.{name}]"] + _toml_table(nodes[name], f"nodes.{name}")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dropped


def _toml_table(body: dict[str, Any], prefix: str) -> list[str]:
    lines, tables = [], []
    for key, value in body.items():
        if isinstance(value, dict):
            tables += ["", f"[{prefix}.{key}]"] + _toml_table(value, f"{prefix}.{key}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    return lines + tables


def run_round(systems: list[str], calls: int, args: argparse.Namespace,
              pins: dict[str, set[int] | None], logdir: Path,
              profile: Path | None = None) -> list[dict[str, Any]]:
    """``systems`` side by side at ``calls`` calls each, taking turns; fresh processes throughout.

    ``profile``: record the first system with py-spy (a round of one system)."""
    tag = f"{'+'.join(systems)}-{calls}"
    with contextlib.ExitStack() as stack:
        fakes = [stack.enter_context(_fake_model(pins["harness"], logdir / f"{s}-{calls}.fake.log",
                                                 live=s.endswith("-live")))
                 for s in systems]
        suts: list[subprocess.Popen[bytes]] = []
        ports: list[int] = []
        logs: list[Path] = []
        for system, (fake_port, _) in zip(systems, fakes):
            port = _free_port()
            cmd, env = _system_cmd(system, port, fake_port)
            log = logdir / f"{system}-{calls}.log"
            workdir = Path(tempfile.mkdtemp(prefix=f"{system}-{calls}-", dir=logdir))
            stack.callback(shutil.rmtree, workdir, True)  # recordings, spools: deleted
            sut = _spawn(cmd, cpus=pins["sut"], env=env, log=log, cwd=workdir)
            stack.callback(_stop, sut)
            suts.append(sut)
            ports.append(port)
            logs.append(log)
        for sut, port, log, (_, fake_pid) in zip(suts, ports, logs, fakes):
            _wait_port(port, sut, log, health=True)
            # one short call first, so lazy imports and first-use caches are not charged to calls
            _loadgen([port], [sut.pid], [fake_pid], calls=1, seconds=0.5, stagger=0, warmup=0.2,
                     drain=2, slot=args.slot, gap=args.gap, cpus=pins["harness"],
                     log=logdir / f"{tag}.warmup.log")
        time.sleep(0.5)
        idle = [rss_kib(sut.pid) for sut in suts]
        spy: subprocess.Popen[bytes] | None = None
        if profile is not None:
            spy = _spawn([str(Path(PY).parent / "py-spy"), "record", "--pid", str(suts[0].pid),
                          "--rate", "200", "--duration", str(int(args.seconds)),
                          "--format", "raw", "--nonblocking", "--output", str(profile)],
                         cpus=pins["harness"], env=_env(), log=logdir / f"{tag}.py-spy.log")
            stack.callback(_stop, spy)
        loads = _loadgen(ports, [s.pid for s in suts], [f[1] for f in fakes], calls=calls,
                         seconds=args.seconds, stagger=args.stagger, warmup=args.warmup,
                         drain=args.drain, slot=args.slot, gap=args.gap, cpus=pins["harness"],
                         log=logdir / f"{tag}.loadgen.log",
                         sut_core=min(pins["sut"]) if pins["sut"] else -1)
        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(args.seconds + 20)
        alive = [sut.poll() is None for sut in suts]
    out = []
    for system, load, rss0, ok, log in zip(systems, loads, idle, alive, logs):
        if not load["calls_connected"] or not load["frames_echoed"]:
            raise RuntimeError(f"{system} at {calls} calls: no call got through "
                               f"({load['errors'][:2]}); server log:\n{_tail(log)}")
        out.append(_figures(system, calls, load, rss0, ok, _tail(log, 5)))
    return out


def profile_top(raw: Path, count: int = 25) -> list[dict[str, Any]]:
    """The functions with the most samples of their own (self time) in a py-spy raw profile.

    Time spent in C under a Python frame (uvloop's loop, socket syscalls) counts for that frame.
    """
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        total += int(n)
        leaf = stack.split(";")[-1]
        name, _, where = leaf.partition(" (")
        where = where.rsplit(":", 1)[0]
        key = f"{name} ({where})"
        own[key] = own.get(key, 0) + int(n)
    top = sorted(own.items(), key=lambda kv: kv[1], reverse=True)[:count]
    return [{"self_pct": round(100.0 * n / total, 1), "function": k} for k, n in top]


def _figures(system: str, calls: int, load: dict[str, Any], idle_rss: int, alive: bool,
             log_tail: str) -> dict[str, Any]:
    window = load["window_s"] or 0.0
    call_min = load["call_s_in_window"] / 60.0  # calls that started late count for less
    rss = load["rss_kib_samples"]
    peak = max(rss) if rss else idle_rss
    harness = (load["loadgen_cpu_s"] or 0) + (load["fake_cpu_s"] or 0)
    core = load["sut_core"] or {}
    if window and core.get("busy") is not None and core["busy"] < load["sut_cpu_s"] / window - 0.02:
        # the core cannot be less busy than the one process pinned to it: /proc/stat's per-core
        # counters lag over a few short slots now and then; leave the figure out
        core = {}
    return {
        "system": system,
        "calls": calls,
        "cpu_s_per_call_min": round(load["sut_cpu_s"] / call_min, 4) if call_min else None,
        "saturated": bool(window and load["sut_cpu_s"] / window >= SATURATED),
        "rtt_p50_ms": load["rtt_ms"]["p50"],
        "rtt_p99_ms": load["rtt_ms"]["p99"],
        "frames_lost": load["frames_lost"],
        "rss_kib_per_call": round((peak - idle_rss) / calls, 1),
        "calls_completed": load["calls_completed"],
        "sut_core_busy": round(load["sut_cpu_s"] / window, 3) if window else None,
        "harness_core_busy": round(harness / window, 3) if window else None,
        "sut_core_all_busy": core.get("busy"),
        "sut_core_softirq": core.get("softirq"),
        "foreign_cores": (round(load["foreign_cpu_s"] / window, 3)
                          if window and load.get("foreign_cpu_s") is not None else None),
        "idle_rss_kib": idle_rss,
        "peak_rss_kib": peak,
        "server_alive_after": alive,
        "slots": load.get("slots"),
        "cpu_s_in_others_slots": load.get("sut_cpu_s_in_others_slots"),
        "load": load,
        "server_log_tail": log_tail if not alive or load["error_count"] else "",
    }


# --------------------------------------------------------------------------------- reporting


def _machine(preflight: dict[str, Any]) -> dict[str, Any]:
    try:
        import uvloop
        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio (uvloop not installed)"
    versions = {}
    for name in ("aiohttp", "websockets", "telewire"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version
            versions[name] = version(name)
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "kernel": platform.system() + " " + platform.release().split("-")[0],
            "event_loop": loop, "json_parser": preflight["json_parser"], "versions": versions}


def _median(runs: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return None
    if key == "frames_lost":
        return max(values)  # the worst run
    if key == "calls_completed":
        return min(values)
    return statistics.median(values)


_KEYS = ("cpu_s_per_call_min", "rtt_p50_ms", "rtt_p99_ms", "frames_lost", "rss_kib_per_call",
         "calls_completed", "sut_core_busy", "sut_core_all_busy", "harness_core_busy",
         "foreign_cores")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per N and system the median of the repeats (lost frames: the worst); telewire's ratios.

    Runs during which other processes loaded the machine are left out when clean runs exist.
    """
    out: dict[str, Any] = {}
    for n in sorted({r["calls"] for r in runs}):
        per: dict[str, Any] = {}
        for system in SYSTEMS:
            rs = [r for r in runs if r["calls"] == n and r["system"] == system]
            clean = [r for r in rs if not r.get("contaminated")]
            if rs:
                use = clean or rs
                per[system] = {k: _median(use, k) for k in _KEYS} | {
                    "runs": len(use), "contaminated": not clean,
                    "saturated": any(r["saturated"] for r in use)}
        base = per.get("baseline")
        lean = per.get("baseline-lean")
        mine = [r for r in runs if r["calls"] == n]
        for system in SYSTEMS[1:]:
            tw = per.get(system)
            if base and tw:
                tw["ratio"] = _ratios(mine, system, "baseline", tw, base)
            if lean and tw and system.startswith("telewire"):
                tw["ratio_lean"] = _ratios(mine, system, "baseline-lean", tw, lean)
        for slow, fast in LOOP_PAIRS:
            if slow in per and fast in per:
                per[slow]["ratio_loop"] = _ratios(mine, slow, fast, per[slow], per[fast])
        for system, key in (("telewire", "meets_bar"), ("telewire-relay", "meets_bar_relay")):
            tw = per.get(system)
            if base and tw:
                per[key] = bool(tw["frames_lost"] == 0 and base["frames_lost"] == 0
                                and tw["calls_completed"] == n
                                and (tw["ratio"]["cpu_s_per_call_min"] or 99) <= BAR
                                and (tw["ratio"]["rtt_p99_ms"] or 99) <= BAR)
        live = per.get("telewire-relay-live")
        if base and live:
            per["meets_bar_live"] = bool(live["frames_lost"] == 0 and live["calls_completed"] == n
                                         and (live["ratio"]["cpu_s_per_call_min"] or 99)
                                         <= BAR_LIVE)
        out[str(n)] = per
    return out


_RATIO_KEYS = ("cpu_s_per_call_min", "rtt_p50_ms", "rtt_p99_ms", "rss_kib_per_call")


def _ratios(runs: list[dict[str, Any]], system: str, against: str, mine: dict[str, Any],
            theirs: dict[str, Any]) -> dict[str, float | None]:
    """``system`` ÷ ``against``: the median of the ratios within each round both ran in (they
    took turns on the same machine), clean rounds first; the ratio of the medians for results
    without rounds."""
    pairs: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        if r.get("round") is not None and r["system"] in (system, against):
            pairs.setdefault(r["round"], {})[r["system"]] = r
    both = [p for p in pairs.values() if len(p) == 2]
    clean = [p for p in both if not any(r.get("contaminated") for r in p.values())]
    use = clean or both
    if not use:
        return {k: _ratio(mine[k], theirs[k]) for k in _RATIO_KEYS}
    out: dict[str, float | None] = {}
    for k in _RATIO_KEYS:
        values = [q for q in (_ratio(p[system][k], p[against][k]) for p in use) if q is not None]
        out[k] = round(statistics.median(values), 2) if values else None
    return out


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 2)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _write_docs(report: dict[str, Any]) -> None:
    """Rewrite docs/benchmarks.md for ``report``, keeping the soak's section (bench/soak.py)."""
    from soak import SECTION, keep_section

    old = DOCS.read_text(encoding="utf-8") if DOCS.exists() else ""
    soak = keep_section(old, SECTION)
    DOCS.write_text(render_docs(report) + ("\n" + soak if soak else ""), encoding="utf-8")


def render_docs(report: dict[str, Any]) -> str:
    m = report["machine"]
    s = report["settings"]
    lines = [
        "# Benchmarks",
        "",
        "telewire relays a carrier's media WebSocket to a realtime model's WebSocket and back. This",
        "page measures what telewire itself costs on that path, by running it beside the least a",
        "relay can do, in the same run, on the same machine. It is rewritten by `make bench`",
        "(`bench/run.py`); the raw figures of every run are in `bench/results/<timestamp>.json`.",
        "",
        f"Run on {report['date']}, telewire {_describe_source(report['source'])}, with:",
        "",
        "```sh",
        report["command"],
        "```",
        "",
        "## What runs",
        "",
        "* **Systems under test**, each a fresh process per round (in its own scratch folder,",
        "  deleted after the round): `telewire serve` with the default graph as shipped",
        "  (`core/telewire/data/default_graph.toml`), Twilio carrier, `openai` provider,",
        "  `TELEWIRE_LOG_LEVEL=WARNING`; or the **bare relay** `bench/bare_relay.py`.",
        "* **telewire, relay graph**: `telewire serve --config` a copy of the default graph cut down",
        "  to the relay path (node types " + ", ".join(f"`{t}`" for t in RELAY_TYPES) + "; left out: "
        + (", ".join(f"`{d}`" for d in report.get("relay_graph_drops") or []) or "nothing") + "),",
        "  to tell the relay's own cost from the other nodes' (the graph is in the results file).",
        "* **The bare relay** does only what any relay must: accept the Twilio WebSocket, on `start`",
        "  open the model socket and send `session.update`, JSON-parse each `media` and send",
        "  `input_audio_buffer.append` with the payload, JSON-parse each model event and send each",
        "  `response.output_audio.delta` back as a Twilio `media`. It uses the same server library",
        "  (aiohttp), the same model client library (`websockets`, as shipped), the same JSON parser",
        "  (`telewire.jsonfast.loads`), the same way of building messages (concatenation around the",
        "  base64 text) and the same event loop as telewire, so the ratio measures what telewire",
        "  adds or saves (frames, graph dispatch, carrier hooks, validation, marks, its model",
        "  connection), not a library choice.",
        "* **The bare relay, lean model connection** is the same relay opening its model socket with",
        "  telewire's `ModelConnection` (`telewire.realtime.wsclient`: websockets with direct text",
        "  sends, and data frames read off the socket into a plain queue), run at the largest N.",
        "  telewire ÷ this row is telewire's overhead with the model connection's saving taken out.",
        "* **The model** is `telewire.testing.fake_realtime` in echo mode (a fresh process per",
        "  system and round, on uvloop): every `input_audio_buffer.append` comes back as one",
        "  `response.output_audio.delta` with the identical base64.",
        "* **The carrier** is `bench/loadgen.py`, one process simulating N Twilio calls per system",
        "  at real-time pace: `connected`, `start`, a 20 ms (160-byte) `media` frame every 20 ms,",
        "  `stop`. It echoes every `mark` as soon as it arrives (Twilio echoes a mark when the",
        "  audio before it has played, which at real-time pace is soon after); telewire places",
        "  one after the first audio of an item, then one per `mark_interval_ms` (default 1 s),",
        f"  the bare relay none. Call starts are staggered over {s['stagger_s']:g} s. Its WebSocket",
        "  client is a minimal one on `asyncio.Protocol` so that the load costs the shared core",
        "  little.",
        "* **Taking turns**: all systems of a round run at once, each with its N calls connected",
        "  throughout, but only one system's calls send media at a time: "
        f"{s.get('slot_s', 2.0):g} s of sending, then",
        f"  {s.get('gap_s', 0.5):g} s of silence for it to work off any backlog, then the next system. The",
        "  measured window opens after a warm-up of whole turns and lasts until each system has had",
        f"  {s['seconds']:g} s of sending in it. A shared machine's speed drifts by tens of percent from one",
        "  half-minute to the next, so systems measured one after the other are not measured on the",
        "  same machine; taking turns every few seconds spreads the drift over all of them alike.",
        ("* **Pinning**: the systems under test run on core 0 (one at a time sends); fake models,"
         " load generator and harness share the other core(s) (`os.sched_setaffinity`)."
         if s["pinned"] else
         "* **Pinning**: none (fewer than two cores, or `--no-pin`)."),
        "* **Rounds**: one per N"
        + (f", repeated {s['repeat']} times with a new turn order each, so that no system always"
           " follows the same one (figures are medians; lost frames the worst round)"
           if s["repeat"] > 1 else "")
        + "; the bare relay on telewire's model connection and the relay graph on the stdlib",
        "  asyncio loop (`TELEWIRE_LOOP=asyncio`) join the round at the largest N.",
        "",
        "## Figures",
        "",
        "* **CPU s / call-min**: the server process's CPU time (`/proc/<pid>/stat` utime + stime) in",
        "  its own turns of the measured window (each turn's silence included, so its backlog is",
        "  charged to it), divided by the call-minutes its calls sent in them. A server whose",
        f"  process is ≥ {SATURATED:g} cores busy is marked *saturated*: it could not keep up in real",
        "  time, its CPU figure is a floor and its round trips queue.",
        "* **p50 / p99**: round trip of a frame, carrier send to the echoed payload's arrival back at",
        "  the simulated carrier, over the frames its calls sent in the window (frames are matched by",
        "  a number carried in their first audio bytes).",
        "* **lost**: frames sent minus frames echoed back, after a drain of up to "
        f"{s['drain_s']:g} s.",
        "* **RSS / call**: (peak `VmRSS` in the window − idle `VmRSS`) / N; idle is read after one",
        "  short warm-up call, so lazy imports are not charged to the calls.",
        "* **completed**: calls that connected, had every frame echoed and were closed by the",
        "  carrier side.",
        "* **server process busy**: the server's CPU seconds per second of its sending. **server",
        "  core busy**: the same for the whole core it is pinned to (`/proc/stat`), which also",
        "  counts the kernel's loopback network work (softirq) done there; near 1.0 the server is",
        "  saturated and queues (– where the kernel's per-core counters, read over short turns,",
        "  came out below the process's own figure). **harness core busy**: fake models + load",
        "  generator CPU seconds per second; near 1.0 the harness would distort the comparison.",
        "  **other processes**:",
        "  cores used by processes that are not part of the benchmark (machine busy time from",
        "  `/proc/stat` minus the benchmark's processes). The machine is shared, so before each",
        "  round the benchmark waits for it to be quiet; a round during which others used more",
        f"  than {s.get('quiet', 0.15):g} cores is contaminated and run again; rows marked ⚠ had no clean round.",
        "* Each row is the median of its rounds (lost frames: the worst round). A ratio is the",
        "  median of the ratios within each round, where both systems took turns on the same",
        "  machine (the per-round figures are under *Round by round*).",
        "",
        "## Results",
        "",
        "| calls | system | CPU s / call-min | p50 ms | p99 ms | lost | RSS KiB / call | completed "
        "| server process busy | server core busy | harness core busy | other processes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, per in report["summary"].items():
        for system in SYSTEMS:
            r = per.get(system)
            if r is None:
                continue
            name = NAMES[system]
            if r.get("contaminated"):
                name += " ⚠"
            if r.get("saturated"):
                name += " (saturated)"
            lines.append(
                f"| {n} | {name} | {_fmt(r['cpu_s_per_call_min'], 3)} | {_fmt(r['rtt_p50_ms'])} "
                f"| {_fmt(r['rtt_p99_ms'])} | {_fmt(r['frames_lost'])} "
                f"| {_fmt(r['rss_kib_per_call'], 1)} | {_fmt(r['calls_completed'])} / {n} "
                f"| {_fmt(r['sut_core_busy'])} | {_fmt(r['sut_core_all_busy'])} "
                f"| {_fmt(r['harness_core_busy'])} | {_fmt(r['foreign_cores'])} |")
            for key, against in (("ratio", "bare relay"),
                                 ("ratio_lean", NAMES["baseline-lean"])):
                if key in r:
                    q = r[key]
                    lines.append(
                        f"| {n} | *{name} ÷ {against}* | *{_fmt(q['cpu_s_per_call_min'])}×* "
                        f"| *{_fmt(q['rtt_p50_ms'])}×* | *{_fmt(q['rtt_p99_ms'])}×* | | "
                        f"*{_fmt(q['rss_kib_per_call'])}×* | | | | | |")
    lines += ["", "## The bar", "",
              f"At 200 concurrent calls for 20 s: zero lost frames, and telewire's CPU per call-minute "
              f"and p99 round trip at most {BAR}× the bare relay's, in the same run (here: the same "
              "rounds, taking turns).", ""]
    for n, per in report["summary"].items():
        for system, key in (("telewire", "meets_bar"), ("telewire-relay", "meets_bar_relay")):
            if key not in per:
                continue
            tw, base = per[system], per["baseline"]
            verdict = "**met**" if per[key] else "**not met**"
            if tw.get("saturated"):
                verdict += (" (saturated its core: it could not keep up in real time, so its CPU "
                            "figure is a floor and its round trips are queueing)")
            if tw.get("contaminated") or base.get("contaminated"):
                verdict += " (⚠ measured while other processes loaded the machine: not conclusive)"
            lines.append(f"* {n} calls, {NAMES[system]}: {verdict}: lost {tw['frames_lost']} "
                         f"(bare relay {base['frames_lost']}), CPU "
                         f"{_fmt(tw['ratio']['cpu_s_per_call_min'])}×, p99 "
                         f"{_fmt(tw['ratio']['rtt_p99_ms'])}×, completed "
                         f"{tw['calls_completed']} / {n}.")
        if "meets_bar_live" in per:
            live, base = per["telewire-relay-live"], per["baseline"]
            verdict = "**met**" if per["meets_bar_live"] else "**not met**"
            lines.append(f"* {n} calls, {NAMES['telewire-relay-live']} (bar: CPU at most "
                         f"{BAR_LIVE}× the bare relay's): {verdict}: lost {live['frames_lost']}, "
                         f"CPU {_fmt(live['ratio']['cpu_s_per_call_min'])}×, p99 "
                         f"{_fmt(live['ratio']['rtt_p99_ms'])}×, completed "
                         f"{live['calls_completed']} / {n}.")
    lines += ["", "*telewire* is the graph as shipped, whose recorder writes every frame of both",
              "directions to its tracks and event log; *telewire, relay graph* is the path this",
              "bar is about. Where the shipped graph keeps its core more than about 0.8 busy, its",
              "round trips queue: size a recording deployment by its CPU figure, not the relay's."]
    spill = [r for r in report["runs"] if (r.get("cpu_s_in_others_slots") or 0) > 0.05 * (
        (r["load"].get("sut_cpu_s") or 0) + 1e-9)]
    lines += ["", "How far to trust one round: p99 is the figure that moves most. The slow frames of a",
              "round come in bursts of a few hundred milliseconds in which every call is late",
              "(`loadgen.py --dump` shows them). The load generator and the fake models share one",
              "core and stall for 10-20 ms now and then, the shared machine slows now and then, and",
              "a server works off the backlog more slowly the busier it is. Taking turns puts every",
              "system through the same moments of the machine, but p99 still moves from round to",
              "round (see *Round by round*) while CPU holds: read the CPU ratio as the cost, and a",
              "p99 ratio only across rounds.",
              "",
              "Playback marks are messages too. Each costs about what a media frame costs (a send,",
              "and a receive and parse of its echo). Until commit a6faa4b3 telewire placed one every",
              "250 ms of agent audio, 8 % more messages each way than the bare relay's, and at 200",
              "calls that put the relay graph at about 1.1× the bare relay's CPU and 2-3× its p99.",
              "Marks now come about once a second (plus one after the first audio of each item),",
              "about 2 % more messages, and the CPU ratio is about 1.0×.",
              "",
              "From paired runs with `loadgen.py --dump`: the relay graph's slow frames used to",
              "cluster at the start of its turns and 1 s into them. Taking turns makes every call",
              "send the same number of frames, so the 200 calls' once-a-second marks fell in the",
              "same 20 ms. Since commit 2c4af9ab each mark interval is stretched by a random",
              "fraction of up to half (`mark_jitter`), and those clusters are gone from the dumps.",
              "Most slow frames of both systems come in bursts that hit both; the relay graph's",
              "bursts are fewer than the bare relay's but can be longer, which is not explained",
              "yet (sampled during them, the server is in the event loop's C code or the kernel,",
              "not in telewire's Python code). So the p99 ratio at 200 calls moves from run to",
              "run more than the CPU ratio: on this machine, runs of `bench/run.py` on the commits",
              "of 2026-11-26 gave 1.04×, 1.67×, 2.04× before the jitter (rounds 0.85× to 9.4×,",
              "half of them within 1.5×) and 1.04×, 1.12× after it (rounds 0.54× to 2.52×, seven",
              "of eight within 1.5×); single paired rounds of two systems after it ranged from",
              "0.4× to 4.6×."]
    if spill:
        lines.append("")
        lines.append("Still working after its turn and its silence (over 5 % of its CPU fell "
                     "in other systems' turns, which it slowed) in at least one round: "
                     + ", ".join(sorted({f"{NAMES[r['system']]} at {r['calls']} calls"
                                         for r in spill})) + ".")
    rounds = sorted({r["round"] for r in report["runs"] if r.get("round") is not None})
    if rounds:
        lines += ["", "## Round by round", "",
                  "Each round's systems took turns on the same machine; ÷ is against the bare "
                  "relay of the same round.", "",
                  "| calls | round | system | CPU s / call-min | p99 ms | CPU ÷ | p99 ÷ |",
                  "|---:|---:|---|---:|---:|---:|---:|"]
        for i in rounds:
            rs = [r for r in report["runs"] if r.get("round") == i]
            base = next((r for r in rs if r["system"] == "baseline"), None)
            for r in sorted(rs, key=lambda r: SYSTEMS.index(r["system"])):
                name = NAMES[r["system"]] + (" ⚠" if r.get("contaminated") else "")
                cpu_q = _ratio(r["cpu_s_per_call_min"], base["cpu_s_per_call_min"]) if base else None
                p99_q = _ratio(r["rtt_p99_ms"], base["rtt_p99_ms"]) if base else None
                lines.append(f"| {r['calls']} | {i} | {name} | {_fmt(r['cpu_s_per_call_min'], 3)} "
                             f"| {_fmt(r['rtt_p99_ms'])} | {_fmt(cpu_q) if r is not base else ''} "
                             f"| {_fmt(p99_q) if r is not base else ''} |")
    lines += ["", "## Does uvloop pay?", ""]
    loop_note = report.get("uvloop")
    if loop_note:
        lines.append(loop_note)
    else:
        lines.append("Not measured in this run (uvloop not installed, or `--no-loop-check`).")
    lines += ["", "## Machine", "",
              f"* cores (nproc): {m['nproc']}" + (f", {m['cpu']}" if m["cpu"] else ""),
              f"* Python {m['python']} ({m['implementation']}), {m['kernel']}",
              f"* event loop: {m['event_loop']} (`TELEWIRE_LOOP=auto`, both systems)",
              f"* JSON parser (`telewire.jsonfast`): {m['json_parser']}"
              + (" — orjson (`telewire[speedups]`) is not installed here" if m["json_parser"] == "json" else ""),
              "* " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
              "* everything on 127.0.0.1", ""]
    if report.get("profile"):
        lines += ["## Where telewire's CPU goes", "",
                  f"py-spy, sampling telewire at {max(int(n) for n in report['summary'])} calls in "
                  f"an extra run (`--profile`; raw stacks in `{report['profile']['raw']}`). Self "
                  "time; C code under a Python frame (uvloop, socket writes) counts for that frame.",
                  "", "| self % | function |", "|---:|---|"]
        lines += [f"| {t['self_pct']} | `{t['function']}` |" for t in report["profile"]["top"]]
        lines.append("")
    if report.get("notes"):
        lines += ["## Notes", ""] + [f"* {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def _describe_source(src: dict[str, Any]) -> str:
    text = f"commit {src['commit']}" if src.get("commit") else "(no git commit found)"
    if src.get("local_changes"):
        text += " with local changes in core/ or plugins/"
    if src.get("tree", "").startswith("--tree"):
        text += " (a source tree given with `--tree`)"
    return text


def uvloop_note(summary: dict[str, Any]) -> str | None:
    for n, (slow, fast) in ((n, pair) for n in sorted(summary, key=int, reverse=True)
                            for pair in LOOP_PAIRS):
        per = summary[n]
        a, u = per.get(slow), per.get(fast)
        if not (a and u):
            continue
        what = NAMES[fast]
        if a.get("saturated") or u.get("saturated"):
            return (f"At {n} calls {what} saturated its core on "
                    + ("both loops" if a.get("saturated") and u.get("saturated") else
                       "the asyncio loop" if a.get("saturated") else "uvloop")
                    + f" (CPU s per call-minute {_fmt(a['cpu_s_per_call_min'], 3)} on asyncio, "
                    f"{_fmt(u['cpu_s_per_call_min'], 3)} on uvloop; p99 {_fmt(a['rtt_p99_ms'])} vs "
                    f"{_fmt(u['rtt_p99_ms'])} ms), so this run cannot say whether uvloop pays; "
                    "run `--calls` at a load telewire sustains.")
        q = a.get("ratio_loop") or {k: _ratio(a[k], u[k]) for k in _RATIO_KEYS}
        cpu, p99 = q["cpu_s_per_call_min"], q["rtt_p99_ms"]
        pays = (cpu or 0) > 1.05
        return (f"At {n} calls {what} on the stdlib asyncio loop used {_fmt(cpu)}× the CPU per "
                f"call-minute of the same on uvloop, with {_fmt(p99)}× its p99 round trip "
                f"({_fmt(a['cpu_s_per_call_min'], 3)} vs {_fmt(u['cpu_s_per_call_min'], 3)} CPU s "
                f"per call-minute; p99 {_fmt(a['rtt_p99_ms'])} vs {_fmt(u['rtt_p99_ms'])} ms). "
                + ("By CPU uvloop pays: keep `TELEWIRE_LOOP=auto` (uvloop when installed)."
                   if pays else "By CPU uvloop does not pay measurably here (within 5 %).")
                + " (Ratios are the median of the rounds' own ratios; the p99 is noisier "
                "than the CPU figure.)")
    return None


# --------------------------------------------------------------------------------- main


def turn_orders(systems: list[str], rounds: int) -> list[list[str]]:
    """A turn order per round in which each system follows a different one from round to round.

    Turns repeat in a cycle, so a system's cost can spill into the next one's turn (a backlog,
    the kernel's deferred work). Rotating the order keeps every system's predecessor the same;
    stepping through the systems with a stride coprime to their number changes it: with n
    systems, n - 1 rounds give each system every other one as predecessor once (n prime).
    """
    n = len(systems)
    strides = [k for k in range(1, n) if math.gcd(k, n) == 1] or [1]
    return [[systems[(r + i * strides[r % len(strides)]) % n] for i in range(n)]
            for r in range(rounds)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--calls", default="50,200", help="comma-separated concurrent call counts")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 10 calls for 5 s; docs not rewritten unless --docs")
    p.add_argument("--no-relay-graph", action="store_true",
                   help="skip telewire on the default graph cut down to the relay path")
    p.add_argument("--repeat", type=int, default=4,
                   help="rounds per N, each with a new turn order (figures are medians); "
                        "--quick: 1")
    p.add_argument("--stagger", type=float, default=1.0, help="call starts spread over this")
    p.add_argument("--warmup", type=float, default=1.0, help="after the starts, before the window")
    p.add_argument("--drain", type=float, default=5.0, help="wait for outstanding echoes")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--slot", type=float, default=2.0, metavar="S",
                   help="seconds of sending in each system's turn")
    p.add_argument("--gap", type=float, default=0.5, metavar="S",
                   help="seconds of silence after each turn, for its backlog (charged to it)")
    p.add_argument("--no-live", action="store_true",
                   help="skip the relay graph on the openai_live provider (GPT-Live's fake)")
    p.add_argument("--no-loop-check", action="store_true",
                   help="skip telewire on the stdlib asyncio loop (the relay graph at the "
                        "largest N; without the relay graph, the default graph at the smallest)")
    p.add_argument("--no-lean-baseline", action="store_true",
                   help="skip the bare relay on telewire's model connection (run at the largest N)")
    p.add_argument("--profile", action="store_true",
                   help="also profile telewire at the largest N with py-spy (an extra run)")
    p.add_argument("--quiet", type=float, default=0.15, metavar="CORES",
                   help="a run during which other processes used more CPU than this (in cores) "
                        "is contaminated: before each run wait for the machine to be this quiet")
    p.add_argument("--patience", type=float, default=180.0, metavar="S",
                   help="how long to wait for a quiet machine before running anyway")
    p.add_argument("--retries", type=int, default=2,
                   help="runs again a contaminated run up to this many times")
    p.add_argument("--tree", type=Path, metavar="DIR",
                   help="run the telewire source tree in DIR (core/ and plugins/*, e.g. a "
                        "`git archive` export) instead of the installed one: before/after")
    p.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                   help="only rewrite docs/benchmarks.md from a results file of an earlier run")
    p.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                   help="rewrite docs/benchmarks.md (default: yes, except with --quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.seconds, args.repeat, args.slot = "10", 5.0, 1, 1.0
    if args.slot <= 0 or args.gap < 0 or args.seconds < args.slot:
        p.error("--slot must be positive and at most --seconds, --gap not negative")
    args.call_counts = [int(x) for x in str(args.calls).split(",") if x.strip()]
    if not args.call_counts or min(args.call_counts) < 1:
        p.error("--calls: give positive integers, e.g. --calls 50,200")
    if args.docs is None:
        args.docs = not args.quick
    return args


def _command(argv: list[str]) -> str:
    if not argv:
        return "make bench"
    return f"make bench BENCH_ARGS={shlex.quote(' '.join(argv))}"


def main(argv: list[str] | None = None) -> int:
    global _tree
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text())
        report["summary"] = summarize(report["runs"])
        report["uvloop"] = uvloop_note(report["summary"])
        _write_docs(report)
        print(f"bench: rewrote {DOCS.relative_to(ROOT)} from {args.render}")
        return 0
    if args.tree is not None:
        _tree = args.tree.resolve()
        if not (_tree / "core" / "telewire").is_dir():
            print(f"bench: --tree {args.tree}: no core/telewire in it", file=sys.stderr)
            return 2
    try:
        preflight = _preflight()
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    cores = sorted(os.sched_getaffinity(0))
    pinned = len(cores) >= 2 and not args.no_pin
    pins: dict[str, set[int] | None] = ({"sut": {cores[0]}, "harness": set(cores[1:])}
                                        if pinned else {"sut": None, "harness": None})
    if pinned:
        os.sched_setaffinity(0, pins["harness"])  # this script stays off the measured core
    try:
        import uvloop  # noqa: F401
        has_uvloop = True
    except ImportError:
        has_uvloop = False
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix="telewire-bench-"))
    global _relay_graph
    dropped: list[str] = []
    if not args.no_relay_graph:
        _relay_graph = logdir / "relay_graph.toml"
        dropped = relay_graph(Path(preflight["telewire_from"]) / "telewire" / "data"
                              / "default_graph.toml", _relay_graph)
    plan: list[tuple[list[str], int]] = []
    for n in args.call_counts:
        systems = ["baseline", "telewire"] + ([] if args.no_relay_graph else ["telewire-relay"])
        if not args.no_relay_graph and not args.no_live:
            systems.append("telewire-relay-live")
        if n == max(args.call_counts) and not args.no_lean_baseline:
            systems.append("baseline-lean")
        if has_uvloop and not args.no_loop_check:
            if args.no_relay_graph and n == min(args.call_counts):
                systems.append("telewire-asyncio")
            elif not args.no_relay_graph and n == max(args.call_counts):
                systems.append("telewire-relay-asyncio")  # sustained there, where loops matter
        plan += [(order, n) for order in turn_orders(systems, args.repeat)]
    print(f"bench: {len(plan)} rounds ({'pinned' if pinned else 'unpinned'}; logs in {logdir})",
          flush=True)
    runs: list[dict[str, Any]] = []
    rounds = 0
    profile_out: Path | None = None
    try:
        for systems, n in plan:
            print(f"  {n} calls each, turns of {args.slot:g} s: {', '.join(systems)} ... ",
                  flush=True)
            for attempt in range(args.retries + 1):
                before = wait_for_quiet(args.quiet, args.patience)
                rs = run_round(systems, n, args, pins, logdir)
                foreign = max((r["foreign_cores"] or 0) for r in rs)
                rounds += 1
                for r in rs:
                    r["round"] = rounds
                    r["other_load_before"] = round(before, 3)
                    r["contaminated"] = foreign > args.quiet
                runs += rs
                if foreign <= args.quiet or attempt == args.retries:
                    break
                print(f"    other processes used {_fmt(foreign)} cores during the window; "
                      "again ...", flush=True)
            for r in rs:
                print(f"    {r['system']:<22} CPU {_fmt(r['cpu_s_per_call_min'], 3)} s/call-min, "
                      f"p50 {_fmt(r['rtt_p50_ms'])} p99 {_fmt(r['rtt_p99_ms'])} ms, lost "
                      f"{r['frames_lost']}, RSS {_fmt(r['rss_kib_per_call'], 1)} KiB/call, "
                      f"completed {r['calls_completed']}/{n}, busy {_fmt(r['sut_core_busy'])} "
                      f"(core {_fmt(r['sut_core_all_busy'])}, harness "
                      f"{_fmt(r['harness_core_busy'])}, other processes "
                      f"{_fmt(r['foreign_cores'])} cores)", flush=True)
                if r["load"]["error_count"]:
                    print(f"      {r['load']['error_count']} errors, first: "
                          f"{r['load']['errors'][:3]}", flush=True)
            time.sleep(1.0)
        if args.profile:
            profile_out = RESULTS / f"{stamp}-telewire-{max(args.call_counts)}.pyspy.txt"
            print(f"  profiling telewire at {max(args.call_counts)} calls -> {profile_out}",
                  flush=True)
            run_round(["telewire"], max(args.call_counts), args, pins, logdir, profile=profile_out)
            if not profile_out.exists():
                print(f"  py-spy wrote nothing (see {logdir}/telewire-"
                      f"{max(args.call_counts)}.py-spy.log)", flush=True)
                profile_out = None
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping every child process", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"\nbench: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop_all()

    summary = summarize(runs)
    report: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": _command(argv),
        "source": _source() | {"telewire_from": preflight["telewire_from"]},
        "machine": _machine(preflight),
        "settings": {"calls": args.call_counts, "seconds": args.seconds, "stagger_s": args.stagger,
                     "warmup_s": args.warmup, "drain_s": args.drain, "repeat": args.repeat,
                     "slot_s": args.slot, "gap_s": args.gap, "rounds": [
                         {"calls": n, "turn_order": systems} for systems, n in plan],
                     "pinned": pinned, "quick": args.quick, "quiet": args.quiet},
        "summary": summary,
        "relay_graph_drops": dropped,
        "relay_graph": _relay_graph.read_text() if _relay_graph is not None else None,
        "runs": runs,
        "notes": [],
    }
    report["uvloop"] = uvloop_note(summary)
    dirty = [r for r in runs if r.get("contaminated")]
    if dirty:
        report["notes"].append(
            f"{len(dirty)} of {len(runs)} runs were contaminated by other processes (up to "
            f"{max(r['foreign_cores'] for r in dirty):.2f} cores) and are left out of the medians "
            "where a clean run exists; every run is in the results file.")
    harness = [r["harness_core_busy"] for r in runs if r["harness_core_busy"] is not None]
    if harness and max(harness) > 0.85:
        report["notes"].append(f"the harness core was up to {max(harness):.0%} busy; at that load "
                               "the fake model and load generator add latency to both systems")
    if profile_out is not None:
        report["profile"] = {"raw": str(profile_out.relative_to(ROOT)),
                             "top": profile_top(profile_out)}
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"bench: results in {out.relative_to(ROOT)}")
    for n, per in summary.items():
        for system, key in (("telewire", "meets_bar"), ("telewire-relay", "meets_bar_relay")):
            if key in per:
                tw = per[system]
                print(f"  {n} calls: {NAMES[system]} / bare relay: CPU "
                      f"{_fmt(tw['ratio']['cpu_s_per_call_min'])}×, p99 "
                      f"{_fmt(tw['ratio']['rtt_p99_ms'])}×, lost {tw['frames_lost']}: "
                      + ("meets the bar" if per[key] else "does NOT meet the bar"))
        if "meets_bar_live" in per:
            live = per["telewire-relay-live"]
            print(f"  {n} calls: {NAMES['telewire-relay-live']} / bare relay: CPU "
                  f"{_fmt(live['ratio']['cpu_s_per_call_min'])}× (bar {BAR_LIVE}×), lost "
                  f"{live['frames_lost']}: "
                  + ("meets the bar" if per["meets_bar_live"] else "does NOT meet the bar"))
    if report["uvloop"]:
        print("  " + report["uvloop"])
    if args.docs:
        _write_docs(report)
        print(f"bench: rewrote {DOCS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
