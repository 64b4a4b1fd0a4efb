"""The ``recorder`` node: archives every call's audio, transcript and event log when it ends.

Depends on ``telewire.nodes.base``, ``telewire.frames``, ``telewire.timeline``, ``telewire.archive``
and ``telewire.stores``.

It has no ports: it observes every frame leaving every port of the graph (``observes_all``).
Caller audio (frames leaving a ``carrier_in`` node's ``audio`` port) is written to the left
track at the carrier's timestamps, as far as the call's wall-clock time allows (see
:class:`~telewire.timeline.CallerClock`); agent audio (frames on any port wired to a
``carrier_out`` node's ``audio_in``) to the right track where
:class:`~telewire.timeline.AgentPlayout` says the carrier played it; interrupts wired to
``carrier_out.interrupt_in`` cut it; ``played`` marks confirm it. Everything else is appended
to the event log as it happens; audio is logged by reference, not repeated: one record per run
of contiguous audio on one channel, giving its place in the WAV (channel, byte offset, length;
``EVENTS_FORMAT`` 2, see ``docs/recording.md``). Files open in a worker thread at call start;
what is observed meanwhile waits in memory, in order (bounded). Memory per call is a few write
buffers, whatever the call's length; long silences are written by a worker thread, never on the
event loop; on ``EndFrame``
the archive is assembled on disk and uploaded in the background by the spool's
:class:`~telewire.archive.Uploader`, which a starting server also resumes
(:meth:`Recorder.on_server_start`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import fields
from pathlib import Path
from time import monotonic as _monotonic
from typing import IO, Any, ClassVar, Mapping

from pydantic import Field, field_validator

from telewire.archive import (
    AGENT_TRACK,
    CALL_META,
    CALLER_TRACK,
    EVENTS,
    EVENTS_FORMAT,
    SILENCE,
    TrackFile,
    Uploader,
    write_json,
    archive_key,
    uploader_for,
)
from telewire.cost import call_cost, total_usd
from telewire.errors import ConfigError, TelewireError
from telewire.frames import (
    AudioFrame,
    EndFrame,
    Frame,
    InterruptFrame,
    MarkFrame,
    MediaFormat,
    StartFrame,
    TranscriptFrame,
    bytes_per_ms,
)
from telewire.nodes.base import Node, NodeConfig
from telewire.stores import open_store, safe_segment
from telewire.timeline import AgentPlayout, CallerClock, TranscriptBuilder

__all__ = ["Recorder", "RecorderConfig"]

#: An audio run record is written at least once per this much audio of its channel, so a process
#: that dies mid-call leaves the event log at most about this far behind its tracks.
MAX_RUN_MS = 1000
#: Bytes of audio and event lines kept in memory, in order, while the files of a starting call
#: are being opened in a worker thread; what comes beyond is dropped and counted
#: (``frames_dropped``). Opening takes milliseconds; this is a minute of a real call's audio.
MAX_EARLY_BYTES = 1 << 20


class RecorderConfig(NodeConfig):
    """``[nodes.recorder.config]``.

    Attributes:
        store: where archives go: ``file://PATH`` or ``s3://bucket/prefix`` (or any scheme a
            ``telewire.stores`` plugin adds). Relative paths are taken from the working
            directory when the graph is loaded.
        spool_dir: local folder where calls are recorded and archives wait until the store has
            them (kept across restarts; ``telewire archive status|flush`` read it).
        events: write the event log (``events.jsonl``); off leaves the WAV and transcript.
        max_gap_ms: a caller timestamp further ahead than this is not believed and the audio is
            placed in arrival order (a broken clock would otherwise mean gigabytes of silence).
        clock_slack_ms: how far a caller timestamp may run ahead of the call's wall-clock time
            (monotonic, since the start event); one further ahead is clamped to the wall clock,
            so timestamps can never make a recording longer than the call plus this.
        buffer_bytes: write buffer of each spool file (three per call).
        retry_initial_s: first wait before retrying a failed upload; doubles each time.
        retry_max_s: longest wait between upload retries.
    """

    store: str = "file://./recordings"
    spool_dir: str = "./telewire-spool"
    events: bool = True
    max_gap_ms: int = Field(default=600_000, gt=0)
    clock_slack_ms: int = Field(default=2000, ge=0)
    buffer_bytes: int = Field(default=32_768, ge=4096)
    retry_initial_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        try:
            store = open_store(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if store.scheme == "file":  # pin relative folders to where the graph was loaded
            return "file://" + str(store.root)  # type: ignore[attr-defined]
        return v

    @field_validator("spool_dir")
    @classmethod
    def _spool(cls, v: str) -> str:
        if not v:
            raise ValueError("must name a folder")
        return str(Path(v).expanduser().resolve())


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        import base64

        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, MediaFormat):
        return {"codec": value.codec, "sample_rate": value.sample_rate,
                "channels": value.channels}
    return value


def frame_record(frame: Frame) -> dict[str, Any]:
    """A frame as a JSON-able dict: ``kind`` plus its fields (bytes payloads as base64, flagged
    by ``"payload_encoding": "base64"``)."""
    out: dict[str, Any] = {"kind": frame.kind}
    for f in fields(frame):  # type: ignore[arg-type]
        if f.metadata.get("record", True):  # process-local values (a monotonic time) are not
            out[f.name] = _jsonable(getattr(frame, f.name))
    if isinstance(frame, AudioFrame) and isinstance(frame.payload, bytes):
        out["payload_encoding"] = "base64"
    return out


class _Run:
    """Contiguous audio of one channel, logged as one record: frames of ``frame_bytes`` each from
    one port and item, each starting where the previous ended in the WAV, with consecutive
    carrier timestamps and sequence numbers (or none). Every frame's place, timestamp and
    sequence number follow from the first's, so the record loses nothing but arrival times."""

    __slots__ = ("key", "channel", "t", "at", "end", "frames", "frame_bytes", "track",
                 "item_id", "timestamp_ms", "sequence", "next_ts", "next_seq", "frame_ms")

    def __init__(self, key: tuple[str, str], channel: str, t: int, at: int, nbytes: int,
                 frame_ms: float, frame: AudioFrame) -> None:
        self.key, self.channel, self.t = key, channel, t
        self.at, self.end, self.frames, self.frame_bytes = at, at + nbytes, 1, nbytes
        self.track, self.item_id = frame.track, frame.item_id
        self.timestamp_ms, self.sequence = frame.timestamp_ms, frame.sequence
        self.frame_ms = frame_ms
        self.next_ts = None if frame.timestamp_ms is None else frame.timestamp_ms + frame_ms
        self.next_seq = None if frame.sequence is None else frame.sequence + 1


class _Early:
    """Stands in for a spool file (a track or the event log) while the call's files are being
    opened in a worker thread: keeps each call, in order with the other files', in the
    recorder's one queue (at most ``MAX_EARLY_BYTES``; what comes beyond is dropped and
    counted). The first call after the thread has opened the files writes the queue to them and
    puts them in place (:meth:`Recorder._swap`), so a busy event loop never waits for the
    task that opened them."""

    busy = False

    def __init__(self, owner: "Recorder", index: int) -> None:
        self._owner, self._index = owner, index
        self.dropped = 0

    def _put(self, op: str, args: tuple[Any, ...], size: int) -> None:
        owner = self._owner
        if owner._opened is not None:  # the files are open now: catch up, then go direct
            getattr(owner._swap()[self._index], op)(*args)
            return
        if owner._early_bytes + size > MAX_EARLY_BYTES:
            self.dropped += 1
            return
        owner._early_bytes += size
        owner._early.append((self._index, op, args))  # type: ignore[union-attr]

    def write_at(self, offset: int, data: bytes) -> None:
        self._put("write_at", (offset, data), len(data))

    def truncate(self, offset: int) -> None:
        self._put("truncate", (offset,), 0)

    def write(self, text: str) -> None:
        self._put("write", (text,), len(text))

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class Recorder(Node):
    """Archives each call (see the module docstring). One instance per call."""

    inputs: ClassVar = {}
    outputs: ClassVar = {}
    Config: ClassVar = RecorderConfig
    observes_all: ClassVar[bool] = True

    def __init__(self, name: str, config: RecorderConfig, call: Any) -> None:
        super().__init__(name, config, call)
        self.uploader: Uploader = uploader_for(config.spool_dir,
                                               retry_initial_s=config.retry_initial_s,
                                               retry_max_s=config.retry_max_s)
        self.partial: Path | None = None
        self.archive_id: str | None = None
        self.ready: Path | None = None
        self._caller_ports, self._agent_ports, self._clear_ports, self._played_ports = \
            self._classify(call)
        self._open = False
        self._events: IO[str] | _Early | None = None
        self._seq = 0
        self._runs: dict[str, _Run] = {}  # channel -> its run not yet logged
        self._early: deque[tuple[int, str, tuple[Any, ...]]] | None = None
        self._early_bytes = 0
        self._early_dropped = 0
        self._opened: tuple[TrackFile, TrackFile, IO[str] | None] | None = None
        #: the task opening the call's files (``None`` before the call starts); awaiting it
        #: says whether they opened
        self.opening: asyncio.Task[bool] | None = None
        self._t0 = 0.0
        self._jumps_logged = 0
        self._jump_log_at = 0.0

    @staticmethod
    def _classify(call: Any) -> tuple[set[tuple[str, str]], set[tuple[str, str]],
                                      set[tuple[str, str]], set[tuple[str, str]]]:
        """Which ports carry caller audio, agent audio headed for the carrier, clears and
        played marks (from the graph's node types and edges)."""
        from telewire.nodes.carrier_in import CarrierIn
        from telewire.nodes.carrier_out import CarrierOut

        graph = getattr(call, "graph", None)
        if graph is None:
            return set(), set(), set(), set()
        ins = graph.nodes_of_type(CarrierIn)
        outs = set(graph.nodes_of_type(CarrierOut))
        caller = {(n, "audio") for n in ins}
        agent = {(e.src, e.src_port) for e in graph.edges
                 if e.dst in outs and e.dst_port == "audio_in"}
        clear = {(e.src, e.src_port) for e in graph.edges
                 if e.dst in outs and e.dst_port == "interrupt_in"}
        played = {(n, "played") for n in outs}
        return caller, agent, clear, played

    # --------------------------------------------------------------------------- server

    @classmethod
    async def on_server_start(cls, name: str, config: RecorderConfig) -> None:
        """The server is starting: recover the partial archives of processes that died and
        upload every archive waiting in the spool, now rather than at the first call."""
        uploader_for(config.spool_dir, retry_initial_s=config.retry_initial_s,
                     retry_max_s=config.retry_max_s).resume(force=True)

    # --------------------------------------------------------------------------- start

    async def on_call_start(self, frame: StartFrame) -> None:
        cfg = self.config
        fmt = frame.media_format
        self._codec, self._rate = fmt.codec, fmt.sample_rate
        self._bpm = bytes_per_ms(fmt.codec, fmt.sample_rate)
        self._bpm_int = int(self._bpm) if self._bpm == int(self._bpm) else 0
        self._max_run = int(MAX_RUN_MS * self._bpm)
        started = time.time()
        self._t0 = time.monotonic()
        self.archive_id = (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + "-"
                           + safe_segment(frame.stream_id, max_len=64) + "-"
                           + uuid.uuid4().hex[:16])
        meta = {
            "archive_id": self.archive_id, "carrier": frame.carrier,
            "stream_id": frame.stream_id, "call_id": frame.call_id,
            "account_id": frame.account_id,
            "custom_parameters": dict(frame.custom_parameters),
            "media_format": _jsonable(fmt), "tracks": list(frame.tracks),
            "started_at": started, "store": cfg.store, "pid": os.getpid(),
            "host": socket.gethostname(), "recorder": self.name,
            "events_format": EVENTS_FORMAT,
        }
        # Until the files are open (in a worker thread: mkdir, locks and open() block), what the
        # frames write waits in one queue, in order; then it is written and the files replace
        # the stand-ins, on the event loop, before any later frame is observed.
        self._early = deque()
        self._caller, self._agent = _Early(self, 0), _Early(self, 1)  # type: ignore[assignment]
        self._events = _Early(self, 2) if cfg.events else None
        self.clock = CallerClock(self._bpm, cfg.max_gap_ms, cfg.clock_slack_ms,
                                 self._elapsed_ms)
        self.playout = AgentPlayout()
        self.turns = TranscriptBuilder()
        self.not_in_wav = 0
        self.frames_seen = 0
        self._open = True
        self._write({"t": 0, "kind": "format", "events_format": EVENTS_FORMAT})
        self._write({"t": 0.0, "src": "call.start", **frame_record(frame)})
        self.opening = asyncio.get_running_loop().create_task(
            self._open_files(meta, SILENCE[fmt.codec]), name=f"recorder-open-{self.archive_id}")

    async def _open_files(self, meta: dict[str, Any], silence: bytes) -> bool:
        """Open the call's spool files in a worker thread; put them in place (if no frame has
        done so already)."""
        try:
            await asyncio.to_thread(self._open_blocking, meta, silence)
        except Exception as exc:  # the call goes on unrecorded, and says so
            self.call.log.error("recorder: cannot open the spool files of call {} in {}: {}",
                                meta["stream_id"], self.uploader.root, exc)
            self._open = False
            self._events = None
            self._early = None
            return False
        self._swap()
        self.uploader.resume()  # the spool's instance id is known now: no file I/O here
        return True

    def _swap(self) -> tuple[TrackFile, TrackFile, IO[str] | None]:
        """On the event loop, once the files are open: write what waited for them, in order,
        and put them in place of the stand-ins (no frame is observed in between)."""
        files = self._opened
        assert files is not None
        early = self._early
        if early is not None:
            self._early = None
            self._early_dropped = sum(f.dropped for f in (self._caller, self._agent, self._events)
                                      if isinstance(f, _Early))
            self._caller, self._agent = files[0], files[1]
            if self._events is not None:
                self._events = files[2]
            try:
                for index, op, args in early:
                    getattr(files[index], op)(*args)
            except OSError as exc:
                self.call.log.error("recorder: writing a spool file failed: {}", exc)
        return files

    def _open_blocking(self, meta: dict[str, Any],
                       silence: bytes) -> tuple[TrackFile, TrackFile, IO[str] | None]:
        """Make the call's spool folder and open its files (blocking: runs in a thread)."""
        cfg = self.config
        meta["instance_id"] = self._instance_id()
        meta["key"] = archive_key(meta)
        self.partial = partial = self.uploader.new_partial(meta["archive_id"])
        write_json(partial / CALL_META, meta)
        caller = TrackFile(partial / CALLER_TRACK, silence, cfg.buffer_bytes)
        agent = TrackFile(partial / AGENT_TRACK, silence, cfg.buffer_bytes)
        events = ((partial / EVENTS).open("w", encoding="utf-8", buffering=cfg.buffer_bytes)
                  if cfg.events else None)
        self._opened = (caller, agent, events)  # the loop takes them from here (_swap)
        return self._opened

    def _instance_id(self) -> str | None:
        try:
            return self.uploader.instance_id
        except (OSError, TelewireError) as exc:  # the call records all the same
            self.call.log.error("recorder: spool {} has no usable instance id: {}",
                                self.uploader.root, exc)
            return None

    # --------------------------------------------------------------------------- frames

    def _write(self, record: dict[str, Any]) -> None:
        """Append a record to the event log, after the audio runs it follows."""
        if self._events is not None:
            if self._runs:
                self._end_runs()
            self._line(record)

    def _line(self, record: dict[str, Any]) -> None:
        self._seq += 1
        record["seq"] = self._seq
        self._events.write(json.dumps(record, ensure_ascii=False,  # type: ignore[union-attr]
                                      separators=(",", ":")) + "\n")

    def observe(self, node: str, port: str, frame: Frame) -> None:
        if not self._open:
            return
        self.frames_seen += 1
        key = (node, port)
        kind = type(frame)
        if kind is AudioFrame:
            self._audio(key, frame)  # type: ignore[arg-type]
            return
        t = round(self.clock.end / self._bpm, 1)
        record: dict[str, Any] = {"t": t, "src": f"{node}.{port}", **frame_record(frame)}
        if kind is InterruptFrame and key in self._clear_ports:
            cut = self.playout.clear(self.clock.end)
            if cut is not None:
                self._agent.truncate(cut.at)
                record["cut_ms"] = round(cut.at / self._bpm, 1)
                record["discarded_ms"] = round(cut.discarded / self._bpm, 1)
                self.turns.cut(cut.at / self._bpm)
        elif kind is MarkFrame and key in self._played_ports:
            ack = self.playout.played(self.clock.end)
            if ack is not None:
                record["acked_item"] = ack.item_id
                record["ack_lag_ms"] = round(ack.lag / self._bpm, 1)
                self.turns.played(ack.item_id)
        elif kind is TranscriptFrame:
            self.turns.transcript(frame.role, frame.text, frame.item_id,  # type: ignore[attr-defined]
                                  frame.final, t)  # type: ignore[attr-defined]
        self._write(record)

    def _audio(self, key: tuple[str, str], frame: AudioFrame) -> None:
        now = self.clock.end
        channel = None
        at: int | None = None
        same_format = frame.codec == self._codec and frame.sample_rate == self._rate
        if key in self._caller_ports:
            channel = "caller"
            if same_format:
                data = frame.data
                clock = self.clock
                at = clock.place(frame.timestamp_ms, len(data))
                self._caller.write_at(at, data)
                if clock.jumps != self._jumps_logged:
                    self._log_jump(frame.timestamp_ms, at)
        elif key in self._agent_ports:
            channel = "agent"
            if same_format:
                data = frame.data
                at = self.playout.audio(self.clock.end, len(data), frame.item_id)
                self._agent.write_at(at, data)
                self.turns.agent_audio(frame.item_id, at / self._bpm,
                                       (at + len(data)) / self._bpm)
        if channel is not None and at is None:
            self.not_in_wav += 1
        if self._events is None:
            return
        if at is None:  # not in the WAV: the event log is the only place its audio is kept
            self._write({"t": self._ms_num(now), "src": f"{key[0]}.{key[1]}",
                         **frame_record(frame), "channel": channel})
            return
        # the hot path: a frame that continues its channel's run only extends it (a few
        # comparisons and additions: no line, string or dict); anything else ends the run (one
        # line) and starts the next
        n = len(data)
        run = self._runs.get(channel)  # type: ignore[arg-type]
        if run is not None:
            if (at == run.end and n == run.frame_bytes and key == run.key
                    and frame.timestamp_ms == run.next_ts and frame.sequence == run.next_seq
                    and frame.item_id == run.item_id and frame.track == run.track
                    and at - run.at < self._max_run):
                run.end = at + n
                run.frames += 1
                if run.next_ts is not None:
                    run.next_ts += run.frame_ms
                if run.next_seq is not None:
                    run.next_seq += 1
                return
            self._end_run(run)
        self._runs[channel] = _Run(key, channel, now, at, n,  # type: ignore[index]
                                   n / self._bpm, frame)

    def _end_run(self, run: _Run) -> None:
        """Log ``run`` (one line), and let the log reach the disk at least once per run length,
        so a process that dies mid-call loses little of it."""
        del self._runs[run.channel]
        ms = self._ms_num
        self._line({"t": ms(run.t), "src": f"{run.key[0]}.{run.key[1]}", "kind": "audio",
                    "channel": run.channel, "at": run.at, "len": run.end - run.at,
                    "frames": run.frames, "frame_bytes": run.frame_bytes,
                    "codec": self._codec, "sample_rate": self._rate,
                    "timestamp_ms": run.timestamp_ms, "sequence": run.sequence,
                    "track": run.track, "item_id": run.item_id,
                    "at_ms": ms(run.at), "end_ms": ms(run.end)})
        if run.end - run.at >= self._max_run:
            self._events.flush()  # type: ignore[union-attr]

    def _end_runs(self) -> None:
        """Log every open run, the earliest started first."""
        for run in sorted(self._runs.values(), key=lambda r: r.t):
            self._end_run(run)

    def _elapsed_ms(self) -> float:
        """The call's wall-clock time (monotonic) since its start event, for the caller clock."""
        return (_monotonic() - self._t0) * 1000.0

    def _log_jump(self, timestamp_ms: int | None, at: int) -> None:
        """A caller timestamp was clamped: say so once, then at most every 10 s (with how many
        since), so a carrier sending nonsense cannot flood the log."""
        now = _monotonic()
        if self._jumps_logged and now - self._jump_log_at < 10.0:
            return
        since = self.clock.jumps - self._jumps_logged
        self._jumps_logged, self._jump_log_at = self.clock.jumps, now
        self.call.log.warning(
            "recorder: caller timestamp {} ms not believed ({} in all, {} since the last "
            "report): runs ahead of the call's {:.0f} ms of wall-clock time by more than "
            "{} ms, or jumps more than max_gap_ms; placed at {:.0f} ms", timestamp_ms,
            self.clock.jumps, since, (now - self._t0) * 1000.0, self.config.clock_slack_ms,
            at / self._bpm)

    def _ms_num(self, nbytes: int) -> int | float:
        """A timeline offset in bytes as milliseconds (an integer when exact)."""
        step = self._bpm_int
        if step:
            q, r = divmod(nbytes, step)
            if not r:
                return q
        return round(nbytes / self._bpm, 1)

    # --------------------------------------------------------------------------- end

    async def on_call_end(self, frame: EndFrame) -> None:
        if not self._open or self.opening is None:
            return
        if not await self.opening or not self._open or self.partial is None:
            return  # the files never opened (logged), or another end came first
        self._open = False
        t = round(self.clock.end / self._bpm, 1)
        try:
            self._write({"t": t, "src": "call.end", **frame_record(frame)})
        finally:
            if self._caller.busy or self._agent.busy:  # a long gap still being filled
                await asyncio.to_thread(self._close_files)
            else:
                self._close_files()
        counters = {
            "frames_seen": self.frames_seen,
            "caller_frames": self.clock.frames, "caller_overlaps": self.clock.overlaps,
            "caller_jumps": self.clock.jumps, "caller_untimed": self.clock.untimed,
            "agent_frames": self.playout.frames, "agent_cuts": self.playout.cuts,
            "agent_cut_ms": round(self.playout.cut_bytes / self._bpm, 1),
            "marks_acknowledged": self.playout.acks,
            "frames_not_in_wav": self.not_in_wav,
            "frames_dropped": self._caller.dropped + self._agent.dropped + self._early_dropped,
        }
        costs = call_cost(self.call)  # the call's model cost (telewire.cost), in the manifest
        if costs:
            total = total_usd(costs)
            counters["cost_usd"] = None if total is None else float(total)
            counters["cost"] = [c.as_dict() for c in costs]
        try:
            self.ready = await self.uploader.complete(
                self.partial, end_reason=frame.reason, end_detail=frame.detail,
                builder=self.turns, counters=counters)
        except Exception as exc:  # the spool keeps the partial: the next start recovers it
            self.call.log.exception("recorder: could not assemble the archive in {}: {}",
                                    self.partial, exc)

    def _close_files(self) -> None:
        for closer in (self._caller.close, self._agent.close,
                       self._events.close if self._events is not None else None):
            if closer is not None:
                try:
                    closer()
                except OSError as exc:
                    self.call.log.error("recorder: writing or closing a spool file failed: {}",
                                        exc)

