"""The ``telewire`` command: serve, plugins, config show, call, demo, calls, trace.

Depends on everything above it (server, graph, registry, settings, testing); nothing depends on it.
The CLI is the only place that installs log sinks.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import signal
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any, Callable, Sequence

from loguru import logger

from telewire import __version__
from telewire.errors import ConfigError, TelewireError
from telewire.eventloop import use_event_loop
from telewire.graph import load_graph, node_types
from telewire.init import cmd_init
from telewire.plugins import PluginSet, load_group
from telewire.realtime.base import ProviderCapabilities, providers
from telewire.redact import mask, mask_text
from telewire.registry import CarrierRegistry
from telewire.settings import ServerSettings, load_settings, node_overrides, provider_keys
from telewire.stores import STORE_GROUP, Store
from telewire.tools import TOOL_GROUP

__all__ = ["main"]

_LOG_FORMAT = ("<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
               "<cyan>{extra[carrier]}</cyan> {extra[call_sid]} | {message}")


def setup_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Install the one stderr sink (text, or JSON lines)."""
    logger.remove()
    logger.configure(extra={"carrier": "-", "call_sid": "", "stream_sid": ""})
    if json_lines:
        logger.add(sys.stderr, level=level, serialize=True)
    else:
        logger.add(sys.stderr, level=level, format=_LOG_FORMAT)


def _load(args: argparse.Namespace) -> tuple[ServerSettings, Any]:
    settings = load_settings(host=getattr(args, "host", None), port=getattr(args, "port", None),
                             graph=getattr(args, "config", None))
    overrides = node_overrides(settings) + list(getattr(args, "set", None) or [])
    graph = load_graph(settings.graph, overrides)
    return settings, graph


# --------------------------------------------------------------------------------- serve


async def _serve(settings: ServerSettings, graph: Any, ready: asyncio.Event | None = None, *,
                 reuse_port: bool = False, listen_fd: int | None = None) -> None:
    import socket

    from telewire.server import TelewireServer
    from telewire.tracing import Tracing

    tracing = Tracing.from_settings(settings)
    logger.info("spans to {} (frame events: {})", tracing.where(), tracing.frames)
    server = TelewireServer(settings, graph, CarrierRegistry(), tracing=tracing)
    sock = socket.socket(fileno=listen_fd) if listen_fd is not None else None
    await server.start(sock=sock, reuse_port=reuse_port)
    # Everything loaded so far lives as long as the process: freeze it out of the cyclic
    # collector, and collect young objects less often. Full collections rescanning every live
    # call's objects were a main source of tail latency (bench: relay graph at 150 calls, p99
    # 34.7 ms -> 7.9 ms; default graph no longer saturated its core at 150 calls).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 100)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    watch = None
    if reuse_port or listen_fd is not None:  # a supervisor's worker: stop when it is gone
        parent = os.getppid()

        async def orphaned() -> None:
            while os.getppid() == parent:
                await asyncio.sleep(1.0)
            logger.warning("the supervisor (pid {}) is gone; stopping", parent)
            stop.set()

        watch = asyncio.ensure_future(orphaned())
    await stop.wait()
    if watch is not None:
        watch.cancel()
    logger.info("stopping: no new calls; draining")
    await server.stop()
    await asyncio.to_thread(tracing.shutdown)
    if tracing.dropped_spans:
        logger.warning("{} span(s) dropped: an exporter's queue was full", tracing.dropped_spans)


def cmd_serve(args: argparse.Namespace) -> int:
    settings, graph = _load(args)
    setup_logging(settings.log_level, settings.log_json)
    if args.workers is not None and args.workers > 1:
        from telewire.supervisor import Supervisor

        passed = [a for item in (args.set or []) for a in ("--set", item)]
        if args.config:
            passed = ["--config", args.config, *passed]
        grace = settings.drain_timeout_s + settings.drain_goodbye_s + 30
        return Supervisor(args.workers, settings.host, settings.port, passed, grace).run()
    loop_name = use_event_loop(settings.loop)
    logger.info("telewire {} ({} event loop), graph {}", __version__, loop_name, graph.source)
    asyncio.run(_serve(settings, graph, reuse_port=args.reuse_port, listen_fd=args.listen_fd))
    return 0


# --------------------------------------------------------------------------------- plugins


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = CarrierRegistry()
    carriers = []
    for name in registry.names():
        info = registry.infos[name]
        entry: dict[str, Any] = {"name": name, "distribution": info.distribution,
                                 "version": info.version, "entry_point": info.entry_point}
        try:
            caps = registry.get(name).capabilities
            entry["capabilities"] = {k: getattr(caps, k) for k in
                                     ("clear", "marks", "dtmf", "hangup", "text_frames_only")}
            entry["status"] = "ok"
        except TelewireError as exc:
            entry["status"] = "error"
            entry["error"] = str(exc)
        carriers.append(entry)
    for f in registry.failures:
        carriers.append({"name": f.name, "distribution": f.distribution, "version": "",
                         "entry_point": f.entry_point, "status": "error", "error": f.error})
    nodes = [{"name": n, "distribution": i.distribution, "version": i.version,
              "entry_point": i.entry_point, "status": "ok" if i.error is None else "error",
              **({"error": i.error} if i.error else {})}
             for n, i in sorted(node_types().items())]
    data: dict[str, list[dict[str, Any]]] = {"carriers": carriers, "nodes": nodes}
    found = providers()
    data["providers"] = _group_rows(found, lambda cls: {
        "capabilities": _provider_caps(cls.capabilities)})
    data["stores"] = _group_rows(load_group(STORE_GROUP, base=Store))
    data["tools"] = _group_rows(load_group(TOOL_GROUP))
    rows_all = [r for rows in data.values() for r in rows]
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        titles = {"carriers": "carriers", "nodes": "node types", "providers": "providers",
                  "stores": "stores", "tools": "tools"}
        for key, rows in data.items():
            if not rows and key == "tools":
                continue
            print(f"{titles[key]}:")
            for r in rows:
                line = f"  {r['name']:<16} {r['distribution'] or '-'} {r['version'] or ''}"
                if r["status"] != "ok":
                    line += f"  FAILED: {r['error']}"
                print(line.rstrip())
    bad = any(r["status"] != "ok" for r in rows_all)
    return 1 if bad and args.strict else 0


def _group_rows(found: PluginSet[Any],
                extra: Callable[[Any], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``telewire plugins`` rows of one entry-point group: the loaded, then the failures."""
    rows: list[dict[str, Any]] = []
    for name in sorted(found.loaded):
        info = found.infos[name]
        row = {"name": name, "distribution": info.distribution, "version": info.version,
               "entry_point": info.entry_point, "status": "ok"}
        if extra is not None:
            row.update(extra(found.loaded[name]))
        rows.append(row)
    rows += [{"name": f.name, "distribution": f.distribution, "version": "",
              "entry_point": f.entry_point, "status": "error", "error": f.error}
             for f in found.failures]
    return rows


def _provider_caps(caps: ProviderCapabilities) -> dict[str, Any]:
    out = dataclasses.asdict(caps)
    out["audio_formats"] = sorted(f"{c}/{r}" for c, r in caps.audio_formats)
    return out




# --------------------------------------------------------------------------------- config


def cmd_config_show(args: argparse.Namespace) -> int:
    """Print the effective configuration as JSON, every secret masked (:func:`telewire.redact.mask`:
    ``SecretStr`` fields, values under secret-like names at any depth, URL userinfo and
    secret-like query parameters), in the settings, every node's config and the carriers'."""
    settings, graph = _load(args)
    registry = CarrierRegistry()
    carriers: dict[str, Any] = {}
    for name in registry.names():
        try:
            model = registry.get(name).settings_model()
            carriers[name] = mask(model()) if model is not None else {}
        except Exception as exc:  # show what is wrong, keep showing the rest
            carriers[name] = {"error": mask_text(str(exc))}
    out = {
        "settings": mask(settings),
        "provider_keys": mask(provider_keys()),
        "graph": {
            "source": graph.source,
            "nodes": {n: {"type": s.type, "version": s.version, "config": mask(s.config)}
                      for n, s in graph.nodes.items()},
            "edges": [str(e) for e in graph.edges],
        },
        "carriers": carriers,
    }
    print(json.dumps(out, indent=2, default=lambda v: mask(str(v))))
    return 0


# --------------------------------------------------------------------------------- call


def _write_outputs(result: Any, out_dir: Path) -> dict[str, str]:
    from telewire.wav import write_ulaw_wav

    out_dir.mkdir(parents=True, exist_ok=True)
    audio = result.received_audio
    raw = out_dir / f"{result.stream_sid}.agent.ulaw"
    raw.write_bytes(audio)
    wav = write_ulaw_wav(out_dir / f"{result.stream_sid}.agent.wav", audio)
    summary = out_dir / f"{result.stream_sid}.summary.json"
    summary.write_text(json.dumps(result.summary(), indent=2))
    return {"agent_audio_wav": str(wav), "agent_audio_raw": str(raw), "summary": str(summary)}


async def _call(args: argparse.Namespace) -> dict[str, Any]:
    from telewire.testing.simulator import CallSimulator
    from telewire.wav import read_ulaw

    audio = read_ulaw(args.audio)
    params = dict(p.split("=", 1) for p in args.param or [])
    token = args.auth_token or os.environ.get("TELEWIRE_TWILIO_AUTH_TOKEN")
    answer = args.url if args.url.startswith(("http://", "https://")) else None
    sim = CallSimulator(args.url, custom_parameters=params, auth_token=token,
                        pace=args.pace, drain_s=args.drain, answer_url=answer,
                        dtmf=[(float(t), d) for t, d in (x.split(":", 1) for x in args.dtmf or [])])
    result = await sim.run(audio)
    summary = result.summary()
    summary["outputs"] = _write_outputs(result, Path(args.out))
    return summary


def cmd_call(args: argparse.Namespace) -> int:
    if args.carrier != "twilio":
        raise ConfigError(f"telewire call: the simulator speaks twilio only for now, not "
                          f"{args.carrier!r}")
    setup_logging("WARNING")
    summary = asyncio.run(_call(args))
    print(json.dumps(summary, indent=2))
    return 0


# --------------------------------------------------------------------------------- dial


def cmd_dial(args: argparse.Namespace) -> int:
    """Place an outbound call (:func:`telewire.dial.dial`); print the carrier's call id."""
    from telewire.dial import dial

    params = {}
    for item in args.param or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--param {item!r} is not NAME=VALUE")
        params[name] = value
    setup_logging(os.environ.get("TELEWIRE_LOG_LEVEL", "WARNING"))
    result = asyncio.run(dial(args.to, args.from_, carrier=args.carrier, parameters=params,
                              machine_detection=args.machine_detection))
    print(json.dumps(result.as_dict(), indent=2))
    return 0


# --------------------------------------------------------------------------------- demo


async def _demo(args: argparse.Namespace) -> dict[str, Any]:
    from telewire.server import TelewireServer
    from telewire.testing.simulator import CallSimulator
    from telewire.wav import read_ulaw

    overrides = list(args.set or [])
    if provider_keys().openai_api_key is not None and not any(
            o.startswith("rt.config.provider") for o in overrides):
        overrides.append("rt.config.provider=openai")
    settings = load_settings(host="127.0.0.1", port=0)
    graph = load_graph(None, overrides)
    from telewire.replay import paced_graph
    from telewire.tracing import Tracing

    tracing = Tracing.from_settings(settings)
    server = TelewireServer(settings, paced_graph(graph, args.pace), CarrierRegistry(),
                            tracing=tracing)
    port = await server.start()
    try:
        audio_path = args.audio or str(Path(str(_data_file("demo.wav"))))
        audio = read_ulaw(audio_path)
        sim = CallSimulator(f"ws://127.0.0.1:{port}/media/twilio", pace=args.pace,
                            custom_parameters={"caller": "demo"},
                            expect_echo=graph.nodes["rt"].config.provider == "echo",
                            drain_s=5.0)
        result = await sim.run(audio)
    finally:
        await server.stop(drain_timeout_s=2)
        await asyncio.to_thread(tracing.shutdown)
    summary = result.summary()
    summary["provider"] = graph.nodes["rt"].config.provider
    summary["input_audio"] = audio_path
    summary["byte_identical_echo"] = result.received_audio == audio
    summary["outputs"] = _write_outputs(result, Path(args.out))
    from telewire.archive import find_archive

    record = find_archive(result.stream_sid)
    summary["recording"] = record.as_dict() if record else None
    summary["spans"] = {"to": tracing.where(), "dropped": tracing.dropped_spans,
                        "db": str(tracing.spans_db) if tracing.spans_db else None}
    return summary


def _data_file(name: str) -> Any:
    from importlib import resources

    return resources.files("telewire") / "data" / name


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging(os.environ.get("TELEWIRE_LOG_LEVEL", "INFO"))
    summary = asyncio.run(_demo(args))
    print(json.dumps(summary, indent=2))
    out = summary["outputs"]
    print(f"\nThe call's returned audio is in {out['agent_audio_wav']} "
          f"(raw mu-law: {out['agent_audio_raw']}); its summary in {out['summary']}.")
    rec = summary.get("recording")
    if rec:
        where = rec["locations"]
        print(f"Its recording ({rec['status']}): stereo WAV {where.get('call.wav')}, transcript "
              f"{where.get('transcript.json')}, event log {where.get('events.jsonl')}.")
    else:
        print("The graph has no recorder node, so the call was not recorded.")
    spans = summary["spans"]
    call_id = summary.get("call_sid") or summary.get("stream_sid") or "CALL_SID"
    print(f"Its spans went to {spans['to']}"
          + (f"; see them with: telewire trace {call_id}" if spans["db"] else "") + ".")
    return 0


# --------------------------------------------------------------------------------- calls, trace


def _spans_db(args: argparse.Namespace) -> Path:
    db = Path(args.db) if args.db else load_settings().spans_db
    if not db.exists():
        raise ConfigError(f"no span database at {db} (TELEWIRE_SPANS_DB): no call was traced "
                          "there yet")
    return db


def _since_ns(text: str | None) -> int | None:
    """``--since``: ``90s``, ``15m``, ``2h``, ``7d`` ago, or an ISO date/time (UTC if naive)."""
    import time
    from datetime import datetime, timezone

    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    if t[-1:] in units and t[:-1].replace(".", "", 1).isdigit():
        return int((time.time() - float(t[:-1]) * units[t[-1]]) * 1e9)
    try:
        when = datetime.fromisoformat(t)
    except ValueError:
        raise ConfigError(f"--since {text!r}: give 90s, 15m, 2h, 7d or an ISO date/time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1e9)


def cmd_calls(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from telewire.spanstore import open_db, recent_calls

    db = open_db(_spans_db(args))
    calls = recent_calls(db, since_ns=_since_ns(args.since), limit=args.limit)
    for c in calls:
        c["started"] = datetime.fromtimestamp(c.pop("started_ns") / 1e9,
                                              timezone.utc).isoformat(timespec="seconds")
    if args.json:
        print(json.dumps(calls, indent=2))
        return 0
    if not calls:
        print("no calls traced" + (f" since {args.since}" if args.since else ""))
        return 0
    print(f"{'started (UTC)':<25} {'call_sid':<36} {'carrier':<10} {'seconds':>8} {'turns':>5} "
          f"{'intr':>4} {'end reason':<16} {'USD':>8}")
    for c in calls:
        cost = c["cost_usd"]
        print(f"{c['started']:<25} {(c['call_sid'] or c['stream_sid'] or '-'):<36} "
              f"{(c['carrier'] or '-'):<10} {c['duration_s']:>8.1f} {c['turns'] or 0:>5} "
              f"{c['interrupts'] or 0:>4} {(c['end_reason'] or '-'):<16} "
              f"{(f'{cost:.4f}' if isinstance(cost, (int, float)) else '-'):>8}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from telewire.spanstore import call_rows, open_db, render_tree

    traces = call_rows(open_db(_spans_db(args)), args.call_sid)
    if not traces:
        print(f"telewire: no spans of call {args.call_sid!r} in {_spans_db(args)}",
              file=sys.stderr)
        return 1
    for i, roots in enumerate(traces):
        if i:
            print()
        print(f"trace {roots[0].trace_id}")
        print(render_tree(roots))
    return 0


# --------------------------------------------------------------------------------- archive


def _spool_dirs(args: argparse.Namespace) -> list[str]:
    """``--spool`` folders, else the spool of every recorder node of the graph."""
    if args.spool:
        return list(args.spool)
    from telewire.nodes.recorder import Recorder

    _, graph = _load(args)
    dirs = sorted({graph.nodes[n].config.spool_dir for n in graph.nodes_of_type(Recorder)})
    if not dirs:
        raise ConfigError(f"{graph.source}: no recorder node, so no spool; pass --spool DIR")
    return dirs


def cmd_archive_status(args: argparse.Namespace) -> int:
    from telewire.archive import uploader_for

    entries = [e for d in _spool_dirs(args) for e in uploader_for(d).entries()]
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print("spool empty: every archive is stored")
        return 0
    for e in entries:
        line = f"{e.state:<9} {e.archive_id}  {e.bytes:>10} B  -> {e.store or '?'}"
        if e.attempts:
            line += f"  ({e.attempts} failed attempt(s); last: {e.last_error})"
        print(line)
    return 0


async def _archive_flush(dirs: list[str]) -> tuple[list[Any], list[Any]]:
    from telewire.archive import uploader_for

    stored, failed = [], []
    for d in dirs:
        ok, bad = await uploader_for(d).flush()
        stored += ok
        failed += bad
    return stored, failed


def cmd_archive_flush(args: argparse.Namespace) -> int:
    setup_logging("WARNING")
    stored, failed = asyncio.run(_archive_flush(_spool_dirs(args)))
    out = {"stored": [r.as_dict() for r in stored],
           "failed": [{"archive_id": e.archive_id, "path": str(e.path), "error": err}
                      for e, err in failed]}
    print(json.dumps(out, indent=2))
    return 1 if failed else 0


def cmd_replay(args: argparse.Namespace) -> int:
    from telewire.replay import replay

    setup_logging(os.environ.get("TELEWIRE_LOG_LEVEL", "WARNING"))
    _, graph = _load(args)
    summary = asyncio.run(replay(args.archive, graph, turn=args.turn, pace=args.pace,
                                 drain_s=args.drain))
    print(json.dumps(summary, indent=2))
    record = summary["archive"]
    return 0 if record is not None and record["status"] == "stored" else 1


# --------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="telewire", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"telewire {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def graph_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", metavar="FILE", help="graph file (default: the built-in graph)")
        sp.add_argument("--set", action="append", metavar="NODE.config.KEY=VALUE",
                        help="override a node config value (repeatable)")

    s = sub.add_parser("serve", help="serve calls")
    graph_args(s)
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int, metavar="N",
                   help="N worker processes on one port (SO_REUSEPORT, else one shared socket), "
                        "restarted when one dies; SIGTERM drains them all")
    s.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # a worker's
    s.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)  # a worker's inherited socket
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("plugins", help="installed carriers, node types, providers, stores and tools")
    s.add_argument("--json", action="store_true")
    s.add_argument("--strict", action="store_true", help="exit 1 when any plugin failed to load")
    s.set_defaults(func=cmd_plugins)

    s = sub.add_parser("config", help="configuration")
    csub = s.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="the effective configuration, secrets masked")
    graph_args(show)
    show.set_defaults(func=cmd_config_show)

    s = sub.add_parser("init", help="start a project: ask for (or take) carrier, provider, store, "
                                    "control plane and tracing; write telewire.toml and .env")
    s.add_argument("--dir", default=".", help="the project folder (default: here)")
    s.add_argument("--carrier", help="installed carrier(s), comma-separated (telewire plugins)")
    s.add_argument("--provider", help="installed realtime model provider (openai, echo …)")
    s.add_argument("--store", help="recording store: file, s3 or a plugin's scheme")
    s.add_argument("--store-url", help="the store's URL (file://./recordings, s3://bucket/prefix)")
    s.add_argument("--control", help="control plane: none (in-process) or a redis://… URL")
    s.add_argument("--tracing", help="span exporter: sqlite, otlp or off")
    s.add_argument("--yes", action="store_true", help="ask nothing: take the current or "
                   "default value of every choice not given")
    s.add_argument("--force", action="store_true", help="replace a broken or unrelated "
                   "telewire.toml / .env.example")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("call", help="simulate a carrier call into a running server")
    s.add_argument("url", help="media WebSocket URL (ws://127.0.0.1:8080/media/twilio), or the "
                   "answer webhook (http://127.0.0.1:8080/answer/twilio): its TwiML is fetched "
                   "first, as Twilio does, so the call carries the server's call token")
    s.add_argument("audio", help="mu-law (.ulaw/.raw) or WAV (mu-law or 16-bit PCM) 8 kHz mono")
    s.add_argument("--carrier", default="twilio")
    s.add_argument("--param", action="append", metavar="NAME=VALUE", help="custom parameter")
    s.add_argument("--dtmf", action="append", metavar="MS:DIGIT", help="press DIGIT at MS")
    s.add_argument("--auth-token", help="sign the upgrade (default TELEWIRE_TWILIO_AUTH_TOKEN)")
    s.add_argument("--pace", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    s.add_argument("--drain", type=float, default=3.0, help="seconds to wait for trailing audio")
    s.add_argument("--out", default="call-output", help="folder for what comes back")
    s.set_defaults(func=cmd_call)

    s = sub.add_parser("dial", help="place an outbound call that streams through this server "
                                    "(TELEWIRE_PUBLIC_URL)")
    s.add_argument("to", help="the number to call (E.164: +15551234567)")
    s.add_argument("--from", dest="from_", required=True, metavar="FROM",
                   help="the caller id (a number of the carrier account)")
    s.add_argument("--carrier", default="twilio")
    s.add_argument("--param", action="append", metavar="K=V",
                   help="stream parameter for the call's start frame (repeatable)")
    s.add_argument("--machine-detection", choices=("answer", "message_end"),
                   help="report who answered (tel_in.answered_by): as soon as known, or after "
                        "a machine's greeting (to leave a message)")
    s.set_defaults(func=cmd_dial)

    s = sub.add_parser("demo", help="serve on a free port and run one simulated call through it")
    s.add_argument("--audio", help="audio file to play (default: the bundled demo)")
    s.add_argument("--set", action="append", metavar="NODE.config.KEY=VALUE")
    s.add_argument("--pace", type=float, default=1.0)
    s.add_argument("--out", default="demo-output", help="folder for what comes back")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("calls", help="recent calls from the span database")
    s.add_argument("--since", metavar="WHEN", help="90s, 15m, 2h, 7d ago, or an ISO date/time")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true")
    s.add_argument("--db", metavar="FILE", help="span database (default TELEWIRE_SPANS_DB)")
    s.set_defaults(func=cmd_calls)

    s = sub.add_parser("trace", help="one call's span tree as an indented timeline")
    s.add_argument("call_sid", help="the call's call sid (or stream sid)")
    s.add_argument("--db", metavar="FILE", help="span database (default TELEWIRE_SPANS_DB)")
    s.set_defaults(func=cmd_trace)

    s = sub.add_parser("archive", help="the local spool of call archives")
    asub = s.add_subparsers(dest="archive_command", required=True)
    for name, func, text in (
            ("status", cmd_archive_status, "archives waiting in the spool, and why"),
            ("flush", cmd_archive_flush, "upload every spooled archive now (exit 1 if any fail)")):
        a = asub.add_parser(name, help=text)
        graph_args(a)
        a.add_argument("--spool", action="append", metavar="DIR",
                       help="spool folder (default: the graph's recorder spool_dir)")
        if name == "status":
            a.add_argument("--json", action="store_true")
        a.set_defaults(func=func)

    s = sub.add_parser("replay", help="replay a recorded call's caller audio through a graph "
                                      "into a new archive")
    s.add_argument("archive", help="archive folder or store URL (file://… or s3://…) of one call")
    graph_args(s)
    s.add_argument("--turn", type=int, metavar="N", help="start at the Nth caller turn (1-based)")
    s.add_argument("--pace", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    s.add_argument("--drain", type=float, default=3.0, help="seconds to wait for the agent at the end")
    s.set_defaults(func=cmd_replay)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"telewire: configuration error: {mask_text(str(exc))}", file=sys.stderr)
        return 2
    except TelewireError as exc:
        print(f"telewire: {mask_text(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
