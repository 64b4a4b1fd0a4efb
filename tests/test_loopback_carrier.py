"""The ``loopback`` reference carrier: the conformance kit, its opt-in and token, and a
``telewire serve`` call driven end to end by ``CallSimulator(carrier="loopback")``."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytest

from telewire.carrier import HttpRequest
from telewire.errors import AuthenticationError
from telewire.frames import AudioFrame, DTMFFrame, EndFrame, MarkFrame, StartFrame
from telewire.registry import CarrierRegistry
from telewire.testing.conformance import CarrierConformanceTests, CarrierFixtures, Malformed
from telewire.testing.simulator import CallSimulator

from conftest import ServeProcess

_FORMAT = {"encoding": "pcmu", "sample_rate": 8000, "channels": 1}
#: One call as ``CallSimulator(carrier="loopback")`` puts it on the socket (the loopback envelope
#: is telewire's own, so its reference client is the simulator): start, three 20 ms chunks of a
#: 440 Hz tone, the caller pressing 1, a mark echoed, stop.
RECORDED_CALL: tuple[str, ...] = (
    '{"event": "start", "stream_id": "MZ18ad3ab5a668481ce02b83e7395059f0", "call_id": '
    '"CA4e8d2f7a9b3c1d5e6f7a8b9c0d1e2f3a", "format": {"encoding": "pcmu", "sample_rate": 8000, '
    '"channels": 1}, "parameters": {"tenant": "acme"}}',
    '{"event":"media","stream_id":"MZ18ad3ab5a668481ce02b83e7395059f0","seq":1,"timestamp":0,'
    '"payload":"/7+xq6ioqq+960AyKygoKi88YMOzrKioqq672kY0LCgoKS45VMm1rKmoqa24z0w3LSkoKS03TM+4ramo'
    'qay1yVQ5LikoKCw0Rtq7rqqoqKyzw2A8LyooKCsyQOu9r6qoqKuxv/8/MSsoKCovPWzAsquoqKqvvOBDMywoKCouO1'
    'rGtKyoqKmuudRJNSwpKCktOE/Mt62pqKmtt8xPOC0pKA=="}',
    '{"event":"media","stream_id":"MZ18ad3ab5a668481ce02b83e7395059f0","seq":2,"timestamp":20,'
    '"payload":"KSw1SdS5rqmoqKy0xlo7LiooKCwzQ+C8r6qoqKuywGw9LyooKCsxP/+/sauoqKqvvetAMisoKCovPGDD'
    's6yoqKquu9pGNCwoKCkuOVTJtaypqKmtuM9MNy0pKCktN0zPuK2pqKmstclUOS4pKCgsNEbau66qqKiss8NgPC8qKC'
    'grMkDrva+qqKirsb//PzErKCgqLz1swLKrqKiqr7zgQw=="}',
    '{"event": "dtmf", "stream_id": "MZ18ad3ab5a668481ce02b83e7395059f0", "digit": "1"}',
    '{"event":"media","stream_id":"MZ18ad3ab5a668481ce02b83e7395059f0","seq":3,"timestamp":40,'
    '"payload":"MywoKCouO1rGtKyoqKmuudRJNSwpKCktOE/Mt62pqKmtt8xPOC0pKCksNUnUua6pqKistMZaOy4qKCgs'
    'M0PgvK+qqKirssBsPS8qKCgrMT//v7GrqKiqr73rQDIrKCgqLzxgw7OsqKiqrrvaRjQsKCgpLjlUybWsqaiprbjPTD'
    'ctKSgpLTdMz7itqaiprLXJVDkuKSgoLDRG2ruuqqiorA=="}',
    '{"event": "mark", "stream_id": "MZ18ad3ab5a668481ce02b83e7395059f0", "name": "resp-1-end"}',
    '{"event": "stop", "stream_id": "MZ18ad3ab5a668481ce02b83e7395059f0"}',
)


class LoopbackFixtures(CarrierFixtures):
    """The loopback envelope's messages (docs/carriers/loopback.md) and decoders."""

    def carrier_name(self) -> str:
        return "loopback"

    @staticmethod
    def _message(event: str, stream_id: str | None, **body: Any) -> str:
        doc: dict[str, Any] = {"event": event}
        if stream_id is not None:
            doc["stream_id"] = stream_id
        doc.update(body)
        return json.dumps(doc, ensure_ascii=False)

    def start_message(self, *, stream_id: str, call_id: str,
                      custom_parameters: Mapping[str, str]) -> str:
        return self._message("start", stream_id, call_id=call_id, format=_FORMAT,
                             parameters=dict(custom_parameters))

    def media_message(self, payload: bytes, *, stream_id: str, sequence: int) -> str:
        return self._message("media", stream_id, seq=sequence, timestamp=(sequence - 1) * 20,
                             payload=base64.b64encode(payload).decode("ascii"))

    def dtmf_message(self, digit: str, *, stream_id: str) -> str:
        return self._message("dtmf", stream_id, digit=digit)

    def mark_message(self, name: str, *, stream_id: str) -> str:
        return self._message("mark", stream_id, name=name)

    def stop_message(self, *, stream_id: str) -> str:
        return self._message("stop", stream_id)

    def recorded_session(self) -> Sequence[str]:
        return RECORDED_CALL

    def malformed_messages(self, *, stream_id: str) -> Mapping[str, Malformed]:
        def media(**fields: Any) -> str:
            return self._message("media", stream_id, **{"seq": 1, **fields})

        def start(**fields: Any) -> str:
            body = {"event": "start", "stream_id": stream_id, "call_id": self.call_1,
                    "format": _FORMAT, "parameters": {}}
            return json.dumps({**body, **fields})

        return {
            "unknown_event": Malformed(self._message("dance", stream_id), field="event",
                                       mentions=("'dance'",)),
            "missing_event": Malformed(json.dumps({"stream_id": stream_id}), field="event"),
            "missing_field": Malformed(media(), field="payload", event="media"),
            "wrong_type": Malformed(media(payload=12345), field="payload", event="media"),
            "bad_payload": Malformed(media(payload="not*base64!"), field="payload",
                                     event="media"),
            "bad_padding": Malformed(media(payload="AAA"), field="payload", event="media"),
            "seq_not_a_number": Malformed(media(payload="AAAA", seq="one"), field="seq",
                                          mentions=("'one'",)),
            "foreign_stream": Malformed(self.media_message(b"\xff", stream_id="other",
                                                           sequence=1),
                                        field="stream_id", mentions=("other",)),
            "dtmf_without_digit": Malformed(self._message("dtmf", stream_id), field="digit",
                                            event="dtmf"),
            "mark_name_empty": Malformed(self.mark_message("", stream_id=stream_id),
                                         field="name", event="mark"),
            "mark_before_start": Malformed(self.mark_message("m", stream_id=stream_id),
                                           event="mark", after_start=False, fatal=False),
            "start_without_stream_id": Malformed(start(stream_id=""), field="stream_id",
                                                 after_start=False, fatal=True),
            "parameters_not_object": Malformed(start(parameters=["a"]), field="parameters",
                                               after_start=False, fatal=True),
            "unsupported_encoding": Malformed(start(format={**_FORMAT, "encoding": "pcma"}),
                                              field="format.encoding", mentions=("pcma",),
                                              after_start=False, fatal=True),
            "second_start_other_stream": Malformed(
                self.start_message(stream_id="second", call_id="c-2", custom_parameters={}),
                event="start", mentions=("second",), fatal=True),
            "call_id_path": Malformed(start(call_id="c/../x"), field="call_id",
                                      after_start=False, fatal=True),
            "binary_frame": Malformed(b'{"event":"stop"}', mentions=("binary", "text")),
        }

    def outbound_media_payload(self, message: str | bytes) -> str:
        return self._outbound(message, "media")["payload"]

    def is_clear(self, message: str | bytes) -> bool:
        return json.loads(message).get("event") == "clear"

    def outbound_mark_name(self, message: str | bytes) -> str:
        return self._outbound(message, "mark")["name"]

    def outbound_stream_id(self, message: str | bytes) -> str:
        return json.loads(message)["stream_id"]

    @staticmethod
    def _outbound(message: str | bytes, event: str) -> dict[str, Any]:
        assert isinstance(message, str), f"loopback messages are text, got {type(message)}"
        doc = json.loads(message)
        assert doc.get("event") == event, f"expected a {event!r} message, got {message!r}"
        keys = {"event", "stream_id", "payload" if event == "media" else "name"}
        assert set(doc) == keys, f"unexpected keys in {message!r}"
        return doc


class TestLoopback(LoopbackFixtures, CarrierConformanceTests):
    """Every conformance test, fed with the loopback envelope."""


# -- beyond the kit -------------------------------------------------------------------------------


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("TELEWIRE_LOOPBACK_ENABLED", "TELEWIRE_LOOPBACK_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return CarrierRegistry().get("loopback")


def test_it_is_an_entry_point_of_the_core_distribution() -> None:
    from importlib import metadata

    eps = {ep.name: ep.value for ep in metadata.distribution("telewire").entry_points
           if ep.group == "telewire.carriers"}
    assert eps == {"loopback": "telewire.loopback"}
    assert CarrierRegistry().infos["loopback"].distribution == "telewire"


def test_every_hook_it_has_a_use_for_is_implemented() -> None:
    import inspect

    import telewire.loopback
    from telewire import hookspecs

    # no answer webhook, no event webhooks, no REST API to transfer or dial with
    not_loopback = {"telewire_parse_webhook", "telewire_answer_document",
                    "telewire_transfer_request", "telewire_dial_request"}
    specs = {n for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if n.startswith("telewire_")} - not_loopback
    impls = {n for n in specs if hasattr(getattr(telewire.loopback, n, None), "telewire_impl")}
    assert impls == specs, f"not implemented: {sorted(specs - impls)}"


def _upgrade(**headers: str) -> HttpRequest:
    return HttpRequest(method="GET", url="ws://127.0.0.1:8080/media/loopback?x=1",
                       headers=headers)


def test_off_unless_enabled_and_then_token_checked(loopback: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AuthenticationError, match="TELEWIRE_LOOPBACK_ENABLED"):
        loopback.authenticate(_upgrade(), "websocket")
    assert loopback.warnings() == []
    monkeypatch.setenv("TELEWIRE_LOOPBACK_ENABLED", "true")
    assert loopback.authenticate(_upgrade(), "websocket") is False  # open: checking is off
    assert "not authenticated" in loopback.warnings()[0]
    monkeypatch.setenv("TELEWIRE_LOOPBACK_TOKEN", "s3cret-token")
    assert loopback.warnings() == []
    assert loopback.authenticate(_upgrade(authorization="Bearer s3cret-token"), "websocket")
    for bad in ({}, {"authorization": "Bearer nope"}, {"authorization": "Basic s3cret-token"}):
        with pytest.raises(AuthenticationError) as info:
            loopback.authenticate(_upgrade(**bad), "websocket")
        assert "s3cret" not in str(info.value) and "?x=1" not in str(info.value)


def test_hangup_is_a_stop_message_and_the_preset_compiles(loopback: Any) -> None:
    from telewire.envelope import compile_envelope
    from telewire.loopback import telewire_envelope_presets

    call = loopback.new_call()
    loopback.parse_inbound(call, LoopbackFixtures().start_message(
        stream_id="s-1", call_id="c-1", custom_parameters={}))
    assert json.loads(loopback.hangup(call, "end_call")) == {"event": "stop", "stream_id": "s-1"}
    preset = telewire_envelope_presets()["loopback"]
    compile_envelope("x", preset["envelope_spec"], preset["response_envelope_spec"])


async def test_the_simulators_loopback_messages_are_what_the_carrier_parses() -> None:
    """Capture what ``CallSimulator(carrier="loopback")`` sends and parse it with the carrier."""
    from websockets.asyncio.server import serve

    got: list[str] = []

    async def handler(ws: Any) -> None:
        async for message in ws:
            got.append(message)
            doc = json.loads(message)
            if doc["event"] == "media" and doc["seq"] == 1:
                await ws.send('{"event":"media","stream_id":"s","payload":"' + doc["payload"]
                              + '"}')
                await ws.send('{"event":"mark","stream_id":"s","name":"m-1"}')
                await ws.send('{"event":"clear","stream_id":"s"}')

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        sim = CallSimulator(f"ws://127.0.0.1:{port}/media/loopback", carrier="loopback",
                            pace=0, drain_s=0.5, dtmf=[(20, "5")],
                            custom_parameters={"tenant": "acme"})
        result = await sim.run(bytes(range(160)) * 3)
    assert result.received_frames == 1 and result.marks_received == ["m-1"]
    assert result.clears == 1 and result.marks_echoed == ["m-1"] and not result.unexpected
    carrier = CarrierRegistry().get("loopback")
    call = carrier.new_call()
    frames = [f for message in got for f in carrier.parse_inbound(call, message)]
    kinds = [type(f) for f in frames]
    assert kinds == [StartFrame, AudioFrame, DTMFFrame, AudioFrame, AudioFrame, MarkFrame,
                     EndFrame]
    assert frames[0].custom_parameters == {"tenant": "acme"}
    assert b"".join(f.data for f in frames if isinstance(f, AudioFrame)) == bytes(range(160)) * 3


async def test_serve_with_the_loopback_carrier_echoes_byte_identical() -> None:
    rng = random.Random(3)
    audio = bytes(rng.randrange(256) for _ in range(160 * 100))  # 2 s
    serve = await asyncio.to_thread(ServeProcess, env={"TELEWIRE_LOOPBACK_ENABLED": "true"})
    try:
        url = f"ws://127.0.0.1:{serve.port}/media/loopback"
        result = await CallSimulator(url, carrier="loopback", pace=4.0, expect_echo=True,
                                     drain_s=10).run(audio)
    finally:
        log = await asyncio.to_thread(serve.stop)
    assert result.sent_frames == 100 and result.received_frames == 100, log
    sent = [base64.b64encode(audio[i:i + 160]).decode() for i in range(0, len(audio), 160)]
    assert result.received_payloads == sent  # every payload string, in order, untouched
    assert result.received_audio == audio
    assert re.search(r"listening on .*\(carriers: [^)]*\bloopback\b", log), log
    assert "loopback: the media WebSocket is on and not authenticated" in log


async def test_serve_refuses_the_loopback_socket_unless_enabled() -> None:
    from websockets.exceptions import InvalidStatus

    serve = await asyncio.to_thread(ServeProcess)
    try:
        url = f"ws://127.0.0.1:{serve.port}/media/loopback"
        with pytest.raises(InvalidStatus) as info:
            await CallSimulator(url, carrier="loopback", pace=0).run(bytes(160))
        assert info.value.response.status_code == 403
    finally:
        await asyncio.to_thread(serve.stop)
