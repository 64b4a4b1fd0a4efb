"""A fake Deepgram Voice Agent server on loopback, checking every client message against the SDK.

Depends on ``websockets``, ``loguru`` and :mod:`telewire.testing.provider_kit`; imports the
``deepgram-sdk`` package (a dev dependency) when it starts, for the published message types.

:class:`FakeDeepgramServer` speaks the Voice Agent protocol of
``wss://agent.deepgram.com/v1/agent/converse`` as Deepgram documents it: it answers the handshake
(``Authorization: Token KEY`` or ``Bearer KEY``; 401 for another key, 404 off the path), sends
``Welcome``, takes one ``Settings`` and answers ``SettingsApplied``, takes binary caller audio,
and speaks binary agent audio framed by ``ConversationText`` / ``AgentStartedSpeaking`` /
``AgentAudioDone``. Barge-in is Deepgram's: the agent stops by itself and reports
``UserStartedSpeaking``. ``FunctionCallRequest`` goes out when a test calls a tool and the
client's ``FunctionCallResponse`` comes back; ``UpdatePrompt`` / ``UpdateSpeak`` are applied and
acknowledged (``PromptUpdated`` / ``SpeakUpdated``); ``InjectAgentMessage`` is spoken (or
``InjectionRefused`` while the agent talks) and ``InjectUserMessage`` answered.

What is checked, and against what: every JSON message a client sends is validated against the
``deepgram-sdk`` (7.x) ``deepgram.agent.v1.types`` model of its ``type`` — ``AgentV1Settings``,
``AgentV1UpdatePrompt``, ``AgentV1UpdateSpeak``, ``AgentV1InjectAgentMessage``,
``AgentV1InjectUserMessage``, ``AgentV1SendFunctionCallResponse``, ``AgentV1KeepAlive``,
``AgentV1UpdateThink``, ``AgentV1UpdateListen`` — more strictly than the SDK itself: its models
allow extra keys and its enums accept any value (``Union[Literal[...], Any]``, for forward
compatibility); here an unknown key anywhere, a missing required field, a wrong JSON type, or an
enum value outside the published ``Literal`` is a client error. Discriminated unions
(``UnionMetadata(discriminant=...)``: the listen provider's ``version``, the think and speak
providers' ``type``) are resolved by their discriminant as the SDK does. The fake also checks
its own server messages against the SDK's server types (a mismatch is a bug of the fake and
raises). Where the SDK has no type there is nothing to check against: binary audio frames (the
SDK's ``AgentV1Media`` is ``bytes``) are only checked to come after ``SettingsApplied``; the
protocol order (``Settings`` first, once) and that a ``FunctionCallResponse`` answers an open
request are checked from the documentation.

Not modelled: a real LLM or TTS (the agent's words are scripted by the test), ``agent.greeting``
is acknowledged with its ``ConversationText`` but not spoken (echo mode must stay byte-exact),
server-side functions, the 2-hour session limit and the idle timeout.

Runnable standalone: ``python -m telewire.testing.fake_deepgram --port 0`` prints its URL.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import types
import typing
from http import HTTPStatus
from typing import Any, Iterable
from urllib.parse import urlsplit

from loguru import logger
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from telewire.testing.provider_kit import ProviderFake

__all__ = ["FakeDeepgramServer", "PATH", "main", "strict_errors"]

#: The Voice Agent endpoint's path.
PATH = "/v1/agent/converse"
_BYTES_PER_MS = 8  # mu-law at 8 kHz
_CHUNK_MS = 20
_CODECS = {"mulaw": "pcmu", "alaw": "pcma", "linear16": "pcm16"}
MODES = ("echo", "quiet")

# -- strict validation against the SDK's published types ---------------------------------------


def _sdk_types() -> tuple[dict[str, Any], dict[str, Any]]:
    """The SDK models of client messages and of server messages, by ``type``.

    Raises:
        RuntimeError: the ``deepgram-sdk`` package is not installed.
    """
    try:
        from deepgram.agent.v1 import types as t
    except ImportError as exc:  # pragma: no cover - a dev dependency
        raise RuntimeError("FakeDeepgramServer checks client messages against the deepgram-sdk "
                           "package's types: pip install 'deepgram-sdk>=7.17'") from exc
    client = {
        "Settings": t.AgentV1Settings, "UpdatePrompt": t.AgentV1UpdatePrompt,
        "UpdateSpeak": t.AgentV1UpdateSpeak, "InjectAgentMessage": t.AgentV1InjectAgentMessage,
        "InjectUserMessage": t.AgentV1InjectUserMessage,
        "FunctionCallResponse": t.AgentV1SendFunctionCallResponse,
        "KeepAlive": t.AgentV1KeepAlive, "UpdateThink": t.AgentV1UpdateThink,
        "UpdateListen": t.AgentV1UpdateListen,
    }
    server = {
        "Welcome": t.AgentV1Welcome, "SettingsApplied": t.AgentV1SettingsApplied,
        "ConversationText": t.AgentV1ConversationText,
        "UserStartedSpeaking": t.AgentV1UserStartedSpeaking,
        "AgentThinking": t.AgentV1AgentThinking,
        "AgentStartedSpeaking": t.AgentV1AgentStartedSpeaking,
        "AgentAudioDone": t.AgentV1AgentAudioDone,
        "FunctionCallRequest": t.AgentV1FunctionCallRequest,
        "PromptUpdated": t.AgentV1PromptUpdated, "SpeakUpdated": t.AgentV1SpeakUpdated,
        "InjectionRefused": t.AgentV1InjectionRefused, "Error": t.AgentV1Error,
        "Warning": t.AgentV1Warning,
    }
    return client, server


def strict_errors(annotation: Any, value: Any, path: str = "$") -> list[str]:
    """Why ``value`` (parsed JSON) is not an instance of SDK type ``annotation``, strictly:
    no unknown keys, required fields present, JSON types exact, enums within their ``Literal``.
    Empty when it is."""
    from pydantic import BaseModel

    if annotation is Any:
        return []
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        disc = next((getattr(m, "discriminant", None) for m in meta
                     if type(m).__name__ == "UnionMetadata"), None)
        if disc is not None and typing.get_origin(base) in (typing.Union, types.UnionType):
            return _union_errors(typing.get_args(base), value, path, disc)
        return strict_errors(base, value, path)
    if origin in (typing.Union, types.UnionType):
        return _union_errors(typing.get_args(annotation), value, path, None)
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in typing.get_args(annotation)):
            return []
        return [f"{path}: {value!r} is not one of {list(typing.get_args(annotation))}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        (item,) = typing.get_args(annotation) or (Any,)
        return [e for i, v in enumerate(value) for e in strict_errors(item, v, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        _, item = typing.get_args(annotation) or (str, Any)
        return [e for k, v in value.items() for e in strict_errors(item, v, f"{path}.{k}")]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_errors(annotation, value, path)
    simple = {str: (str,), bool: (bool,), int: (int,), float: (int, float),
              type(None): (type(None),)}
    if annotation in simple:
        if type(value) in simple[annotation]:
            return []
        return [f"{path}: expected {annotation.__name__}, got {type(value).__name__}"]
    from pydantic import TypeAdapter, ValidationError

    try:
        TypeAdapter(annotation).validate_python(value, strict=True)
    except ValidationError as exc:
        return [f"{path}: {e['msg']}" for e in exc.errors()]
    return []


def _model_errors(model: Any, value: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({model.__name__}), got {type(value).__name__}"]
    errors = []
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    for key in value:
        if key not in fields:
            errors.append(f"{path}: unknown key {key!r} (not in {model.__name__})")
    for key, field in fields.items():
        if key in value:
            annotation = field.annotation
            if field.metadata:
                annotation = typing.Annotated[(annotation, *field.metadata)]
            errors += strict_errors(annotation, value[key], f"{path}.{key}")
        elif field.is_required():
            errors.append(f"{path}: missing required key {key!r} ({model.__name__})")
    return errors


def _union_errors(members: tuple[Any, ...], value: Any, path: str, disc: str | None) -> list[str]:
    if value is None:
        return [] if type(None) in members else [f"{path}: null is not allowed"]
    members = tuple(m for m in members if m is not type(None))
    if Any in members and any(typing.get_origin(m) is typing.Literal for m in members):
        members = tuple(m for m in members if m is not Any)  # the published enum, strictly
    if disc is not None and isinstance(value, dict):
        chosen = [m for m in members
                  if _discriminant(m, disc) == value.get(disc, _default(m, disc))]
        if not chosen:
            known = sorted(str(_discriminant(m, disc)) for m in members)
            return [f"{path}.{disc}: {value.get(disc)!r} is not one of {known}"]
        members = tuple(chosen)
    best: list[str] | None = None
    for member in members:
        errors = strict_errors(member, value, path)
        if not errors:
            return []
        if best is None or len(errors) < len(best):
            best = errors
    return best or [f"{path}: matches no allowed type"]


def _discriminant(model: Any, disc: str) -> Any:
    field = getattr(model, "model_fields", {}).get(disc)
    if field is None:
        return None
    args = typing.get_args(field.annotation)
    return args[0] if typing.get_origin(field.annotation) is typing.Literal and args else None


def _default(model: Any, disc: str) -> Any:
    field = getattr(model, "model_fields", {}).get(disc)
    return None if field is None or field.is_required() else field.default


# -- the server ----------------------------------------------------------------------------------


class _Connection:
    """One client connection's state."""

    def __init__(self, ws: ServerConnection, number: int) -> None:
        self.ws = ws
        self.number = number
        self.headers = ws.request.headers if ws.request is not None else {}
        self.settings: dict[str, Any] | None = None
        self.messages: list[dict[str, Any]] = []  # every JSON message received, in order
        self.prompt = ""
        self.voice: str | None = None
        self.functions: list[str] = []
        self.keepalives = 0
        self.speaking: asyncio.Task[None] | None = None
        self.reply = 0

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The messages of type ``kind`` received so far."""
        return [m for m in self.messages if m.get("type") == kind]


class FakeDeepgramServer(ProviderFake):
    """A Deepgram Voice Agent server on 127.0.0.1 (see the module docstring).

    Args:
        mode: ``"echo"`` (each caller audio frame comes straight back as agent audio) or
            ``"quiet"`` (the agent speaks only when driven).
        host, port: where to listen (port 0: a free one).
        api_key: the only key accepted; ``None`` accepts any.
        answer_injections: speak a short reply to each ``InjectUserMessage`` /
            ``InjectAgentMessage`` (as the real agent does).
    """

    def __init__(self, *, mode: str = "echo", host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = "test-key", answer_injections: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        super().__init__(mode=mode)
        self.host, self.port, self.api_key = host, port, api_key
        self.answer_injections = answer_injections
        self._server: Server | None = None
        self._client_types: dict[str, Any] = {}
        self._server_types: dict[str, Any] = {}
        self.conns: list[_Connection] = []
        self._configured = 0
        self._changed = asyncio.Event()
        self._errors: list[str] = []
        self._texts: list[str] = []
        self._caller = bytearray()
        self._ids = itertools.count(1)
        self._tool_waiters: dict[str, tuple[str, asyncio.Future[str]]] = {}
        self._after_barge_in_bytes = 0
        #: every byte of agent audio sent by :meth:`speak` / :meth:`speak_slowly` / injections
        self.spoken = bytearray()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/v1/agent/converse``."""
        if self._server is None:
            raise RuntimeError("FakeDeepgramServer.url: the server is not started")
        return f"ws://{self.host}:{self.port}{PATH}"

    async def start(self) -> None:
        """Load the SDK's types, bind and accept connections."""
        if self._server is not None:
            raise RuntimeError("FakeDeepgramServer.start() called twice")
        self._client_types, self._server_types = _sdk_types()
        self._server = await serve(self._serve, self.host, self.port,
                                   process_request=self._route, compression=None,
                                   max_size=16 * 1024 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.debug("fake Deepgram agent listening on {}", self.url)

    async def stop(self) -> None:
        """Close every connection and stop listening. Idempotent."""
        server, self._server = self._server, None
        for conn in self.conns:
            if conn.speaking is not None:
                conn.speaking.cancel()
        if server is not None:
            server.close()
            await server.wait_closed()

    def rt_config(self) -> dict[str, Any]:
        return {"provider": "deepgram", "url": self.url, "api_key": self.api_key or "test-key",
                "model": "voice-agent"}

    # -- observing -------------------------------------------------------------------------------

    async def wait_connected(self, count: int = 1, *, timeout: float = 10.0) -> None:
        await self._wait(lambda: self._configured >= count, timeout)

    async def _wait(self, done: Any, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    async def wait_for(self, kind: str, count: int = 1, *, timeout: float = 10.0
                       ) -> list[dict[str, Any]]:
        """Wait until the latest connection has received ``count`` messages of type ``kind``."""
        await self._wait(lambda: bool(self.conns) and len(self.conns[-1].of(kind)) >= count,
                         timeout)
        return self.conns[-1].of(kind)

    async def wait_caller_audio(self, size: int, *, timeout: float = 10.0) -> bytes:
        """Wait until ``size`` bytes of caller audio have arrived; return them all."""
        await self._wait(lambda: len(self._caller) >= size, timeout)
        return bytes(self._caller)

    @property
    def connections(self) -> int:
        return len(self.conns)

    @property
    def latest(self) -> _Connection:
        """The latest connection."""
        if not self.conns:
            raise RuntimeError("FakeDeepgramServer: no client has connected")
        return self.conns[-1]

    def audio_format(self) -> tuple[str, int, str, int]:
        audio = (self.latest.settings or {}).get("audio") or {}
        inp, out = audio.get("input") or {}, audio.get("output") or {}
        return (_CODECS.get(inp.get("encoding"), str(inp.get("encoding"))),
                int(inp.get("sample_rate") or 0),
                _CODECS.get(out.get("encoding"), str(out.get("encoding"))),
                int(out.get("sample_rate") or 0))

    def caller_audio(self) -> bytes:
        return bytes(self._caller)

    def instructions(self) -> str:
        return self.latest.prompt

    def voice(self) -> str | None:
        return self.latest.voice

    def client_errors(self) -> list[str]:
        return list(self._errors)

    def texts_received(self) -> list[str]:
        return list(self._texts)

    # -- driving -----------------------------------------------------------------------------------

    async def speak(self, ms: int, *, transcript: str = "") -> None:
        conn = self.latest
        await self._finish_speaking(conn)
        await self._reply(conn, ms, transcript=transcript or "(agent reply)", paced=False)

    async def speak_slowly(self, ms: int) -> None:
        conn = self.latest
        await self._finish_speaking(conn)
        conn.speaking = asyncio.ensure_future(
            self._reply(conn, ms, transcript="(a long agent reply)", paced=True))
        await asyncio.sleep(0)  # the reply has started when this returns

    async def barge_in(self, *, in_flight_ms: int = 0) -> None:
        """Deepgram hears the caller: the reply stops (no more of it is generated) and
        ``UserStartedSpeaking`` goes out. ``in_flight_ms`` of the abandoned reply's audio
        follows it, as audio already on its way when the server stopped would."""
        conn = self.latest
        task, conn.speaking = conn.speaking, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._after_barge_in_bytes = 0
        await self._send(conn, {"type": "UserStartedSpeaking"})
        late = _tone(in_flight_ms * _BYTES_PER_MS, 99)
        for i in range(0, len(late), _CHUNK_MS * _BYTES_PER_MS):
            chunk = late[i:i + _CHUNK_MS * _BYTES_PER_MS]
            await conn.ws.send(chunk)
            self._after_barge_in_bytes += len(chunk)

    def audio_after_barge_in_ms(self) -> float:
        return self._after_barge_in_bytes / _BYTES_PER_MS

    async def call_tool(self, name: str, arguments: dict[str, Any], *,
                        timeout: float = 10.0) -> Any:
        conn = self.latest
        if name not in conn.functions:
            raise ValueError(f"the client declared no function {name!r} in Settings "
                             f"(declared: {conn.functions})")
        call_id = f"fc_{next(self._ids):06d}"
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._tool_waiters[call_id] = (name, waiter)
        await self._send(conn, {"type": "FunctionCallRequest", "functions": [
            {"id": call_id, "name": name, "arguments": json.dumps(arguments),
             "client_side": True}]})
        try:
            content = await asyncio.wait_for(waiter, timeout)
        finally:
            self._tool_waiters.pop(call_id, None)
        try:
            return json.loads(content)
        except ValueError:
            return content

    async def drop(self) -> None:
        """Close the latest connection with code 1011 (internal error)."""
        conn = self.latest
        if conn.speaking is not None:
            conn.speaking.cancel()
        await conn.ws.close(1011, "fake drop")

    async def send_raw(self, message: str | bytes) -> None:
        await self.latest.ws.send(message)

    async def send_event(self, event: dict[str, Any]) -> None:
        """Send a server message (checked against the SDK's server types first)."""
        await self._send(self.latest, event)

    # -- serving -----------------------------------------------------------------------------------

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"No agent endpoint at "
                                      f"{urlsplit(request.path).path}; use {PATH}\n")
        if self.api_key is not None:
            auth = request.headers.get("Authorization", "")
            scheme, _, key = auth.partition(" ")
            if scheme.lower() not in ("token", "bearer") or key.strip() != self.api_key:
                return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid credentials\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        conn = _Connection(ws, len(self.conns) + 1)
        self.conns.append(conn)
        self._changed.set()
        try:
            await self._send(conn, {"type": "Welcome", "request_id": f"req-{conn.number:04d}"})
            async for message in ws:
                if isinstance(message, bytes):
                    await self._on_audio(conn, message)
                else:
                    await self._on_text(conn, message)
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            if conn.speaking is not None:
                conn.speaking.cancel()
            self._changed.set()

    async def _on_audio(self, conn: _Connection, data: bytes) -> None:
        if conn.settings is None:
            self._error(conn, f"a {len(data)}-byte binary audio frame before SettingsApplied")
            return
        self._caller += data
        if self.mode == "echo":
            await conn.ws.send(data)

    async def _on_text(self, conn: _Connection, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError as exc:
            self._error(conn, f"not JSON ({exc}): {text[:80]!r}")
            await self._send(conn, {"type": "Error", "code": "UNPARSABLE_CLIENT_MESSAGE",
                                    "description": "message is not JSON"})
            return
        kind = message.get("type") if isinstance(message, dict) else None
        model = self._client_types.get(kind) if isinstance(kind, str) else None
        if model is None:
            self._error(conn, f"unknown client message type {kind!r}")
            await self._send(conn, {"type": "Error", "code": "UNPARSABLE_CLIENT_MESSAGE",
                                    "description": f"unknown message type {kind!r}"})
            return
        conn.messages.append(message)
        for problem in strict_errors(model, message):
            self._error(conn, f"{kind}: {problem}")
        if kind != "Settings" and conn.settings is None:
            self._error(conn, f"{kind} before Settings")
        handler = getattr(self, "_on_" + _snake(kind), None)
        if handler is not None:
            await handler(conn, message)

    async def _on_settings(self, conn: _Connection, message: dict[str, Any]) -> None:
        if conn.settings is not None:
            self._error(conn, "Settings sent twice on one connection")
            return
        conn.settings = message
        agent = message.get("agent") if isinstance(message.get("agent"), dict) else {}
        think = agent.get("think") or {}
        think = think[0] if isinstance(think, list) and think else think
        conn.prompt = str(think.get("prompt") or "") if isinstance(think, dict) else ""
        conn.functions = [f.get("name") for f in (think.get("functions") or [])
                          if isinstance(f, dict)] if isinstance(think, dict) else []
        conn.voice = _voice_of(agent.get("speak"))
        self._configured += 1
        await self._send(conn, {"type": "SettingsApplied"})
        greeting = agent.get("greeting")
        if isinstance(greeting, str) and greeting:
            await self._send(conn, {"type": "ConversationText", "role": "assistant",
                                    "content": greeting})

    async def _on_update_prompt(self, conn: _Connection, message: dict[str, Any]) -> None:
        conn.prompt = str(message.get("prompt", ""))
        await self._send(conn, {"type": "PromptUpdated"})

    async def _on_update_speak(self, conn: _Connection, message: dict[str, Any]) -> None:
        conn.voice = _voice_of(message.get("speak"))
        await self._send(conn, {"type": "SpeakUpdated"})

    async def _on_keep_alive(self, conn: _Connection, message: dict[str, Any]) -> None:
        conn.keepalives += 1

    async def _on_inject_user_message(self, conn: _Connection, message: dict[str, Any]) -> None:
        content = str(message.get("content", ""))
        self._texts.append(content)
        await self._send(conn, {"type": "ConversationText", "role": "user", "content": content})
        if self.answer_injections:
            await self._finish_speaking(conn)
            await self._reply(conn, 200, transcript="(answering the injected message)",
                              paced=False)

    async def _on_inject_agent_message(self, conn: _Connection, message: dict[str, Any]) -> None:
        text = str(message.get("message", ""))
        self._texts.append(text)
        if conn.speaking is not None and not conn.speaking.done() \
                and message.get("behavior") in (None, "default"):
            await self._send(conn, {"type": "InjectionRefused",
                                    "message": "the agent is speaking"})
            return
        if self.answer_injections:
            await self._finish_speaking(conn)
            await self._reply(conn, 200, transcript=text, paced=False)

    async def _on_function_call_response(self, conn: _Connection, message: dict[str, Any]) -> None:
        entry = self._tool_waiters.get(str(message.get("id")))
        if entry is None:
            self._error(conn, f"FunctionCallResponse for no open request (id "
                              f"{message.get('id')!r})")
            return
        name, waiter = entry
        if message.get("name") != name:
            self._error(conn, f"FunctionCallResponse names {message.get('name')!r}, the request "
                              f"called {name!r}")
        if not waiter.done():
            waiter.set_result(str(message.get("content", "")))

    # -- internals -------------------------------------------------------------------------------

    async def _finish_speaking(self, conn: _Connection) -> None:
        task = conn.speaking
        if task is not None and not task.done():
            try:
                await task
            except asyncio.CancelledError:
                pass
        conn.speaking = None

    async def _reply(self, conn: _Connection, ms: int, *, transcript: str, paced: bool) -> None:
        """One agent reply: its text, ``AgentStartedSpeaking``, ``ms`` of audio in 20 ms frames,
        ``AgentAudioDone``."""
        conn.reply += 1
        await self._send(conn, {"type": "ConversationText", "role": "assistant",
                                "content": transcript})
        await self._send(conn, {"type": "AgentStartedSpeaking", "total_latency": 0.4,
                                "tts_latency": 0.1, "ttt_latency": 0.3})
        audio = _tone(ms * _BYTES_PER_MS, conn.reply)
        step = _CHUNK_MS * _BYTES_PER_MS
        for i in range(0, len(audio), step):
            chunk = audio[i:i + step]
            await conn.ws.send(chunk)
            self.spoken += chunk
            if paced:
                await asyncio.sleep(_CHUNK_MS / 1000)
        await self._send(conn, {"type": "AgentAudioDone"})

    async def _send(self, conn: _Connection, event: dict[str, Any]) -> None:
        model = self._server_types.get(event.get("type"))
        problems = strict_errors(model, event) if model is not None else [
            f"no SDK server type {event.get('type')!r}"]
        if problems:
            raise AssertionError(f"FakeDeepgramServer sent a bad server message: {problems}")
        await conn.ws.send(json.dumps(event))

    def _error(self, conn: _Connection, problem: str) -> None:
        self._errors.append(f"connection {conn.number}: {problem}")
        logger.warning("fake Deepgram: client error: {}", problem)


def _snake(name: str) -> str:
    """``InjectUserMessage`` -> ``inject_user_message``."""
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


def _voice_of(speak: Any) -> str | None:
    speak = speak[0] if isinstance(speak, list) and speak else speak
    provider = speak.get("provider") if isinstance(speak, dict) else None
    if not isinstance(provider, dict):
        return None
    voice = provider.get("model") or provider.get("model_id") or provider.get("voice")
    return voice if isinstance(voice, str) else None


def _tone(n: int, seed: int) -> bytes:
    """``n`` bytes of recognisable mu-law, different for each ``seed``."""
    return bytes((seed * 31 + i * 7) % 256 for i in range(n))


def main(argv: Iterable[str] | None = None) -> None:
    """``python -m telewire.testing.fake_deepgram``: serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m telewire.testing.fake_deepgram",
                                     description="A fake Deepgram Voice Agent server for local "
                                                 "tests.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--mode", choices=MODES, default="echo", help="echo (default) or quiet")
    parser.add_argument("--api-key", default="test-key",
                        help="the only key accepted (default test-key; '' accepts any)")
    args = parser.parse_args(list(argv) if argv is not None else None)

    async def run() -> None:
        server = FakeDeepgramServer(mode=args.mode, host=args.host, port=args.port,
                                    api_key=args.api_key or None)
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
