"""The playout cursor: marks, flushed echoes, pacing without marks, heard positions (no event loop)."""

from __future__ import annotations

import random

import pytest

from telewire.playback import PlaybackLedger

MS = 8  # bytes per ms of mu-law


def send(ledger: PlaybackLedger, item: str, ms: int, now: float) -> list[str]:
    marks = [ledger.before_audio(item, now), ledger.after_audio(ms * MS, now)]
    return [m for m in marks if m]


def test_marks_after_first_audio_every_interval_and_at_item_boundaries():
    led = PlaybackLedger(marks=True, mark_interval_ms=100)
    assert send(led, "a", 20, 0.0) == ["tw-1"]          # the first audio of an item: anchor
    assert send(led, "a", 60, 0.0) == []
    assert send(led, "a", 60, 0.0) == ["tw-2"]          # 120 ms unmarked: due
    assert send(led, "b", 20, 0.0) == ["tw-3"]          # "a" ended at its mark; "b" anchored
    assert send(led, "b", 30, 0.0) == []
    assert send(led, "c", 20, 0.0) == ["tw-4", "tw-5"]  # "b" had 30 ms unmarked: closed first
    assert send(led, "c", 10, 0.0) == []
    assert led.final_mark() == "tw-6" and led.final_mark() is None


def test_default_interval_marks_a_steady_stream_once_a_second():
    led = PlaybackLedger(marks=True)
    marks = [m for i in range(150) for m in send(led, "a", 20, i * 0.02)]
    assert marks == ["tw-1", "tw-2", "tw-3"]            # 3 s of audio: at 20, 1020 and 2020 ms
    assert led.pending_marks == 3


def test_first_mark_anchors_the_clock_to_a_carrier_that_starts_playing_late():
    led = PlaybackLedger(marks=True, mark_interval_ms=1000)
    assert send(led, "a", 20, 0.0) == ["tw-1"]
    assert send(led, "a", 1000, 0.0) == ["tw-2"]        # the rest of a fast burst
    assert led.position(0.1) == 20 * MS                 # held at tw-1 until the carrier says so
    assert led.acknowledged("tw-1", 0.12)               # it started playing 100 ms after the send
    heard = led.clear(0.22)
    assert heard.item_id == "a" and heard.heard_ms == pytest.approx(120.0)


def test_position_advances_from_acknowledged_marks_and_never_past_the_next_one():
    led = PlaybackLedger(marks=True, mark_interval_ms=100)
    send(led, "a", 100, 0.0)          # tw-1 at 800 bytes
    send(led, "a", 100, 0.0)          # tw-2 at 1600 bytes
    assert led.position(0.05) == pytest.approx(50 * MS)
    assert led.position(0.5) == 100 * MS               # clamped: tw-1 not acknowledged yet
    assert led.acknowledged("tw-1", 0.5)
    assert led.position(0.55) == pytest.approx(150 * MS)
    assert led.acknowledged("tw-2", 0.6) and led.drained(0.6)
    assert not led.acknowledged("tw-2", 0.7)           # repeated echo moves nothing
    assert not led.acknowledged("nope", 0.7)


def test_clear_reports_the_heard_position_of_the_playing_item():
    led = PlaybackLedger(marks=True, mark_interval_ms=100)
    send(led, "a", 300, 0.0)                            # one chunk, marked at its end
    heard = led.clear(0.1234)
    assert heard is not None and heard.item_id == "a"
    assert heard.heard_ms == pytest.approx(123.4) and heard.sent_ms == 300
    for _ in range(3):
        send(led, "b", 100, 1.0)                        # marks at 100, 200, 300 ms of "b"
    heard = led.clear(1.15)                              # no echo yet: not past the first mark
    assert heard.item_id == "b" and heard.heard_ms == pytest.approx(100.0)


def test_echoes_after_clear_are_flushed_not_played():
    led = PlaybackLedger(marks=True, mark_interval_ms=50)
    names = send(led, "a", 60, 0.0) + send(led, "a", 60, 0.0)
    assert names == ["tw-1", "tw-2"]
    assert led.acknowledged("tw-1", 0.06)
    heard = led.clear(0.07)
    assert heard.item_id == "a" and heard.heard_ms == pytest.approx(70.0)
    assert not led.acknowledged("tw-2", 0.08)          # Twilio echoes pending marks on clear
    names = send(led, "b", 60, 1.0)
    assert names == ["tw-3"]
    assert led.clear(1.01).heard_ms == pytest.approx(10.0)


def test_heard_is_relative_to_the_item_and_clamped_to_what_was_sent():
    led = PlaybackLedger(marks=True, mark_interval_ms=1000)
    send(led, "a", 200, 0.0)
    send(led, "b", 200, 0.0)                            # tw-1 after "a", tw-2 after "b"
    assert led.acknowledged("tw-1", 0.2)
    heard = led.clear(0.25)
    assert heard.item_id == "b" and heard.heard_ms == pytest.approx(50.0) and heard.sent_ms == 200


def test_nothing_playing_means_nothing_to_truncate():
    led = PlaybackLedger(marks=True)
    assert led.clear(0.0) is None
    (mark,) = send(led, "a", 40, 0.0)
    assert led.final_mark() is None                     # already marked after its audio
    assert led.acknowledged(mark, 0.04) and led.drained(0.04)
    assert led.clear(1.0) is None


def test_without_marks_the_clock_paces_the_cursor_across_gaps():
    led = PlaybackLedger(marks=False)
    assert send(led, "a", 500, 0.0) == []
    assert led.position(0.2) == pytest.approx(200 * MS)
    assert not led.drained(0.2) and led.drained(0.5)
    send(led, "b", 100, 2.0)                            # buffer had drained: playback restarts at 2.0
    heard = led.clear(2.03)
    assert heard.item_id == "b" and heard.heard_ms == pytest.approx(30.0)
    assert led.final_mark() is None


def test_audio_queued_behind_earlier_audio_starts_when_that_ends():
    led = PlaybackLedger(marks=False)
    send(led, "a", 100, 0.0)
    send(led, "b", 100, 0.05)                           # sent while "a" still playing
    heard = led.clear(0.15)
    assert heard.item_id == "b" and heard.heard_ms == pytest.approx(50.0)


def test_jitter_spreads_the_marks_of_calls_that_started_together():
    firsts = set()
    for seed in range(50):
        led = PlaybackLedger(marks=True, mark_interval_ms=1000, mark_jitter=0.5,
                             rng=random.Random(seed))
        at = []
        for i in range(400):                            # 8 s of 20 ms frames, in lockstep
            if send(led, "a", 20, i * 0.02):
                at.append((i + 1) * 20)
        gaps = [b - a for a, b in zip(at, at[1:])]
        assert at[0] == 20 and all(1000 <= g <= 1520 for g in gaps), gaps
        firsts.add(at[1])
    assert max(firsts) - min(firsts) >= 300             # not all in the same instant


def test_jitter_must_not_be_negative():
    with pytest.raises(ValueError, match="mark_jitter"):
        PlaybackLedger(marks=True, mark_jitter=-0.1)
