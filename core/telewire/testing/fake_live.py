"""A local fake of OpenAI GPT-Live's primary WebSocket (``/v1/live/sessions``), for testing the
``openai_live`` / ``azure_live`` providers with no model and no key.

Depends on ``websockets``, ``loguru`` and ``telewire.testing.provider_kit``; the ``openai``
package (its ``openai.types.live`` types, the reference for every client event) is imported
lazily, when the first client event is checked: a test tool may need it, the provider never does.

What it speaks, as the published protocol does: ``session.start`` answered by
``session.started`` (the resolved session), ``session.input_audio.append`` (echoed back as
``session.output_audio.delta`` in echo mode), timed transcript fragments
(``session.input_transcript.delta`` / ``session.output_transcript.delta`` with ``start_ms`` /
``end_ms`` on the session timeline), ``session.usage.updated`` (cumulative seconds),
``session.delegation.created`` and ``response.event`` envelopes around a delegated Responses
stream (function calls answered with ``response.item.create`` + ``response.create``),
``session.instructions.append`` / ``thinking`` / ``commentary`` with their ``*.appended``
acknowledgements, and ``session.close`` answered by ``session.closed`` with the final usage.

Every client event is checked against ``openai.types.live.ClientEvent`` and, since those models
accept unknown fields, also for fields the types do not name and for a round trip of what was
validated; each failure is kept in :meth:`FakeLiveServer.client_errors`. The events the fake
itself sends are checked against ``openai.types.live.ServerEvent`` the same way
(:meth:`FakeLiveServer.server_errors`), except what :meth:`~FakeLiveServer.send_raw` sends.

Two liberties, said here: the real service streams output audio continuously (digital silence
between utterances) at real-time pace; the fake sends audio only when it speaks (``speak`` as fast
as it can, ``speak_slowly`` in real time) and stops sending at once when the caller barges in (the
real model yields on its own schedule; ``yield_after_ms`` imitates that delay).

``python -m telewire.testing.fake_live --port 0`` serves until SIGINT or SIGTERM and prints its URL.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import functools
import itertools
import json
import signal
import time
from http import HTTPStatus
from typing import Any, Iterable, get_args

import loguru
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from telewire.testing.provider_kit import ProviderFake

__all__ = ["AzureFakeLiveServer", "FakeLiveServer", "LIVE_PATH", "AZURE_LIVE_PATH", "main"]

logger = loguru.logger

#: The primary WebSocket's path at OpenAI, and at an Azure OpenAI resource.
LIVE_PATH = "/v1/live/sessions"
AZURE_LIVE_PATH = "/openai/v1/live/sessions"
MODES = ("echo", "quiet")
_CHUNK_MS = 20
_FRAGMENT_MS = 200  # the service emits transcript fragments on 200 ms boundaries
_CODECS = {"audio/pcmu": "pcmu", "audio/pcma": "pcma", "audio/pcm": "pcm16"}


@functools.cache
def _reference() -> tuple[dict[str, Any], dict[str, Any], Any]:
    """The ``openai.types.live`` client and server event models by ``type``, and pydantic."""
    import pydantic
    from openai.types.live import ClientEvent, ServerEvent

    def by_type(union: Any) -> dict[str, Any]:
        table = {}
        for model in get_args(get_args(union)[0]):  # Annotated[Union[...], ...] -> members
            (literal,) = get_args(model.model_fields["type"].annotation)
            table[literal] = model
        return table

    return by_type(ClientEvent), by_type(ServerEvent), pydantic


def _extras(value: Any, path: str, pydantic: Any) -> list[str]:
    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        found += [f"{path}.{key}" for key in (value.model_extra or {})]
        for name in type(value).model_fields:
            found += _extras(getattr(value, name), f"{path}.{name}", pydantic)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found += _extras(item, f"{path}[{i}]", pydantic)
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _extras(item, f"{path}.{key}", pydantic)
    return found


def check_event(event: Any, *, side: str) -> str | None:
    """Why ``event`` is not exactly a published GPT-Live ``side`` (``"client"`` / ``"server"``)
    event of ``openai.types.live``; ``None`` when it is."""
    clients, servers, pydantic = _reference()
    table = clients if side == "client" else servers
    if not isinstance(event, dict):
        return f"not a JSON object: {type(event).__name__}"
    kind = event.get("type")
    model = table.get(kind)  # type: ignore[arg-type]
    if model is None:
        return f"{kind!r} is not a GPT-Live {side} event in openai.types.live"
    try:
        obj = model.model_validate(event)
    except pydantic.ValidationError as exc:
        return f"{kind}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
    extras = _extras(obj, model.__name__, pydantic)
    if extras:
        return f"{kind}: fields unknown to openai's {model.__name__}: {extras}"
    dumped = obj.model_dump(mode="json", exclude_unset=True)
    if dumped != event:
        return f"{kind}: does not round-trip through {model.__name__}: {dumped} != {event}"
    return None


class _Connection:
    """One client connection and what it did."""

    def __init__(self, ws: ServerConnection, index: int) -> None:
        self.ws = ws
        self.index = index
        request = ws.request
        self.path = request.path if request is not None else ""
        self.headers = dict(request.headers.raw_items()) if request is not None else {}
        self.received: list[dict[str, Any]] = []
        self.session: dict[str, Any] | None = None  # what session.start asked for
        self.session_id = f"sess_fake{index:04d}"
        self.started_at = 0.0
        self.appended: list[tuple[str, str]] = []  # (kind, content) of *.append events
        self.outputs: dict[str, str] = {}  # call_id -> function_call_output.output
        self.response_creates = 0
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.received if e.get("type") == kind]

    def now_ms(self) -> int:
        return int((time.monotonic() - self.started_at) * 1000) if self.started_at else 0


class FakeLiveServer(ProviderFake):
    """A GPT-Live primary-WebSocket server on 127.0.0.1 (see the module docstring).

    Args:
        mode: ``"echo"`` (each caller audio chunk comes back at once, the same base64 text) or
            ``"quiet"`` (speaks only when driven).
        host, port: where to listen (port 0: a free one).
        api_key: refuse clients that present another key (``Authorization: Bearer`` or Azure's
            ``api-key``); ``None``: any non-empty key.
        yield_after_ms: after a barge-in, how long the model goes on talking before it yields.
        usage_interval_s: every this many seconds of a session, ``session.usage.updated`` with
            its whole seconds so far (as the service reports usage on its own); ``None``: only
            when :meth:`send_usage` is called.
    """

    def __init__(self, *, mode: str = "echo", host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, yield_after_ms: int = 0,
                 usage_interval_s: float | None = 1.0) -> None:
        if mode not in MODES:
            raise ValueError(f"FakeLiveServer mode must be one of {MODES}, not {mode!r}")
        super().__init__(mode=mode)
        self.host, self.port = host, port
        self.api_key = api_key
        self.yield_after_ms = yield_after_ms
        self.usage_interval_s = usage_interval_s
        self._server: Server | None = None
        self.conns: list[_Connection] = []
        self._client_errors: list[str] = []
        self._server_errors: list[str] = []
        self._caller_audio = bytearray()
        self._new = asyncio.Event()
        self._ids = itertools.count(1)
        self._reply: asyncio.Task[None] | None = None
        self._barge_at: float | None = None
        self._after_barge_ms = 0.0

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{LIVE_PATH}"

    def rt_config(self) -> dict[str, Any]:
        return {"provider": "openai_live", "url": self.url, "api_key": "test-key",
                "model": "gpt-live-1"}

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("FakeLiveServer.start() called twice")
        _reference()  # import openai now, not while a client waits for session.started
        self._server = await serve(self._serve, self.host, self.port,
                                   process_request=self._route, compression=None,
                                   max_size=16 * 1024 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._reply is not None:
            self._reply.cancel()
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    # -- observing ---------------------------------------------------------------------------

    async def wait_connected(self, count: int = 1, *, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while sum(1 for c in self.conns if c.session is not None) < count:
                self._new.clear()
                await self._new.wait()

    @property
    def connections(self) -> int:
        return len(self.conns)

    def latest(self) -> _Connection:
        if not self.conns:
            raise RuntimeError("FakeLiveServer: no client has connected")
        return self.conns[-1]

    def _session(self) -> dict[str, Any]:
        session = self.latest().session
        if session is None:
            raise RuntimeError("FakeLiveServer: the latest connection sent no session.start")
        return session

    def audio_format(self) -> tuple[str, int, str, int]:
        self._session()
        fmt = self._resource(self.latest())["audio"]["format"]  # as the server resolved it
        codec, rate = _CODECS.get(fmt.get("type"), str(fmt.get("type"))), int(fmt.get("rate") or 0)
        return codec, rate, codec, rate  # one format, both ways

    def caller_audio(self) -> bytes:
        return bytes(self._caller_audio)

    def instructions(self) -> str:
        """The startup instructions with every ``session.instructions.append`` after them."""
        parts = [self._session().get("instructions") or ""]
        parts += [text for kind, text in self.latest().appended if kind == "instructions"]
        return "\n\n".join(p for p in parts if p)

    def voice(self) -> str | None:
        voice = ((self._session().get("audio") or {}).get("output") or {}).get("voice")
        return voice if isinstance(voice, str) or voice is None else json.dumps(voice)

    def client_errors(self) -> list[str]:
        return list(self._client_errors)

    def server_errors(self) -> list[str]:
        """Events the fake sent that failed ``openai.types.live.ServerEvent`` (a fake bug)."""
        return list(self._server_errors)

    def texts_received(self) -> list[str]:
        return [text for conn in self.conns for _, text in conn.appended]

    # -- driving -----------------------------------------------------------------------------

    async def speak(self, ms: int, *, transcript: str = "") -> None:
        conn = self.latest()
        start = conn.now_ms()
        if transcript:
            await self._send(conn, self._fragment("output", transcript, start, start + ms))
        for i in range(0, ms, _CHUNK_MS):
            await self._send(conn, {"type": "session.output_audio.delta",
                                    "delta": _speech(i, _CHUNK_MS)})

    async def speak_slowly(self, ms: int) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
        self._barge_at, self._after_barge_ms = None, 0.0
        conn = self.latest()
        started = asyncio.Event()
        self._reply = asyncio.create_task(self._talk(conn, ms, started))
        await started.wait()

    async def _talk(self, conn: _Connection, ms: int, started: asyncio.Event) -> None:
        t0 = time.monotonic()
        try:
            for i in range(0, ms, _CHUNK_MS):
                if self._barge_at is not None and (
                        time.monotonic() - self._barge_at) * 1000 >= self.yield_after_ms:
                    return  # the model yields to the caller: its reply stops here
                if i % _FRAGMENT_MS == 0:
                    now = conn.now_ms()
                    await self._send(conn, self._fragment("output", " word", now,
                                                          now + _FRAGMENT_MS))
                await self._send(conn, {"type": "session.output_audio.delta",
                                        "delta": _speech(i, _CHUNK_MS)})
                if self._barge_at is not None:
                    self._after_barge_ms += _CHUNK_MS
                started.set()
                await asyncio.sleep(max(0.0, t0 + (i + _CHUNK_MS) / 1000 - time.monotonic()))
        except ConnectionClosed:
            pass
        finally:
            started.set()

    async def barge_in(self) -> None:
        """The caller talks over the reply: its words come back as an input transcript fragment
        (that is all GPT-Live reports) and the model yields after ``yield_after_ms``."""
        conn = self.latest()
        now = conn.now_ms()
        self._barge_at = time.monotonic()
        self._after_barge_ms = 0.0
        await self._send(conn, self._fragment("input", " Wait,", now, now + _FRAGMENT_MS))

    async def wait_reply_done(self, *, timeout: float = 30.0) -> None:
        """Wait until the reply of :meth:`speak_slowly` has ended (finished or yielded)."""
        if self._reply is not None:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._reply)

    def audio_after_barge_in_ms(self) -> float:
        return self._after_barge_ms

    async def call_tool(self, name: str, arguments: dict[str, Any], *,
                        timeout: float = 10.0) -> Any:
        """The delegated Responses model calls ``name``: ``session.delegation.created`` then
        ``response.event`` envelopes (``response.created``, ``response.output_item.done`` with
        the ``function_call``, ``response.completed``); returns the output the client sent back
        in ``response.item.create`` (the ``response.create`` that continues the delegated response
        follows it; see :attr:`_Connection.response_creates`)."""
        conn = self.latest()
        delegation = (self._session().get("delegation") or {})
        if delegation.get("type") != "responses":
            raise RuntimeError(f"FakeLiveServer.call_tool: the session delegates to "
                               f"{delegation.get('type')!r}, not to a Responses backend")
        n = next(self._ids)
        did, rid, call_id = f"deleg_{n:04d}", f"resp_{n:04d}", f"call_{n:04d}"
        await self._send(conn, {"type": "session.delegation.created", "event_id": self._eid(),
                                "offset_ms": conn.now_ms(), "delegation": {
                                    "id": did, "target": "responses", "type": "delegation",
                                    "response_id": rid}})
        seq = itertools.count()
        item = {"id": f"fc_{n:04d}", "type": "function_call", "status": "completed",
                "call_id": call_id, "name": name, "arguments": json.dumps(arguments)}
        for inner in (
                {"type": "response.created", "sequence_number": next(seq),
                 "response": {"id": rid, "object": "response", "status": "in_progress"}},
                {"type": "response.output_item.done", "sequence_number": next(seq),
                 "output_index": 0, "item": item},
                {"type": "response.completed", "sequence_number": next(seq),
                 "response": {"id": rid, "object": "response", "status": "completed",
                              "usage": {"input_tokens": 120, "output_tokens": 20,
                                        "total_tokens": 140}}}):
            await self._send(conn, {"type": "response.event", "event_id": self._eid(),
                                    "delegation_id": did, "event": inner})
        async with asyncio.timeout(timeout):
            while call_id not in conn.outputs:
                conn.changed.clear()
                await conn.changed.wait()
        output = conn.outputs[call_id]
        try:
            return json.loads(output)
        except ValueError:
            return output

    async def send_usage(self, seconds: float | None = None) -> None:
        """``session.usage.updated`` with the session's cumulative billed seconds (default: whole
        seconds since ``session.started``)."""
        conn = self.latest()
        if seconds is None:
            seconds = float(conn.now_ms() // 1000)
        await self._send(conn, {"type": "session.usage.updated", "event_id": self._eid(),
                                "usage": {"seconds": seconds}})

    async def end_session(self, reason: str = "expired", seconds: float | None = None) -> None:
        """The service ends the session: ``session.closed`` with ``reason``, then close 1000."""
        conn = self.latest()
        await self._closed(conn, reason, seconds)
        await conn.ws.close(1000)

    async def drop(self) -> None:
        await self.latest().ws.close(1011, "fake drop")

    async def send_raw(self, message: str | bytes) -> None:
        await self.latest().ws.send(message)

    # -- serving -----------------------------------------------------------------------------

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path not in (LIVE_PATH, AZURE_LIVE_PATH):
            return connection.respond(HTTPStatus.NOT_FOUND, f"No Live endpoint at {path}\n")
        auth = request.headers.get("Authorization", "")
        key = auth[7:].strip() if auth.startswith("Bearer ") else ""
        key = key or request.headers.get("api-key", "").strip()
        if not key or (self.api_key is not None and key != self.api_key):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided.\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        conn = _Connection(ws, len(self.conns))
        self.conns.append(conn)
        self._new.set()
        ticker = None
        try:
            async for raw in ws:
                await self._handle(conn, raw)
                if ticker is None and conn.started_at and self.usage_interval_s:
                    ticker = asyncio.create_task(self._report_usage(conn, self.usage_interval_s))
        except ConnectionClosed:
            pass
        finally:
            if ticker is not None:
                ticker.cancel()
            conn.closed.set()

    async def _report_usage(self, conn: _Connection, interval: float) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                await self._send(conn, {"type": "session.usage.updated", "event_id": self._eid(),
                                        "usage": {"seconds": float(conn.now_ms() // 1000)}})
        except ConnectionClosed:
            pass

    async def _handle(self, conn: _Connection, raw: str | bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError as exc:
            self._client_errors.append(f"not JSON: {exc}: {str(raw)[:80]!r}")
            return
        problem = check_event(event, side="client")
        if problem is not None:
            self._client_errors.append(problem)
        if not isinstance(event, dict):
            return
        conn.received.append(event)
        kind = event.get("type")
        if conn.session is None and kind != "session.start":
            self._client_errors.append(f"{kind!r} before session.start")
        if kind == "session.start":
            await self._start(conn, event)
        elif kind == "session.input_audio.append":
            audio = event.get("audio", "")
            try:
                self._caller_audio += base64.b64decode(audio, validate=True)
            except (binascii.Error, TypeError):
                self._client_errors.append("session.input_audio.append: audio is not base64")
                return
            if self.mode == "echo":
                await self._send(conn, {"type": "session.output_audio.delta", "delta": audio})
        elif kind in ("session.instructions.append", "session.thinking.append",
                      "session.commentary.append"):
            channel = kind.split(".")[1]
            conn.appended.append((channel, str(event.get("content", ""))))
            now = conn.now_ms()
            ack = {"type": f"session.{channel}.appended", "event_id": self._eid(),
                   "start_ms": now, "end_ms": now}
            if event.get("event_id"):
                ack["client_event_id"] = event["event_id"]
            await self._send(conn, ack)
            if channel == "commentary" and event.get("delegation_id") is None:
                await self.speak(400, transcript=" Goodbye.")  # the model says it
        elif kind == "response.item.create":
            item = event.get("item") or {}
            if item.get("type") == "function_call_output":
                conn.outputs[str(item.get("call_id"))] = str(item.get("output"))
        elif kind == "response.create":
            conn.response_creates += 1
        elif kind == "session.close":
            await self._closed(conn, "close_requested", None)
            await conn.ws.close(1000)
        conn.changed.set()

    async def _start(self, conn: _Connection, event: dict[str, Any]) -> None:
        if conn.session is not None:
            await self._error(conn, "session_already_started", "The session has already started.")
            return
        conn.session = dict(event.get("session") or {})
        conn.started_at = time.monotonic()
        started = {"type": "session.started", "event_id": self._eid(),
                   "session": self._resource(conn)}
        if event.get("event_id"):
            started["client_event_id"] = event["event_id"]
        await self._send(conn, started)
        self._new.set()

    def _resource(self, conn: _Connection) -> dict[str, Any]:
        """The resolved session (``SessionResource``): what was asked, plus the server's ids and
        defaults."""
        session = dict(conn.session or {})
        audio = dict(session.get("audio") or {})
        audio.setdefault("format", {"type": "audio/pcm", "rate": 24000})
        audio.setdefault("output", {"voice": "marin"})
        session["audio"] = audio
        return {**session, "id": conn.session_id, "expires_at": int(time.time()) + 3600,
                "status": "active"}

    async def _closed(self, conn: _Connection, reason: str, seconds: float | None) -> None:
        if seconds is None:
            seconds = float(conn.now_ms() // 1000)
        await self._send(conn, {"type": "session.closed", "event_id": self._eid(),
                                "reason": reason, "session": self._resource(conn),
                                "usage": {"seconds": seconds}})

    async def _error(self, conn: _Connection, code: str, message: str) -> None:
        await self._send(conn, {"type": "error", "event_id": self._eid(), "error": {
            "type": "invalid_request_error", "code": code, "message": message}})

    def _fragment(self, side: str, text: str, start_ms: int, end_ms: int) -> dict[str, Any]:
        return {"type": f"session.{side}_transcript.delta", "event_id": self._eid(),
                "delta": text, "start_ms": start_ms, "end_ms": end_ms}

    def _eid(self) -> str:
        return f"event_fake{next(self._ids):06d}"

    async def _send(self, conn: _Connection, event: dict[str, Any]) -> None:
        problem = check_event(event, side="server")
        if problem is not None:
            self._server_errors.append(problem)
        await conn.ws.send(json.dumps(event))


class AzureFakeLiveServer(FakeLiveServer):
    """The same fake as Azure's GPT-Live endpoint (``/openai/v1/live/sessions``, the key in an
    ``api-key`` header) for the kit run of ``azure_live``; ``rt.config.model`` is the
    deployment name."""

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{AZURE_LIVE_PATH}"

    def rt_config(self) -> dict[str, Any]:
        return {"provider": "azure_live", "url": self.url, "api_key": "azure-test-key",
                "model": "my-gpt-live"}


def _speech(offset_ms: int, ms: int) -> str:
    """``ms`` of mu-law that is not silence, base64 (a different pattern at each offset)."""
    n = ms * 8
    return base64.b64encode(bytes((offset_ms + i) % 0x7E for i in range(n))).decode()


def main(argv: Iterable[str] | None = None) -> None:
    """``python -m telewire.testing.fake_live``: serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m telewire.testing.fake_live",
                                     description="A fake OpenAI GPT-Live WebSocket server.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--mode", choices=MODES, default="echo", help="echo (default) or quiet")
    parser.add_argument("--api-key", default=None, help="refuse clients presenting another key")
    args = parser.parse_args(list(argv) if argv is not None else None)

    async def run() -> None:
        server = FakeLiveServer(mode=args.mode, host=args.host, port=args.port,
                                api_key=args.api_key)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            print(server.url, flush=True)
            await stop.wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
