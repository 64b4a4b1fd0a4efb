"""Tests of the fake realtime server's talk mode and conversation model, over loopback sockets.

Depends on ``telewire.testing.fake_realtime``, ``websockets`` and the GA checker in ``openai_ga``.
Every server event a test receives is checked against the ``openai`` package's GA types. No test
asserts how long anything took: where pacing matters, the order of events is what is checked.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
import time
from typing import Any, AsyncIterator, Callable

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from telewire import jsonfast
from telewire.testing.fake_realtime import (
    VOICE_LOCKED_MESSAGE, FakeConnection, FakeRealtimeServer, talk_audio)

from openai_ga import assert_ga

AUTH = {"Authorization": "Bearer sk-test"}
FRAME = base64.b64encode(b"\xff" * 160).decode()  # 20 ms of mu-law silence
APPEND = '{"type":"input_audio_buffer.append","audio":"' + FRAME + '"}'


def pcmu_update(**turn: Any) -> str:
    """A GA ``session.update`` for mu-law both ways; ``turn`` goes into ``turn_detection``
    (``turn_detection=None`` turns VAD off)."""
    detection: Any = {"type": "server_vad", **turn}
    if turn.get("turn_detection", "") is None:
        detection = None
    return jsonfast.dumps({"type": "session.update", "session": {
        "type": "realtime", "instructions": "Be brief.",
        "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": detection},
                  "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}},
    }})


async def recv(ws: ClientConnection) -> dict[str, Any]:
    """The next server event, checked against the published GA server events."""
    event = jsonfast.loads(await asyncio.wait_for(ws.recv(), 10))
    assert_ga(event, side="server")
    return event


async def until(ws: ClientConnection, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Receive events up to and including the first one ``done`` accepts."""
    events = [await recv(ws)]
    while not done(events[-1]):
        events.append(await recv(ws))
    return events


def of_type(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["type"] == kind


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def audio_of(events: list[dict[str, Any]], response_id: str | None = None) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events
                    if e["type"] == "response.output_audio.delta"
                    and response_id in (None, e["response_id"]))


async def open_session(server: FakeRealtimeServer, **turn: Any) -> tuple[ClientConnection,
                                                                          FakeConnection]:
    ws = await connect(server.url + "?model=gpt-realtime", additional_headers=AUTH)
    assert (await recv(ws))["type"] == "session.created"
    await ws.send(pcmu_update(**turn))
    assert (await recv(ws))["type"] == "session.updated"
    return ws, server.connections[-1]


@pytest.fixture
async def fast() -> AsyncIterator[FakeRealtimeServer]:
    """Talk mode, unpaced, 300 ms responses in 100 ms deltas, a caller turn every 5 appends."""
    async with FakeRealtimeServer(mode="talk", talk_speed=0, response_audio_ms=300,
                                  talk_after_appends=5) as server:
        yield server


@pytest.fixture
async def session(fast: FakeRealtimeServer) -> AsyncIterator[tuple[ClientConnection,
                                                                   FakeConnection]]:
    ws, conn = await open_session(fast)
    async with ws:
        yield ws, conn


async def test_response_create_streams_a_whole_deterministic_response(
        session: tuple[ClientConnection, FakeConnection]) -> None:
    ws, conn = session
    await ws.send('{"type":"response.create"}')
    events = await until(ws, of_type("response.done"))
    assert kinds(events)[:3] == ["response.created", "response.output_item.added",
                                 "response.content_part.added"]
    assert kinds(events)[-5:] == ["response.output_audio.done",
                                  "response.output_audio_transcript.done",
                                  "response.content_part.done", "response.output_item.done",
                                  "response.done"]
    item = events[1]["item"]
    assert (item["type"], item["role"], item["id"][:5]) == ("message", "assistant", "item_")
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert [len(base64.b64decode(d["delta"])) for d in deltas] == [800, 800, 800]
    assert audio_of(events) == talk_audio(1, 2400)
    transcript = "".join(e["delta"] for e in events
                         if e["type"] == "response.output_audio_transcript.delta")
    assert transcript == "Response 1."
    done = events[-1]["response"]
    assert (done["status"], done["status_details"]) == ("completed", None)
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": "Response 1."}]
    assert done["usage"]["output_token_details"] == {"text_tokens": 2, "audio_tokens": 6}
    assert done["usage"]["input_token_details"]["text_tokens"] == 2  # "Be brief."
    (record,) = conn.responses
    assert {k: record[k] for k in ("id", "number", "kind", "status", "reason", "audio_bytes",
                                   "audio_ms", "bytes_per_ms")} == {
        "id": done["id"], "number": 1, "kind": "audio", "status": "completed", "reason": None,
        "audio_bytes": 2400, "audio_ms": 300, "bytes_per_ms": 8}
    assert not conn.response_active
    assert conn.dialogue() == [("assistant", "Response 1.")]


async def test_a_caller_turn_after_n_appends_gets_vad_events_a_user_item_and_a_response(
        session: tuple[ClientConnection, FakeConnection]) -> None:
    ws, conn = session
    for _ in range(5):
        await ws.send(APPEND)
    events = await until(ws, of_type("response.done"))
    assert kinds(events)[:6] == ["input_audio_buffer.speech_started",
                                 "input_audio_buffer.speech_stopped",
                                 "input_audio_buffer.committed", "conversation.item.added",
                                 "conversation.item.done", "response.created"]
    started, stopped, committed, added = events[:4]
    user = started["item_id"]
    assert stopped["item_id"] == committed["item_id"] == added["item"]["id"] == user
    assert (started["audio_start_ms"], stopped["audio_end_ms"]) == (0, 100)
    assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    assert committed["previous_item_id"] is None
    assert events[-1]["response"]["status"] == "completed"
    # The count starts again when the response ends: five more appends, one more turn.
    for _ in range(5):
        await ws.send(APPEND)
    events = await until(ws, of_type("response.done"))
    assert events[2]["previous_item_id"] == conn.items[1]["id"]  # after the first answer
    assert audio_of(events) == talk_audio(2, 2400)
    assert conn.dialogue() == [("user", ""), ("assistant", "Response 1."),
                               ("user", ""), ("assistant", "Response 2.")]


async def test_create_response_false_gives_the_turn_without_a_response(
        fast: FakeRealtimeServer) -> None:
    ws, conn = await open_session(fast, create_response=False)
    async with ws:
        for _ in range(5):
            await ws.send(APPEND)
        await ws.send('{"type":"input_audio_buffer.clear"}')  # answered in order: a marker
        events = await until(ws, of_type("input_audio_buffer.cleared"))
    assert kinds(events) == ["input_audio_buffer.speech_started",
                             "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                             "conversation.item.added", "conversation.item.done",
                             "input_audio_buffer.cleared"]
    assert conn.responses == []


async def test_without_turn_detection_the_client_commits_and_asks(
        fast: FakeRealtimeServer) -> None:
    ws, conn = await open_session(fast, turn_detection=None)
    async with ws:
        for _ in range(12):
            await ws.send(APPEND)
        await ws.send('{"type":"input_audio_buffer.commit"}')
        events = await until(ws, of_type("conversation.item.done"))
        assert kinds(events) == ["input_audio_buffer.committed", "conversation.item.added",
                                 "conversation.item.done"]
        await ws.send('{"type":"input_audio_buffer.commit"}')
        refused = await recv(ws)
        assert refused["error"]["code"] == "input_audio_buffer_commit_empty"
        await ws.send('{"type":"response.create"}')
        events = await until(ws, of_type("response.done"))
    assert events[-1]["response"]["status"] == "completed"
    assert conn.dialogue() == [("user", ""), ("assistant", "Response 1.")]


async def test_paced_deltas_leave_room_for_client_events_in_between() -> None:
    async with FakeRealtimeServer(mode="talk", response_audio_ms=600, delta_ms=100) as server:
        ws, conn = await open_session(server)
        async with ws:
            await ws.send('{"type":"response.create"}')
            first = await until(ws, of_type("response.output_audio.delta"))
            assert conn.response_active
            await ws.send('{"type":"input_audio_buffer.clear"}')
            events = await until(ws, of_type("response.done"))
    cleared = kinds(events).index("input_audio_buffer.cleared")
    # Real-time pacing: the answer to the clear arrives while the audio is still streaming.
    assert "response.output_audio.delta" in kinds(events)[cleared:]
    assert audio_of(first + events) == talk_audio(1, 4800)
    assert not conn.response_active


async def test_cancel_stops_the_stream_at_once_and_reports_client_cancelled() -> None:
    # Unpaced and ten minutes long: a stream that ignored the cancel would flood what follows.
    async with FakeRealtimeServer(mode="talk", talk_speed=0,
                                  response_audio_ms=600_000) as server:
        ws, conn = await open_session(server)
        async with ws:
            await ws.send('{"type":"response.create"}')
            head = await until(ws, of_type("response.output_audio.delta"))
            response_id = head[0]["response"]["id"]
            await ws.send(jsonfast.dumps({"type": "response.cancel",
                                          "response_id": response_id}))
            events = await until(ws, of_type("response.done"))
            await ws.send('{"type":"input_audio_buffer.clear"}')
            assert (await recv(ws))["type"] == "input_audio_buffer.cleared"  # nothing in between
            await ws.send('{"type":"response.cancel"}')
            assert (await recv(ws))["error"]["code"] == "response_cancel_not_active"
    done = events[-1]["response"]
    assert (done["id"], done["status"], done["status_details"]) == (
        response_id, "cancelled", {"type": "cancelled", "reason": "client_cancelled"})
    assert done["output"][0]["status"] == "incomplete"
    (record,) = conn.responses
    assert (record["status"], record["reason"]) == ("cancelled", "client_cancelled")
    received = audio_of(head + events)
    assert len(received) == record["audio_bytes"] < 600_000 * 8
    assert received == talk_audio(1, len(received))


async def test_the_fakes_own_speech_started_interrupts_and_the_turn_goes_on() -> None:
    async with FakeRealtimeServer(mode="talk", response_audio_ms=20_000, talk_after_appends=5,
                                  barge_in_after_appends=3) as server:
        ws, conn = await open_session(server)
        async with ws:
            await ws.send('{"type":"response.create"}')
            head = await until(ws, of_type("response.output_audio.delta"))
            first_id = head[0]["response"]["id"]
            for _ in range(3):
                await ws.send(APPEND)
            barge = await until(ws, of_type("response.done"))
            for _ in range(5):
                await ws.send(APPEND)
            turn = await until(ws, of_type("response.created"))
            await ws.send('{"type":"response.cancel"}')
            await until(ws, of_type("response.done"))
    started = kinds(barge).index("input_audio_buffer.speech_started")
    after = barge[started + 1:]
    assert kinds(after) == ["response.output_audio.done", "response.output_audio_transcript.done",
                            "response.content_part.done", "response.output_item.done",
                            "response.done"]
    assert after[-1]["response"]["id"] == first_id
    assert after[-1]["response"]["status_details"] == {"type": "cancelled",
                                                       "reason": "turn_detected"}
    # The caller's turn ends with the same item, and the model answers it.
    assert kinds(turn) == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
                           "conversation.item.added", "conversation.item.done",
                           "response.created"]
    assert turn[0]["item_id"] == barge[started]["item_id"]
    assert [(r["status"], r["reason"]) for r in conn.responses] == [
        ("cancelled", "turn_detected"), ("cancelled", "client_cancelled")]


async def test_interrupt_response_false_lets_the_response_play_on() -> None:
    async with FakeRealtimeServer(mode="talk", response_audio_ms=20_000) as server:
        ws, conn = await open_session(server, interrupt_response=False)
        async with ws:
            await ws.send('{"type":"response.create"}')
            await until(ws, of_type("response.output_audio.delta"))
            await conn.push_speech_started(40)
            await until(ws, of_type("input_audio_buffer.speech_started"))
            assert (await recv(ws))["type"] == "response.output_audio.delta"
            assert conn.response_active
            await ws.send('{"type":"response.create"}')
            busy = await until(ws, of_type("error"))
            assert busy[-1]["error"]["code"] == "conversation_already_has_active_response"


async def test_truncate_is_checked_against_the_audio_sent(
        session: tuple[ClientConnection, FakeConnection]) -> None:
    ws, conn = session
    await ws.send('{"type":"response.create"}')
    events = await until(ws, of_type("response.done"))
    item_id = events[1]["item"]["id"]

    async def truncate(audio_end_ms: Any, content_index: Any = 0,
                       item: str = item_id) -> dict[str, Any]:
        await ws.send(jsonfast.dumps({"type": "conversation.item.truncate", "item_id": item,
                                      "content_index": content_index,
                                      "audio_end_ms": audio_end_ms}))
        return await recv(ws)

    too_long = await truncate(301)
    assert too_long["error"] == {
        "type": "invalid_request_error", "code": "invalid_value", "param": "audio_end_ms",
        "message": "Audio content of 300ms is already shorter than 301ms", "event_id": None}
    truncated = await truncate(200)
    assert {k: v for k, v in truncated.items() if k != "event_id"} == {
        "type": "conversation.item.truncated", "item_id": item_id, "content_index": 0,
        "audio_end_ms": 200}
    assert conn.truncations == [{"item_id": item_id, "content_index": 0, "audio_end_ms": 200}]
    assert conn.item(item_id)["content"] == [{"type": "output_audio", "transcript": ""}]
    # The cut is now the item's length.
    assert (await truncate(250))["error"]["message"] == (
        "Audio content of 200ms is already shorter than 250ms")
    assert (await truncate(200, content_index=1))["error"]["param"] == "content_index"
    assert (await truncate(-1))["error"]["param"] == "audio_end_ms"
    assert (await truncate("100"))["error"]["code"] == "invalid_type"
    unknown = (await truncate(0, item="item_nope"))["error"]
    assert (unknown["code"], unknown["param"]) == ("item_truncate_invalid_item_id", "item_id")
    await ws.send(jsonfast.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}))
    user = (await until(ws, of_type("conversation.item.done")))[-1]["item"]["id"]
    not_audio = (await truncate(0, item=user))["error"]
    assert (not_audio["code"], not_audio["param"]) == ("invalid_value", "item_id")
    assert len(conn.truncations) == 1


async def test_truncate_success_event_and_echo_items() -> None:
    async with FakeRealtimeServer(mode="echo") as server:
        ws, conn = await open_session(server)
        async with ws:
            for _ in range(5):
                await ws.send(APPEND)  # 5 x 160 bytes of mu-law echoed: 100 ms
            events = [await recv(ws) for _ in range(8)]
            item_id = events[1]["item"]["id"]
            await ws.send(jsonfast.dumps({"type": "conversation.item.truncate",
                                          "item_id": item_id, "content_index": 0,
                                          "audio_end_ms": 100}))
            truncated = await recv(ws)
            await ws.send(jsonfast.dumps({"type": "conversation.item.truncate",
                                          "item_id": item_id, "content_index": 0,
                                          "audio_end_ms": 101}))
            refused = await recv(ws)
    assert {k: v for k, v in truncated.items() if k != "event_id"} == {
        "type": "conversation.item.truncated", "item_id": item_id, "content_index": 0,
        "audio_end_ms": 100}
    assert refused["error"]["message"] == "Audio content of 100ms is already shorter than 101ms"
    assert conn.responses[0]["audio_ms"] == 100 and conn.response_active


async def test_voice_is_locked_once_assistant_audio_was_sent(
        session: tuple[ClientConnection, FakeConnection]) -> None:
    ws, conn = session

    async def update(voice: str, instructions: str) -> dict[str, Any]:
        await ws.send(jsonfast.dumps({"type": "session.update", "session": {
            "type": "realtime", "instructions": instructions,
            "audio": {"output": {"voice": voice}}}}))
        return await recv(ws)

    assert (await update("cedar", "Before."))["session"]["audio"]["output"]["voice"] == "cedar"
    await ws.send('{"type":"response.create"}')
    await until(ws, of_type("response.done"))
    assert conn.audio_sent
    refused = await update("marin", "Refused with the voice.")
    assert refused["error"] == {"type": "invalid_request_error", "code": "cannot_update_voice",
                                "message": VOICE_LOCKED_MESSAGE,
                                "param": "session.audio.output.voice", "event_id": None}
    assert conn.session["instructions"] == "Before."  # the whole update was refused
    same = await update("cedar", "After.")
    assert same["type"] == "session.updated" and same["session"]["instructions"] == "After."


async def test_session_expires_with_session_expired_and_close_1001() -> None:
    async with FakeRealtimeServer(mode="talk", session_max_s=0.3) as server:
        before = time.time()
        async with connect(server.url + "?model=gpt-realtime", additional_headers=AUTH) as ws:
            created = await recv(ws)
            assert before + 0.3 <= created["session"]["expires_at"] <= time.time() + 1.3
            error = await recv(ws)
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
    assert error["error"] == {"type": "invalid_request_error", "code": "session_expired",
                              "message": "Your session hit the maximum duration of 0.3 seconds.",
                              "param": None, "event_id": None}
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    await asyncio.wait_for(server.connections[0].closed.wait(), 10)


async def test_expire_on_command_stops_a_response_and_names_the_real_limit() -> None:
    async with FakeRealtimeServer(mode="talk", response_audio_ms=20_000) as server:
        ws, conn = await open_session(server)
        async with ws:
            await ws.send('{"type":"response.create"}')
            await until(ws, of_type("response.output_audio.delta"))
            await conn.expire()
            events = await until(ws, of_type("error"))
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
    assert events[-1]["error"]["message"] == (
        "Your session hit the maximum duration of 60 minutes.")
    assert "response.done" not in kinds(events)  # the server just goes away
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert conn.responses[0]["status"] == "in_progress"


async def test_drop_aborts_without_a_close_frame_and_close_sends_one(
        fast: FakeRealtimeServer) -> None:
    first, conn = await open_session(fast)
    second, _ = await open_session(fast)
    third, third_conn = await open_session(fast)
    await conn.drop()
    assert conn.closed.is_set()
    with pytest.raises(ConnectionClosed) as dropped:
        await first.recv()
    assert dropped.value.rcvd is None and first.close_code == 1006
    await fast.drop_all()
    for ws in (second, third):
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1006
    assert all(c.closed.is_set() for c in fast.connections)
    async with connect(fast.url + "?model=m", additional_headers=AUTH) as fourth:
        await recv(fourth)
        await (await fast.wait_for_connection(3)).close(4001, "test says bye")
        with pytest.raises(ConnectionClosed) as closed:
            await fourth.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "test says bye")
    assert third_conn.closed.is_set()


async def test_a_scripted_tool_call_then_its_output_then_a_spoken_answer(
        session: tuple[ClientConnection, FakeConnection]) -> None:
    ws, conn = session
    call_id = conn.script_tool_call("lookup", '{"city": "Paris"}')
    await ws.send('{"type":"response.create"}')
    events = await until(ws, of_type("response.done"))
    assert kinds(events) == ["response.created", "response.output_item.added",
                             "response.function_call_arguments.delta",
                             "response.function_call_arguments.delta",
                             "response.function_call_arguments.done",
                             "response.output_item.done", "response.done"]
    added = events[1]["item"]
    assert (added["type"], added["name"], added["call_id"], added["arguments"]) == (
        "function_call", "lookup", call_id, "")
    assert "".join(e["delta"] for e in events[2:4]) == '{"city": "Paris"}'
    assert events[4]["arguments"] == '{"city": "Paris"}' and events[4]["call_id"] == call_id
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"] == [{**added, "status": "completed", "arguments": '{"city": "Paris"}'}]
    assert not [e for e in events if e["type"] == "response.output_audio.delta"]

    await ws.send(jsonfast.dumps({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": "call_unknown", "output": "{}"}}))
    refused = (await recv(ws))["error"]
    assert (refused["code"], refused["param"]) == ("invalid_value", "item.call_id")
    await ws.send(jsonfast.dumps({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": call_id, "output": '{"temp": 21}'}}))
    ack = await until(ws, of_type("conversation.item.done"))
    assert kinds(ack) == ["conversation.item.added", "conversation.item.done"]
    assert ack[0]["previous_item_id"] == added["id"]
    await ws.send('{"type":"response.create"}')
    answer = await until(ws, of_type("response.done"))
    assert audio_of(answer) == talk_audio(2, 2400)
    assert conn.function_outputs == [{"call_id": call_id, "output": '{"temp": 21}',
                                      "item_id": ack[0]["item"]["id"]}]
    assert [(r["kind"], r["call_id"]) for r in conn.responses] == [
        ("function_call", call_id), ("audio", None)]
    assert conn.dialogue() == [("function_call", 'lookup({"city": "Paris"})'),
                               ("function_call_output", '{"temp": 21}'),
                               ("assistant", "Response 2.")]


async def test_a_server_level_tool_call_answers_the_next_caller_turn(
        fast: FakeRealtimeServer) -> None:
    call_id = fast.script_tool_call("hang_up")
    ws, conn = await open_session(fast)
    async with ws:
        for _ in range(5):
            await ws.send(APPEND)
        events = await until(ws, of_type("response.done"))
    assert kinds(events)[5:7] == ["response.created", "response.output_item.added"]
    assert events[-1]["response"]["output"][0]["call_id"] == call_id
    assert not fast.next_tool_calls
    assert conn.dialogue() == [("user", ""), ("function_call", "hang_up({})")]


async def test_message_items_are_held_in_order_for_a_replay_to_be_checked(
        session: tuple[ClientConnection, FakeConnection]) -> None:
    ws, conn = session
    replay = [
        {"type": "message", "role": "system",
         "content": [{"type": "input_text", "text": "The caller is Ann."}]},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "I need a taxi."}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Where to?"}]},
        {"type": "message", "role": "user", "id": "item_client1",
         "content": [{"type": "input_audio", "audio": FRAME, "transcript": "The station."}]},
    ]
    acks = []
    for item in replay:
        await ws.send(jsonfast.dumps({"type": "conversation.item.create", "item": item}))
        acks += await until(ws, of_type("conversation.item.done"))
    assert kinds(acks) == ["conversation.item.added", "conversation.item.done"] * 4
    ids = [a["item"]["id"] for a in acks[::2]]
    assert ids[3] == "item_client1"
    assert [a["previous_item_id"] for a in acks[::2]] == [None, *ids[:3]]
    assert acks[6]["item"]["content"] == [{"type": "input_audio",
                                           "transcript": "The station."}]  # no audio echoed
    assert conn.items[3]["content"][0]["audio"] == FRAME  # but the fake holds it
    assert conn.dialogue() == [("system", "The caller is Ann."), ("user", "I need a taxi."),
                               ("assistant", "Where to?"), ("user", "The station.")]
    # previous_item_id places an item; "root" puts it first.
    await ws.send(jsonfast.dumps({"type": "conversation.item.create", "previous_item_id": "root",
                                  "item": {"type": "message", "role": "system", "content": [
                                      {"type": "input_text", "text": "First."}]}}))
    first = await until(ws, of_type("conversation.item.done"))
    assert first[0]["previous_item_id"] is None and conn.dialogue()[0] == ("system", "First.")
    await ws.send(jsonfast.dumps({"type": "conversation.item.retrieve", "item_id": ids[1]}))
    retrieved = await recv(ws)
    assert retrieved["item"]["content"] == [{"type": "input_text", "text": "I need a taxi."}]
    await ws.send(jsonfast.dumps({"type": "conversation.item.delete", "item_id": ids[1]}))
    assert (await recv(ws))["item_id"] == ids[1]
    assert [text for _, text in conn.dialogue()] == [
        "First.", "The caller is Ann.", "Where to?", "The station."]
    for kind in ("conversation.item.delete", "conversation.item.retrieve"):
        await ws.send(jsonfast.dumps({"type": kind, "item_id": ids[1]}))
        error = (await recv(ws))["error"]
        verb = kind.rsplit(".", 1)[1]
        assert (error["code"], error["param"]) == (f"item_{verb}_invalid_item_id", "item_id")


@pytest.mark.parametrize(("event", "code", "param"), [
    ({}, "missing_required_parameter", "item"),
    ({"item": []}, "invalid_type", "item"),
    ({"item": {"role": "user"}}, "missing_required_parameter", "item.type"),
    ({"item": {"type": "note"}}, "invalid_value", "item.type"),
    ({"item": {"type": "message", "role": "caller", "content": []}}, "invalid_value",
     "item.role"),
    ({"item": {"type": "message", "role": "user"}}, "missing_required_parameter",
     "item.content"),
    ({"item": {"type": "message", "role": "user", "content": "hi"}}, "invalid_type",
     "item.content"),
    ({"item": {"type": "message", "role": "user", "content": [{"type": "text", "text": "hi"}]}},
     "invalid_value", "item.content[0].type"),
    ({"item": {"type": "message", "role": "assistant",
               "content": [{"type": "input_text", "text": "hi"}]}},
     "invalid_value", "item.content[0].type"),
    ({"item": {"type": "message", "role": "system", "content": [{"type": "input_text"}]}},
     "missing_required_parameter", "item.content[0].text"),
    ({"item": {"type": "message", "role": "user",
               "content": [{"type": "input_audio", "audio": "not base64!"}]}},
     "invalid_value", "item.content[0].audio"),
    ({"item": {"type": "message", "role": "user", "lang": "en", "content": []}},
     "unknown_parameter", "item.lang"),
    ({"item": {"type": "function_call_output", "output": "{}"}},
     "missing_required_parameter", "item.call_id"),
    ({"previous_item_id": "item_nope", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "hi"}]}}, "invalid_value", "previous_item_id"),
])
async def test_invalid_items_are_refused_by_param(
        session: tuple[ClientConnection, FakeConnection], event: dict[str, Any], code: str,
        param: str) -> None:
    ws, conn = session
    await ws.send(jsonfast.dumps({"type": "conversation.item.create", **event}))
    error = (await recv(ws))["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert conn.items == []


async def test_a_duplicate_item_id_is_refused(
        session: tuple[ClientConnection, FakeConnection]) -> None:
    ws, conn = session
    item = {"id": "item_same", "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "hi"}]}
    for _ in range(2):
        await ws.send(jsonfast.dumps({"type": "conversation.item.create", "item": item}))
    await until(ws, of_type("conversation.item.done"))
    error = (await recv(ws))["error"]
    assert (error["code"], error["param"]) == ("invalid_value", "item.id")
    assert len(conn.items) == 1


@pytest.mark.parametrize("kwargs", [
    {"mode": "sing"}, {"talk_after_appends": 0}, {"delta_ms": 0}, {"response_audio_ms": -1},
    {"talk_speed": -1.0}, {"talk_speed": float("nan")}, {"session_max_s": 0},
    {"barge_in_after_appends": 0},
])
def test_bad_settings_are_refused_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="FakeRealtimeServer"):
        FakeRealtimeServer(**kwargs)


async def test_talk_mode_runs_as_a_module_with_its_options() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "telewire.testing.fake_realtime", "--port", "0", "--mode", "talk",
        "--talk-ms", "200", "--delta-ms", "50", "--talk-speed", "0", "--session-max-s", "120",
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        async with connect(url + "?model=m", additional_headers=AUTH) as ws:
            created = await recv(ws)
            assert created["session"]["expires_at"] <= time.time() + 121
            await ws.send(pcmu_update())
            await recv(ws)
            await ws.send('{"type":"response.create"}')
            events = await until(ws, of_type("response.done"))
        assert audio_of(events) == talk_audio(1, 1600)
        assert kinds(events).count("response.output_audio.delta") == 4
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
