"""Barge-in, steering, reconnection and end_call over real loopback sockets:
the simulated Twilio call <-> `TelewireServer` <-> the fake realtime server in talk mode."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from unittest import mock

import aiohttp
import pytest
from openai_ga import assert_ga

from telewire.graph import load_graph
from telewire.registry import Carrier, CarrierRegistry
from telewire.server import TelewireServer
from telewire.settings import load_settings
from telewire.testing.fake_realtime import FakeRealtimeServer, talk_audio
from telewire.testing.local_http import local_http_server
from telewire.testing.simulator import CallSimulator

SILENCE = b"\xff" * 8  # one mu-law millisecond of silence
OPERATOR_TOKEN = "operator-token-for-tests"


def silence(ms: int) -> bytes:
    return SILENCE * ms


async def serve(fake: FakeRealtimeServer, *overrides: str) -> TelewireServer:
    """telewire on the default graph with the openai provider pointed at ``fake``."""
    srv = TelewireServer(
        load_settings(host="127.0.0.1", port=0, operator_token=OPERATOR_TOKEN),
        load_graph(None, ["rt.config.provider=openai", f"rt.config.url={fake.url}",
                          "rt.config.transcription_model=", *overrides]),
        CarrierRegistry())
    await srv.start()
    return srv


def media_url(srv: TelewireServer) -> str:
    return f"ws://127.0.0.1:{srv.port}/media/twilio"


def answer_url(srv: TelewireServer) -> str:
    """Where the simulator fetches its TwiML (and one-time call token) when calls are signed."""
    return f"http://127.0.0.1:{srv.port}/answer/twilio"


@pytest.mark.parametrize("press_at_ms", [900, 1300, 1800])
async def test_truncate_lands_within_20_ms_of_what_was_played(press_at_ms):
    """The simulator plays at real time and acknowledges marks as Twilio does; the model sends
    audio twice as fast as it plays (so the carrier holds a growing backlog); the model is
    truncated where the caller's playout actually was when the clear arrived."""
    async with FakeRealtimeServer(mode="talk", talk_speed=2.0, response_audio_ms=3000,
                                  talk_after_appends=25) as fake:
        srv = await serve(fake)
        try:
            sim = CallSimulator(media_url(srv), dtmf=[(press_at_ms, "*")], drain_s=1.0)
            result = await sim.run(silence(press_at_ms + 400))
        finally:
            await srv.stop(drain_timeout_s=1)
        conn = fake.connections[0]
    assert result.clears == 1
    (cancel,) = [e for e in conn.received if e["type"] == "response.cancel"]
    (truncate,) = conn.truncations
    played_ms = result.played_at_clear[0] / 8
    assert played_ms > 100, "the agent should have been talking when the key was pressed"
    assert abs(truncate["audio_end_ms"] - played_ms) <= 20, (truncate, played_ms)
    assert truncate["item_id"] == conn.responses[0]["item_id"]
    assert not [e for e in conn.events("error") if e["error"].get("param") == "audio_end_ms"]
    for event in conn.received:
        assert_ga(event, side="client")


async def test_truncate_is_right_when_the_carrier_starts_playing_late():
    """The carrier's jitter buffer holds agent audio 150 ms before playing it. The key is pressed
    about 300 ms after the agent began, before a mark every 250 ms would have come back: the mark
    after the item's first audio has anchored the playout clock, so the truncate still lands
    where the caller was (not 150 ms later)."""
    async with FakeRealtimeServer(mode="talk", talk_speed=2.0, response_audio_ms=3000,
                                  talk_after_appends=25) as fake:
        srv = await serve(fake)
        try:
            sim = CallSimulator(media_url(srv), dtmf=[(800, "*")], drain_s=1.0,
                                playout_delay_ms=150)
            result = await sim.run(silence(1200))
        finally:
            await srv.stop(drain_timeout_s=1)
        conn = fake.connections[0]
    (truncate,) = conn.truncations
    played_ms = result.played_at_clear[0] / 8
    assert played_ms > 50, "the carrier should have been playing the agent when the key was pressed"
    assert abs(truncate["audio_end_ms"] - played_ms) <= 20, (truncate, played_ms)


async def test_star_clears_cancels_and_truncates_and_an_empty_digit_disables_it():
    async with FakeRealtimeServer(mode="talk", talk_speed=1.0, response_audio_ms=3000) as fake:
        srv = await serve(fake)
        try:
            pressed = await CallSimulator(media_url(srv), dtmf=[(1000, "*")], drain_s=1).run(silence(1400))
        finally:
            await srv.stop(drain_timeout_s=1)
        first = fake.connections[0]
        srv = await serve(fake, "tel_in.config.interrupt_dtmf_digit=")
        try:
            ignored = await CallSimulator(media_url(srv), dtmf=[(1000, "*")], drain_s=1).run(silence(1400))
        finally:
            await srv.stop(drain_timeout_s=1)
        second = fake.connections[1]
    assert pressed.clears == 1
    assert first.events("response.cancel") and len(first.truncations) == 1
    assert first.responses[0]["status"] == "cancelled"
    assert ignored.clears == 0
    assert not second.events("response.cancel") and not second.truncations
    assert second.responses[0]["status"] != "cancelled"


@pytest.mark.slow
async def test_voice_change_waits_for_response_done_and_the_call_goes_on(log_lines):
    async with FakeRealtimeServer(mode="talk", talk_speed=1.0, response_audio_ms=1500,
                                  talk_after_appends=25) as fake:
        srv = await serve(fake)
        sim = CallSimulator(media_url(srv), drain_s=1.0)
        call = asyncio.create_task(sim.run(silence(5000)))
        try:
            first = await fake.wait_for_connection(0)
            await first.wait_for("session.update")
            while not first.response_active:
                await asyncio.sleep(0.02)
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{srv.port}/api/calls/twilio/{sim.call_sid}/steer"
                async with http.post(url, json={"voice": "cedar"},
                                     headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as r:
                    assert r.status == 200
            assert first.response_active  # still speaking: the swap must wait
            assert not [e for e in first.events("session.update")[1:]
                        if "audio" in e["session"]]
            fresh = await fake.wait_for_connection(1, timeout=10)
            assert first.responses[0]["status"] == "completed"
            (setup,) = await fresh.wait_for("session.update")
            assert setup["session"]["audio"]["output"]["voice"] == "cedar"
            await fresh.wait_for("conversation.item.create")
            assert ("assistant", "Response 1.") in fresh.dialogue()
            result = await call
        finally:
            await srv.stop(drain_timeout_s=1)
    assert result.close_code == 1000
    heard_after = result.received_audio[len(talk_audio(1, 1500 * 8)):]
    assert heard_after, "the call went on with the new session speaking"
    assert not [line for line in log_lines if "cannot_update_voice" in line]
    assert not [line for line in log_lines if line.startswith("ERROR")]


async def test_dropped_model_connection_recovers_within_2_s_with_the_conversation():
    async with FakeRealtimeServer(mode="talk", talk_speed=0, response_audio_ms=500,
                                  talk_after_appends=20) as fake:
        srv = await serve(fake)
        sim = CallSimulator(media_url(srv), drain_s=1.0)
        call = asyncio.create_task(sim.run(silence(3500)))
        try:
            first = await fake.wait_for_connection(0)
            while not first.responses or first.responses[0]["status"] != "completed":
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # the agent transcript reaches the session
            await first.drop()
            fresh = await fake.wait_for_connection(1, timeout=2)
            await fresh.wait_for("conversation.item.create")
            assert ("assistant", "Response 1.") in fresh.dialogue()
            await fresh.wait_for("input_audio_buffer.append", timeout=2)
            result = await call
        finally:
            await srv.stop(drain_timeout_s=1)
    assert result.close_code == 1000
    assert fresh.responses, "the new session answered the caller"


async def test_end_call_hangs_up_once_after_the_last_audio_played():
    calls = []
    original = Carrier.hangup

    def counting(self, call, reason):
        calls.append(reason)
        return original(self, call, reason)

    async with FakeRealtimeServer(mode="talk", talk_speed=0, response_audio_ms=800,
                                  talk_after_appends=20) as fake:
        with mock.patch.object(Carrier, "hangup", counting):
            srv = await serve(fake)
            try:
                sim = CallSimulator(media_url(srv), drain_s=3.0, hang_up=False)
                call = asyncio.create_task(sim.run(silence(6000)))
                conn = await fake.wait_for_connection(0)
                while not conn.responses or conn.responses[0]["status"] != "completed":
                    await asyncio.sleep(0.01)
                # The agent has said its piece (800 ms, still playing); the next turn ends the call.
                conn.script_tool_call("end_call", '{"reason": "caller said goodbye"}')
                result = await call
            finally:
                await srv.stop(drain_timeout_s=1)
    assert calls == ["end_call"]
    assert result.close_code == 1000
    assert conn.function_outputs and "ending" in conn.function_outputs[0]["output"]
    assert result.received_audio == talk_audio(1, 800 * 8)  # all of it reached the caller
    # Every mark came back before the socket closed: the hang-up waited for the last audio.
    assert result.marks_received and set(result.marks_received) == set(result.marks_echoed)
    assert result.sent_frames < 300  # ended by the agent before the caller's 6 s were sent


@pytest.fixture
async def twilio_rest(monkeypatch):
    """A local stand-in for Twilio's Calls REST API, with the carrier's settings pointed at it;
    yields the account SID and the ``(method, path, form, Authorization)`` of each request."""
    from aiohttp import web

    seen: list[tuple[str, str, dict, str]] = []

    update = re.compile(r"/2010-04-01/Accounts/[^/]+/Calls/([^/]+)\.json")

    async def update_call(request: web.Request) -> web.Response:
        match = update.fullmatch(request.path)
        if request.method != "POST" or match is None:
            return web.Response(status=404)
        form = await request.post()
        seen.append((request.method, request.path, dict(form), request.headers["Authorization"]))
        return web.json_response({"sid": match.group(1), "status": "in-progress"})

    async with local_http_server(update_call) as rest_port:
        account = "AC" + "1" * 32
        monkeypatch.setenv("TELEWIRE_TWILIO_ACCOUNT_SID", account)
        monkeypatch.setenv("TELEWIRE_TWILIO_AUTH_TOKEN", "rest-token")
        monkeypatch.setenv("TELEWIRE_TWILIO_API_BASE_URL", f"http://127.0.0.1:{rest_port}")
        yield account, seen


async def test_transfer_call_redirects_the_live_call_through_the_carrier_rest_api(twilio_rest,
                                                                                  log_lines):
    """The model calls transfer_call; telewire drains the audio, asks the carrier (a local
    stand-in for Twilio's REST API) to redirect the call, and ends its side with 'transferred'."""
    account, seen = twilio_rest
    async with FakeRealtimeServer(mode="talk", talk_speed=0, response_audio_ms=400,
                                  talk_after_appends=20) as fake:
        srv = await serve(fake, "rt.config.builtin_tools=[\"end_call\", \"transfer_call\"]",
                          'rt.config.transfer_targets=["+1555*"]')
        try:
            sim = CallSimulator(media_url(srv), drain_s=3.0, hang_up=False,
                                auth_token="rest-token", answer_url=answer_url(srv))
            call = asyncio.create_task(sim.run(silence(5000)))
            conn = await fake.wait_for_connection(0)
            (setup,) = await conn.wait_for("session.update")
            assert "transfer_call" in [t["name"] for t in setup["session"]["tools"]]
            while not conn.responses or conn.responses[0]["status"] != "completed":
                await asyncio.sleep(0.01)
            conn.script_tool_call("transfer_call", '{"target": "+15551234567"}')
            result = await call
        finally:
            await srv.stop(drain_timeout_s=1)
    ((method, path, form, auth),) = seen
    assert method == "POST" and path == f"/2010-04-01/Accounts/{account}/Calls/{sim.call_sid}.json"
    assert form["Twiml"].endswith("<Response><Dial><Number>+15551234567</Number></Dial></Response>")
    assert auth == "Basic " + base64.b64encode(f"{account}:rest-token".encode()).decode()
    assert result.close_code == 1000 and result.sent_frames < 250  # ended by the transfer
    assert any("call ended: transferred (+15551234567)" in line for line in log_lines)
    assert not any("rest-token" in line for line in log_lines)


@pytest.mark.parametrize("targets, target", [
    ("[]", "+15551234567"),                            # no allow-list: nothing is dialled
    ('["+1555*"]', "+19005550100"),                    # a number the caller talked it into
    ('["sip:*@pbx.example.com"]', "sip:x@evil.example;maddr=pbx.example.com"),
])
async def test_transfer_call_refuses_targets_off_the_allow_list(twilio_rest, log_lines,
                                                                targets, target):
    """The model asks for a target the operator did not allow: the carrier's REST API is never
    called, the model reads why, and the call goes on until the caller hangs up."""
    _, seen = twilio_rest
    async with FakeRealtimeServer(mode="talk", talk_speed=0, response_audio_ms=400,
                                  talk_after_appends=20) as fake:
        srv = await serve(fake, "rt.config.builtin_tools=[\"end_call\", \"transfer_call\"]",
                          f"rt.config.transfer_targets={targets}")
        try:
            sim = CallSimulator(media_url(srv), drain_s=0.5, auth_token="rest-token",
                                answer_url=answer_url(srv))
            call = asyncio.create_task(sim.run(silence(2500)))
            conn = await fake.wait_for_connection(0)
            while not conn.responses or conn.responses[0]["status"] != "completed":
                await asyncio.sleep(0.01)
            conn.script_tool_call("transfer_call", json.dumps({"target": target}))
            while not conn.function_outputs:
                await asyncio.sleep(0.01)
            result = await call
        finally:
            await srv.stop(drain_timeout_s=1)
    assert seen == []
    (output,) = conn.function_outputs
    assert json.loads(output["output"])["error"].startswith("transfer refused: ")
    assert result.sent_frames == 125  # the caller's whole 2.5 s: the call was not cut short
    assert any(line.startswith(f"WARNING transfer_call to {target!r} refused: ")
               for line in log_lines)
    assert not any("call ended: transferred" in line for line in log_lines)
