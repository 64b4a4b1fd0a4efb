"""Bandwidth's side of a call, for tests: its messages for the conformance kit, and a call client.

Depends on ``telewire.testing.conformance`` (so on pytest), ``websockets`` and ``aiohttp``; only
tests import it, never the plugin.

:class:`BandwidthFixtures` feeds telewire's carrier conformance kit with messages shaped as
Bandwidth documents them. :class:`BandwidthCall` plays Bandwidth against a running telewire
server over real sockets: it opens the media WebSocket, sends ``start``, 20 ms ``media``
messages and ``stop``, collects the ``playAudio``/``clear`` messages sent back, and posts
``<StartGather>`` DTMF webhooks for its call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any, Mapping

import aiohttp
from websockets.asyncio.client import ClientConnection, connect

from telewire.testing.conformance import CarrierFixtures, Malformed

from telewire_bandwidth.auth import basic_authorization

__all__ = [
    "ACCOUNT_ID",
    "BandwidthCall",
    "BandwidthFixtures",
    "dtmf_event",
    "media_message",
    "start_message",
    "stop_message",
]

ACCOUNT_ID = "9900000"
_PCMU_TRACK = {"name": "inbound", "mediaFormat": {"encoding": "audio/PCMU", "sampleRate": 8000}}


def _metadata(stream_id: str, call_id: str, tracks: list[Any] | None = None) -> dict[str, Any]:
    return {"accountId": ACCOUNT_ID, "callId": call_id, "streamId": stream_id,
            "streamName": "telewire", "tracks": tracks if tracks is not None else [_PCMU_TRACK]}


def start_message(*, stream_id: str, call_id: str, stream_params: Mapping[str, str] | None = None,
                  tracks: list[Any] | None = None) -> str:
    """Bandwidth's ``start`` message; ``streamParams`` only when there are any, as documented."""
    doc: dict[str, Any] = {"eventType": "start",
                           "metadata": _metadata(stream_id, call_id, tracks)}
    if stream_params:
        doc["streamParams"] = dict(stream_params)
    return json.dumps(doc, ensure_ascii=False)


def media_message(payload: bytes, *, track: str = "inbound", sequence: int | None = None) -> str:
    """Bandwidth's ``media`` message: the base64 payload at the top level, beside its track.

    ``sequence`` adds a string ``sequenceNumber`` as Bandwidth's own plugin tests do.
    """
    doc: dict[str, Any] = {"eventType": "media", "track": track,
                           "payload": base64.b64encode(payload).decode("ascii")}
    if sequence is not None:
        doc["sequenceNumber"] = str(sequence)
    return json.dumps(doc)


def stop_message(*, stream_id: str, call_id: str) -> str:
    """Bandwidth's ``stop`` message."""
    return json.dumps({"eventType": "stop", "metadata": _metadata(stream_id, call_id)})


def dtmf_event(call_id: str, digit: str) -> dict[str, Any]:
    """The body of Bandwidth's ``dtmf`` webhook (as in its documentation's example)."""
    return {
        "eventType": "dtmf", "eventTime": "2019-06-20T15:54:48.992Z", "accountId": ACCOUNT_ID,
        "applicationId": "7fc9698a-b04a-468b-9e8f-91238c0d0086",
        "startTime": "2019-06-20T15:54:22.234Z", "answerTime": "2019-06-20T15:54:25.432Z",
        "from": "+15551112222", "to": "+15553334444", "direction": "inbound",
        "callId": call_id,
        "callUrl": f"https://voice.bandwidth.com/api/v2/accounts/{ACCOUNT_ID}/calls/{call_id}",
        "digit": digit,
    }


class BandwidthFixtures(CarrierFixtures):
    """Inbound messages shaped like Bandwidth's and decoders for ``playAudio``/``clear``.

    Bandwidth has no marks and no DTMF on the socket; the kit skips those tests because the
    plugin declares ``marks=False`` and ``dtmf=False``, and the two fixtures say why if called.
    """

    def carrier_name(self) -> str:
        return "bandwidth"

    def start_message(self, *, stream_id: str, call_id: str,
                      custom_parameters: Mapping[str, str]) -> str:
        return start_message(stream_id=stream_id, call_id=call_id,
                             stream_params=custom_parameters)

    def media_message(self, payload: bytes, *, stream_id: str, sequence: int) -> str:
        return media_message(payload, sequence=sequence)

    def dtmf_message(self, digit: str, *, stream_id: str) -> str:
        raise NotImplementedError("Bandwidth sends no DTMF on the media socket; DTMF arrives by "
                                  "<StartGather> webhook (see dtmf_event and test_webhooks.py)")

    def mark_message(self, name: str, *, stream_id: str) -> str:
        raise NotImplementedError("Bandwidth has no marks on the media socket")

    def stop_message(self, *, stream_id: str) -> str:
        return stop_message(stream_id=stream_id, call_id=f"call-of-{stream_id}")

    def malformed_messages(self, *, stream_id: str) -> Mapping[str, Malformed]:
        def media(**fields: Any) -> str:
            return json.dumps({"eventType": "media", "track": "inbound", **fields})

        def start(metadata: dict[str, Any] | None = None, **fields: Any) -> str:
            meta = {**_metadata(stream_id, "c-1"), **(metadata or {})}
            return json.dumps({"eventType": "start", "metadata": meta, **fields})

        def track_format(**fmt: Any) -> list[Any]:
            return [{"name": "inbound", "mediaFormat": {**_PCMU_TRACK["mediaFormat"], **fmt}}]

        return {
            "unknown_event": Malformed(json.dumps({"eventType": "dance"}), field="eventType",
                                       mentions=("'dance'",)),
            "missing_event": Malformed(json.dumps({"event": "media", "payload": "AAAA"}),
                                       field="eventType"),
            "missing_field": Malformed(media(), field="payload", event="media"),
            "wrong_type": Malformed(media(payload=12345), field="payload", event="media"),
            "bad_payload": Malformed(media(payload="not*base64!"), field="payload",
                                     event="media"),
            "bad_padding": Malformed(media(payload="AAA"), field="payload", event="media"),
            "stop_before_start": Malformed(self.stop_message(stream_id=stream_id), event="stop",
                                           after_start=False, fatal=False),
            "start_without_stream_id": Malformed(start({"streamId": ""}),
                                                 field="metadata.streamId", after_start=False,
                                                 fatal=True),
            "start_without_metadata": Malformed(json.dumps({"eventType": "start"}),
                                                field="metadata.streamId", after_start=False,
                                                fatal=True),
            "call_id_not_a_string": Malformed(start({"callId": 42}), field="metadata.callId",
                                              after_start=False, fatal=True),
            "stream_params_not_object": Malformed(start(streamParams=["a"]),
                                                  field="streamParams", after_start=False,
                                                  fatal=True),
            "tracks_not_a_list": Malformed(start({"tracks": "inbound"}), field="metadata.tracks",
                                           after_start=False, fatal=True),
            "track_not_a_name_or_object": Malformed(start({"tracks": [7]}),
                                                    field="metadata.tracks[0]",
                                                    after_start=False, fatal=True),
            "unsupported_encoding": Malformed(
                start({"tracks": track_format(encoding="audio/PCMA")}),
                field="metadata.tracks[0].mediaFormat.encoding", mentions=("audio/PCMA",),
                after_start=False, fatal=True),
            "unsupported_sample_rate": Malformed(
                start({"tracks": track_format(sampleRate=16000)}),
                field="metadata.tracks[0].mediaFormat.sampleRate", mentions=("16000",),
                after_start=False, fatal=True),
            "second_start_other_stream": Malformed(
                self.start_message(stream_id="s-second", call_id="c-2", custom_parameters={}),
                event="start", mentions=("s-second",), fatal=True),
            "binary_frame": Malformed(b'{"eventType":"media"}', mentions=("binary", "text")),
        }

    def outbound_media_payload(self, message: str | bytes) -> str:
        return self._outbound(message, "playAudio")["media"]["payload"]

    def is_clear(self, message: str | bytes) -> bool:
        return json.loads(message) == {"eventType": "clear"}

    def outbound_mark_name(self, message: str | bytes) -> str:
        raise NotImplementedError("Bandwidth has no marks on the media socket")

    def outbound_stream_id(self, message: str | bytes) -> str | None:
        return None  # playAudio and clear name no stream: the socket is the stream

    @staticmethod
    def _outbound(message: str | bytes, event: str) -> dict[str, Any]:
        assert isinstance(message, str), (
            f"Bandwidth messages are text, got {type(message).__name__}")
        doc = json.loads(message)
        assert doc.get("eventType") == event, f"expected a {event!r} message, got {message!r}"
        assert set(doc) == {"eventType", "media"}, f"unexpected keys in {message!r}"
        assert set(doc["media"]) == {"contentType", "payload"}, f"unexpected keys in {message!r}"
        assert doc["media"]["contentType"] == "audio/pcmu", f"not audio/pcmu: {message!r}"
        return doc


@dataclass
class Received:
    """What the server sent on one call's media socket, in order."""

    payloads: list[str] = field(default_factory=list)
    clears: int = 0
    other: list[str] = field(default_factory=list)

    @property
    def audio(self) -> bytes:
        """Every ``playAudio`` payload, decoded and joined in arrival order."""
        return b"".join(base64.b64decode(p) for p in self.payloads)


class BandwidthCall:
    """One simulated Bandwidth call against a telewire server.

    Use as ``async with BandwidthCall(media_url, events_url) as call:``; entering opens the
    media WebSocket and sends ``start``, leaving sends ``stop`` (unless already sent) and waits
    for the server to close the socket.

    Args:
        media_url: the server's media socket (``ws://127.0.0.1:PORT/media/bandwidth``), as the
            BXML ``destination`` gives it (user-info credentials there are sent as Basic auth).
        events_url: the server's event webhook (``http://127.0.0.1:PORT/events/bandwidth``),
            as the BXML ``dtmfUrl`` gives it.
        stream_params: the ``streamParams`` of the ``start`` message.
        credentials: ``(username, password)`` sent with each DTMF webhook, as Bandwidth does
            when ``<StartGather>`` carries them.
    """

    def __init__(self, media_url: str, events_url: str, *,
                 stream_params: Mapping[str, str] | None = None,
                 credentials: tuple[str, str] | None = None,
                 call_id: str | None = None, stream_id: str | None = None) -> None:
        self.media_url = media_url
        self.events_url = events_url
        self.stream_params = dict(stream_params or {})
        self.credentials = credentials
        self.call_id = call_id or f"c-{uuid.uuid4()}"
        self.stream_id = stream_id or str(uuid.uuid4())
        self.received = Received()
        self._ws: ClientConnection | None = None
        self._stopped = False

    @property
    def ws(self) -> ClientConnection:
        """The open media socket."""
        assert self._ws is not None, "BandwidthCall is not connected (use 'async with')"
        return self._ws

    async def __aenter__(self) -> "BandwidthCall":
        self._ws = await connect(self.media_url, max_size=2**22, compression=None,
                                 open_timeout=10)
        await self._ws.send(start_message(stream_id=self.stream_id, call_id=self.call_id,
                                          stream_params=self.stream_params))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is None:
            return
        try:
            if not self._stopped:
                await self.stop()
            await asyncio.wait_for(self._ws.wait_closed(), 5)
        finally:
            await self._ws.close()

    async def send_audio(self, audio: bytes, chunk: int = 160) -> int:
        """Send ``audio`` as ``media`` messages of ``chunk`` bytes; returns how many."""
        count = 0
        for i in range(0, len(audio), chunk):
            count += 1
            await self.ws.send(media_message(audio[i:i + chunk], sequence=count))
        return count

    async def next_message(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next message from the server, recorded in :attr:`received` and returned."""
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), f"Bandwidth expects text messages, got {raw!r}"
        doc = json.loads(raw)
        if doc.get("eventType") == "playAudio":
            assert doc == {"eventType": "playAudio", "media": {
                "contentType": "audio/pcmu", "payload": doc["media"]["payload"]}}, raw
            self.received.payloads.append(doc["media"]["payload"])
        elif doc == {"eventType": "clear"}:
            self.received.clears += 1
        else:
            self.received.other.append(raw)
        return doc

    async def collect_audio(self, length: int, timeout: float = 10.0) -> bytes:
        """Read messages until ``length`` bytes of ``playAudio`` have arrived; return them."""
        async with asyncio.timeout(timeout):
            while len(self.received.audio) < length:
                await self.next_message(timeout)
        return self.received.audio

    async def wait_for_clear(self, timeout: float = 5.0) -> None:
        """Read messages until a ``clear`` arrives."""
        seen = self.received.clears
        async with asyncio.timeout(timeout):
            while self.received.clears == seen:
                await self.next_message(timeout)

    async def press(self, digit: str, *, body: Any = None,
                    credentials: tuple[str, str] | None | EllipsisType = ...
                    ) -> tuple[int, str]:
        """Post Bandwidth's ``dtmf`` webhook for ``digit`` (or ``body``); returns status, text.

        Args:
            digit: the keypad digit.
            body: a JSON body to post instead of the documented one.
            credentials: override :attr:`credentials` (``None`` posts without auth).
        """
        creds = self.credentials if isinstance(credentials, EllipsisType) else credentials
        headers = {"Content-Type": "application/json"}
        if creds is not None:
            headers["Authorization"] = basic_authorization(*creds)
        payload = json.dumps(dtmf_event(self.call_id, digit) if body is None else body)
        async with aiohttp.ClientSession() as http:
            async with http.post(self.events_url, data=payload, headers=headers) as response:
                return response.status, await response.text()

    async def stop(self) -> None:
        """Send ``stop``, as Bandwidth does when the stream ends."""
        self._stopped = True
        await self.ws.send(stop_message(stream_id=self.stream_id, call_id=self.call_id))
