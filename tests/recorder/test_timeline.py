"""The sans-I/O timeline, no event loop: caller placement, agent playout, cuts, marks, turns."""

from __future__ import annotations

from telewire.timeline import AgentPlayout, CallerClock, TranscriptBuilder


def test_caller_audio_sits_at_carrier_timestamps_with_gaps_and_overlaps():
    clock = CallerClock(8)
    assert clock.place(0, 160) == 0
    assert clock.place(20, 160) == 160
    assert clock.place(60, 160) == 480  # a 20 ms gap: silence 320..480 on the track
    assert clock.end == 640 and clock.now_ms == 80
    assert clock.place(40, 160) == 320  # late chunk: written where it belongs
    assert clock.overlaps == 1 and clock.end == 640


def test_caller_audio_without_timestamps_falls_back_to_arrival_order():
    clock = CallerClock(8)
    assert [clock.place(None, 160) for _ in range(3)] == [0, 160, 320]
    assert clock.untimed == 3 and clock.now_ms == 60


def test_unbelievable_timestamp_jump_is_placed_in_arrival_order():
    clock = CallerClock(8, max_gap_ms=1000)
    clock.place(0, 160)
    assert clock.place(10_000_000, 160) == 160
    assert clock.place(-5, 160) == 320
    assert clock.jumps == 2


def test_agent_audio_queues_after_what_is_queued_and_never_before_now():
    p = AgentPlayout()
    assert p.audio(now=800, nbytes=160, item_id="a") == 800
    assert p.audio(now=800, nbytes=160, item_id="a") == 960  # burst: queued behind
    assert p.audio(now=5000, nbytes=160, item_id="a") == 5000  # silence where nothing played
    assert p.queue_end == 5160


def test_clear_cuts_what_was_queued_after_now():
    p = AgentPlayout()
    for _ in range(10):
        p.audio(now=0, nbytes=160, item_id="a")  # 200 ms queued at once
    cut = p.clear(now=480)
    assert cut is not None and cut.at == 480 and cut.discarded == 1600 - 480
    assert cut.items == ("a",)
    assert p.queue_end == 480 and p.cuts == 1
    assert p.audio(now=500, nbytes=160, item_id="b") == 500
    assert p.clear(now=10_000) is None  # nothing queued any more: no cut


def test_a_mark_naming_its_item_confirms_it_and_measures_the_lag():
    p = AgentPlayout()
    p.audio(0, 800, "a")
    p.audio(0, 800, "b")
    ack = p.played(now=1000, item_id="a")
    assert ack is not None and ack.end == 800 and ack.lag == 200
    assert p.played(now=1700) is None  # an interval mark names no item: only counted
    assert p.played(now=1700, item_id="zz") is None
    assert p.acks == 3


def test_a_cut_item_ends_at_the_cut_for_later_acks():
    p = AgentPlayout()
    p.audio(0, 800, "a")
    p.clear(now=300)
    ack = p.played(now=320, item_id="a")
    assert ack is not None and ack.end == 300 and ack.lag == 20


def test_turns_from_placements_cuts_and_transcripts():
    t = TranscriptBuilder()
    t.transcript("caller", "hello", "c1", True, 900.0)
    t.agent_audio("a1", 1000.0, 1500.0)
    t.agent_audio("a1", 1500.0, 3000.0)
    t.transcript("agent", "Hi, how ", "a1", False, 1000.0)
    t.transcript("agent", "can I help?", "a1", False, 1100.0)
    t.cut(2000.0)
    t.transcript("caller", "stop", "c2", True, 2600.0)
    t.agent_audio("a2", 2700.0, 3500.0)
    t.transcript("agent", "Sure.", "a2", True, 2700.0)
    t.played("a2")
    turns = [x.as_dict() for x in t.turns()]
    assert [(x["role"], x["text"]) for x in turns] == [
        ("caller", "hello"), ("agent", "Hi, how can I help?"), ("caller", "stop"),
        ("agent", "Sure.")]
    assert turns[0]["start_ms"] == 0 and turns[0]["end_ms"] == 900
    assert turns[1] == {"role": "agent", "text": "Hi, how can I help?", "start_ms": 1000.0,
                        "end_ms": 2000.0, "interrupted": True, "item_id": "a1",
                        "played_confirmed": False}
    assert turns[2]["start_ms"] == 2000 and turns[2]["end_ms"] == 2600  # floor passed at the cut
    assert not turns[3]["interrupted"] and turns[3]["played_confirmed"]


def test_agent_item_queued_entirely_after_a_cut_was_never_heard():
    t = TranscriptBuilder()
    t.agent_audio("a", 0.0, 500.0)
    t.agent_audio("b", 500.0, 900.0)
    t.cut(300.0)
    a, b = t.turns()
    assert (a.start_ms, a.end_ms, a.interrupted) == (0.0, 300.0, True)
    assert (b.start_ms, b.end_ms, b.interrupted) == (300.0, 300.0, True)


def test_event_log_records_rebuild_the_same_turns():
    live, replayed = TranscriptBuilder(), TranscriptBuilder()
    live.agent_audio("a", 20.0, 40.0)
    live.cut(30.0)
    live.transcript("caller", "yes", "c", True, 50.0)
    live.played("a")
    for event in [
        {"kind": "audio", "channel": "agent", "item_id": "a", "at_ms": 20.0, "end_ms": 40.0},
        {"kind": "audio", "channel": "caller", "at_ms": 0.0, "end_ms": 20.0},
        {"kind": "interrupt", "source": "dtmf", "cut_ms": 30.0},
        {"kind": "transcript", "role": "caller", "text": "yes", "item_id": "c", "final": True,
         "t": 50.0},
        {"kind": "mark", "name": "item-1", "acked_item": "a"},
    ]:
        replayed.feed_event(event)
    assert [x.as_dict() for x in live.turns()] == [x.as_dict() for x in replayed.turns()]


def test_timestamps_never_run_ahead_of_the_wall_clock_plus_slack():
    clock = CallerClock(8, slack_ms=2000)
    at = [clock.place(i * 599_000, 160, elapsed_ms=i * 1.0) for i in range(30)]
    assert at[0] == 0 and clock.jumps == 29
    assert clock.end <= (29 + 2000) * 8 + 30 * 160  # wall clock + slack + what was received
    assert at == sorted(at)  # each placed at the later of the end and the wall-clock now


def test_a_clamped_clock_is_rebased_so_the_chunks_after_it_follow_on():
    clock = CallerClock(8, slack_ms=2000)
    clock.place(0, 160, elapsed_ms=0)
    assert clock.place(3_600_000, 160, elapsed_ms=20) == 160  # an hour ahead: not believed
    assert [clock.place(3_600_000 + 20 * i, 160, elapsed_ms=20 + 20 * i)
            for i in range(1, 4)] == [320, 480, 640]
    assert clock.jumps == 1 and clock.overlaps == 0


def test_a_gap_the_wall_clock_agrees_with_is_believed():
    clock = CallerClock(8, slack_ms=2000)
    clock.place(0, 160, elapsed_ms=0)
    assert clock.place(30_000, 160, elapsed_ms=29_990) == 240_000  # 30 s on hold, for real
    assert clock.place(31_500, 160, elapsed_ms=30_000) == 252_000  # 1.5 s ahead: within slack
    assert clock.place(40_000, 160, elapsed_ms=30_010) == 252_160  # 10 s ahead: clamped
    assert clock.jumps == 1
    assert clock.place(40_020, 160, elapsed_ms=30_030) == 252_320  # and followed on from there


def test_fast_forwarded_audio_is_never_clamped():
    clock = CallerClock(8, slack_ms=0)
    assert [clock.place(20 * i, 160, elapsed_ms=0.0) for i in range(500)] == [
        160 * i for i in range(500)]
    assert clock.jumps == 0 and clock.end == 500 * 160
