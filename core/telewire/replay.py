"""Replay a recorded call: its caller audio (and keypad digits) through a graph, into a new archive.

Depends on ``telewire.archive``, ``telewire.graph``, ``telewire.server``, ``telewire.registry``,
``telewire.settings`` and ``telewire.testing.simulator``; only ``cli`` depends on it.

The recorded caller channel is played, as the carrier would, into an in-process server on a free
loopback port running the given graph (for example the same call against a changed system prompt
or a fake model); the graph's recorder archives the replayed call like any other, so yesterday's
real calls can be tried against today's prompt. The caller audio comes from the archive's WAV
and the keypad digits and turn starts from its event log and transcript, so archives of either
event-log format replay alike (1 repeated every frame's base64; 2 references the WAV).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from telewire.archive import ArchiveReader, find_archive
from telewire.errors import ConfigError
from telewire.graph import Graph
from telewire.nodes.carrier_in import CarrierIn
from telewire.nodes.recorder import Recorder
from telewire.registry import CarrierRegistry
from telewire.settings import load_settings

__all__ = ["paced_graph", "replay"]


async def replay(ref: str, graph: Graph, *, turn: int | None = None, pace: float = 1.0,
                 drain_s: float = 3.0) -> dict[str, Any]:
    """Replay the archive at ``ref`` through ``graph``; returns a summary with the new archive.

    Args:
        ref: an archive folder, or a store URL of an archive's prefix.
        graph: the graph to run; it must contain a recorder node (the new archive).
        turn: start at this caller turn (1-based; see
            :meth:`~telewire.archive.ArchiveReader.caller_turn_starts`); ``None``: from the start.
        pace: 1.0 real time, 2.0 twice as fast, 0 as fast as possible.
        drain_s: after the last caller audio, how long to wait for the agent to finish.

    Raises:
        ConfigError: the graph has no recorder, or ``turn`` is out of range.
        TelewireError: the archive cannot be read or fetched.
    """
    from telewire.server import TelewireServer
    from telewire.testing.simulator import CallSimulator

    if not graph.nodes_of_type(Recorder):
        raise ConfigError(f"{graph.source}: replay writes a new archive, but the graph has no "
                          "recorder node")
    with tempfile.TemporaryDirectory(prefix="telewire-replay-") as tmp:
        source = await ArchiveReader.fetch(ref, Path(tmp) / "archive")
        from_ms = 0.0
        if turn is not None:
            starts = source.caller_turn_starts()
            if not 1 <= turn <= len(starts):
                raise ConfigError(f"--turn {turn}: archive {ref} has {len(starts)} caller "
                                  f"turn(s) (1..{len(starts)})")
            from_ms = float(starts[turn - 1])
        audio = source.caller_audio(from_ms)
        digits = source.dtmf(from_ms)
        params = dict(source.manifest.get("custom_parameters") or {})
        params.update(replay_of=source.manifest["archive_id"], replay_from_ms=str(from_ms))
    if source.codec != "pcmu" or source.sample_rate != 8000:
        raise ConfigError(f"archive {ref} is {source.codec} at {source.sample_rate} Hz; the call "
                          "simulator plays mu-law 8 kHz only")
    server = TelewireServer(load_settings(host="127.0.0.1", port=0), paced_graph(graph, pace),
                            CarrierRegistry())
    port = await server.start()
    try:
        sim = CallSimulator(f"ws://127.0.0.1:{port}/media/twilio", pace=pace,
                            custom_parameters=params, dtmf=digits, drain_s=drain_s)
        result = await sim.run(audio)
    finally:
        await server.stop(drain_timeout_s=max(drain_s, 5.0))
    record = find_archive(result.stream_sid)
    return {
        "source": ref,
        "source_archive_id": source.manifest["archive_id"],
        "source_events_format": source.events_format,
        "turn": turn,
        "from_ms": from_ms,
        "sent_bytes": result.sent_bytes,
        "dtmf": len(digits),
        "stream_sid": result.stream_sid,
        "archive": record.as_dict() if record is not None else None,
    }


def paced_graph(graph: Graph, pace: float) -> Graph:
    """``graph`` with its carrier-in node's message bucket widened by ``pace`` (unbounded for
    ``0``): a replay faster than real time is not a flood, and must lose no frame."""
    if 0 < pace <= 1:
        return graph
    nodes = dict(graph.nodes)
    for name in graph.nodes_of_type(CarrierIn):
        cfg = nodes[name].config
        rate = cfg.max_messages_per_s * pace if pace else float("inf")
        burst = cfg.message_burst * int(pace) if pace else 2**62
        nodes[name] = replace(nodes[name], config=cfg.model_copy(
            update={"max_messages_per_s": rate, "message_burst": burst}))
    return Graph(nodes, graph.edges, graph.source, graph.envelope)
