"""The embedded span store: an OpenTelemetry span exporter into a SQLite table, and its readers.

Depends on the standard library and the OpenTelemetry SDK's exporter interface; ``tracing`` and
the CLI (``telewire calls`` / ``telewire trace``) depend on it.

One row per span in ``workflow_spans``. The exporter runs on the batch span processor's worker
thread, never on the event loop. ``call_sid``/``stream_sid`` are columns of every span of a call:
the root span carries them as attributes, and the exporter copies them to the call's other spans
(those written before the root are updated when it arrives).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["SCHEMA", "SQLiteSpanExporter", "SpanRow", "call_rows", "open_db", "recent_calls",
           "render_tree"]

#: The table and its indexes. Times are Unix nanoseconds; ids are lower-case hex.
SCHEMA = """
CREATE TABLE IF NOT EXISTS workflow_spans (
    trace_id   TEXT NOT NULL,
    span_id    TEXT NOT NULL,
    parent_id  TEXT,
    name       TEXT NOT NULL,
    start_ns   INTEGER NOT NULL,
    end_ns     INTEGER NOT NULL,
    status     TEXT NOT NULL,
    attributes TEXT NOT NULL,
    events     TEXT NOT NULL DEFAULT '[]',
    call_sid   TEXT,
    stream_sid TEXT,
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS workflow_spans_call_sid ON workflow_spans (call_sid);
CREATE INDEX IF NOT EXISTS workflow_spans_stream_sid ON workflow_spans (stream_sid);
CREATE INDEX IF NOT EXISTS workflow_spans_roots ON workflow_spans (start_ns) WHERE parent_id IS NULL;
"""

#: the root span's attributes that name the call
CALL_SID, STREAM_SID = "telewire.call_sid", "telewire.stream_sid"
_INSERT = ("INSERT OR REPLACE INTO workflow_spans (trace_id, span_id, parent_id, name, start_ns, "
           "end_ns, status, attributes, events, call_sid, stream_sid) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_ADOPT = ("UPDATE workflow_spans SET call_sid = ?, stream_sid = ? "
          "WHERE trace_id = ? AND call_sid IS NULL AND stream_sid IS NULL")


#: the exporter's SQLite page cache, in KiB. It only appends and updates recent rows, so a small
#: cache costs it nothing, while SQLite's default (2 MiB) was most of a server's RSS growth over
#: a long traced call (3.7 MB over 30 minutes, 4.2 MB over 90: bench/recorder_rss.py)
WRITER_CACHE_KIB = 256


def open_db(path: str | Path, *, cache_kib: int | None = None) -> sqlite3.Connection:
    """Open (creating) the span database with its schema; WAL so readers never block writers.
    ``cache_kib`` caps SQLite's page cache (default: SQLite's own)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    if cache_kib is not None:
        db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    db.executescript(SCHEMA)
    return db


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _row(span: "ReadableSpan", ids: tuple[str | None, str | None]) -> tuple[Any, ...]:
    ctx = span.context
    parent = span.parent
    events = [{"name": e.name, "t_ns": e.timestamp,
               "attributes": {k: _jsonable(v) for k, v in (e.attributes or {}).items()}}
              for e in span.events]
    return (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}",
            f"{parent.span_id:016x}" if parent is not None else None,
            span.name, span.start_time or 0, span.end_time or span.start_time or 0,
            span.status.status_code.name,
            json.dumps({k: _jsonable(v) for k, v in (span.attributes or {}).items()},
                       separators=(",", ":"), default=str),
            json.dumps(events, separators=(",", ":"), default=str), ids[0], ids[1])


class SQLiteSpanExporter(SpanExporter):
    """Writes finished spans into ``workflow_spans`` (one transaction per batch).

    Args:
        path: the database file (created with its folder).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = open_db(self.path, cache_kib=WRITER_CACHE_KIB)
        self._lock = threading.Lock()
        self._calls: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        self.failures = 0

    def export(self, spans: Sequence["ReadableSpan"]) -> SpanExportResult:
        rows, adopt = [], []
        for span in spans:
            trace_id = f"{span.context.trace_id:032x}"
            attrs = span.attributes or {}
            if span.parent is None and (CALL_SID in attrs or STREAM_SID in attrs):
                ids = (str(attrs.get(CALL_SID) or "") or None, str(attrs.get(STREAM_SID) or "") or None)
                self._calls[trace_id] = ids
                if len(self._calls) > 4096:
                    self._calls.popitem(last=False)
                adopt.append((*ids, trace_id))
            else:
                ids = self._calls.get(trace_id, (None, None))
            rows.append(_row(span, ids))
        try:
            with self._lock:
                self._db.execute("BEGIN")
                self._db.executemany(_INSERT, rows)
                self._db.executemany(_ADOPT, adopt)
                self._db.execute("COMMIT")
        except sqlite3.Error:
            self.failures += 1
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._db.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


# ------------------------------------------------------------------------------------- readers


@dataclass
class SpanRow:
    """One row of ``workflow_spans``, attributes and events decoded."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    call_sid: str | None
    stream_sid: str | None
    children: list["SpanRow"] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


_COLUMNS = ("trace_id, span_id, parent_id, name, start_ns, end_ns, status, attributes, events, "
            "call_sid, stream_sid")


def _rows(cursor: Iterable[tuple[Any, ...]]) -> list[SpanRow]:
    return [SpanRow(*r[:7], json.loads(r[7]), json.loads(r[8]), r[9], r[10]) for r in cursor]


def recent_calls(db: sqlite3.Connection, *, since_ns: int | None = None,
                 limit: int = 50) -> list[dict[str, Any]]:
    """The most recent calls (root spans), newest first, as plain dicts."""
    rows = _rows(db.execute(
        f"SELECT {_COLUMNS} FROM workflow_spans WHERE parent_id IS NULL AND name = 'call' "
        "AND start_ns >= ? ORDER BY start_ns DESC LIMIT ?", (since_ns or 0, limit)))
    out = []
    for r in rows:
        a = r.attributes
        out.append({
            "call_sid": r.call_sid, "stream_sid": r.stream_sid,
            "carrier": a.get("telewire.carrier"), "started_ns": r.start_ns,
            "duration_s": round(r.duration_ms / 1000, 3),
            "turns": a.get("telewire.turns"), "interrupts": a.get("telewire.interrupts"),
            "end_reason": a.get("telewire.end_reason"), "cost_usd": a.get("telewire.cost_usd"),
            "trace_id": r.trace_id, "status": r.status,
        })
    return out


def call_rows(db: sqlite3.Connection, call_id: str) -> list[list[SpanRow]]:
    """Every trace of the call ``call_id`` (a call sid or a stream sid), each as its roots with
    their ``children`` filled, oldest trace first."""
    rows = _rows(db.execute(
        f"SELECT {_COLUMNS} FROM workflow_spans WHERE call_sid = ? OR stream_sid = ? "
        "ORDER BY start_ns", (call_id, call_id)))
    traces: dict[str, list[SpanRow]] = {}
    for r in rows:
        traces.setdefault(r.trace_id, []).append(r)
    out = []
    for spans in traces.values():
        by_id = {s.span_id: s for s in spans}
        roots = []
        for s in spans:
            parent = by_id.get(s.parent_id) if s.parent_id else None
            (parent.children if parent is not None else roots).append(s)
        out.append(roots)
    return out


#: attributes shown beside a span's name in ``telewire trace`` (in this order)
_SHOWN = ("telewire.carrier", "telewire.call_sid", "telewire.stream_sid", "telewire.from",
          "telewire.to", "telewire.end_reason", "telewire.cost_usd", "telewire.session.kind",
          "gen_ai.system", "gen_ai.request.model", "gen_ai.response.id",
          "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
          "telewire.response.time_to_first_audio_ms", "telewire.interrupt.source",
          "telewire.interrupt.heard_ms", "telewire.interrupt.truncate_ms",
          "telewire.steer.source", "telewire.steer.voice", "gen_ai.tool.name",
          "telewire.store", "telewire.frames.events", "telewire.turn.index")


def _short(key: str) -> str:
    for prefix in ("telewire.", "gen_ai."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def render_tree(roots: list[SpanRow]) -> str:
    """The span tree as an indented timeline: offset from the call's start, duration, name and
    the key attributes of each span."""
    if not roots:
        return ""
    t0 = min(r.start_ns for r in roots)
    lines: list[str] = []

    def walk(span: SpanRow, depth: int) -> None:
        shown = [f"{_short(k)}={span.attributes[k]}" for k in _SHOWN if k in span.attributes]
        if span.status == "ERROR":
            shown.append("status=ERROR")
        offset = (span.start_ns - t0) / 1e9
        lines.append(f"{offset:+9.3f}s {span.duration_ms:>10.1f} ms  {'  ' * depth}{span.name}"
                     + (f"  [{', '.join(shown)}]" if shown else ""))
        for child in sorted(span.children, key=lambda c: c.start_ns):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda r: r.start_ns):
        walk(root, 0)
    return "\n".join(lines)
