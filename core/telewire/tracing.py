"""Tracing: a span tree per call (OpenTelemetry SDK), built from port observers and a few hooks.

Depends on ``telewire.frames``, ``telewire.spanstore`` and OpenTelemetry; the server and the CLI
make a :class:`Tracing`, and realtime providers call the module-level hooks (no-ops off a call).

The tree of one call (one trace per call)::

    call                      telewire.carrier, telewire.call_sid, telewire.stream_sid, …
    ├── model.session         one per provider connection: connect, reconnect, handover
    ├── turn                  from the end of the previous model response to the end of this one
    │   ├── model.response    gen_ai.* attributes, time to first audio
    │   ├── interrupt         source, heard_ms, truncate point (until the carrier cleared)
    │   └── tool_call         gen_ai.tool.name
    ├── store.upload          each attempt to store the call's archive (after the call ended)
    ├── steer                 operator (or graph) steers
    └── frames.caller / frames.agent   per-frame span events (``TELEWIRE_TRACE_FRAMES``)

Spans are derived from frames through port observers wherever a frame says enough; audio ports
are not observed at all when frame tracing is ``off``, and with ``sampled`` an audio frame costs
one counter step. Attributes holding caller content are prefixed ``telewire.content.`` and set only
with ``TELEWIRE_TRACE_CONTENT=true``.
"""

from __future__ import annotations

import os
import time
from contextvars import ContextVar, Token
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from telewire.frames import (AudioFrame, DTMFFrame, EndFrame, ErrorFrame, Frame, InterruptFrame,
                             MarkFrame, StartFrame, SteerFrame, TranscriptFrame, UsageFrame)

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from telewire.graph import Graph, Observer

__all__ = ["CONTENT_PREFIX", "CallTrace", "Tracing", "annotate_call", "current_call",
           "model_session", "response_created", "tool_ended", "tool_started", "upload_ended",
           "upload_started"]

#: the prefix of every attribute that holds caller content (a collector can drop them by it)
CONTENT_PREFIX = "telewire.content."
#: ``sampled``: one audio frame in this many, per port, becomes a span event
SAMPLE_EVERY = 50
#: a direction's frame span is ended (and exported) and a new one started after this many
#: events: a live span holds its events in memory, about 1 KB each, so this bounds what tracing
#: holds per call (1000 cost 3.5 MB of RSS over a 10-minute call at ``sampled``)
SEGMENT_EVENTS = 100
#: end reasons that mark the call span as an error
_ERROR_REASONS = frozenset({"provider_error", "internal_error", "socket_error", "config_error",
                            "provider_closed"})
_CONTENT_CAP = 4096
_TRACER = "telewire"

_current: ContextVar["CallTrace | None"] = ContextVar("telewire_call_trace", default=None)


# ----------------------------------------------------------------------------- hooks


def current_call() -> "CallTrace | None":
    """The traced call the running task belongs to, or ``None``."""
    return _current.get()


def annotate_call(**attributes: Any) -> None:
    """Set attributes on the running call's root span (``telewire.cost_usd=…``); dots in names
    are written as ``__`` (``telewire__cost_usd``). No-op outside a traced call."""
    call = _current.get()
    if call is not None and call.root is not None:
        for key, value in attributes.items():
            call.root.set_attribute(key.replace("__", "."), value)


def model_session(provider: str, model: str, *, reconnects: int = 0, handovers: int = 0) -> None:
    """A provider connection went live (the first, a reconnect or a handover)."""
    call = _current.get()
    if call is not None:
        call.model_session(provider, model, reconnects=reconnects, handovers=handovers)


def response_created(provider: str, model: str, response_id: str) -> None:
    """The provider started a response (``response.created``)."""
    call = _current.get()
    if call is not None:
        call.response_created(provider, model, response_id)


def tool_started(name: str, call_id: str, arguments: str) -> "Span | None":
    """A model's tool call starts; pass what it returns to :func:`tool_ended`."""
    call = _current.get()
    return call.tool_started(name, call_id, arguments) if call is not None else None


def upload_started(archive_id: str, attempt: int) -> "Span | None":
    """The call's archive upload starts (an attempt); pass what it returns to
    :func:`upload_ended`. The call may have ended already: the span is still its child."""
    call = _current.get()
    return call.upload_started(archive_id, attempt) if call is not None else None


def upload_ended(span: "Span | None", status: str | None, error: str = "") -> None:
    """``status``: ``stored``, ``failed`` (with ``error``), or ``None`` (another process has it)."""
    if span is None:
        return
    from telewire.redact import mask_text

    span.set_attribute("telewire.store.status", status or "elsewhere")
    if error:
        span.set_status(Status(StatusCode.ERROR, mask_text(error)[:300]))
    span.end()


def tool_ended(span: "Span | None", output: str) -> None:
    if span is not None:
        call = _current.get()
        if call is not None and call.content:
            span.set_attribute(CONTENT_PREFIX + "tool.output", output[:_CONTENT_CAP])
        span.end()


# ----------------------------------------------------------------------------- processors


class _CountingExporter(SpanExporter):
    """Counts the spans the batch worker has taken off the queue (exported or failed)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.taken = 0

    def export(self, spans: Any) -> SpanExportResult:
        try:
            return self.inner.export(spans)
        finally:
            self.taken += len(spans)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class BoundedBatchProcessor(SpanProcessor):
    """The SDK's :class:`BatchSpanProcessor` (export on its worker thread), admitting at most
    ``max_queue_size`` spans not yet taken by the worker: beyond that a finished span is dropped
    and counted in :attr:`dropped`. ``on_end`` never blocks and never waits for the exporter."""

    def __init__(self, exporter: SpanExporter, *, max_queue_size: int = 4096,
                 schedule_delay_millis: float = 1000, max_export_batch_size: int = 512) -> None:
        self.exporter = exporter
        self._counted = _CountingExporter(exporter)
        self._batch = BatchSpanProcessor(self._counted, max_queue_size=max_queue_size,
                                         schedule_delay_millis=schedule_delay_millis,
                                         max_export_batch_size=min(max_export_batch_size,
                                                                   max_queue_size))
        self.limit = max_queue_size
        self.submitted = 0
        self.dropped = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if self.submitted - self._counted.taken >= self.limit:
            self.dropped += 1
            return
        self.submitted += 1
        self._batch.on_end(span)

    def shutdown(self) -> None:
        self._batch.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)


def _otlp_configured(env: Mapping[str, str]) -> bool:
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _mask_number(value: str) -> str:
    """``+15551234567`` -> ``+1*******67``: enough to tell calls apart, not to dial."""
    v = value.strip()
    if len(v) <= 4:
        return "*" * len(v)
    return v[:2] + "*" * (len(v) - 4) + v[-2:]


# ----------------------------------------------------------------------------- tracing


class Tracing:
    """The process's tracer provider, its exporters and their drop counts; one per server.

    Args:
        frames: per-frame span events: ``off``, ``sampled`` or ``all``.
        content: put caller content on spans (``telewire.content.*``).
        spans_db: the SQLite span store (``None``: none).
        otlp: export over OTLP/HTTP; ``None`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
            ``…_TRACES_ENDPOINT``) is set. The exporter reads the standard ``OTEL_*`` variables.
        exporters: more exporters (tests), each behind its own bounded batch processor.
        max_queue_size / schedule_delay_millis: of every batch processor.
    """

    def __init__(self, *, frames: Literal["off", "sampled", "all"] = "sampled",
                 content: bool = False, spans_db: str | Path | None = None,
                 otlp: bool | None = None, exporters: tuple[SpanExporter, ...] = (),
                 max_queue_size: int = 4096, schedule_delay_millis: float = 1000,
                 sample_every: int = SAMPLE_EVERY) -> None:
        if frames not in ("off", "sampled", "all"):
            raise ValueError(f"frames must be off, sampled or all, not {frames!r}")
        from telewire import __version__

        self.frames = frames
        self.content = content
        self.sample_every = max(1, sample_every)
        attrs: dict[str, Any] = {"service.version": __version__}
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attrs["service.name"] = "telewire"
        self.provider = TracerProvider(resource=Resource.create(attrs),
                                       span_limits=SpanLimits(max_events=SEGMENT_EVENTS + 16))
        self.processors: list[BoundedBatchProcessor] = []
        self.spans_db = Path(spans_db) if spans_db is not None else None
        self.otlp = _otlp_configured(os.environ) if otlp is None else otlp
        chosen: list[SpanExporter] = list(exporters)
        if self.spans_db is not None:
            from telewire.spanstore import SQLiteSpanExporter

            chosen.append(SQLiteSpanExporter(self.spans_db))
        if self.otlp:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter)
            except ImportError as exc:
                from telewire.errors import ConfigError

                raise ConfigError("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP/HTTP exporter "
                                  "is not installed: pip install "
                                  f"opentelemetry-exporter-otlp-proto-http ({exc})") from None
            chosen.append(OTLPSpanExporter())
        for exporter in chosen:
            processor = BoundedBatchProcessor(exporter, max_queue_size=max_queue_size,
                                              schedule_delay_millis=schedule_delay_millis)
            self.processors.append(processor)
            self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer(_TRACER, __version__)

    @classmethod
    def from_settings(cls, settings: Any) -> "Tracing":
        """The tracing a :class:`~telewire.settings.ServerSettings` asks for (``tracing = off``:
        no exporter at all, and no frame events)."""
        if getattr(settings, "tracing", "on") == "off":
            return cls(frames="off", content=False, spans_db=None, otlp=False)
        return cls(frames=settings.trace_frames, content=settings.trace_content,
                   spans_db=settings.spans_db)

    @property
    def dropped_spans(self) -> int:
        """Spans dropped because an exporter's queue was full (summed over exporters)."""
        return sum(p.dropped for p in self.processors)

    def where(self) -> str:
        """Where spans go, for a person: ``SQLite telewire-spans.db and OTLP http://…``."""
        parts = []
        if self.spans_db is not None:
            parts.append(f"SQLite {self.spans_db}")
        if self.otlp:
            endpoint = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
            parts.append(f"OTLP/HTTP {endpoint.split('?', 1)[0]}")
        return " and ".join(parts) or "nowhere (no exporter)"

    def new_call(self) -> "CallTrace":
        return CallTrace(self)

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Export what is queued and stop the exporters' threads."""
        self.provider.shutdown()


class CallTrace:
    """The spans of one call. Made by the server per media socket; :meth:`start` at admission,
    :meth:`end` once the call has ended. Its observers are the only per-frame code."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self.tracer = tracing.tracer
        self.content = tracing.content
        self.frames_level = tracing.frames
        self.root: Span | None = None
        self._root_ctx: Any = None
        self._token: Token[CallTrace | None] | None = None
        self._dir: dict[str, Span] = {}
        self._dir_events: dict[str, int] = {}
        self._dir_segments: dict[str, int] = {}
        self._session: Span | None = None
        self._session_counts = (0, 0)
        self._sessions = 0
        self._turn: Span | None = None
        self._turn_ctx: Any = None
        self._turn_answered = False
        self._turns = 0
        self._response: Span | None = None
        self._response_id = ""
        self._response_at = 0.0
        self._awaiting_audio = False
        self._responses = 0
        self._open_interrupts: dict[str, tuple[Span, float]] = {}
        self._cleared_at: dict[str, float] = {}
        self._interrupts = 0
        self._tokens_in = 0
        self._tokens_out = 0
        self._tokens_cached = 0
        self._transcripts: dict[str, list[str]] = {}
        self._ended = False

    # -- wiring ---------------------------------------------------------------------------------

    def observers(self, graph: "Graph", base: Mapping[tuple[str, str], list["Observer"]]
                  ) -> dict[tuple[str, str], list["Observer"]]:
        """``base`` plus this call's observers on every output port of ``graph``. Ports that
        carry audio get no observer when frame tracing is ``off``."""
        merged = {k: list(v) for k, v in base.items()}
        for name, spec in graph.nodes.items():
            side = "caller" if not spec.cls.inputs else "agent"
            for port, types in spec.cls.outputs.items():
                if AudioFrame in types:
                    ob = self._audio_observer(side, only_audio=len(types) == 1)
                    if ob is None:
                        continue
                else:
                    ob = self._frame_observer(side)
                merged.setdefault((name, port), []).append(ob)
        return merged

    def _frame_observer(self, side: str) -> "Observer":
        def frame_seen(node: str, port: str, frame: Frame) -> None:
            if self.root is None or self._ended:
                return
            if self.frames_level != "off":
                self._frame_event(side, node, port, frame)
            self._on_frame(frame)
        return frame_seen

    def _audio_observer(self, side: str, *, only_audio: bool) -> "Observer | None":
        level = self.frames_level
        other = self._frame_observer(side)
        agent = side == "agent"
        every = self.tracing.sample_every
        event = self._frame_event
        if level == "off":
            if only_audio:
                return None

            def not_audio(node: str, port: str, frame: Frame) -> None:
                if type(frame) is not AudioFrame:
                    other(node, port, frame)
            return not_audio
        n = 0

        def audio_seen(node: str, port: str, frame: Frame) -> None:
            nonlocal n
            if type(frame) is not AudioFrame:
                other(node, port, frame)
                return
            if agent and self._awaiting_audio:
                self._first_audio()
            n += 1
            if n >= every:
                n = 0
                if self.root is not None and not self._ended:
                    event(side, node, port, frame)

        if level == "all":
            def audio_all(node: str, port: str, frame: Frame) -> None:
                if type(frame) is not AudioFrame:
                    other(node, port, frame)
                    return
                if agent and self._awaiting_audio:
                    self._first_audio()
                if self.root is not None and not self._ended:
                    event(side, node, port, frame)
            return audio_all
        return audio_seen

    # -- call -----------------------------------------------------------------------------------

    def start(self, frame: StartFrame) -> None:
        """The call was admitted: open its root span and make it this task's traced call (the
        provider tasks the call starts inherit it)."""
        if self.root is not None:
            return
        attrs: dict[str, Any] = {"telewire.carrier": frame.carrier,
                                 "telewire.stream_sid": frame.stream_id,
                                 "telewire.media.codec": frame.media_format.codec,
                                 "telewire.media.sample_rate": frame.media_format.sample_rate}
        if frame.call_id:
            attrs["telewire.call_sid"] = frame.call_id
        if frame.account_id:
            attrs["telewire.account_id"] = frame.account_id
        params = frame.custom_parameters
        for key in ("from", "to"):
            value = params.get(key) or params.get(key.capitalize())
            if value:
                attrs[f"telewire.{key}"] = _mask_number(value)
        self.root = self.tracer.start_span("call", kind=SpanKind.SERVER, attributes=attrs)
        self._root_ctx = trace.set_span_in_context(self.root)
        self._token = _current.set(self)
        self._open_turn()

    def enter(self) -> "Token[CallTrace | None]":
        """Make this the running task's traced call (an operator request, a carrier webhook
        acting on the call), so that what it starts is traced; undo with :meth:`leave`."""
        return _current.set(self)

    @staticmethod
    def leave(token: "Token[CallTrace | None] | None") -> None:
        if token is not None:
            _current.reset(token)

    def end(self, frame: EndFrame | None) -> None:
        """End every open span, then the root (with the end reason and the call's counts)."""
        if self.root is None or self._ended:
            self._reset()
            return
        self._ended = True
        if self._response is not None:
            self._response.set_attribute("telewire.response.completed", False)
            self._response.end()
            self._response = None
        self._close_turn()
        if self._session is not None:
            self._session.end()
            self._session = None
        for side, span in self._dir.items():
            span.set_attribute("telewire.frames.events", self._dir_events.get(side, 0))
            span.end()
        root = self.root
        reason = frame.reason if frame is not None else "unknown"
        root.set_attribute("telewire.end_reason", reason)
        if frame is not None and frame.detail:
            root.set_attribute("telewire.end_detail", frame.detail[:300])
        root.set_attribute("telewire.turns", self._responses)
        root.set_attribute("telewire.interrupts", self._interrupts)
        root.set_attribute("telewire.model.sessions", self._sessions)
        if self._tokens_in or self._tokens_out:
            root.set_attribute("gen_ai.usage.input_tokens", self._tokens_in)
            root.set_attribute("gen_ai.usage.output_tokens", self._tokens_out)
            root.set_attribute("gen_ai.usage.cache_read.input_tokens", self._tokens_cached)
        if reason in _ERROR_REASONS:
            root.set_status(Status(StatusCode.ERROR, reason))
        root.end()
        self._reset()

    def _reset(self) -> None:
        if self._token is not None:
            try:
                _current.reset(self._token)
            except ValueError:  # ended from another context: nothing of ours is set there
                pass
            self._token = None

    def _child(self, name: str, attrs: dict[str, Any] | None = None, *, under_turn: bool = False
               ) -> "Span":
        ctx = self._turn_ctx if under_turn and self._turn is not None else self._root_ctx
        return self.tracer.start_span(name, context=ctx, attributes=attrs)

    # -- turns and responses --------------------------------------------------------------------

    def _open_turn(self) -> None:
        self._turns += 1
        self._turn = self._child("turn", {"telewire.turn.index": self._turns})
        self._turn_ctx = trace.set_span_in_context(self._turn)
        self._turn_answered = False

    def _close_turn(self) -> None:
        for span, _ in self._open_interrupts.values():  # nothing was playing: nothing heard
            span.end()
        self._open_interrupts.clear()
        if self._turn is None:
            return
        turn = self._turn
        turn.set_attribute("telewire.turn.answered", self._turn_answered)
        if self.content:
            for role, texts in self._transcripts.items():
                turn.set_attribute(f"{CONTENT_PREFIX}transcript.{role}",
                                   " ".join(texts)[:_CONTENT_CAP])
        self._transcripts = {}
        turn.end()
        self._turn = None
        self._turn_ctx = None

    def model_session(self, provider: str, model: str, *, reconnects: int, handovers: int) -> None:
        if self.root is None or self._ended:
            return
        last_r, last_h = self._session_counts
        kind = ("connect" if not self._sessions else "reconnect" if reconnects > last_r
                else "handover" if handovers > last_h else "reconnect")
        self._session_counts = (reconnects, handovers)
        if self._session is not None:
            self._session.end()
        self._sessions += 1
        self._session = self._child("model.session", {
            "gen_ai.system": provider, "gen_ai.request.model": model,
            "telewire.session.kind": kind, "telewire.session.index": self._sessions})

    def response_created(self, provider: str, model: str, response_id: str) -> None:
        if self.root is None or self._ended:
            return
        if self._response is not None:  # a response.done we never saw usage for
            self._response.set_attribute("telewire.response.completed", False)
            self._response.end()
        self._response = self._child("model.response", {
            "gen_ai.system": provider, "gen_ai.request.model": model,
            "gen_ai.operation.name": "realtime", "gen_ai.response.id": response_id,
            "telewire.session.index": self._sessions}, under_turn=True)
        self._response_id = response_id
        self._response_at = time.monotonic()
        self._awaiting_audio = True

    def _first_audio(self) -> None:
        self._awaiting_audio = False
        if self._response is not None:
            self._response.set_attribute(
                "telewire.response.time_to_first_audio_ms",
                round((time.monotonic() - self._response_at) * 1000, 1))

    def _usage(self, frame: UsageFrame) -> None:
        tokens_in = frame.input_text_tokens + frame.input_audio_tokens
        tokens_out = frame.output_text_tokens + frame.output_audio_tokens
        self._tokens_in += tokens_in
        self._tokens_out += tokens_out
        self._tokens_cached += frame.input_cached_tokens
        attrs = {"gen_ai.usage.input_tokens": tokens_in,
                 "gen_ai.usage.output_tokens": tokens_out,
                 "gen_ai.usage.cache_read.input_tokens": frame.input_cached_tokens,
                 "telewire.usage.input_audio_tokens": frame.input_audio_tokens,
                 "telewire.usage.input_text_tokens": frame.input_text_tokens,
                 "telewire.usage.output_audio_tokens": frame.output_audio_tokens,
                 "telewire.usage.output_text_tokens": frame.output_text_tokens}
        span = self._response
        if span is None or (frame.response_id and self._response_id
                            and frame.response_id != self._response_id):
            span = self._child("model.response", {
                "gen_ai.system": frame.provider, "gen_ai.request.model": frame.model,
                "gen_ai.response.id": frame.response_id or ""}, under_turn=True)
        cost = getattr(frame, "cost_usd", None)
        if cost is not None:
            attrs["telewire.cost_usd"] = float(cost)
        seconds = getattr(frame, "seconds", 0.0)
        if seconds:
            attrs["telewire.usage.seconds"] = float(seconds)
        call_cost = getattr(frame, "call_cost_usd", None)
        if call_cost is not None and self.root is not None:
            self.root.set_attribute("telewire.cost_usd", float(call_cost))
        span.set_attributes(attrs)
        span.set_attribute("telewire.response.completed", True)
        span.end()
        self._response = None
        self._awaiting_audio = False
        self._responses += 1
        self._turn_answered = True
        self._close_turn()
        self._open_turn()

    # -- what frames say ------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        kind = type(frame)
        if kind is InterruptFrame:
            self._on_interrupt(frame)  # type: ignore[arg-type]
        elif kind is UsageFrame:
            self._usage(frame)  # type: ignore[arg-type]
        elif kind is TranscriptFrame:
            f: TranscriptFrame = frame  # type: ignore[assignment]
            if f.final and self.content:
                self._transcripts.setdefault(f.role, []).append(f.text)
        elif kind is SteerFrame:
            self.steer(frame, source="graph")  # type: ignore[arg-type]
        elif kind is ErrorFrame:
            e: ErrorFrame = frame  # type: ignore[assignment]
            assert self.root is not None
            self.root.add_event("error", {"telewire.error.source": e.source,
                                          "telewire.error.message": e.message[:500],
                                          "telewire.error.fatal": e.fatal})
            if e.fatal:
                self.root.set_status(Status(StatusCode.ERROR, e.message[:200]))

    def _on_interrupt(self, frame: InterruptFrame) -> None:
        """An interrupt opens a span (one per source within 2 s); the carrier side passes it
        on once it has cleared (``heard_ms``, ``item_id``), which ends it. One nobody answers
        (nothing was playing) ends with its turn. Observers run after a frame's targets, so
        the cleared frame of a carrier-side interrupt is seen before the interrupt itself: an
        interrupt of a source cleared in the last 2 s is that same one."""
        now = time.monotonic()
        source = frame.source
        opened = self._open_interrupts.get(source)
        if frame.heard_ms is None and frame.item_id is None:
            if now - self._cleared_at.get(source, -10.0) < 2.0:
                self._cleared_at.pop(source, None)
                return
            if opened is not None:
                if now - opened[1] < 2.0:
                    opened[0].add_event("interrupt.again")
                    return
                opened[0].end()
            self._interrupts += 1
            span = self._child("interrupt", {"telewire.interrupt.source": source,
                                             "telewire.interrupt.reason": frame.reason},
                               under_turn=True)
            self._open_interrupts[source] = (span, now)
            return
        # the carrier side cleared its buffer: what was heard, where the model is truncated
        if opened is not None:
            span = self._open_interrupts.pop(source)[0]
        else:
            self._interrupts += 1
            span = self._child("interrupt", {"telewire.interrupt.source": source,
                                             "telewire.interrupt.reason": frame.reason},
                               under_turn=True)
            self._cleared_at[source] = now
        span.set_attribute("telewire.interrupt.cleared", True)
        if frame.heard_ms is not None:
            span.set_attribute("telewire.interrupt.heard_ms", round(frame.heard_ms, 1))
            span.set_attribute("telewire.interrupt.truncate_ms", int(frame.heard_ms))
        if frame.item_id:
            span.set_attribute("telewire.interrupt.item_id", frame.item_id)
        span.end()

    def steer(self, frame: SteerFrame, *, source: str) -> None:
        """A steer reached the agent (from an operator or a node)."""
        if self.root is None or self._ended:
            return
        attrs: dict[str, Any] = {"telewire.steer.source": source}
        if frame.voice:
            attrs["telewire.steer.voice"] = frame.voice
        if frame.instructions is not None:
            attrs["telewire.steer.instructions_chars"] = len(frame.instructions)
            if self.content:
                attrs[CONTENT_PREFIX + "steer.instructions"] = frame.instructions[:_CONTENT_CAP]
        self._child("steer", attrs).end()

    def operator(self, action: str) -> None:
        """An operator acted on the call (``interrupt``, ``hangup``; steers: :meth:`steer`)."""
        if self.root is not None and not self._ended:
            self.root.add_event(f"operator.{action}")

    def upload_started(self, archive_id: str, attempt: int) -> "Span | None":
        if self.root is None:
            return None
        return self.tracer.start_span("store.upload", context=self._root_ctx, attributes={
            "telewire.store.archive_id": archive_id, "telewire.store.attempt": attempt})

    def tool_started(self, name: str, call_id: str, arguments: str) -> "Span | None":
        if self.root is None or self._ended:
            return None
        attrs: dict[str, Any] = {"gen_ai.operation.name": "execute_tool",
                                 "gen_ai.tool.name": name, "gen_ai.tool.call.id": call_id}
        if self.content:
            attrs[CONTENT_PREFIX + "tool.arguments"] = arguments[:_CONTENT_CAP]
        return self._child("tool_call", attrs, under_turn=True)

    # -- per-frame events -----------------------------------------------------------------------

    def _frame_event(self, side: str, node: str, port: str, frame: Frame) -> None:
        span = self._dir.get(side)
        count = self._dir_events.get(side, 0)
        if span is None or count >= SEGMENT_EVENTS:
            segment = self._dir_segments.get(side, 0) + 1
            self._dir_segments[side] = segment
            if span is not None:
                span.set_attribute("telewire.frames.events", count)
                span.end()
            span = self._child(f"frames.{side}", {"telewire.frames.segment": segment,
                                                  "telewire.frames.level": self.frames_level})
            self._dir[side] = span
            count = 0
        self._dir_events[side] = count + 1
        attrs: dict[str, Any] = {"telewire.port": f"{node}.{port}"}
        kind = type(frame)
        if kind is AudioFrame:
            a: AudioFrame = frame  # type: ignore[assignment]
            attrs["telewire.audio.bytes"] = a.byte_length
            attrs["telewire.audio.track"] = a.track
            if a.sequence is not None:
                attrs["telewire.audio.sequence"] = a.sequence
            if a.item_id:
                attrs["telewire.audio.item_id"] = a.item_id
        elif kind is DTMFFrame:
            attrs["telewire.dtmf.digit"] = frame.digit  # type: ignore[attr-defined]
        elif kind is MarkFrame:
            attrs["telewire.mark"] = frame.name  # type: ignore[attr-defined]
        elif kind is InterruptFrame:
            attrs["telewire.interrupt.source"] = frame.source  # type: ignore[attr-defined]
        elif kind is TranscriptFrame:
            attrs["telewire.transcript.role"] = frame.role  # type: ignore[attr-defined]
            attrs["telewire.transcript.final"] = frame.final  # type: ignore[attr-defined]
        span.add_event(frame.kind, attrs)


#: what a server takes: builds one :class:`CallTrace` per call
CallTraceFactory = Callable[[], CallTrace]
