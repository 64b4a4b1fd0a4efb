"""A local fake of the OpenAI Realtime GA WebSocket server, for testing graphs with no model and no key.

Depends on ``telewire.jsonfast``, ``websockets`` and ``loguru`` only; nothing in the core depends on it.

It speaks the GA event shapes (the ones in the ``openai`` package's ``types/realtime``) and refuses
what the real server refuses: the ``OpenAI-Beta: realtime=v1`` header (``beta_api_shape_disabled``,
close 4000), beta session fields (``input_audio_format``, ``g711_ulaw`` …), unknown event types,
non-JSON. Modes:

* ``"echo"``: every ``input_audio_buffer.append`` is answered by one
  ``response.output_audio.delta`` carrying the identical base64 text, in order, inside one open
  response (``response.created`` / ``response.output_item.added`` / ``response.content_part.added``
  precede the first delta).
* ``"silent"``: audio is recorded, never answered.

Every client event is recorded (``server.received`` and per connection), and tests can push
server events (transcripts, VAD, usage, errors) with the :class:`FakeConnection` methods.

Run standalone: ``python -m telewire.testing.fake_realtime --port 8765 --mode echo``.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import copy
import itertools
import signal
import time
from http import HTTPStatus
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

import loguru
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from telewire import jsonfast

__all__ = ["FakeConnection", "FakeRealtimeServer", "MODES", "main"]

logger = loguru.logger

MODES = ("echo", "silent")
PATH = "/v1/realtime"
#: What the real server sends to a beta-shaped client, then it closes with code 4000.
BETA_DISABLED_MESSAGE = ("The Realtime Beta API is no longer supported. "
                         "Please use /v1/realtime for the GA API.")
BETA_CLOSE_CODE = 4000
#: Close code used after an authentication or request-line failure (policy violation).
POLICY_CLOSE_CODE = 1008
#: Session lifetime the real server announces in ``expires_at`` (60 minutes).
SESSION_SECONDS = 3600

_FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")
_SESSION_KEYS = frozenset({
    "type", "audio", "include", "instructions", "max_output_tokens", "model", "output_modalities",
    "parallel_tool_calls", "prompt", "reasoning", "tool_choice", "tools", "tracing", "truncation",
})
_AUDIO_KEYS = frozenset({"input", "output"})
_INPUT_KEYS = frozenset({"format", "noise_reduction", "transcription", "turn_detection"})
_OUTPUT_KEYS = frozenset({"format", "voice", "speed"})
_TURN_KEYS = {
    "server_vad": frozenset({"type", "threshold", "prefix_padding_ms", "silence_duration_ms",
                             "create_response", "interrupt_response", "idle_timeout_ms"}),
    "semantic_vad": frozenset({"type", "eagerness", "create_response", "interrupt_response"}),
}
_CLIENT_EVENTS = (
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
    "input_audio_buffer.clear", "conversation.item.create", "conversation.item.delete",
    "conversation.item.retrieve", "conversation.item.truncate", "response.create",
    "response.cancel", "output_audio_buffer.clear",
)
_SUPPORTED_EVENTS = ", ".join(f"'{t}'" for t in _CLIENT_EVENTS)


def _default_session(session_id: str, model: str) -> dict[str, Any]:
    """The session a fresh connection starts with (the real defaults: 24 kHz PCM, server VAD)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "You are a helpful assistant.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + SESSION_SECONDS,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                    "silence_duration_ms": 500, "idle_timeout_ms": None,
                    "create_response": True, "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy",
                       "speed": 1.0},
        },
        "include": None,
    }


def _merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    """Apply a ``session.update`` the way the server does: present fields replace, objects merge,
    ``null`` clears."""
    for key, value in update.items():
        current = into.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict) and key != "format":
            _merge(current, value)
        else:
            into[key] = copy.deepcopy(value)


class _RequestError(Exception):
    """A client event the server refuses with an ``error`` event (the connection goes on)."""

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


def _unknown(path: str) -> _RequestError:
    return _RequestError(f"Unknown parameter: '{path}'.", code="unknown_parameter", param=path)


def _check_keys(obj: Any, allowed: frozenset[str], path: str) -> None:
    if not isinstance(obj, Mapping):
        raise _RequestError(f"Invalid type for '{path}': expected an object, but got "
                            f"{type(obj).__name__} instead.", code="invalid_type", param=path)
    for key in obj:
        if key not in allowed:
            raise _unknown(f"{path}.{key}")


def _check_format(fmt: Any, path: str) -> None:
    if not isinstance(fmt, Mapping):
        raise _RequestError(f"Invalid type for '{path}': expected an object, but got "
                            f"{type(fmt).__name__} instead.", code="invalid_type", param=path)
    _check_keys(fmt, frozenset({"type", "rate"}), path)
    kind = fmt.get("type")
    if kind not in _FORMATS:
        raise _RequestError(f"Invalid value: '{kind}'. Supported values are: 'audio/pcm', "
                            "'audio/pcmu', and 'audio/pcma'.", code="invalid_value",
                            param=f"{path}.type")
    if "rate" in fmt and (kind != "audio/pcm" or fmt["rate"] != 24000):
        raise _RequestError(f"Invalid value: {fmt['rate']!r}. Only 24000 is supported for "
                            "'audio/pcm'.", code="invalid_value", param=f"{path}.rate")


def _validate_session_update(session: Any) -> Mapping[str, Any]:
    """Check a GA ``session.update`` payload the way the real server does.

    Returns:
        the payload, now known to be a mapping.

    Raises:
        _RequestError: the first problem, named by its parameter path (``session.…``).
    """
    if not isinstance(session, Mapping):
        raise _RequestError("Missing required parameter: 'session'.",
                            code="missing_required_parameter", param="session")
    if "type" not in session:
        raise _RequestError("Missing required parameter: 'session.type'.",
                            code="missing_required_parameter", param="session.type")
    if session["type"] != "realtime":
        raise _RequestError(f"Invalid value: '{session['type']}'. This server supports "
                            "'realtime' sessions only.", code="invalid_value", param="session.type")
    _check_keys(session, _SESSION_KEYS, "session")
    modalities = session.get("output_modalities")
    if modalities is not None and (not isinstance(modalities, list) or len(modalities) != 1
                                   or modalities[0] not in ("audio", "text")):
        raise _RequestError("Invalid value for 'session.output_modalities': expected exactly one "
                            "of 'audio' or 'text'.", code="invalid_value",
                            param="session.output_modalities")
    audio = session.get("audio")
    if audio is None:
        return session
    _check_keys(audio, _AUDIO_KEYS, "session.audio")
    audio_in = audio.get("input")
    if audio_in is not None:
        _check_keys(audio_in, _INPUT_KEYS, "session.audio.input")
        if "format" in audio_in:
            _check_format(audio_in["format"], "session.audio.input.format")
        turn = audio_in.get("turn_detection")
        if turn is not None:
            path = "session.audio.input.turn_detection"
            _check_keys(turn, frozenset(_TURN_KEYS["server_vad"] | _TURN_KEYS["semantic_vad"]), path)
            allowed = _TURN_KEYS.get(turn.get("type"))
            if allowed is None:
                raise _RequestError(f"Invalid value: '{turn.get('type')}'. Supported values are: "
                                    "'server_vad' and 'semantic_vad'.", code="invalid_value",
                                    param=f"{path}.type")
            _check_keys(turn, allowed, path)
    audio_out = audio.get("output")
    if audio_out is not None:
        _check_keys(audio_out, _OUTPUT_KEYS, "session.audio.output")
        if "format" in audio_out:
            _check_format(audio_out["format"], "session.audio.output.format")
    return session


class FakeConnection:
    """One client connection to the fake: its session, what it sent, and ways to answer it.

    Attributes:
        model: the ``model`` query parameter.
        headers: the handshake request headers.
        session: the effective session (what ``session.updated`` last reported).
        received: every client event received on this connection, parsed, in order.
        audio_appended: how many ``input_audio_buffer.append`` events were received.
        closed: set when the connection has ended.
    """

    def __init__(self, server: FakeRealtimeServer, ws: ServerConnection, model: str,
                 index: int) -> None:
        self.server = server
        self.ws = ws
        self.model = model
        assert ws.request is not None, "a handler's connection has completed its handshake"
        self.headers = ws.request.headers
        self.index = index
        self.received: list[dict[str, Any]] = []
        self.audio_appended = 0
        self.closed = asyncio.Event()
        self._ids = itertools.count(1)
        self._prefix = f"{index:04x}"
        self._changed = asyncio.Event()
        self._response: dict[str, Any] | None = None
        self._audio_head = ""
        self._audio_out = False
        self._buffered = False
        self.session = _default_session(self._id("sess"), model)

    # -- ids and sending -------------------------------------------------------------------------

    def _id(self, kind: str) -> str:
        return f"{kind}_{self._prefix}{next(self._ids):08x}"

    async def send(self, event: dict[str, Any]) -> None:
        """Send one server event; ``event_id`` is filled in when missing."""
        if "event_id" not in event:
            event = {"type": event["type"], "event_id": self._id("event"),
                     **{k: v for k, v in event.items() if k != "type"}}
        try:
            await self.ws.send(jsonfast.dumps(event))
        except ConnectionClosed:
            pass

    async def send_error(self, message: str, *, code: str | None,
                         error_type: str = "invalid_request_error", param: str | None = None,
                         event_id: str | None = None) -> None:
        """Send an ``error`` event (the connection stays open)."""
        await self.send({"type": "error", "error": {
            "type": error_type, "code": code, "message": message, "param": param,
            "event_id": event_id,
        }})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection from the server side."""
        await self.ws.close(code, reason)

    # -- waiting (for tests) ---------------------------------------------------------------------

    def events(self, kind: str) -> list[dict[str, Any]]:
        """The received client events of type ``kind``."""
        return [e for e in self.received if e.get("type") == kind]

    async def wait_for(self, kind: str, count: int = 1, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until ``count`` client events of type ``kind`` have been received.

        Raises:
            TimeoutError: they did not arrive within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                found = self.events(kind)
                if len(found) >= count:
                    return found
                self._changed.clear()
                await self._changed.wait()

    # -- scripted server events ------------------------------------------------------------------

    async def push_speech_started(self, audio_start_ms: int = 0) -> str:
        """The server VAD heard the caller: ``input_audio_buffer.speech_started``; with
        ``interrupt_response`` on, the open response is cancelled (``turn_detected``).

        Returns:
            the new user item's id.
        """
        item_id = self._id("item")
        await self.send({"type": "input_audio_buffer.speech_started",
                         "audio_start_ms": audio_start_ms, "item_id": item_id})
        turn = self.session["audio"]["input"].get("turn_detection") or {}
        if self._response is not None and turn.get("interrupt_response", True):
            await self._finish_response("cancelled", reason="turn_detected")
        return item_id

    async def push_caller_transcript(self, text: str, item_id: str | None = None) -> str:
        """``conversation.item.input_audio_transcription.completed`` for the caller's words.

        Returns:
            the item id used.
        """
        item_id = item_id or self._id("item")
        await self.send({
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item_id, "content_index": 0, "transcript": text,
            "usage": {"type": "tokens", "input_tokens": 10, "output_tokens": len(text.split()),
                      "total_tokens": 10 + len(text.split())},
        })
        return item_id

    async def start_response(self) -> dict[str, Any]:
        """Open an assistant audio response (``response.created`` / ``output_item.added`` /
        ``content_part.added``) unless one is open.

        Returns:
            ``{"response_id": …, "item_id": …}`` of the open response.
        """
        if self._response is None:
            await self._open_response()
        assert self._response is not None
        return {"response_id": self._response["id"], "item_id": self._response["item_id"]}

    async def push_audio(self, b64: str) -> None:
        """One ``response.output_audio.delta`` in the open response (opening one if needed)."""
        if self._response is None:
            await self._open_response()
        await self._send_delta(b64)

    async def finish_response(self, transcript: str = "", usage: Mapping[str, Any] | None = None) -> str:
        """Complete the open response: audio/transcript/part/item ``.done`` then ``response.done``
        with ``status: completed`` and ``usage``.

        Returns:
            the response id.
        """
        if self._response is None:
            await self._open_response()
        assert self._response is not None
        self._response["transcript"] = transcript
        return await self._finish_response("completed", usage=usage)

    # -- the protocol ----------------------------------------------------------------------------

    async def _open_response(self) -> None:
        out = self.session["audio"]["output"]
        response_id, item_id = self._id("resp"), self._id("item")
        self._response = {"id": response_id, "item_id": item_id, "transcript": ""}
        self._audio_head = ('{"type":"response.output_audio.delta","response_id":"' + response_id
                            + '","item_id":"' + item_id
                            + '","output_index":0,"content_index":0,"event_id":"')
        await self.send({"type": "response.created", "response": {
            "object": "realtime.response", "id": response_id, "status": "in_progress",
            "status_details": None, "output": [], "conversation_id": self._id("conv"),
            "output_modalities": self.session["output_modalities"],
            "max_output_tokens": self.session["max_output_tokens"],
            "audio": {"output": {"format": out["format"], "voice": out["voice"]}},
            "usage": None, "metadata": None,
        }})
        await self.send({"type": "response.output_item.added", "response_id": response_id,
                         "output_index": 0, "item": self._item(item_id, "in_progress", "")})
        await self.send({"type": "response.content_part.added", "response_id": response_id,
                         "item_id": item_id, "output_index": 0, "content_index": 0,
                         "part": {"type": "audio", "transcript": ""}})

    @staticmethod
    def _item(item_id: str, status: str, transcript: str) -> dict[str, Any]:
        content = [] if status == "in_progress" else [{"type": "output_audio",
                                                       "transcript": transcript}]
        return {"id": item_id, "object": "realtime.item", "type": "message", "status": status,
                "role": "assistant", "content": content}

    async def _send_delta(self, b64: str) -> None:
        # The hot path of the echo mode: built by concatenation, the client's base64 verbatim.
        self._audio_out = True
        try:
            await self.ws.send(self._audio_head + self._id("event") + '","delta":"' + b64 + '"}')
        except ConnectionClosed:
            pass

    async def _finish_response(self, status: str, *, reason: str | None = None,
                               usage: Mapping[str, Any] | None = None) -> str:
        response = self._response
        assert response is not None
        self._response = None
        rid: str = response["id"]
        item_id: str = response["item_id"]
        transcript: str = response["transcript"]
        item_status = "completed" if status == "completed" else "incomplete"
        common = {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self.send({"type": "response.output_audio.done", **common})
        await self.send({"type": "response.output_audio_transcript.done", **common,
                         "transcript": transcript})
        await self.send({"type": "response.content_part.done", **common,
                         "part": {"type": "audio", "transcript": transcript}})
        item = self._item(item_id, item_status, transcript)
        await self.send({"type": "response.output_item.done", "response_id": rid,
                         "output_index": 0, "item": item})
        details = None if status == "completed" else {"type": status, "reason": reason}
        await self.send({"type": "response.done", "response": {
            "object": "realtime.response", "id": rid, "status": status,
            "status_details": details, "output": [item],
            "output_modalities": self.session["output_modalities"],
            "usage": dict(usage) if usage is not None else {
                "total_tokens": 0, "input_tokens": 0, "output_tokens": 0,
                "input_token_details": {"text_tokens": 0, "audio_tokens": 0, "cached_tokens": 0},
                "output_token_details": {"text_tokens": 0, "audio_tokens": 0},
            },
            "metadata": None,
        }})
        return rid

    async def _handle(self, raw: str | bytes) -> None:
        """Handle one client message; problems become ``error`` events, never exceptions."""
        if isinstance(raw, bytes):
            await self.send_error("Binary messages are not supported; send JSON text events.",
                                  code="invalid_json")
            return
        try:
            event = jsonfast.loads(raw)
        except ValueError as exc:
            await self.send_error(f"Invalid JSON in client event: {exc}.", code="invalid_json")
            return
        if not isinstance(event, dict):
            await self.send_error("A client event must be a JSON object.", code="invalid_json")
            return
        if self.server.record:
            self.received.append(event)
            self.server.received.append(event)
            self._changed.set()
        kind = event.get("type")
        try:
            if kind == "input_audio_buffer.append":
                await self._on_append(event)
            elif kind == "session.update":
                await self._on_session_update(event)
            elif kind == "response.cancel":
                await self._on_cancel(event)
            elif kind == "response.create":
                await self._on_response_create(event)
            elif kind == "input_audio_buffer.commit":
                await self._on_commit(event)
            elif kind == "input_audio_buffer.clear":
                self._buffered = False
                await self.send({"type": "input_audio_buffer.cleared"})
            elif kind == "conversation.item.truncate":
                await self.send({"type": "conversation.item.truncated",
                                 "item_id": event.get("item_id", ""),
                                 "content_index": event.get("content_index", 0),
                                 "audio_end_ms": event.get("audio_end_ms", 0)})
            elif kind == "conversation.item.delete":
                await self.send({"type": "conversation.item.deleted",
                                 "item_id": event.get("item_id", "")})
            elif kind in _CLIENT_EVENTS:
                pass  # accepted and recorded; this fake does not model conversation items
            elif kind is None:
                raise _RequestError("Missing required parameter: 'type'.",
                                    code="missing_required_parameter", param="type")
            else:
                raise _RequestError(f"Invalid value: '{kind}'. Supported values are: "
                                    f"{_SUPPORTED_EVENTS}.", code="invalid_value", param="type")
        except _RequestError as exc:
            await self.send_error(str(exc), code=exc.code, param=exc.param,
                                  event_id=event.get("event_id"))

    async def _on_append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise _RequestError("Missing required parameter: 'audio'.",
                                code="missing_required_parameter", param="audio")
        try:
            binascii.a2b_base64(audio, strict_mode=True)
        except binascii.Error:
            raise _RequestError("Invalid 'audio'. Expected base64-encoded audio.",
                                code="invalid_value", param="audio") from None
        self.audio_appended += 1
        self._buffered = True
        if self.server.mode == "echo":
            if self._response is None:
                await self._open_response()
            await self._send_delta(audio)

    async def _on_session_update(self, event: dict[str, Any]) -> None:
        session = _validate_session_update(event.get("session"))
        model = session.get("model")
        if model is not None and model != self.model:
            raise _RequestError("The model of a session cannot be changed.",
                                code="invalid_value", param="session.model")
        voice = ((session.get("audio") or {}).get("output") or {}).get("voice")
        if voice is not None and self._audio_out and voice != self.session["audio"]["output"]["voice"]:
            raise _RequestError("Cannot update a conversation's voice if assistant audio is "
                                "present.", code="cannot_update_voice",
                                param="session.audio.output.voice")
        _merge(self.session, session)
        if self.server.session_overrides:
            _merge(self.session, self.server.session_overrides)
        await self.send({"type": "session.updated", "session": copy.deepcopy(self.session)})

    async def _on_cancel(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        if self._response is None or (wanted and wanted != self._response["id"]):
            raise _RequestError("Cancellation failed: no active response found",
                                code="response_cancel_not_active")
        await self._finish_response("cancelled", reason="client_cancelled")

    async def _on_response_create(self, event: dict[str, Any]) -> None:
        if self._response is not None:
            raise _RequestError("Conversation already has an active response in progress: "
                                f"{self._response['id']}. Wait until the response is finished "
                                "before creating a new one.",
                                code="conversation_already_has_active_response")
        if self.server.mode == "echo":
            await self._open_response()

    async def _on_commit(self, event: dict[str, Any]) -> None:
        if not self._buffered:
            raise _RequestError("Error committing input audio buffer: buffer too small.",
                                code="input_audio_buffer_commit_empty")
        self._buffered = False
        await self.send({"type": "input_audio_buffer.committed", "item_id": self._id("item"),
                         "previous_item_id": None})


class FakeRealtimeServer:
    """A fake OpenAI Realtime GA server on ``127.0.0.1``.

    Use as ``async with FakeRealtimeServer(mode="echo") as server: …server.url…``, or call
    :meth:`start` / :meth:`stop`.

    Args:
        mode: ``"echo"`` or ``"silent"`` (see the module docstring).
        host: the address to bind.
        port: the port; ``0`` picks a free one.
        api_key: when set, a client presenting another key gets ``invalid_api_key`` and is closed.
        session_overrides: merged into the effective session after every ``session.update``, to
            play a server that ignores part of the request (``{"audio": {"output": {"format":
            {"type": "audio/pcm", "rate": 24000}}}}`` plays one that will not speak mu-law).
        record: keep every client event in :attr:`received` (turn off for long load runs).

    Attributes:
        received: every client event from every connection, parsed, in arrival order.
        connections: every connection accepted, in order.
    """

    def __init__(self, *, mode: str = "echo", host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, session_overrides: Mapping[str, Any] | None = None,
                 record: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"FakeRealtimeServer mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.host = host
        self.port = port
        self.api_key = api_key
        self.session_overrides = session_overrides
        self.record = record
        self.received: list[dict[str, Any]] = []
        self.connections: list[FakeConnection] = []
        self._server: Server | None = None
        self._new_connection = asyncio.Event()

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/v1/realtime`` (valid once started)."""
        if self._server is None:
            raise RuntimeError("FakeRealtimeServer.url: the server is not started")
        return f"ws://{self.host}:{self.port}{PATH}"

    async def start(self) -> None:
        """Bind and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("FakeRealtimeServer.start() called twice")
        self._server = await serve(self._serve, self.host, self.port, process_request=self._route,
                                   compression=None, max_size=16 * 1024 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.debug("fake realtime server listening on {}", self.url)

    async def stop(self) -> None:
        """Close every connection and stop listening. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> FakeRealtimeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_for_connection(self, index: int = 0, *, timeout: float = 10.0) -> FakeConnection:
        """Wait until connection number ``index`` (0-based) is established and return it.

        Raises:
            TimeoutError: it did not arrive within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while len(self.connections) <= index:
                self._new_connection.clear()
                await self._new_connection.wait()
        return self.connections[index]

    # -- serving ---------------------------------------------------------------------------------

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"No realtime endpoint at "
                                      f"{urlsplit(request.path).path}; use {PATH}\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        query = parse_qs(urlsplit(request.path).query)
        model = (query.get("model") or [""])[0]
        conn = FakeConnection(self, ws, model, len(self.connections))
        self.connections.append(conn)
        self._new_connection.set()
        try:
            if await self._refuse(conn, request):
                return
            await conn.send({"type": "session.created", "session": copy.deepcopy(conn.session)})
            while True:
                await conn._handle(await ws.recv())
        except ConnectionClosed:
            pass
        finally:
            conn.closed.set()

    async def _refuse(self, conn: FakeConnection, request: Request) -> bool:
        """Apply the real server's connection-level checks; ``True`` when the client was refused."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            await conn.send_error("Missing bearer authentication in header.",
                                  code="missing_api_key")
            await conn.close(POLICY_CLOSE_CODE, "missing_api_key")
            return True
        if self.api_key is not None and auth[7:].strip() != self.api_key:
            await conn.send_error("Incorrect API key provided.", code="invalid_api_key")
            await conn.close(POLICY_CLOSE_CODE, "invalid_api_key")
            return True
        if "realtime=v1" in request.headers.get_all("OpenAI-Beta"):
            await conn.send_error(BETA_DISABLED_MESSAGE, code="beta_api_shape_disabled")
            await conn.close(BETA_CLOSE_CODE, "beta_api_shape_disabled")
            return True
        if not conn.model:
            await conn.send_error("Missing required parameter: 'model'.",
                                  code="missing_required_parameter", param="model")
            await conn.close(POLICY_CLOSE_CODE, "missing_model")
            return True
        return False


def main(argv: Iterable[str] | None = None) -> None:
    """``python -m telewire.testing.fake_realtime``: serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m telewire.testing.fake_realtime",
                                     description="A fake OpenAI Realtime GA server for local tests.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--mode", choices=MODES, default="echo", help="echo (default) or silent")
    parser.add_argument("--api-key", default=None, help="refuse clients presenting another key")
    parser.add_argument("--no-record", action="store_true",
                        help="do not keep received events in memory (long load runs)")
    args = parser.parse_args(list(argv) if argv is not None else None)

    async def run() -> None:
        server = FakeRealtimeServer(mode=args.mode, host=args.host, port=args.port,
                                    api_key=args.api_key, record=not args.no_record)
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
