"""Per-call budgets over real loopback sockets: the simulated Twilio call <-> `TelewireServer` <->
the fake realtime server in talk mode. On reaching ``max_cost_usd`` or ``max_call_seconds`` the
agent says the configured goodbye, then the call hangs up through the carrier (reason
``budget``) once that goodbye has played."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from unittest import mock

from openai_ga import assert_ga

from telewire.graph import load_graph
from telewire.registry import Carrier, CarrierRegistry
from telewire.server import TelewireServer
from telewire.settings import load_settings
from telewire.testing.fake_realtime import FakeRealtimeServer, talk_audio
from telewire.testing.simulator import CallSimulator

SILENCE = b"\xff" * 8  # one mu-law millisecond
GOODBYE = "Say that the call has reached its budget, and goodbye."
# gpt-realtime list prices, USD per 1M tokens (telewire/data/prices.toml)
RATES = {"input_text_tokens": Decimal("4.00"), "cached_text_tokens": Decimal("0.40"),
         "input_audio_tokens": Decimal("32.00"), "cached_audio_tokens": Decimal("0.40"),
         "output_text_tokens": Decimal("16.00"), "output_audio_tokens": Decimal("64.00")}


def by_hand(usage: dict[str, float]) -> Decimal:
    """USD of usage totals: uncached input at the full rate, cached input at the cached rate."""
    text = usage["input_text_tokens"] - usage["cached_text_tokens"]
    audio = usage["input_audio_tokens"] - usage["cached_audio_tokens"]
    return (text * RATES["input_text_tokens"]
            + usage["cached_text_tokens"] * RATES["cached_text_tokens"]
            + audio * RATES["input_audio_tokens"]
            + usage["cached_audio_tokens"] * RATES["cached_audio_tokens"]
            + usage["output_text_tokens"] * RATES["output_text_tokens"]
            + usage["output_audio_tokens"] * RATES["output_audio_tokens"]) / 1_000_000


async def serve(fake: FakeRealtimeServer, tmp_path: Path, *overrides: str) -> TelewireServer:
    srv = TelewireServer(
        load_settings(host="127.0.0.1", port=0),
        load_graph(None, ["rt.config.provider=openai", f"rt.config.url={fake.url}",
                          "rt.config.transcription_model=",
                          f"recorder.config.store=file://{tmp_path / 'store'}",
                          f"recorder.config.spool_dir={tmp_path / 'spool'}", *overrides]),
        CarrierRegistry())
    await srv.start()
    return srv


def manifest(tmp_path: Path) -> dict:
    (found,) = (tmp_path / "store").rglob("manifest.json")
    return json.loads(found.read_text())


async def run_call(fake: FakeRealtimeServer, tmp_path: Path, *overrides: str,
                   audio_ms: int = 8000):
    hangups: list[str] = []
    original = Carrier.hangup

    def counting(self, call, reason):
        hangups.append(reason)
        return original(self, call, reason)

    with mock.patch.object(Carrier, "hangup", counting):
        srv = await serve(fake, tmp_path, *overrides)
        try:
            sim = CallSimulator(f"ws://127.0.0.1:{srv.port}/media/twilio", drain_s=3.0,
                                hang_up=False)
            result = await asyncio.wait_for(sim.run(SILENCE * audio_ms), 30)
        finally:
            await srv.stop(drain_timeout_s=5)
    return result, hangups


async def test_max_cost_usd_reached_mid_call_says_goodbye_then_hangs_up_with_reason_budget(
        tmp_path: Path):
    # The first answer (800 ms of audio = 16 output audio tokens = $0.001024 alone) passes the
    # $0.0005 budget: the agent is told to say goodbye, and the call ends after it has played.
    async with FakeRealtimeServer(mode="talk", talk_speed=0, response_audio_ms=800,
                                  talk_after_appends=20) as fake:
        result, hangups = await run_call(
            fake, tmp_path, "rt.config.max_cost_usd=0.0005",
            f"rt.config.budget_goodbye={json.dumps(GOODBYE)}")
        conn = fake.connections[0]
    creates = conn.events("response.create")
    assert [c.get("response") for c in creates] == [
        {"instructions": GOODBYE, "metadata": {"telewire": "budget_goodbye"}}]
    for event in conn.received:
        assert_ga(event, side="client")
    assert [r["status"] for r in conn.responses] == ["completed", "completed"]
    # the carrier's hang-up hook ran once, for the budget, and the socket closed after it
    assert hangups == ["budget"]
    assert result.close_code == 1000
    # the goodbye (the fake's second response) reached the caller whole, and every mark came
    # back before the socket closed: the hang-up waited for the goodbye to play
    assert result.received_audio == talk_audio(1, 800 * 8) + talk_audio(2, 800 * 8)
    assert result.marks_received and set(result.marks_received) == set(result.marks_echoed)
    assert result.sent_frames < 400  # ended well before the caller's 8 s were sent
    # no caller audio reached the model once the budget was reached
    appends_after = [e for e in conn.received[conn.received.index(creates[0]):]
                     if e["type"] == "input_audio_buffer.append"]
    assert appends_after == []
    # the archive: end reason budget, and the call's exact cost with its usage totals
    m = manifest(tmp_path)
    assert m["end_reason"] == "budget" and "max_cost_usd" in m["end_detail"]
    (cost,) = m["counters"]["cost"]
    assert cost["responses"] == 2 and cost["model"] == "gpt-realtime"
    usage = cost["usage"]
    assert usage["cached_text_tokens"] > 0  # the goodbye re-read the conversation, cached
    assert Decimal(cost["usd"]) == by_hand(usage)
    assert Decimal(cost["usd"]) >= Decimal("0.0005")
    assert m["counters"]["cost_usd"] == float(by_hand(usage))
    (transcript,) = (tmp_path / "store").rglob("transcript.json")
    assert json.loads(transcript.read_text())["cost_usd"] == float(by_hand(usage))


async def test_max_call_seconds_ends_a_quiet_call_after_the_goodbye(tmp_path: Path):
    async with FakeRealtimeServer(mode="talk", talk_speed=0, response_audio_ms=400,
                                  talk_after_appends=10_000) as fake:
        result, hangups = await run_call(fake, tmp_path, "rt.config.max_call_seconds=1",
                                         audio_ms=10_000)
        conn = fake.connections[0]
    (create,) = conn.events("response.create")
    assert create["response"]["metadata"] == {"telewire": "budget_goodbye"}
    assert "limit" in create["response"]["instructions"]  # the default goodbye instruction
    assert hangups == ["budget"] and result.close_code == 1000
    assert result.received_audio == talk_audio(1, 400 * 8)
    m = manifest(tmp_path)
    assert m["end_reason"] == "budget" and "max_call_seconds" in m["end_detail"]
    assert result.sent_frames < 250  # about 1 s of caller audio, not the 10 s offered


async def test_an_empty_goodbye_hangs_up_without_asking_the_model(tmp_path: Path):
    async with FakeRealtimeServer(mode="talk", talk_speed=0, response_audio_ms=400,
                                  talk_after_appends=10_000) as fake:
        result, hangups = await run_call(fake, tmp_path, "rt.config.max_call_seconds=0.5",
                                         'rt.config.budget_goodbye=""', audio_ms=10_000)
        conn = fake.connections[0]
    assert conn.events("response.create") == []
    assert hangups == ["budget"] and result.close_code == 1000
    assert manifest(tmp_path)["end_reason"] == "budget"


async def test_a_goodbye_refused_because_a_response_had_just_started_is_sent_again():
    """The provider's VAD starts a response just as the goodbye's response.create leaves (its
    response.created still in flight): the create is refused with
    conversation_already_has_active_response, and the goodbye goes again once that response
    is done."""
    from telewire.frames import StartFrame
    from telewire.realtime.base import ProviderConfig, create_session

    async def sink(frame) -> None:
        pass

    async with FakeRealtimeServer(mode="talk", talk_speed=0, response_audio_ms=300) as fake:
        session = create_session(ProviderConfig(provider="openai", url=fake.url), sink)
        await session.start(StartFrame(carrier="twilio", stream_id="MZ0001", call_id="CA0001"))
        try:
            conn = await fake.wait_for_connection()
            await conn.wait_for("session.update")
            await conn.start_response()
            async with asyncio.timeout(10):
                while not session.response_active:
                    await asyncio.sleep(0.01)
            started = session._response_id
            session._response_id = None  # as if its response.created had not been read yet
            say = asyncio.create_task(session.say(GOODBYE, tag="budget_goodbye"))
            await conn.wait_for("response.create")  # refused: a response is active
            session._response_id = started  # ... and now it has been
            await conn.finish_response("Hm.")
            assert await asyncio.wait_for(say, 10) is True
        finally:
            await session.close()
        creates = conn.events("response.create")
        assert len(creates) >= 2
        assert all(c["response"]["instructions"] == GOODBYE for c in creates)
        assert [r["status"] for r in conn.responses] == ["completed", "completed"]
        for event in conn.received:
            assert_ga(event, side="client")
