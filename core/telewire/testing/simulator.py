"""A carrier call simulator: plays mu-law into a telewire server as Twilio would, at real-time pace.

Depends on ``websockets`` and ``telewire.frames``/``telewire.wav``; used by ``telewire call``,
``make demo``, the benchmark and the tests. It behaves like the carrier's side of a
bidirectional Media Stream: ``connected`` and ``start``, 20 ms ``media`` frames on a steady
clock, DTMF on request, ``stop`` at the end; it plays returned audio on a simulated playout clock,
echoes each mark when the audio before it has played, and on ``clear`` drops what is queued and
echoes every pending mark at once (as Twilio documents). Given an answer-webhook URL it first
fetches the call's TwiML there, as Twilio does, and connects to the ``<Stream>`` it names with its
``<Parameter>``s (so the call carries the server's one-time call token). With
``carrier="loopback"`` it speaks the core's loopback envelope instead (docs/carriers/loopback.md)
and is that carrier's reference client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

__all__ = ["CallResult", "CallSimulator", "twilio_signature"]

FRAME_MS = 20
BYTES_PER_MS = 8  # mu-law 8 kHz
CARRIERS = ("twilio", "loopback")


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """The ``X-Twilio-Signature`` Twilio would send for ``url`` (and POST ``params``)."""
    payload = url + "".join(k + v for k, v in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass
class CallResult:
    """What happened on one simulated call."""

    stream_sid: str
    call_sid: str
    sent_frames: int = 0
    sent_bytes: int = 0
    received_frames: int = 0
    received_payloads: list[str] = field(default_factory=list)
    marks_received: list[str] = field(default_factory=list)
    marks_echoed: list[str] = field(default_factory=list)
    clears: int = 0
    #: For each clear: agent audio bytes played before it (all audio received so far minus what
    #: was still queued on the simulated playout clock).
    played_at_clear: list[int] = field(default_factory=list)
    #: For each clear: agent audio bytes received before it (played or still queued).
    received_at_clear: list[int] = field(default_factory=list)
    #: Agent audio bytes received so far (a driver can watch it while :meth:`CallSimulator.run`
    #: is going, through :attr:`CallSimulator.result`).
    received_bytes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    duration_s: float = 0.0
    handshake_status: int | None = None

    @property
    def received_audio(self) -> bytes:
        """Every agent audio byte received, in order, decoded from base64."""
        return b"".join(base64.b64decode(p) for p in self.received_payloads)

    @property
    def lost_frames(self) -> int:
        """Sent frames whose echo never came back (meaningful with an echoing model)."""
        return max(0, self.sent_frames - self.received_frames)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)) if lat else (lambda q: None)
        return {
            "stream_sid": self.stream_sid,
            "call_sid": self.call_sid,
            "sent_frames": self.sent_frames,
            "sent_bytes": self.sent_bytes,
            "received_frames": self.received_frames,
            "received_bytes": sum(len(p) * 3 // 4 - p.count("=") for p in self.received_payloads),
            "marks_received": len(self.marks_received),
            "clears": self.clears,
            "round_trip_ms_p50": pct(0.50),
            "round_trip_ms_p99": pct(0.99),
            "close_code": self.close_code,
            "duration_s": round(self.duration_s, 3),
        }


class CallSimulator:
    """One simulated Twilio call against ``url`` (``ws://127.0.0.1:8080/media/twilio``).

    Args:
        url: the server's media WebSocket URL.
        custom_parameters: ``start.customParameters``.
        auth_token: sign the upgrade with ``X-Twilio-Signature`` (over ``signature_url`` or
            ``url``).
        pace: 1.0 sends in real time; 2.0 twice as fast; 0 as fast as possible.
        frame_ms: audio per media message.
        playout_rate: how fast returned audio "plays" for mark acknowledgement (1.0 = real time).
        playout_delay_ms: when returned audio arrives while nothing is playing, it starts
            playing this much later (a carrier's jitter buffer).
        drain_s: after the last frame, wait this long for outstanding audio.
        expect_echo: stop draining as soon as every sent frame came back.
        dtmf: ``(at_ms, digit)`` pairs sent at those media times.
        hang_up: send ``stop`` at the end (else just close the socket).
        answer_url: the server's answer webhook (``http://…/answer/twilio``): POST the call
            there first (signed when ``auth_token`` is given), then connect to the TwiML's
            ``<Stream url>`` with its ``<Parameter>``s; ``url`` is then only a fallback.
        carrier: the envelope spoken: ``"twilio"`` (Media Streams) or ``"loopback"`` (the
            core's loopback carrier; ``auth_token`` is then sent as ``Authorization: Bearer``,
            and there is no answer webhook).
    """

    def __init__(self, url: str, *, custom_parameters: Mapping[str, str] | None = None,
                 auth_token: str | None = None, signature_url: str | None = None,
                 pace: float = 1.0, frame_ms: int = FRAME_MS, playout_rate: float = 1.0,
                 playout_delay_ms: float = 0.0, drain_s: float = 2.0, expect_echo: bool = False,
                 dtmf: Sequence[tuple[float, str]] = (), hang_up: bool = True,
                 stream_sid: str | None = None, call_sid: str | None = None,
                 answer_url: str | None = None, carrier: str = "twilio") -> None:
        if carrier not in CARRIERS:
            raise ValueError(f"carrier must be one of {CARRIERS}, not {carrier!r}")
        if carrier != "twilio" and answer_url is not None:
            raise ValueError(f"carrier {carrier!r} has no answer webhook (answer_url)")
        self.carrier = carrier
        self.url = url
        self.answer_url = answer_url
        self.custom_parameters = dict(custom_parameters or {})
        self.auth_token = auth_token
        self.signature_url = signature_url or url
        self.pace = pace
        self.frame_ms = frame_ms
        self.playout_rate = playout_rate
        if playout_delay_ms < 0:
            raise ValueError(f"playout_delay_ms must be >= 0, not {playout_delay_ms!r}")
        self.playout_delay_s = playout_delay_ms / 1000.0
        self.drain_s = drain_s
        self.expect_echo = expect_echo
        self.dtmf = sorted(dtmf)
        self.hang_up = hang_up
        self.stream_sid = stream_sid or "MZ" + uuid.uuid4().hex
        self.call_sid = call_sid or "CA" + uuid.uuid4().hex
        self.account_sid = "AC" + "0" * 32
        self._seq = 0
        #: The call's result as it happens: set when :meth:`run` starts, filled while it runs.
        self.result: CallResult | None = None

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    def _start(self) -> str:
        if self.carrier == "loopback":
            return json.dumps({
                "event": "start", "stream_id": self.stream_sid, "call_id": self.call_sid,
                "format": {"encoding": "pcmu", "sample_rate": 8000, "channels": 1},
                "parameters": self.custom_parameters})
        return json.dumps({
            "event": "start", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
            "start": {"accountSid": self.account_sid, "streamSid": self.stream_sid,
                      "callSid": self.call_sid, "tracks": ["inbound"],
                      "customParameters": self.custom_parameters,
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                      "channels": 1}},
        })

    def _media(self, payload: str, chunk: int, media_ms: int) -> str:
        if self.carrier == "loopback":
            return ('{"event":"media","stream_id":"' + self.stream_sid + '","seq":' + str(chunk)
                    + ',"timestamp":' + str(media_ms) + ',"payload":"' + payload + '"}')
        return ('{"event":"media","sequenceNumber":"' + self._next_seq() + '","streamSid":"'
                + self.stream_sid + '","media":{"track":"inbound","chunk":"' + str(chunk)
                + '","timestamp":"' + str(media_ms) + '","payload":"' + payload + '"}}')

    def _control(self, event: str, **fields: str) -> str:
        """A ``dtmf`` (``digit``), ``mark`` (``name``) or ``stop`` message."""
        if self.carrier == "loopback":
            return json.dumps({"event": event, "stream_id": self.stream_sid, **fields})
        if event == "dtmf":
            return json.dumps({"event": "dtmf", "streamSid": self.stream_sid,
                               "sequenceNumber": self._next_seq(),
                               "dtmf": {"track": "inbound_track", "digit": fields["digit"]}})
        body = ({"name": fields["name"]} if event == "mark"
                else {"accountSid": self.account_sid, "callSid": self.call_sid})
        return json.dumps({"event": event, "sequenceNumber": self._next_seq(),
                           "streamSid": self.stream_sid, event: body})

    async def answer(self) -> str:
        """POST the answer webhook as Twilio does and take the stream URL and parameters from
        the TwiML it returns; returns the TwiML.

        Raises:
            RuntimeError: the webhook did not answer 200 with a ``<Connect><Stream>``.
        """
        import aiohttp

        assert self.answer_url is not None
        form = {"CallSid": self.call_sid, "AccountSid": self.account_sid,
                "From": "+15005550006", "To": "+15005550001", "Direction": "inbound",
                "CallStatus": "ringing", "ApiVersion": "2010-04-01"}
        headers = {}
        if self.auth_token:
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, self.answer_url,
                                                             form)
        async with aiohttp.ClientSession() as http:
            async with http.post(self.answer_url, data=form, headers=headers) as resp:
                body = await resp.text()
                if resp.status != 200:
                    raise RuntimeError(f"answer webhook {self.answer_url} answered HTTP "
                                       f"{resp.status}: {body[:200]}")
        stream = ET.fromstring(body).find("./Connect/Stream")
        if stream is None or not stream.get("url"):
            raise RuntimeError(f"answer webhook returned no <Connect><Stream url>: {body[:200]}")
        self.url = self.signature_url = stream.get("url", "")
        for param in stream.findall("Parameter"):
            self.custom_parameters[param.get("name", "")] = param.get("value", "")
        return body

    async def run(self, audio: bytes) -> CallResult:
        """Play ``audio`` (mu-law 8 kHz) into the server and collect what comes back."""
        if self.answer_url is not None:
            await self.answer()
        result = self.result = CallResult(self.stream_sid, self.call_sid)
        headers = {}
        if self.auth_token and self.carrier == "loopback":
            headers["Authorization"] = "Bearer " + self.auth_token
        elif self.auth_token:
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, self.signature_url)
        t0 = time.perf_counter()
        async with connect(self.url, additional_headers=headers, max_size=2**24,
                           compression=None, open_timeout=10) as ws:
            if self.carrier == "twilio":
                await ws.send(json.dumps({"event": "connected", "protocol": "Call",
                                          "version": "1.0.0"}))
            await ws.send(self._start())
            sent_at: dict[str, deque[float]] = {}
            reader = asyncio.create_task(self._read(ws, result, sent_at))
            try:
                await self._send_audio(ws, audio, result, sent_at)
                await self._drain(result, reader)
                if self.hang_up:
                    await ws.send(self._control("stop"))
                await ws.close()
            except ConnectionClosed:
                pass
            finally:
                try:
                    await asyncio.wait_for(reader, timeout=5)
                except (asyncio.TimeoutError, ConnectionClosed):
                    reader.cancel()
            result.close_code = ws.close_code
            result.close_reason = ws.close_reason or ""
        result.duration_s = time.perf_counter() - t0
        return result

    async def _send_audio(self, ws: Any, audio: bytes, result: CallResult,
                          sent_at: dict[str, deque[float]]) -> None:
        step = self.frame_ms * BYTES_PER_MS
        dtmf = list(self.dtmf)
        start = time.perf_counter()
        chunk = 0
        for offset in range(0, len(audio), step):
            media_ms = offset // BYTES_PER_MS
            while dtmf and dtmf[0][0] <= media_ms:
                _, digit = dtmf.pop(0)
                await ws.send(self._control("dtmf", digit=digit))
            if self.pace > 0:
                due = start + media_ms / 1000.0 / self.pace
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            payload = base64.b64encode(audio[offset:offset + step]).decode("ascii")
            chunk += 1
            msg = self._media(payload, chunk, media_ms)
            sent_at.setdefault(payload, deque()).append(time.perf_counter())
            await ws.send(msg)
            result.sent_frames += 1
            result.sent_bytes += min(step, len(audio) - offset)
        for _, digit in dtmf:
            await ws.send(self._control("dtmf", digit=digit))

    async def _drain(self, result: CallResult, reader: asyncio.Task[None]) -> None:
        deadline = time.perf_counter() + self.drain_s
        last = result.received_frames
        quiet_since = time.perf_counter()
        while time.perf_counter() < deadline and not reader.done():
            if self.expect_echo and result.received_frames >= result.sent_frames:
                return
            await asyncio.sleep(0.02)
            if result.received_frames != last:
                last, quiet_since = result.received_frames, time.perf_counter()
            elif not self.expect_echo and time.perf_counter() - quiet_since > min(0.5, self.drain_s):
                return

    async def _read(self, ws: Any, result: CallResult, sent_at: dict[str, deque[float]]) -> None:
        loop = asyncio.get_running_loop()
        playout_end = 0.0
        received_bytes = 0
        run_start_bytes = 0  # audio received before the current stretch of playout began
        rate = BYTES_PER_MS * 1000.0 * max(self.playout_rate, 1e-6)  # bytes played per second
        pending: list[tuple[str, asyncio.TimerHandle]] = []
        flat = self.carrier == "loopback"  # loopback fields sit at the top of the message

        async def echo_mark(name: str) -> None:
            try:
                await ws.send(self._control("mark", name=name))
                result.marks_echoed.append(name)
            except ConnectionClosed:
                pass

        def fire(name: str) -> None:
            pending[:] = [p for p in pending if p[0] != name]
            asyncio.ensure_future(echo_mark(name))

        try:
            async for raw in ws:
                now = time.perf_counter()
                try:
                    msg = json.loads(raw)
                    event = msg["event"]
                except (ValueError, KeyError, TypeError):
                    result.unexpected.append(str(raw)[:200])
                    continue
                if event == "media":
                    payload = msg["payload"] if flat else msg["media"]["payload"]
                    result.received_frames += 1
                    result.received_payloads.append(payload)
                    q = sent_at.get(payload)
                    if q:
                        result.latencies_ms.append((now - q.popleft()) * 1000.0)
                    nbytes = len(payload) * 3 // 4 - payload[-2:].count("=")
                    if playout_end <= now:  # nothing playing: a new stretch, after the delay
                        run_start_bytes = received_bytes
                        playout_end = now + self.playout_delay_s
                    received_bytes += nbytes
                    result.received_bytes = received_bytes
                    playout_end += nbytes / rate
                elif event == "mark":
                    name = msg["name"] if flat else msg["mark"]["name"]
                    result.marks_received.append(name)
                    handle = loop.call_later(max(0.0, playout_end - now), fire, name)
                    pending.append((name, handle))
                elif event == "clear":
                    result.clears += 1
                    queued = max(0.0, playout_end - now) * rate
                    result.played_at_clear.append(int(max(run_start_bytes,
                                                          received_bytes - queued)))
                    result.received_at_clear.append(received_bytes)
                    playout_end = now
                    for name, handle in list(pending):
                        handle.cancel()
                        fire(name)
                elif not (flat and event == "stop"):  # loopback: telewire hangs up
                    result.unexpected.append(str(raw)[:200])
        except ConnectionClosed:
            pass
        finally:
            for _, handle in pending:
                handle.cancel()
