"""Call archives: their layout, their assembly at call end, and the local spool that retries uploads.

Depends on ``telewire.stores``, ``telewire.timeline`` and ``telewire.errors``; the recorder node,
the server's shutdown and the CLI depend on it.

An archive is four files under one key prefix in a store::

    <carrier>/<YYYY>/<MM>/<DD>/<call id>/<stream id>/<archive id>/
        call.wav          stereo, caller left, agent right, in the call's codec (mu-law: tag 7)
        transcript.json   turns: role, text, start/end ms, interrupted
        events.jsonl      every frame with its media time; audio as references into
                          call.wav (format 2) or as base64 payloads (format 1)
        manifest.json     ids, format, lengths, counters, end reason (uploaded last)

While a call runs its files are spooled under ``<spool>/<archive id>.partial/`` (the two
channels as positional track files, the event log as it happens). At the end the WAV is
interleaved from the tracks in chunks, the folder is renamed to ``<spool>/<archive id>/``
(ready) and an :class:`Uploader` uploads it in the background, retrying with backoff until the
store takes it; only then is the spooled copy deleted. Stores never overwrite, and the key ends
with the archive's unique id, so no archive replaces another. Ready archives left by a previous
process, and partial ones whose process died, are picked up when the next server starts (or by
``telewire archive flush``); the spool's persistent instance id and a ``flock`` per archive,
not host names or pids, say which are whose (see :class:`Uploader`).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import random
import shutil
import socket
import struct
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

from loguru import logger

from telewire import tracing
from telewire.errors import TelewireError
from telewire.stores import KeyExistsError, StoreError, open_store, safe_segment
from telewire.timeline import TranscriptBuilder

__all__ = [
    "ARCHIVE_FILES",
    "EVENTS_FORMAT",
    "ArchiveReader",
    "ArchiveRecord",
    "SpoolEntry",
    "TrackFile",
    "Uploader",
    "archive_key",
    "drain_uploads",
    "find_archive",
    "finalize",
    "interleave_wav",
    "read_json",
    "read_wav_channel",
    "spool_instance_id",
    "uploader_for",
    "uploaders",
    "wav_header",
    "write_json",
]

WAV, TRANSCRIPT, EVENTS, MANIFEST = "call.wav", "transcript.json", "events.jsonl", "manifest.json"
#: Upload order: the manifest goes last, so its presence in a store means the archive is whole.
ARCHIVE_FILES = (WAV, TRANSCRIPT, EVENTS, MANIFEST)
CALLER_TRACK, AGENT_TRACK = "caller.track", "agent.track"
CALL_META, STATUS = "call.json", "status.json"
#: The event log's format, in ``call.json``, the manifest and the log's first record:
#: 1 (no field) repeated every audio frame's payload in base64; 2 logs audio as runs that give
#: their place in ``call.wav`` (``channel``, ``at``, ``len``: bytes of that channel).
EVENTS_FORMAT = 2
#: In each spooled archive: held (``flock``) by the process recording, recovering or uploading it.
LOCK = "lock"
#: In the spool folder: the spool's instance id, made once.
INSTANCE_ID = "instance-id"
PARTIAL_SUFFIX = ".partial"
#: Re-keyings of one archive whose key was taken, before it waits in the spool for a person.
MAX_REKEYS = 3

#: One sample of silence per codec.
SILENCE = {"pcmu": b"\xff", "pcma": b"\xd5", "l16": b"\x00\x00"}
_WAV_TAG = {"pcmu": 7, "pcma": 6, "l16": 1}
_TAG_CODEC = {v: k for k, v in _WAV_TAG.items()}


# ------------------------------------------------------------------------------------- WAV


def wav_header(data_len: int, *, codec: str, sample_rate: int, channels: int) -> bytes:
    """The header of a WAV file whose data chunk holds ``data_len`` bytes of ``codec`` audio.

    G.711 (``pcmu``: tag 7, ``pcma``: tag 6) is 8 bits per sample with a ``fact`` chunk;
    ``l16`` is 16-bit PCM (tag 1).

    Raises:
        ValueError: an unknown codec, or data too long for a RIFF file (4 GiB).
    """
    if codec not in _WAV_TAG:
        raise ValueError(f"no WAV format for codec {codec!r}")
    width = len(SILENCE[codec])
    block = width * channels
    if codec == "l16":
        fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * block, block, 16)
        extra = b""
    else:
        fmt = struct.pack("<HHIIHHH", _WAV_TAG[codec], channels, sample_rate,
                          sample_rate * block, block, 8, 0)
        extra = b"fact" + struct.pack("<II", 4, data_len // block)
    pad = data_len & 1
    riff = 4 + 8 + len(fmt) + len(extra) + 8 + data_len + pad
    if riff > 0xFFFFFFFF:
        raise ValueError(f"{data_len} bytes of audio do not fit in a WAV file")
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt))
            + fmt + extra + b"data" + struct.pack("<I", data_len))


def interleave_wav(left: Path, right: Path, out: Path, *, codec: str, sample_rate: int,
                   chunk_bytes: int = 1 << 16) -> int:
    """Write a stereo WAV from two mono track files, streaming ``chunk_bytes`` per channel.

    The shorter channel is padded with silence to the longer one's length. Returns the number
    of bytes per channel. Memory used: a few chunks, whatever the length of the call.
    """
    width = len(SILENCE[codec])
    sizes = [p.stat().st_size if p.exists() else 0 for p in (left, right)]
    per_channel = max(sizes) // width * width
    chunk_bytes = max(width, chunk_bytes // width * width)
    silence = SILENCE[codec] * (chunk_bytes // width)
    with out.open("wb") as f, _open_or_empty(left) as lf, _open_or_empty(right) as rf:
        f.write(wav_header(per_channel * 2, codec=codec, sample_rate=sample_rate, channels=2))
        done = 0
        buf = bytearray(chunk_bytes * 2)
        while done < per_channel:
            n = min(chunk_bytes, per_channel - done)
            lc = lf.read(n)
            rc = rf.read(n)
            lc = lc + silence[: n - len(lc)] if len(lc) < n else lc
            rc = rc + silence[: n - len(rc)] if len(rc) < n else rc
            view = memoryview(buf)[: 2 * n]
            if width == 1:
                view[0::2] = lc
                view[1::2] = rc
            else:
                samples = view.cast("H")
                samples[0::2] = memoryview(lc).cast("H")
                samples[1::2] = memoryview(rc).cast("H")
            f.write(view)
            done += n
        if per_channel * 2 & 1:
            f.write(b"\x00")
    return per_channel


class _Empty:
    def read(self, n: int) -> bytes:
        return b""

    def __enter__(self) -> "_Empty":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _open_or_empty(path: Path) -> Any:
    return path.open("rb") if path.exists() else _Empty()


@dataclass(frozen=True, slots=True)
class WavInfo:
    """Where the audio of a WAV file is and what it is."""

    codec: str
    sample_rate: int
    channels: int
    data_offset: int
    data_len: int


def wav_info(path: Path) -> WavInfo:
    """Read the header of a WAV file written by :func:`interleave_wav` (or any plain WAV).

    Raises:
        TelewireError: not a WAV file, or a format telewire does not archive.
    """
    with path.open("rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise TelewireError(f"{path}: not a WAV file")
        fmt = None
        while True:
            h = f.read(8)
            if len(h) < 8:
                raise TelewireError(f"{path}: WAV file without a data chunk")
            cid, size = h[:4], struct.unpack("<I", h[4:])[0]
            if cid == b"data":
                if fmt is None:
                    raise TelewireError(f"{path}: data chunk before the fmt chunk")
                tag, channels, rate = fmt
                codec = _TAG_CODEC.get(tag)
                if codec is None:
                    raise TelewireError(f"{path}: WAV format tag {tag} is not one telewire "
                                        "archives (7 mu-law, 6 A-law, 1 PCM)")
                return WavInfo(codec, rate, channels, f.tell(), size)
            body = f.read(size + (size & 1))
            if cid == b"fmt ":
                fmt = struct.unpack("<HHI", body[:8])


def read_wav_channel(path: Path, channel: int, *, start: int = 0,
                     length: int | None = None) -> bytes:
    """The bytes of one channel of an archive WAV (0 = caller, 1 = agent), from byte ``start``
    of that channel, ``length`` bytes at most (all when ``None``)."""
    info = wav_info(path)
    width = len(SILENCE[info.codec])
    block = width * info.channels
    total = info.data_len // block * width
    stop = total if length is None else min(total, start + length)
    out = bytearray()
    with path.open("rb") as f:
        f.seek(info.data_offset + start // width * block)
        pos = start // width * width
        while pos < stop:
            n = min(1 << 16, stop - pos)
            raw = f.read(n // width * block)
            if not raw:
                break
            frames = memoryview(raw)
            if width == 1:
                out += frames[channel::info.channels].tobytes()
            else:
                out += frames.cast("H")[channel::info.channels].tobytes()
            pos += n
    return bytes(out)


# ------------------------------------------------------------------------------------- tracks


#: A gap up to this long is filled with silence on the caller's thread (one write); a longer one
#: is filled by a worker thread, so no single chunk makes the event loop write much.
SYNC_GAP_BYTES = 1 << 16
#: Writes queued behind a gap being filled, per track, before further ones are dropped.
MAX_DEFERRED_WRITES = 4096

_SILENCE_RUNS: dict[bytes, memoryview] = {}
_FILL_POOL: ThreadPoolExecutor | None = None
_FILL_POOL_LOCK = threading.Lock()


def _silence_run(silence: bytes) -> memoryview:
    """``SYNC_GAP_BYTES`` of ``silence``, shared by every track of that codec."""
    run = _SILENCE_RUNS.get(silence)
    if run is None:
        run = _SILENCE_RUNS[silence] = memoryview(silence * (SYNC_GAP_BYTES // len(silence)))
    return run


def _fill_pool() -> ThreadPoolExecutor:
    global _FILL_POOL
    with _FILL_POOL_LOCK:
        if _FILL_POOL is None:
            _FILL_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="telewire-track")
        return _FILL_POOL


class TrackFile:
    """One channel of a call on disk, written at byte offsets on the call's timeline.

    Appending is the common case (one buffered write); a chunk past the end is preceded by
    silence; a chunk before the end overwrites what is there; :meth:`truncate` drops everything
    after an offset (agent audio a clear cut).

    A gap longer than ``SYNC_GAP_BYTES`` is not filled on the calling thread (the event loop):
    the fill and every write after it go to a worker thread, in order, until it has caught up;
    then writes are direct again. At most ``MAX_DEFERRED_WRITES`` wait behind a fill; more are
    dropped and counted in :attr:`dropped`. :attr:`busy` says a fill is in progress: close the
    track from a thread then (:meth:`close` waits for it).
    """

    def __init__(self, path: Path, silence: bytes, buffer_bytes: int = 32768) -> None:
        self.path = path
        self._f: IO[bytes] = path.open("w+b", buffering=buffer_bytes)
        self._silence = _silence_run(silence)
        self.end = 0
        self.dropped = 0
        self.error: OSError | None = None
        self._pending: deque[tuple[int, bytes | None]] | None = None  # (offset, data|None=cut)
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()

    @property
    def busy(self) -> bool:
        """A long gap is being filled by a worker thread."""
        return self._pending is not None

    def write_at(self, offset: int, data: bytes) -> None:
        if self._pending is not None and self._defer(offset, data):
            return
        if offset == self.end:
            self._f.write(data)
            self.end += len(data)
            return
        if offset - self.end > SYNC_GAP_BYTES:
            self._start_worker(offset, data)
            return
        self._write(offset, data)

    def truncate(self, offset: int) -> None:
        if self._pending is not None and self._defer(offset, None):
            return
        self._truncate(offset)

    def _write(self, offset: int, data: bytes) -> None:
        f = self._f
        if offset > self.end:
            gap = offset - self.end
            run = self._silence
            while gap > 0:
                n = min(gap, len(run))
                f.write(run[:n])
                gap -= n
            f.write(data)
            self.end = offset + len(data)
            return
        if offset < self.end:
            f.seek(offset)
        f.write(data)
        self.end = max(self.end, offset + len(data))
        f.seek(self.end)

    def _truncate(self, offset: int) -> None:
        if offset < self.end:
            self._f.truncate(offset)
            self._f.seek(offset)
            self.end = offset

    # -- the worker that fills long gaps, then applies what queued behind them

    def _defer(self, offset: int, data: bytes | None) -> bool:
        """Queue behind the fill in progress; ``False`` when it has just finished."""
        with self._lock:
            pending = self._pending
            if pending is None:
                return False
            if len(pending) >= MAX_DEFERRED_WRITES:
                self.dropped += 1
            else:
                pending.append((offset, data))
            return True

    def _start_worker(self, offset: int, data: bytes) -> None:
        self._idle.clear()
        self._pending = deque([(offset, data)])
        _fill_pool().submit(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                pending = self._pending
                if not pending:
                    self._pending = None
                    self._idle.set()
                    return
                offset, data = pending.popleft()
            try:
                if data is None:
                    self._truncate(offset)
                else:
                    self._write(offset, data)
            except OSError as exc:
                self.error = self.error or exc

    def close(self) -> None:
        """Wait for a fill in progress, close the file.

        Raises:
            OSError: a write failed (in the worker) or closing did.
        """
        self._idle.wait()
        self._f.close()
        if self.error is not None:
            raise self.error


# ------------------------------------------------------------------------------------- layout


def archive_key(meta: dict[str, Any]) -> str:
    """The key prefix of an archive in its store, from its ``call.json`` metadata:
    ``<carrier>/<YYYY>/<MM>/<DD>/<call id>/<stream id>/<archive id>``.

    Every part from the carrier is passed through :func:`~telewire.stores.safe_segment`, which
    maps different ids to one segment (``CA/x``, ``CA_x`` and ``CA?x`` are all ``CA_x``); the
    last segment, the archive's unique id, keeps two archives apart all the same.
    """
    day = time.strftime("%Y/%m/%d", time.gmtime(meta.get("started_at", 0)))
    return "/".join([safe_segment(meta.get("carrier", "")), day,
                     safe_segment(meta.get("call_id", "")), safe_segment(meta.get("stream_id", "")),
                     safe_segment(meta.get("archive_id", ""), max_len=128)])


@dataclass(slots=True)
class ArchiveRecord:
    """What became of one call's archive.

    Attributes:
        archive_id: the spool name of the archive.
        stream_id / call_id: the carrier's ids.
        status: ``"stored"`` (in the store) or ``"spooled"`` (waiting in the local spool).
        locations: file name -> its URL or path in the store (stored) or in the spool.
        error: the store's last error, when spooled.
    """

    archive_id: str
    stream_id: str
    call_id: str
    status: str
    locations: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path``."""
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def iter_events(path: Path) -> Iterator[dict[str, Any]]:
    """The records of an ``events.jsonl``, one at a time; a torn last line (a process that died
    mid-write) is skipped."""
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def finalize(partial: Path, *, end_reason: str, end_detail: str = "",
             builder: TranscriptBuilder | None = None,
             counters: dict[str, Any] | None = None) -> Path:
    """Turn a ``.partial`` spool folder into a ready archive; returns the ready folder.

    Builds ``call.wav`` from the track files (streaming), ``transcript.json`` from ``builder``
    (or, when ``None``, by replaying ``events.jsonl`` into a new one), ``manifest.json``, then
    renames the folder. Blocking: run it in a thread.
    """
    meta = read_json(partial / CALL_META)
    fmt = meta["media_format"]
    caller, agent = partial / CALLER_TRACK, partial / AGENT_TRACK
    caller_bytes = caller.stat().st_size if caller.exists() else 0
    agent_bytes = agent.stat().st_size if agent.exists() else 0
    per_channel = interleave_wav(caller, agent, partial / WAV, codec=fmt["codec"],
                                 sample_rate=fmt["sample_rate"])
    if builder is None:
        builder = TranscriptBuilder()
        events = partial / EVENTS
        if events.exists():
            for event in iter_events(events):
                builder.feed_event(event)
    bpm = fmt["sample_rate"] * len(SILENCE[fmt["codec"]]) / 1000.0
    transcript: dict[str, Any] = {"stream_id": meta["stream_id"], "call_id": meta["call_id"],
                                  "turns": [t.as_dict() for t in builder.turns()]}
    if counters and "cost_usd" in counters:  # the call's model cost, next to what was said
        transcript["cost_usd"] = counters["cost_usd"]
    write_json(partial / TRANSCRIPT, transcript)
    if not (partial / EVENTS).exists():
        (partial / EVENTS).touch()
    manifest = {
        "version": 1,
        "events_format": meta.get("events_format", 1),
        **{k: meta[k] for k in ("archive_id", "carrier", "stream_id", "call_id", "account_id",
                                "custom_parameters", "media_format", "started_at", "store",
                                "key")},
        "instance_id": meta.get("instance_id"),
        "end_reason": end_reason,
        "end_detail": end_detail,
        "duration_ms": round(per_channel / bpm, 1),
        "caller_bytes": caller_bytes,
        "agent_bytes": agent_bytes,
        "files": {name: (partial / name).stat().st_size for name in (WAV, TRANSCRIPT, EVENTS)},
        "counters": counters or {},
    }
    write_json(partial / MANIFEST, manifest)
    for name in (CALLER_TRACK, AGENT_TRACK):
        (partial / name).unlink(missing_ok=True)
    ready = partial.with_name(partial.name[: -len(PARTIAL_SUFFIX)])
    os.replace(partial, ready)
    return ready


# ------------------------------------------------------------------------------------- spool


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One archive in the spool, as ``telewire archive status`` shows it."""

    archive_id: str
    path: Path
    state: str  # "ready", "recording" (a live call) or "orphaned" (its process died)
    stream_id: str
    call_id: str
    store: str
    bytes: int
    attempts: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _try_lock(path: Path) -> int | None:
    """An exclusive ``flock`` on ``path`` (made if missing), without waiting: the open file
    descriptor holding it, or ``None`` when another open file holds it (another process, or
    another part of this one) or its folder is gone. The kernel drops the lock when its holder
    dies, so a lock never outlives its process, whatever its pid or host name."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    os.close(fd)  # closing the last descriptor of the open file releases its flock


def spool_instance_id(root: Path) -> str:
    """The instance id of the spool at ``root``: read from ``<root>/instance-id``, which the
    first process to use the spool creates (``O_CREAT | O_EXCL``, so two starting at once agree
    on one). It stays with the spool across restarts, new pids and new host names.

    Raises:
        TelewireError: the file exists but does not hold an id.
    """
    path = root / INSTANCE_ID
    root.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(uuid.uuid4().hex + "\n")
            f.flush()
            os.fsync(f.fileno())
        logger.info("spool {}: new instance id {}", root, path.read_text().strip())
    for _ in range(100):  # another process may have created it an instant ago, not yet written
        text = path.read_text(encoding="ascii", errors="replace").strip()
        if text:
            break
        time.sleep(0.01)
    if not text or len(text) > 64 or safe_segment(text) != text:
        raise TelewireError(f"{path}: not a spool instance id ({text[:64]!r}); move the file "
                            "away to let telewire make a new one")
    return text


class Uploader:
    """The spool of one folder and its background uploads, with retry and backoff.

    Use :func:`uploader_for` (one per spool folder per process).

    Ownership: the spool has a persistent instance id (:func:`spool_instance_id`), recorded in
    every archive it holds. Each spooled archive has a ``lock`` file that whoever records,
    recovers or uploads it holds with ``flock``: a ``.partial`` archive whose lock nobody holds
    was left by a process that died (whatever its pid or host name: a restarted container has
    new ones) and is recovered; a ready archive whose lock is held is being uploaded by another
    process and is left to it. So two live processes on one spool never upload one archive
    twice, and a restarted one picks up everything its predecessor left.

    Args:
        root: the spool folder.
        retry_initial_s / retry_max_s: the first retry waits ``retry_initial_s``; each next one
            twice as long, up to ``retry_max_s`` (with +-20 % jitter). Retries never give up: an
            archive leaves the spool only when the store has it.
    """

    def __init__(self, root: Path, *, retry_initial_s: float = 1.0,
                 retry_max_s: float = 300.0) -> None:
        self.root = root
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.recording: set[Path] = set()
        self.records: deque[ArchiveRecord] = deque(maxlen=256)
        self._tasks: dict[Path, asyncio.Task[ArchiveRecord | None]] = {}
        self._waiting: set[Path] = set()  # failed at least once, sleeping before the next try
        self._resumed_loops: set[int] = set()
        self._resuming: set[asyncio.Task[None]] = set()
        self._held: dict[Path, int] = {}  # partial folder -> the lock its recording holds
        self.failures = 0  # upload attempts that failed (each is retried), for metrics
        self._instance_id: str | None = None

    @property
    def instance_id(self) -> str:
        """This spool's persistent instance id (made on first use)."""
        if self._instance_id is None:
            self._instance_id = spool_instance_id(self.root)
        return self._instance_id

    # -- the call side

    def new_partial(self, archive_id: str) -> Path:
        """Make the spool folder of a starting call, locked while the call records."""
        path = self.root / (archive_id + PARTIAL_SUFFIX)
        path.mkdir(parents=True, exist_ok=False)
        fd = _try_lock(path / LOCK)
        if fd is not None:
            self._held[path] = fd
        self.recording.add(path)
        return path

    async def complete(self, partial: Path, *, end_reason: str, end_detail: str = "",
                       builder: TranscriptBuilder | None = None,
                       counters: dict[str, Any] | None = None) -> Path:
        """Finalize a call's spool folder (in a thread) and start uploading it."""
        try:
            ready = await asyncio.to_thread(finalize, partial, end_reason=end_reason,
                                            end_detail=end_detail, builder=builder,
                                            counters=counters)
        finally:
            self.recording.discard(partial)
            fd = self._held.pop(partial, None)
            if fd is not None:
                _unlock(fd)
        self.submit(ready)
        return ready

    # -- uploads

    def submit(self, ready: Path) -> asyncio.Task[ArchiveRecord | None]:
        """Upload ``ready`` in the background, retrying until it is stored (idempotent)."""
        loop = asyncio.get_running_loop()
        task = self._tasks.get(ready)
        if task is not None and not task.done() and task.get_loop() is loop:
            return task
        task = loop.create_task(self._until_stored(ready), name=f"archive-upload-{ready.name}")
        self._tasks[ready] = task
        task.add_done_callback(lambda t, p=ready: self._forget(p, t))
        return task

    def _forget(self, path: Path, task: asyncio.Task[Any]) -> None:
        if self._tasks.get(path) is task:
            del self._tasks[path]

    def pending_tasks(self) -> list[asyncio.Task[ArchiveRecord | None]]:
        """The uploads not yet done on the running loop (including those waiting to retry)."""
        loop = asyncio.get_running_loop()
        return [t for t in self._tasks.values() if not t.done() and t.get_loop() is loop]

    def uploading(self) -> list[asyncio.Task[ArchiveRecord | None]]:
        """The uploads on the running loop that are talking to the store right now (not those
        waiting to retry after a failure: they are safe in the spool)."""
        loop = asyncio.get_running_loop()
        return [t for p, t in self._tasks.items()
                if not t.done() and t.get_loop() is loop and p not in self._waiting]

    async def _until_stored(self, ready: Path) -> ArchiveRecord | None:
        attempt = 0
        while True:
            span = tracing.upload_started(ready.name, attempt + 1)
            try:
                record = await self.upload(ready)
                tracing.upload_ended(span, None if record is None else record.status)
                return record
            except StoreError as exc:
                tracing.upload_ended(span, "failed", str(exc))
                attempt += 1
                delay = min(self.retry_max_s, self.retry_initial_s * 2 ** (attempt - 1))
                delay *= random.uniform(0.8, 1.2)
                self._note_failure(ready, str(exc), attempt)
                logger.warning("archive {} not stored (attempt {}): {}; kept in {}, retrying in "
                               "{:.1f} s", ready.name, attempt, exc, self.root, delay)
                self._waiting.add(ready)
                try:
                    await asyncio.sleep(delay)
                finally:
                    self._waiting.discard(ready)

    def spooled(self) -> int:
        """Archives of this process waiting in the spool for the store (uploading or waiting
        to retry)."""
        return sum(1 for t in self._tasks.values() if not t.done())

    def _note_failure(self, ready: Path, error: str, attempt: int) -> None:
        self.failures += 1
        try:
            status = read_json(ready / STATUS) if (ready / STATUS).exists() else {}
            status.update(attempts=int(status.get("attempts", 0)) + 1, last_error=error,
                          last_attempt=time.time())
            write_json(ready / STATUS, status)
        except OSError:
            pass
        manifest = self._manifest(ready)
        if manifest is not None:
            self._record(ArchiveRecord(manifest["archive_id"], manifest["stream_id"],
                                       manifest["call_id"], "spooled",
                                       {n: str(ready / n) for n in ARCHIVE_FILES}, error))

    @staticmethod
    def _manifest(ready: Path) -> dict[str, Any] | None:
        try:
            return read_json(ready / MANIFEST)
        except (OSError, ValueError):
            return None

    def _record(self, record: ArchiveRecord) -> None:
        for i, old in enumerate(self.records):
            if old.archive_id == record.archive_id:
                del self.records[i]
                break
        self.records.append(record)

    async def upload(self, ready: Path) -> ArchiveRecord | None:
        """Upload one ready archive once, holding its lock; delete it from the spool when every
        file is stored.

        Returns ``None`` when the folder is gone (another process uploaded it) or another
        process holds its lock (it is uploading it now).

        A key that is taken by other content (stores never overwrite) gives the archive a new
        key (its old one plus a random suffix, noted in the manifest as ``key_conflicts``), up
        to ``MAX_REKEYS`` times; files already stored under the old key stay there, without a
        manifest.

        Raises:
            StoreError: the store failed; the archive stays in the spool.
        """
        fd = _try_lock(ready / LOCK)
        if fd is None:
            if ready.exists():
                logger.info("archive {} is being uploaded by another process", ready.name)
            return None
        try:
            return await self._upload_locked(ready)
        finally:
            _unlock(fd)

    async def _upload_locked(self, ready: Path) -> ArchiveRecord | None:
        manifest = self._manifest(ready)
        if manifest is None:
            if not ready.exists():  # stored and removed by the process that held the lock
                return None
            raise StoreError(f"{ready}: no readable {MANIFEST}; left in the spool for a person "
                             "to look at")
        try:
            store = open_store(manifest["store"])
        except TelewireError as exc:
            raise StoreError(f"archive {ready.name}: {exc}") from None
        for rekeys in range(MAX_REKEYS + 1):
            key = manifest["key"]
            try:
                locations = {}
                for name in ARCHIVE_FILES:
                    path = ready / name
                    if not path.exists():
                        raise StoreError(f"{path}: missing from the spooled archive")
                    locations[name] = await store.put_file(f"{key}/{name}", path)
                break
            except KeyExistsError as exc:
                if rekeys == MAX_REKEYS:
                    raise StoreError(f"archive {ready.name}: {exc}; {MAX_REKEYS} new keys were "
                                     "taken too; left in the spool for a person to look at"
                                     ) from None
                manifest["key"] = f"{key}-{uuid.uuid4().hex[:8]}"
                manifest.setdefault("key_conflicts", []).append(key)
                write_json(ready / MANIFEST, manifest)
                logger.warning("archive {}: {}; storing it under the new key {} instead",
                               ready.name, exc, manifest["key"])
        done = ready.with_name(f".{ready.name}.stored")
        os.replace(ready, done)  # gone from the spool at once, for every process
        shutil.rmtree(done, ignore_errors=True)
        record = ArchiveRecord(manifest["archive_id"], manifest["stream_id"],
                               manifest["call_id"], "stored", locations)
        self._record(record)
        logger.info("archive of call {} stored at {}", manifest["stream_id"],
                    store.location(manifest["key"]))
        return record

    # -- the spool as a whole

    def entries(self) -> list[SpoolEntry]:
        """Every archive in the spool: ready, recording or orphaned."""
        out = []
        if not self.root.is_dir():
            return out
        for path in sorted(self.root.iterdir()):
            if not path.is_dir() or path.name.startswith("."):
                continue
            partial = path.name.endswith(PARTIAL_SUFFIX)
            try:
                meta = read_json(path / (CALL_META if partial else MANIFEST))
            except (OSError, ValueError):
                meta = {}
            state = "ready"
            if partial:
                state = "orphaned" if self._orphaned(path, meta) else "recording"
            status: dict[str, Any] = {}
            if (path / STATUS).exists():
                try:
                    status = read_json(path / STATUS)
                except (OSError, ValueError):
                    status = {}
            try:
                size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
            except OSError:  # uploaded and removed while we looked
                continue
            out.append(SpoolEntry(path.name.removesuffix(PARTIAL_SUFFIX), path, state,
                                  meta.get("stream_id", ""), meta.get("call_id", ""),
                                  meta.get("store", ""), size, int(status.get("attempts", 0)),
                                  status.get("last_error")))
        return out

    def _orphaned(self, path: Path, meta: dict[str, Any]) -> bool:
        """A partial archive whose recording process is gone: nobody holds its lock."""
        if path in self.recording:
            return False
        if not (path / LOCK).exists():  # recorded by a telewire without spool locks
            pid = meta.get("pid")
            if meta.get("host", socket.gethostname()) != socket.gethostname():
                return False
            return not isinstance(pid, int) or pid == os.getpid() or not _pid_alive(pid)
        fd = _try_lock(path / LOCK)
        if fd is None:
            return False
        _unlock(fd)
        return True

    async def recover_orphans(self) -> list[Path]:
        """Finalize the partial archives of calls whose process died (each under its lock, so
        two processes never both recover one); returns the ready folders (not yet uploaded)."""
        ready = []
        for entry in self.entries():
            if entry.state != "orphaned":
                continue
            fd = _try_lock(entry.path / LOCK)
            if fd is None:
                continue
            try:
                if not (entry.path / CALL_META).exists():  # recovered by another process
                    continue
                ready.append(await asyncio.to_thread(
                    finalize, entry.path, end_reason="recovered",
                    end_detail="the recording process ended before the call did"))
                logger.warning("recovered the archive of call {} left by a process that died",
                               entry.stream_id)
            except (OSError, ValueError, KeyError) as exc:
                logger.error("cannot recover spooled call {}: {}", entry.path, exc)
            finally:
                _unlock(fd)
        return ready

    def resume(self, *, force: bool = False) -> asyncio.Task[None] | None:
        """Recover orphans and upload every ready archive in the spool (archives a previous
        process could not store), in the background.

        Once per event loop unless ``force`` (a server starting: every start resumes); returns
        the task, or ``None`` when it had already run on this loop.
        """
        loop = asyncio.get_running_loop()
        if not force and id(loop) in self._resumed_loops:
            return None
        self._resumed_loops.add(id(loop))
        try:
            instance = self.instance_id
        except (OSError, TelewireError) as exc:
            logger.error("spool {} cannot be used: {}", self.root, exc)
            return None

        async def go() -> None:
            recovered = await self.recover_orphans()
            waiting = [e for e in self.entries() if e.state == "ready"]
            if waiting:
                logger.info("spool {} (instance {}): resuming {} archive(s) not yet stored "
                            "({} recovered from a process that died)", self.root, instance,
                            len(waiting), len(recovered))
            for entry in waiting:
                self.submit(entry.path)

        task = loop.create_task(go(), name=f"archive-resume-{self.root}")
        self._resuming.add(task)
        task.add_done_callback(self._resuming.discard)
        return task

    async def flush(self) -> tuple[list[ArchiveRecord], list[tuple[SpoolEntry, str]]]:
        """Recover orphans, then try every ready archive once, now. Returns what was stored
        and what failed (with the error)."""
        await self.recover_orphans()
        stored, failed = [], []
        for entry in self.entries():
            if entry.state != "ready":
                continue
            try:
                record = await self.upload(entry.path)
            except StoreError as exc:
                self._note_failure(entry.path, str(exc), entry.attempts + 1)
                failed.append((entry, str(exc)))
                continue
            if record is not None:
                stored.append(record)
        return stored, failed


_UPLOADERS: dict[Path, Uploader] = {}


def uploaders() -> list[Uploader]:
    """This process's uploaders, one per spool folder in use."""
    return list(_UPLOADERS.values())


def uploader_for(spool_dir: str | Path, *, retry_initial_s: float = 1.0,
                 retry_max_s: float = 300.0) -> Uploader:
    """The process's uploader of ``spool_dir`` (made on first use; later calls update its retry
    timing)."""
    root = Path(spool_dir).expanduser().resolve()
    up = _UPLOADERS.get(root)
    if up is None:
        up = _UPLOADERS[root] = Uploader(root, retry_initial_s=retry_initial_s,
                                         retry_max_s=retry_max_s)
    else:
        up.retry_initial_s, up.retry_max_s = retry_initial_s, retry_max_s
    return up


async def drain_uploads(timeout: float) -> int:
    """Wait up to ``timeout`` seconds for the archive uploads in flight on this loop to finish
    or fail; returns how many archives are not yet stored (they stay in their spool, so nothing
    is lost, and their retries go on while the loop runs)."""
    deadline = asyncio.get_running_loop().time() + max(timeout, 0.0)
    announced = False
    while True:
        busy = [t for up in _UPLOADERS.values() for t in up.uploading()]
        if not busy:
            break
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        if not announced:
            logger.info("waiting up to {:.0f} s for {} archive upload(s)", left, len(busy))
            announced = True
        await asyncio.wait(busy, timeout=min(left, 0.05))
    pending = [(up, t) for up in _UPLOADERS.values() for t in up.pending_tasks()]
    if pending:
        roots = sorted({str(up.root) for up, _ in pending})
        logger.warning("{} archive(s) not yet stored stay in the spool ({}); the next start or "
                       "`telewire archive flush` uploads them", len(pending), ", ".join(roots))
    return len(pending)


def find_archive(stream_id: str) -> ArchiveRecord | None:
    """The latest record of the archive of call ``stream_id`` in this process, if any."""
    for up in _UPLOADERS.values():
        for record in reversed(up.records):
            if record.stream_id == stream_id:
                return record
    return None


# ------------------------------------------------------------------------------------- reading


class ArchiveReader:
    """A finished archive on local disk, read for replay and inspection.

    Use :meth:`fetch` to get one from a folder or a store URL.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            self.manifest = read_json(folder / MANIFEST)
        except (OSError, ValueError) as exc:
            raise TelewireError(f"{folder}: not a telewire archive (no readable {MANIFEST}: "
                                f"{exc})") from None
        fmt = self.manifest["media_format"]
        self.codec, self.sample_rate = fmt["codec"], fmt["sample_rate"]
        self.bytes_per_ms = self.sample_rate * len(SILENCE[self.codec]) / 1000.0
        #: 1: audio records carry base64 payloads; 2: they reference ``call.wav``
        self.events_format = int(self.manifest.get("events_format", 1))
        if self.events_format not in (1, EVENTS_FORMAT):
            raise TelewireError(f"{folder}: event log format {self.events_format} was written "
                                f"by a newer telewire (this one reads 1 and {EVENTS_FORMAT})")

    @classmethod
    async def fetch(cls, ref: str, workdir: Path) -> "ArchiveReader":
        """Open the archive at ``ref``: a local folder, or a store URL of the archive's prefix
        (``file://…/<stream id>`` or ``s3://bucket/…/<stream id>``), downloaded to ``workdir``.

        Raises:
            TelewireError: not an archive, or the store failed (``StoreError``).
        """
        if "://" not in ref:
            return cls(Path(ref))
        store = open_store(ref.rstrip("/"))
        workdir.mkdir(parents=True, exist_ok=True)
        for name in ARCHIVE_FILES:
            await store.get_file(name, workdir / name)
        return cls(workdir)

    def transcript(self) -> list[dict[str, Any]]:
        """The turns of ``transcript.json``."""
        return read_json(self.folder / TRANSCRIPT).get("turns", [])

    def caller_turn_starts(self) -> list[float]:
        """Where each caller turn starts (ms), for ``replay --turn``.

        The caller turns of the transcript; when the model gave no caller transcripts, turn 1
        starts at 0 and each next one where an agent turn ended.
        """
        turns = self.transcript()
        starts = [t["start_ms"] for t in turns if t["role"] == "caller"]
        if starts:
            return starts
        return [0.0] + sorted({t["end_ms"] for t in turns if t["role"] == "agent"})

    def caller_audio(self, from_ms: float = 0.0) -> bytes:
        """The caller channel from ``from_ms`` to the end of the caller's audio (the archive's
        ``caller_bytes``; the rest of the channel is padding)."""
        width = len(SILENCE[self.codec])
        start = int(from_ms * self.bytes_per_ms) // width * width
        length = max(0, int(self.manifest["caller_bytes"]) - start)
        return read_wav_channel(self.folder / WAV, 0, start=start, length=length)

    def events(self) -> Iterator[dict[str, Any]]:
        """The records of ``events.jsonl``, in order."""
        return iter_events(self.folder / EVENTS)

    def audio_of(self, event: dict[str, Any]) -> bytes | None:
        """The audio an event-log record stands for: read from ``call.wav`` at its reference
        (``channel``, ``at``, ``len``: format 2), or decoded from its base64 ``payload`` (format
        1, and format-2 audio that is not in the WAV); ``None`` for other records.

        A reference gives where the audio was placed; what the WAV holds there is that audio,
        except where a later record changed it: agent audio after a later interrupt's
        ``cut_ms`` was never heard and is not in the WAV, and a caller chunk that overlapped
        (``caller_overlaps``) replaced what was there.
        """
        if event.get("kind") != "audio":
            return None
        if "payload" in event:
            import base64

            return base64.b64decode(event["payload"])
        channel = {"caller": 0, "agent": 1}.get(event.get("channel"))  # type: ignore[arg-type]
        if channel is None or "at" not in event:
            return None
        return read_wav_channel(self.folder / WAV, channel, start=int(event["at"]),
                                length=int(event["len"]))

    def dtmf(self, from_ms: float = 0.0) -> list[tuple[float, str]]:
        """Keypad digits the caller pressed at or after ``from_ms``, as ``(ms, digit)`` relative
        to ``from_ms`` (including the digit that interrupted the agent)."""
        out = []
        for event in iter_events(self.folder / EVENTS):
            t = float(event.get("t", 0.0))
            if t < from_ms:
                continue
            if event.get("kind") == "dtmf":
                out.append((t - from_ms, event["digit"]))
            elif event.get("kind") == "interrupt" and event.get("source") == "dtmf":
                reason = str(event.get("reason", ""))
                if reason.startswith("digit ") and len(reason) == 7:
                    out.append((t - from_ms, reason[-1]))
        return out
