"""The call's media timeline: where caller and agent audio sit, and the turns that came of it.

Depends only on the standard library (sans-I/O: fed values, returns decisions; no files, no clock).

The recorder observes frames and asks these classes where each chunk of audio belongs on one
timeline shared by both channels, measured in bytes of the call's audio format (8 bytes per
millisecond for G.711 at 8 kHz):

* :class:`CallerClock` places caller audio by the carrier's media timestamps, or by arrival order
  when the carrier gives none; timestamps never run ahead of the wall clock the recorder feeds
  it (plus a slack). Its end is the call's "now".
* :class:`AgentPlayout` places agent audio where the carrier plays it: queued after what is
  already queued, never before "now"; a clear (barge-in) cuts everything queued after "now";
  an acknowledged mark that names its item confirms it played and gives the estimate's lag.
* :class:`TranscriptBuilder` turns audio placements, cuts and transcript text into turns.

A richer playout signal (a carrier-neutral playout cursor) can later feed :class:`AgentPlayout`
the same calls with better numbers; nothing else changes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = ["Ack", "AgentPlayout", "CallerClock", "Cut", "TranscriptBuilder", "Turn"]


class CallerClock:
    """Places caller audio on the timeline and keeps the call's "now".

    The carrier's timestamps are believed only as far as the call's wall-clock time allows: a
    chunk may not start later than ``elapsed_ms + slack_ms`` (what the caller passes to
    :meth:`place`), nor further than ``max_gap_ms`` ahead of the current end. A timestamp past
    either bound (or before the call's start) is *clamped*: the chunk starts at the later of the
    current end and the wall-clock "now", and the carrier's clock is rebased there, so the chunks
    after it follow on from it. So timestamps alone can add no more silence than the call's
    wall-clock time plus ``slack_ms``: the timeline's end is at most that plus the audio
    actually received.

    Args:
        bytes_per_ms: bytes of audio per millisecond (8 for G.711 at 8 kHz).
        max_gap_ms: a timestamp further than this ahead of the current end is not believed.
        slack_ms: how far ahead of the wall clock a timestamp may run (jitter, the carrier's
            stream starting a little before the start event reached us).

    Attributes:
        end: bytes from the call's start to the end of the latest caller audio.
        frames: caller chunks placed.
        overlaps: chunks whose timestamp fell before the current end (written over what was
            there: a repeated or out-of-order chunk).
        jumps: chunks whose timestamp was not believed (clamped, see above).
        untimed: chunks without a timestamp (placed in arrival order).
    """

    def __init__(self, bytes_per_ms: float = 8.0, max_gap_ms: int = 600_000,
                 slack_ms: float = 2000.0, elapsed_ms: Callable[[], float] | None = None) -> None:
        if bytes_per_ms <= 0:
            raise ValueError(f"bytes_per_ms must be positive, not {bytes_per_ms!r}")
        self.bytes_per_ms = bytes_per_ms
        self.max_gap_bytes = int(max_gap_ms * bytes_per_ms)
        self.slack_ms = slack_ms
        self.end = 0
        self.frames = 0
        self.overlaps = 0
        self.jumps = 0
        self.untimed = 0
        self._elapsed = elapsed_ms
        self._shift = 0  # bytes taken off a timestamp's offset since the carrier's clock jumped

    @property
    def now_ms(self) -> float:
        """The call's media time: the end of the latest caller audio, in milliseconds."""
        return self.end / self.bytes_per_ms

    def place(self, timestamp_ms: int | float | None, nbytes: int,
              elapsed_ms: float | None = None) -> int:
        """Where a caller chunk of ``nbytes`` goes; returns its byte offset on the timeline.

        Args:
            timestamp_ms: the carrier's media timestamp, or ``None`` (arrival order).
            nbytes: the chunk's length.
            elapsed_ms: the call's wall-clock time since its start (monotonic). When ``None``,
                the ``elapsed_ms`` callable given to the constructor is asked, only for a chunk
                that would leave a gap (the common chunk, which follows on, needs no clock);
                with neither, only ``max_gap_ms`` bounds the timestamps.
        """
        self.frames += 1
        end = self.end
        if timestamp_ms is None:
            self.untimed += 1
            offset = end
        else:
            offset = round(timestamp_ms * self.bytes_per_ms) - self._shift
            if offset > end:  # a gap: believed only as far as the wall clock allows
                limit = end + self.max_gap_bytes
                if elapsed_ms is None and self._elapsed is not None:
                    elapsed_ms = self._elapsed()
                if elapsed_ms is not None:
                    wall = int((elapsed_ms + self.slack_ms) * self.bytes_per_ms)
                    if wall < limit:
                        limit = wall if wall > end else end
                if offset > limit:
                    offset = self._clamp(offset, end, elapsed_ms)
            elif offset < end:
                if offset < 0:
                    offset = self._clamp(offset, end, elapsed_ms)
                else:
                    self.overlaps += 1
        stop = offset + nbytes
        if stop > end:
            self.end = stop
        return offset

    def _clamp(self, offset: int, end: int, elapsed_ms: float | None) -> int:
        """A timestamp not believed: the chunk goes at the later of the end and the wall-clock
        now (within ``max_gap_ms``), and the carrier's clock is rebased there."""
        self.jumps += 1
        placed = end
        if elapsed_ms is None and self._elapsed is not None:
            elapsed_ms = self._elapsed()
        if elapsed_ms is not None:
            now = int(elapsed_ms * self.bytes_per_ms)
            if now > end:
                placed = min(now, end + self.max_gap_bytes)
        self._shift += offset - placed
        return placed


@dataclass(frozen=True, slots=True)
class Cut:
    """Agent audio queued after ``at`` (bytes) was never heard: ``discarded`` bytes of it."""

    at: int
    discarded: int
    items: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledged mark naming an item: ``item_id`` ended at ``end`` by our estimate; the
    carrier confirmed it at ``now``. ``lag`` = ``now - end`` (bytes; includes the round trip)."""

    item_id: str | None
    end: int
    now: int

    @property
    def lag(self) -> int:
        return self.now - self.end


class AgentPlayout:
    """Where agent audio plays on the timeline, from what the recorder observes.

    The carrier plays agent audio in order, as it arrives, without gaps while audio is queued:
    a chunk starts at the later of "now" and the end of what is already queued. A clear (an
    interrupt reaching the carrier) drops everything queued after "now". An acknowledged mark
    that names its item confirms the item played to its end and measures the estimate's lag;
    a mark that names none (``carrier_out`` marks by interval) is only counted.

    Attributes:
        queue_end: bytes from the call's start to the end of the queued agent audio.
        frames: agent chunks placed.
        cuts: clears that cut queued audio.
        cut_bytes: agent audio discarded by clears (never heard).
        acks: acknowledged marks seen.
    """

    def __init__(self) -> None:
        self.queue_end = 0
        self.frames = 0
        self.cuts = 0
        self.cut_bytes = 0
        self.acks = 0
        self._queued_items: deque[tuple[str | None, int]] = deque()  # (item, its end) after now
        self._item_end: dict[str | None, int] = {}

    def audio(self, now: int, nbytes: int, item_id: str | None) -> int:
        """Place ``nbytes`` of agent audio arriving at ``now``; returns its byte offset."""
        self.frames += 1
        start = max(now, self.queue_end)
        self.queue_end = start + nbytes
        self._item_end[item_id] = self.queue_end
        q = self._queued_items
        while q and q[0][1] <= now:
            q.popleft()
        if q and q[-1][0] == item_id:
            q[-1] = (item_id, self.queue_end)
        else:
            q.append((item_id, self.queue_end))
        return start

    def clear(self, now: int) -> Cut | None:
        """The carrier was told to clear at ``now``: returns what was cut, or ``None`` when
        nothing was queued beyond ``now``."""
        q = self._queued_items
        while q and q[0][1] <= now:
            q.popleft()
        if self.queue_end <= now:
            q.clear()
            return None
        cut = Cut(at=now, discarded=self.queue_end - now, items=tuple(i for i, _ in q))
        for item in cut.items:
            self._item_end[item] = min(self._item_end.get(item, now), now)
        q.clear()
        self.cuts += 1
        self.cut_bytes += cut.discarded
        self.queue_end = now
        return cut

    def played(self, now: int, item_id: str | None = None) -> Ack | None:
        """A mark came back at ``now``. When it names ``item_id`` (and that item was placed),
        returns the item's estimated end and the lag; otherwise ``None``."""
        self.acks += 1
        if item_id is None or item_id not in self._item_end:
            return None
        return Ack(item_id=item_id, end=self._item_end[item_id], now=now)


@dataclass(slots=True)
class Turn:
    """One turn of the conversation. Times are milliseconds on the call's timeline."""

    role: str
    text: str
    start_ms: float
    end_ms: float
    interrupted: bool = False
    item_id: str | None = None
    played_confirmed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "text": self.text, "start_ms": round(self.start_ms, 1),
                "end_ms": round(self.end_ms, 1), "interrupted": self.interrupted,
                "item_id": self.item_id, "played_confirmed": self.played_confirmed}


@dataclass(slots=True)
class _AgentItem:
    start_ms: float
    end_ms: float
    text: str = ""
    final: bool = False
    interrupted: bool = False
    played: bool = False


class TranscriptBuilder:
    """Builds the turns of a call from placements, cuts and transcript text.

    Agent turns are agent items: from the first to the last of their audio as placed (cut short
    where a clear cut them; ``interrupted`` then). Caller turns come from the model's caller
    transcripts: a caller turn starts when the floor passed to the caller (the call's start, the
    end of the agent's previous audio, or the previous caller turn's end) and ends when its final
    transcript arrived. Memory grows with the number of turns, not with the call's length.

    Everything it needs is in the event log, so :meth:`feed_event` rebuilds the same turns from
    an ``events.jsonl`` (used to recover archives of a process that died mid-call).
    """

    def __init__(self) -> None:
        self._agent: dict[str | None, _AgentItem] = {}
        self._caller: list[Turn] = []
        self._caller_text: dict[str | None, str] = {}
        self._floor_ms = 0.0

    def agent_audio(self, item_id: str | None, at_ms: float, end_ms: float) -> None:
        item = self._agent.get(item_id)
        if item is None:
            self._agent[item_id] = _AgentItem(at_ms, end_ms)
        else:
            item.end_ms = max(item.end_ms, end_ms)
            item.start_ms = min(item.start_ms, at_ms)

    def cut(self, at_ms: float) -> None:
        for item in self._agent.values():
            if item.end_ms > at_ms:
                item.interrupted = True
                if item.start_ms >= at_ms:  # queued, never heard at all
                    item.start_ms = at_ms
                item.end_ms = at_ms

    def played(self, item_id: str | None) -> None:
        item = self._agent.get(item_id)
        if item is not None:
            item.played = True

    def transcript(self, role: str, text: str, item_id: str | None, final: bool,
                   t_ms: float) -> None:
        if role == "agent":
            item = self._agent.get(item_id)
            if item is None:
                item = self._agent[item_id] = _AgentItem(t_ms, t_ms)
            if final:
                item.text, item.final = text, True
            elif not item.final:
                item.text += text
            return
        if not final:
            self._caller_text[item_id] = self._caller_text.get(item_id, "") + text
            return
        self._caller_text.pop(item_id, None)
        start = self._floor_ms
        for item in self._agent.values():
            if item.end_ms <= t_ms:
                start = max(start, item.end_ms)
        self._caller.append(Turn("caller", text, min(start, t_ms), t_ms, item_id=item_id))
        self._floor_ms = t_ms

    def feed_event(self, event: Mapping[str, Any]) -> None:
        """Apply one event-log record (a parsed line of ``events.jsonl``)."""
        kind = event.get("kind")
        if kind == "audio" and event.get("channel") == "agent" and "at_ms" in event:
            self.agent_audio(event.get("item_id"), event["at_ms"], event["end_ms"])
        elif kind == "interrupt" and "cut_ms" in event:
            self.cut(event["cut_ms"])
        elif kind == "mark" and event.get("acked_item", False) is not False:
            self.played(event.get("acked_item"))
        elif kind == "transcript":
            self.transcript(event["role"], event.get("text", ""), event.get("item_id"),
                            bool(event.get("final", True)), float(event.get("t", 0.0)))

    def turns(self) -> list[Turn]:
        """Every turn, in order of start."""
        out = [Turn("agent", item.text, item.start_ms, item.end_ms, item.interrupted, item_id,
                    item.played) for item_id, item in self._agent.items()]
        out.extend(self._caller)
        out.sort(key=lambda t: (t.start_ms, t.role != "caller"))
        return out

