"""What the caller has actually heard: a playout cursor over the audio sent to the carrier.

Depends on nothing in telewire (sans-I/O: the caller passes the clock). ``carrier_out`` feeds it.

Carriers buffer the agent audio we send and play it in real time. :class:`PlaybackLedger`
counts the bytes sent and places uniquely named marks: right after the first audio of every
item (its echo anchors our clock to the carrier's playout, which starts a network latency and a
jitter buffer later than we sent), then after every ``mark_interval_ms`` of audio (optionally
stretched at random, so that calls started together do not mark together), and at every item
boundary. It moves the played position only on marks acknowledged *before* a clear
(Twilio echoes every pending mark on ``clear``; those echoes say "flushed", not "played").
Between acknowledgements the position advances at the playout rate from the last acknowledged
mark, never past the next unacknowledged one. A carrier plays at a fixed rate, so once anchored
the interpolation holds; the later marks only correct what the carrier did not play on time
(an underrun while our audio was late on the network), at the price of one message each way.
A carrier without marks gets the same cursor paced by the clock alone. On barge-in,
:meth:`clear` returns the item that was playing and how many milliseconds of it the caller
heard, clamped to what was sent for that item.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Heard", "PlaybackLedger"]


@dataclass(frozen=True, slots=True)
class Heard:
    """The outcome of a clear: the item that was playing and how much of it was heard."""

    item_id: str | None
    heard_ms: float
    sent_ms: float


class PlaybackLedger:
    """Playout accounting for one call.

    Args:
        marks: the carrier acknowledges marks; without them the cursor is paced by the clock.
        bytes_per_ms: playout rate (8 for mu-law 8 kHz).
        mark_interval_ms: place a mark after at least this much audio (besides the marks after
            the first audio of an item and at item boundaries).
        mark_jitter: stretch each interval by a random fraction up to this (0.5: 1 to 1.5
            intervals), so that calls that started together do not all mark at once.
        rng: the random source for the jitter (seed one for repeatable marks); default the
            ``random`` module's shared generator.
    """

    def __init__(self, *, marks: bool, bytes_per_ms: float = 8.0,
                 mark_interval_ms: float = 1000.0, mark_jitter: float = 0.0,
                 rng: random.Random | None = None) -> None:
        if mark_jitter < 0:
            raise ValueError(f"mark_jitter must be >= 0, not {mark_jitter!r}")
        self.marks = marks
        self.rate = bytes_per_ms
        self.mark_bytes = mark_interval_ms * bytes_per_ms
        self._jitter = mark_jitter
        self._random = (rng or random).random  # no generator of its own per call: ~3 KiB each
        self._next_mark_bytes = self._interval_bytes()
        self.total_sent = 0
        self._anchor_offset = 0.0
        self._anchor_time: float | None = None
        self._acked = 0
        self._pending: dict[str, int] = {}
        self._flushed: set[str] = set()
        self._unmarked = 0
        self._seq = 0
        self._items: list[tuple[str | None, int]] = []
        self._item: str | None = None
        self._item_open = False
        self._anchor_due = False
        self._idle_at = 0.0

    # ------------------------------------------------------------------------------ sending

    def before_audio(self, item_id: str | None, now: float) -> str | None:
        """Call before sending audio of ``item_id``; returns a mark to send first, if any.

        A new item closes the previous one with a mark (when there is unmarked audio), so the
        end of every item can be confirmed, and its own first audio will be marked too.
        """
        if self._item_open and item_id == self._item:  # the common case: more of the same item
            if now >= self._idle_at and self.position(now) >= self.total_sent:
                self._anchor_offset, self._anchor_time = float(self.total_sent), now
            return None
        mark = self._new_mark() if self._item_open else None
        if self.position(now) >= self.total_sent:  # the carrier had played everything
            self._anchor_offset, self._anchor_time = float(self.total_sent), now
        self._items.append((item_id, self.total_sent))
        if len(self._items) > 64:  # only items that may still be playing matter
            del self._items[:-64]
        self._item, self._item_open = item_id, True
        self._anchor_due = self.marks
        return mark

    def after_audio(self, nbytes: int, now: float) -> str | None:
        """Call after sending ``nbytes`` of audio; returns a mark to send now, if one is due."""
        if self._anchor_time is None:
            self._anchor_time = now
        self.total_sent += nbytes
        self._unmarked += nbytes
        # before this instant, playout cannot have caught up with what is sent (a cheap bound
        # that spares before_audio the full position computation on every frame)
        self._idle_at = self._anchor_time + (self.total_sent - self._anchor_offset) / self.rate / 1000.0
        if self._anchor_due or self._unmarked >= self._next_mark_bytes:
            return self._new_mark()
        return None

    def final_mark(self) -> str | None:
        """A mark after the last audio sent (``None`` when it is already marked)."""
        return self._new_mark()

    def _new_mark(self) -> str | None:
        if not self.marks or self._unmarked == 0:
            return None
        self._seq += 1
        name = f"tw-{self._seq}"
        self._pending[name] = self.total_sent
        self._unmarked = 0
        self._anchor_due = False
        self._next_mark_bytes = self._interval_bytes()
        return name

    def _interval_bytes(self) -> float:
        if not self._jitter:
            return self.mark_bytes
        return self.mark_bytes * (1.0 + self._jitter * self._random())

    # ------------------------------------------------------------------------------ feedback

    def acknowledged(self, name: str, now: float) -> bool:
        """The carrier echoed mark ``name``. Returns ``True`` when it was ours and played.

        An echo of a mark that a clear flushed, or an unknown or repeated name, moves nothing.
        """
        if name in self._flushed:
            self._flushed.discard(name)
            return False
        offset = self._pending.pop(name, None)
        if offset is None:
            return False
        pending = self._pending
        while pending:  # marks play in order: earlier ones have played too
            first = next(iter(pending))
            if pending[first] > offset:
                break
            del pending[first]
        if offset > self._acked:
            self._acked = offset
            self._anchor_offset, self._anchor_time = float(offset), now
            self._idle_at = now + (self.total_sent - offset) / self.rate / 1000.0
        return True

    def position(self, now: float) -> float:
        """Bytes of all audio sent so far that have played by ``now``."""
        if self._anchor_time is None:
            return 0.0
        pos = self._anchor_offset + (now - self._anchor_time) * 1000.0 * self.rate
        # pending marks are in the order sent, so offsets increase: the first is the nearest
        limit = next(iter(self._pending.values())) if self._pending else self.total_sent
        return max(float(self._acked), min(pos, float(limit), float(self.total_sent)))

    @property
    def pending_marks(self) -> int:
        """Marks sent and not yet acknowledged."""
        return len(self._pending)

    def drained(self, now: float) -> bool:
        """Everything sent has played (marks acknowledged, or the clock says so)."""
        if self.marks:
            return not self._pending and self._unmarked == 0
        return self.position(now) >= self.total_sent

    # ------------------------------------------------------------------------------ barge-in

    def clear(self, now: float) -> Heard | None:
        """The carrier was told to drop its buffer at ``now``.

        Returns the item that was playing and how much of it was heard, or ``None`` when nothing
        was playing (all audio had already played). Pending marks become "flushed": their echoes
        will not move the position.
        """
        pos = self.position(now)
        result = None
        if pos < self.total_sent and self._items:
            start, item = 0, self._items[0][0]
            ends = self._items[1:] + [(None, self.total_sent)]
            for (item_id, begin), (_, end) in zip(self._items, ends):
                if begin <= pos < end:
                    item, start = item_id, begin
                    sent = end - begin
                    result = Heard(item, round(min(pos - start, sent) / self.rate, 3),
                                   round(sent / self.rate, 3))
                    break
        self._flushed.update(self._pending)
        self._pending.clear()
        self._unmarked = 0
        self._acked = self.total_sent
        self._anchor_offset, self._anchor_time = float(self.total_sent), now
        self._idle_at = now
        self._item_open = False
        self._items = [(i, b) for i, b in self._items if b >= self.total_sent]
        return result
