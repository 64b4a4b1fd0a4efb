"""A local fake of the __provider__ model's server, for telewire's provider conformance kit.

Depends on ``telewire.testing.provider_kit`` (so on pytest), ``websockets`` and ``jsonschema``;
only tests import it, never the provider.

:class:`__Provider__Fake` speaks the protocol of ``session.py`` on ``127.0.0.1`` and checks every
message the client sends against ``protocol.schema.json`` (``client_<type>``) and against the
protocol's order (``hello`` first and once, a ``cancel`` or ``tool_result`` naming a reply or
call it knows). Each problem is recorded in :meth:`~__Provider__Fake.client_errors`, and
answered with an ``error`` as a server would; nothing is raised at the client.

When you replace the example protocol with your model's, replace the schema with the one your
model's vendor publishes (or one written from its documentation, never from your session code),
and make this fake behave as the vendor documents, including what it refuses.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from telewire.testing.provider_kit import ProviderFake

__all__ = ["FAKE_KEY", "FAKE_MODEL", "SCHEMA", "__Provider__Fake", "schema_problem"]

#: The protocol's messages in JSON Schema (``$defs``: ``client_<type>``, ``server_<type>``).
SCHEMA: dict[str, Any] = json.loads(
    resources.files("telewire___provider__").joinpath("protocol.schema.json").read_text("utf-8"))
Draft202012Validator.check_schema(SCHEMA)
_VALIDATORS: dict[str, Draft202012Validator] = {
    name: Draft202012Validator({"$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{name}"})
    for name in SCHEMA["$defs"] if name.startswith(("client_", "server_"))}
FAKE_KEY = "test-key"
FAKE_MODEL = "voice-1"
_MODES = ("echo", "quiet")
_CHUNK_MS = 20
_CHUNK = _CHUNK_MS * 8  # bytes of mu-law in 20 ms
_PATH = "/v1/session"


def schema_problem(side: str, message: Any) -> str | None:
    """Why ``message`` is not a valid ``side`` (``"client"`` or ``"server"``) message of the
    protocol, or ``None`` when it is."""
    kind = message.get("type") if isinstance(message, dict) else None
    validator = _VALIDATORS.get(f"{side}_{kind}") if isinstance(kind, str) else None
    if validator is None:
        return f"not a {side} message type of the protocol: {kind!r}"
    error = best_match(validator.iter_errors(message))
    if error is None:
        return None
    return f"{kind}: {error.json_path}: {error.message[:200]}"


class _Reply:
    __slots__ = ("id", "cancelled", "done")

    def __init__(self, reply_id: str) -> None:
        self.id = reply_id
        self.cancelled = False
        self.done = False


class _Connection:
    """One client connection and what it configured."""

    def __init__(self, ws: ServerConnection, index: int) -> None:
        self.ws = ws
        self.index = index
        self.hello: dict[str, Any] | None = None
        self.instructions = ""
        self.voice: str | None = None
        self.replies: dict[str, _Reply] = {}
        self.echo: _Reply | None = None
        self.calls: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.closed = False


class __Provider__Fake(ProviderFake):
    """The __provider__ model on 127.0.0.1, driven by the kit (see the module docstring).

    Args:
        mode: ``"echo"`` (each caller audio chunk comes straight back as agent audio, in one
            open reply) or ``"quiet"`` (nothing is said until :meth:`speak`).
        api_key: the key the handshake must carry (``Authorization: Bearer``).
    """

    def __init__(self, *, mode: str = "echo", api_key: str = FAKE_KEY) -> None:
        if mode not in _MODES:
            raise ValueError(f"{type(self).__name__} mode must be one of {_MODES}, not {mode!r}")
        super().__init__(mode=mode)
        self.api_key = api_key
        self._server: Server | None = None
        self._conns: list[_Connection] = []
        self._changed: asyncio.Event | None = None
        self._caller_audio = bytearray()
        self._texts: list[str] = []
        self._errors: list[str] = []
        #: Messages this fake sent that fail the schema's ``server_<type>``: a bug of the fake
        #: (or of the schema), which the kit does not see; the template's own tests check it.
        self.server_errors: list[str] = []
        self._after_stop_ms = 0.0
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._changed = asyncio.Event()
        self._server = await serve(self._serve, "127.0.0.1", 0, compression=None,
                                   max_size=4 * 1024 * 1024)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def rt_config(self) -> dict[str, Any]:
        assert self._server is not None, "start() the fake first"
        port = self._server.sockets[0].getsockname()[1]
        return {"provider": "__provider__", "url": f"ws://127.0.0.1:{port}{_PATH}",
                "api_key": self.api_key, "model": FAKE_MODEL}

    # -- observing ---------------------------------------------------------------------------

    async def wait_connected(self, count: int = 1, *, timeout: float = 10.0) -> None:
        assert self._changed is not None, "start() the fake first"
        async with asyncio.timeout(timeout):
            while len(self._conns) < count or any(c.hello is None for c in self._conns[:count]):
                self._changed.clear()
                await self._changed.wait()

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def latest(self) -> _Connection:
        assert self._conns, "no connection to the fake yet"
        return self._conns[-1]

    def audio_format(self) -> tuple[str, int, str, int]:
        hello = self.latest.hello
        assert hello is not None, "the latest connection has sent no hello"
        audio = hello["audio"]
        return (audio["input"]["codec"], audio["input"]["rate"], audio["output"]["codec"],
                audio["output"]["rate"])

    def caller_audio(self) -> bytes:
        return bytes(self._caller_audio)

    def instructions(self) -> str:
        return self.latest.instructions

    def voice(self) -> str | None:
        return self.latest.voice

    def client_errors(self) -> list[str]:
        return list(self._errors)

    def texts_received(self) -> list[str]:
        return list(self._texts)

    # -- driving -----------------------------------------------------------------------------

    async def speak(self, ms: int, *, transcript: str = "") -> None:
        conn = self.latest
        reply = await self._start_reply(conn)
        audio = self._talk(ms)
        for offset in range(0, len(audio), _CHUNK):
            await self._audio(conn, reply, audio[offset:offset + _CHUNK])
        await self._finish_reply(conn, reply, ms, transcript)

    async def speak_slowly(self, ms: int) -> None:
        conn = self.latest
        reply = await self._start_reply(conn)
        task = asyncio.create_task(self._stream(conn, reply, self._talk(ms), ms),
                                   name="__provider__-fake-slow")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def barge_in(self) -> None:
        # this model reports the caller and waits to be told to cancel
        await self._send(self.latest, {"type": "speech_started"})

    def audio_after_barge_in_ms(self) -> float:
        return self._after_stop_ms

    async def call_tool(self, name: str, arguments: dict[str, Any], *,
                        timeout: float = 10.0) -> Any:
        conn = self.latest
        call_id = f"call_{next(self._ids)}"
        answered: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        conn.calls[call_id] = answered
        await self._send(conn, {"type": "tool_call", "call_id": call_id, "name": name,
                                "arguments": json.dumps(arguments)})
        result = await asyncio.wait_for(answered, timeout)
        try:
            return json.loads(result["output"])
        except ValueError:
            return result["output"]

    async def drop(self) -> None:
        await self.latest.ws.close(1011, "internal error")

    async def send_raw(self, message: str | bytes) -> None:
        await self.latest.ws.send(message)

    # -- the server --------------------------------------------------------------------------

    async def _serve(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        if ws.request.headers.get("Authorization") != f"Bearer {self.api_key}":
            await ws.send(json.dumps({"type": "error", "code": "unauthorized",
                                      "message": "missing or wrong API key", "fatal": True}))
            await ws.close(1008, "unauthorized")
            return
        if ws.request.path.split("?", 1)[0] != _PATH:
            await ws.close(1008, "no such endpoint")
            return
        conn = _Connection(ws, len(self._conns))
        self._conns.append(conn)
        self._notify()
        try:
            async for raw in ws:
                await self._handle(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            self._notify()

    async def _handle(self, conn: _Connection, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            return await self._refuse(conn, "a binary message; the protocol is JSON text")
        try:
            message = json.loads(raw)
        except ValueError as exc:
            return await self._refuse(conn, f"not JSON ({exc}): {raw[:80]!r}")
        problem = schema_problem("client", message)
        if problem is not None:
            return await self._refuse(conn, problem)
        kind = message["type"]
        if kind == "hello":
            if conn.hello is not None:
                return await self._refuse(conn, "hello: sent twice on one connection")
            conn.hello = message
            conn.instructions, conn.voice = message["instructions"], message["voice"]
            await self._send(conn, {"type": "ready", "session_id": f"sess_{next(self._ids)}",
                                    "audio": message["audio"]})
            self._notify()
        elif conn.hello is None:
            await self._refuse(conn, f"{kind}: sent before hello")
        elif kind == "audio":
            data = base64.b64decode(message["audio"])
            self._caller_audio += data
            if self.mode == "echo":
                if conn.echo is None:
                    conn.echo = await self._start_reply(conn)
                await self._audio(conn, conn.echo, data)
        elif kind == "text":
            self._texts.append(message["text"])
        elif kind == "update":
            conn.instructions = message.get("instructions", conn.instructions)
            conn.voice = message.get("voice", conn.voice)
        elif kind == "cancel":
            reply = conn.replies.get(message["reply_id"])
            if reply is None:
                await self._refuse(conn, f"cancel: no reply {message['reply_id']!r}")
            elif not reply.done and not reply.cancelled:  # a cancel after the end is a race
                reply.cancelled = True
                reply.done = True
                await self._send(conn, {"type": "reply_done", "reply_id": reply.id,
                                        "status": "cancelled"})
        elif kind == "tool_result":
            answered = conn.calls.pop(message["call_id"], None)
            if answered is None:
                await self._refuse(conn, f"tool_result: no tool call {message['call_id']!r}")
            elif not answered.done():
                answered.set_result(message)

    async def _refuse(self, conn: _Connection, problem: str) -> None:
        self._errors.append(f"connection {conn.index}: {problem}")
        await self._send(conn, {"type": "error", "code": "invalid_message",
                                "message": problem, "fatal": False})

    # -- speaking ----------------------------------------------------------------------------

    def _talk(self, ms: int) -> bytes:
        """``ms`` of mu-law unlike any caller audio the kit sends (a reply of its own)."""
        n = next(self._ids)
        return bytes((0x80 | ((i // 8 + n) % 64)) for i in range(ms * 8))

    async def _start_reply(self, conn: _Connection) -> _Reply:
        reply = _Reply(f"reply_{next(self._ids)}")
        conn.replies[reply.id] = reply
        await self._send(conn, {"type": "reply_started", "reply_id": reply.id})
        return reply

    async def _audio(self, conn: _Connection, reply: _Reply, chunk: bytes) -> None:
        await self._send(conn, {"type": "audio", "reply_id": reply.id,
                                "audio": base64.b64encode(chunk).decode("ascii")})

    async def _finish_reply(self, conn: _Connection, reply: _Reply, ms: int,
                            transcript: str) -> None:
        if transcript:
            await self._send(conn, {"type": "transcript", "role": "agent", "text": transcript,
                                    "reply_id": reply.id})
        await self._send(conn, {"type": "usage", "reply_id": reply.id,
                                "input_audio_tokens": 40, "input_text_tokens": 12,
                                "output_audio_tokens": max(1, ms // 20),
                                "output_text_tokens": len(transcript.split())})
        reply.done = True
        await self._send(conn, {"type": "reply_done", "reply_id": reply.id,
                                "status": "completed"})

    async def _stream(self, conn: _Connection, reply: _Reply, audio: bytes, ms: int) -> None:
        """Send ``audio`` in real time, 20 ms every 20 ms, until it ends or is cancelled."""
        loop = asyncio.get_running_loop()
        begin = loop.time()
        try:
            for k, offset in enumerate(range(0, len(audio), _CHUNK)):
                await asyncio.sleep(max(0.0, begin + k * _CHUNK_MS / 1000 - loop.time()))
                if conn.closed:
                    return
                if reply.cancelled:
                    return  # this model stops at once when told to
                await self._audio(conn, reply, audio[offset:offset + _CHUNK])
            await self._finish_reply(conn, reply, ms, "")
        except ConnectionClosed:
            pass

    async def _send(self, conn: _Connection, message: dict[str, Any]) -> None:
        problem = schema_problem("server", message)
        if problem is not None:
            self.server_errors.append(problem)
        if conn.closed:
            return
        if reply_id := message.get("reply_id"):
            reply = conn.replies.get(reply_id)
            if reply is not None and reply.cancelled and message["type"] == "audio":
                self._after_stop_ms += _CHUNK_MS  # would be a bug of this fake
        try:
            await conn.ws.send(json.dumps(message))
        except ConnectionClosed:
            conn.closed = True

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
