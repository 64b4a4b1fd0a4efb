"""A local fake of the OpenAI Realtime GA WebSocket server, for testing graphs with no model and no key.

Depends on ``telewire.jsonfast``, ``websockets`` and ``loguru`` only; nothing in the core depends on it.

It speaks the GA event shapes (the ones in the ``openai`` package's ``types/realtime``) and refuses
what the real server refuses: the ``OpenAI-Beta: realtime=v1`` header (``beta_api_shape_disabled``,
close 4000), a connection without a key (``Authorization: Bearer``, or Azure's ``api-key`` header),
beta session fields (``input_audio_format``, ``g711_ulaw`` …), unknown event types,
non-JSON, a voice change once assistant audio was sent (``cannot_update_voice``, the whole update
refused), a truncate past the audio sent, a ``function_call_output`` for an unknown ``call_id``.
Modes:

* ``"echo"``: every ``input_audio_buffer.append`` is answered by one
  ``response.output_audio.delta`` carrying the identical base64 text, in order, inside one open
  response (``response.created`` / ``response.output_item.added`` / ``response.content_part.added``
  precede the first delta).
* ``"silent"``: audio is recorded, never answered.
* ``"talk"``: a talking model. It answers ``response.create``, and, with turn detection on, a caller
  who "stops speaking": once ``talk_after_appends`` appends arrived since the last response ended it
  sends ``input_audio_buffer.speech_started`` / ``speech_stopped`` / ``committed``, the user item
  (``conversation.item.added`` / ``done``) and, unless ``create_response`` is false, a response.
  A response streams ``response_audio_ms`` of deterministic audio (:func:`talk_audio`) in deltas of
  ``delta_ms``, paced at ``talk_speed`` times real time (``0``: as fast as possible), with its
  transcript ``"Response N."``. ``response.cancel`` stops the stream at once (``client_cancelled``);
  the fake's own ``speech_started`` does too when ``interrupt_response`` is on (``turn_detected``).

In every mode the fake holds the conversation (:attr:`FakeConnection.items`), validates and
acknowledges ``conversation.item.create`` / ``truncate`` / ``delete`` / ``retrieve``, records
responses, truncations and function outputs, and can answer the next response with a scripted
function call (:meth:`FakeConnection.script_tool_call`, :attr:`FakeRealtimeServer.next_tool_calls`).
Tests can push server events (transcripts, VAD, usage, errors), expire the session, close or drop
the connection with the :class:`FakeConnection` methods. A response's ``response.done`` carries
deterministic GA usage in which the previous response's input counts as cached (a subset of the
input, split by modality, as the provider's prompt cache reports it), and echoes the
``response.metadata`` its ``response.create`` gave, as the real server does.

Run standalone: ``python -m telewire.testing.fake_realtime --port 8765 --mode talk``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import copy
import itertools
import math
import signal
import time
from http import HTTPStatus
from typing import Any, Iterable, Literal, Mapping, NamedTuple, TypedDict
from urllib.parse import parse_qs, urlsplit

import loguru
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from telewire import jsonfast
from telewire.realtime.wsclient import LeanServerConnection

__all__ = ["FakeConnection", "FakeRealtimeServer", "FunctionOutput", "MODES", "ResponseRecord",
           "ScriptedToolCall", "Truncation", "main", "talk_audio"]

logger = loguru.logger

MODES = ("echo", "silent", "talk")
PATH = "/v1/realtime"
#: What the real server sends to a beta-shaped client, then it closes with code 4000.
BETA_DISABLED_MESSAGE = ("The Realtime Beta API is no longer supported. "
                         "Please use /v1/realtime for the GA API.")
BETA_CLOSE_CODE = 4000
#: Close code used after an authentication or request-line failure (policy violation).
POLICY_CLOSE_CODE = 1008
#: Close code after ``session_expired``: the real server closes with 1001 "going away".
EXPIRED_CLOSE_CODE = 1001
#: Session lifetime the real server announces in ``expires_at`` (60 minutes).
SESSION_SECONDS = 3600
#: The voice-lock refusal, word for word as the real server sends it.
VOICE_LOCKED_MESSAGE = "Cannot update a conversation's voice if assistant audio is present."


# -- what the fake records -----------------------------------------------------------------------


class ResponseRecord(TypedDict):
    """One response the fake produced, as :attr:`FakeConnection.responses` keeps it (live: the
    audio counters grow while it streams; ``status`` changes when it ends)."""

    id: str
    #: 1-based rank among this connection's responses; the ``N`` of ``"Response N."`` and of
    #: :func:`talk_audio`.
    number: int
    kind: Literal["audio", "function_call"]
    status: Literal["in_progress", "completed", "cancelled"]
    #: ``"client_cancelled"`` or ``"turn_detected"`` for a cancelled response, else ``None``.
    reason: str | None
    item_id: str
    #: the function call's ``call_id`` (``kind == "function_call"``), else ``None``.
    call_id: str | None
    #: assistant audio bytes sent in this response so far, and their duration (floor, ms).
    audio_bytes: int
    audio_ms: int
    #: bytes per millisecond of the output format (8 for mu-law and A-law, 48 for 24 kHz PCM).
    bytes_per_ms: int


class Truncation(TypedDict):
    """One accepted ``conversation.item.truncate`` (:attr:`FakeConnection.truncations`)."""

    item_id: str
    content_index: int
    audio_end_ms: int


class FunctionOutput(TypedDict):
    """One accepted ``function_call_output`` item (:attr:`FakeConnection.function_outputs`)."""

    call_id: str
    output: str
    item_id: str


class ScriptedToolCall(NamedTuple):
    """A function call the fake will make instead of speaking, in its next response."""

    name: str
    #: the arguments, a JSON text (sent as two ``function_call_arguments.delta`` halves).
    arguments: str
    call_id: str


def talk_audio(number: int, length: int, start: int = 0) -> bytes:
    """The audio of talk response ``number``: byte ``i`` is ``(i * 7 + number) & 0xFF``.

    Args:
        number: the response's :attr:`ResponseRecord.number`.
        length: how many bytes.
        start: the position of the first byte in the response's audio.

    Returns:
        bytes ``start`` to ``start + length`` of that response's audio, so a test can tell which
        response, and which position in it, a chunk of played audio came from.
    """
    if length <= 0:
        return b""
    # The pattern repeats every 256 bytes: build one period starting at ``start``, then tile it.
    period = bytes(((start + i) * 7 + number) & 0xFF for i in range(256))
    return (period * (length // 256 + 1))[:length]


def _bytes_per_ms(fmt: Mapping[str, Any]) -> int:
    """Bytes per millisecond of a GA audio format: G.711 is 8 kHz, one byte a sample; PCM is
    24 kHz, 16-bit."""
    return 48 if fmt.get("type") == "audio/pcm" else 8


def _b64_size(b64: str) -> int:
    """Decoded size of a (validated, padded) base64 text, without decoding it."""
    return len(b64) // 4 * 3 - b64[-2:].count("=")


def _duration_words(seconds: float) -> str:
    """``3600`` -> ``"60 minutes"``; ``0.5`` -> ``"0.5 seconds"`` (for ``session_expired``)."""
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} seconds"


def _strip_audio(item: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an item for ``conversation.item.added`` / ``done``: the server never echoes audio
    data there (it is fetched with ``conversation.item.retrieve``)."""
    out = copy.deepcopy(dict(item))
    for part in out.get("content") or ():
        part.pop("audio", None)
    return out


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


def _default_session(session_id: str, model: str,
                     lifetime_s: float | None = None) -> dict[str, Any]:
    """The session a fresh connection starts with (the real defaults: 24 kHz PCM, server VAD);
    ``expires_at`` is ``lifetime_s`` (default 60 minutes) from now, rounded up."""
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
        "expires_at": math.ceil(time.time() + (lifetime_s or SESSION_SECONDS)),
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



_ITEM_KEYS = {
    "message": frozenset({"id", "type", "object", "status", "role", "content"}),
    "function_call": frozenset({"id", "type", "object", "status", "call_id", "name", "arguments"}),
    "function_call_output": frozenset({"id", "type", "object", "status", "call_id", "output"}),
}
_ROLE_CONTENT = {
    "user": ("input_text", "input_audio", "input_image"),
    "assistant": ("output_text", "output_audio"),
    "system": ("input_text",),
}
_PART_KEYS = {
    "input_text": frozenset({"type", "text"}),
    "output_text": frozenset({"type", "text"}),
    "input_audio": frozenset({"type", "audio", "transcript"}),
    "output_audio": frozenset({"type", "audio", "transcript"}),
    "input_image": frozenset({"type", "image_url", "detail"}),
}
#: which field each content type must carry, as a string.
_PART_REQUIRED = {"input_text": "text", "output_text": "text", "input_audio": "audio",
                  "input_image": "image_url"}


def _values(options: Iterable[str]) -> str:
    quoted = [f"'{o}'" for o in options]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _require_str(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if value is None:
        raise _RequestError(f"Missing required parameter: '{path}.{key}'.",
                            code="missing_required_parameter", param=f"{path}.{key}")
    if not isinstance(value, str):
        raise _RequestError(f"Invalid type for '{path}.{key}': expected a string, but got "
                            f"{type(value).__name__} instead.", code="invalid_type",
                            param=f"{path}.{key}")
    return value


def _validate_item(item: Any) -> dict[str, Any]:
    """Check the ``item`` of a ``conversation.item.create`` the way the real server does.

    Returns:
        a copy of the item, as the conversation will hold it (``object`` and ``status`` filled in;
        ``id`` left for the caller to assign when absent).

    Raises:
        _RequestError: the first problem, named by its parameter path (``item.…``).
    """
    if item is None:
        raise _RequestError("Missing required parameter: 'item'.",
                            code="missing_required_parameter", param="item")
    if not isinstance(item, Mapping):
        raise _RequestError(f"Invalid type for 'item': expected an object, but got "
                            f"{type(item).__name__} instead.", code="invalid_type", param="item")
    kind = item.get("type")
    if kind is None:
        raise _RequestError("Missing required parameter: 'item.type'.",
                            code="missing_required_parameter", param="item.type")
    if kind not in _ITEM_KEYS:
        raise _RequestError(f"Invalid value: '{kind}'. Supported values are: "
                            f"{_values(_ITEM_KEYS)}.", code="invalid_value", param="item.type")
    _check_keys(item, _ITEM_KEYS[kind], "item")
    if item.get("object", "realtime.item") != "realtime.item":
        raise _RequestError(f"Invalid value: '{item['object']}'. Supported values are: "
                            "'realtime.item'.", code="invalid_value", param="item.object")
    if item.get("status", "completed") not in ("completed", "incomplete", "in_progress"):
        raise _RequestError(f"Invalid value: '{item['status']}'. Supported values are: "
                            "'completed', 'incomplete', and 'in_progress'.",
                            code="invalid_value", param="item.status")
    if "id" in item:
        _require_str(item, "id", "item")
    held: dict[str, Any] = {"object": "realtime.item", "status": "completed",
                            **copy.deepcopy(dict(item))}
    if kind == "function_call_output":
        _require_str(item, "call_id", "item")
        _require_str(item, "output", "item")
        return held
    if kind == "function_call":
        _require_str(item, "name", "item")
        _require_str(item, "arguments", "item")
        _require_str(item, "call_id", "item")
        return held
    role = item.get("role")
    if role is None:
        raise _RequestError("Missing required parameter: 'item.role'.",
                            code="missing_required_parameter", param="item.role")
    if role not in _ROLE_CONTENT:
        raise _RequestError(f"Invalid value: '{role}'. Supported values are: "
                            f"{_values(_ROLE_CONTENT)}.", code="invalid_value", param="item.role")
    content = item.get("content")
    if content is None:
        raise _RequestError("Missing required parameter: 'item.content'.",
                            code="missing_required_parameter", param="item.content")
    if not isinstance(content, list):
        raise _RequestError(f"Invalid type for 'item.content': expected an array, but got "
                            f"{type(content).__name__} instead.", code="invalid_type",
                            param="item.content")
    allowed = _ROLE_CONTENT[role]
    for i, part in enumerate(content):
        path = f"item.content[{i}]"
        if not isinstance(part, Mapping):
            raise _RequestError(f"Invalid type for '{path}': expected an object, but got "
                                f"{type(part).__name__} instead.", code="invalid_type", param=path)
        ptype = part.get("type")
        if ptype not in allowed:
            raise _RequestError(f"Invalid value: '{ptype}'. Supported values for a {role} "
                                f"message are: {_values(allowed)}.", code="invalid_value",
                                param=f"{path}.type")
        _check_keys(part, _PART_KEYS[ptype], path)
        required = _PART_REQUIRED.get(ptype)
        if required is not None:
            _require_str(part, required, path)
        if ptype == "output_audio" and "audio" not in part:
            _require_str(part, "transcript", path)
        audio = part.get("audio")
        if audio is not None:
            try:
                binascii.a2b_base64(_require_str(part, "audio", path), strict_mode=True)
            except binascii.Error:
                raise _RequestError(f"Invalid '{path}.audio'. Expected base64-encoded audio.",
                                    code="invalid_value", param=f"{path}.audio") from None
    return held


class FakeConnection:
    """One client connection to the fake: its session, its conversation, what it sent, and ways to
    answer it.

    Attributes:
        model: the ``model`` query parameter.
        headers: the handshake request headers.
        session: the effective session (what ``session.updated`` last reported).
        received: every client event received on this connection, parsed, in order.
        audio_appended: how many ``input_audio_buffer.append`` events were received.
        items: the conversation as the fake holds it, in order: items the client created (as sent,
            with ``id``, ``object`` and ``status`` filled in) and the ones the fake created itself
            (user audio turns, assistant messages, function calls). See :meth:`dialogue`.
        responses: every response produced, in order (:class:`ResponseRecord`).
        truncations: every accepted ``conversation.item.truncate`` (:class:`Truncation`).
        function_outputs: every accepted ``function_call_output`` item (:class:`FunctionOutput`).
        errors_sent: every ``error`` event sent to the client on this connection, in order.
        tool_calls: function calls scripted for the next responses of this connection (they go
            before the server's :attr:`FakeRealtimeServer.next_tool_calls`).
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
        self.items: list[dict[str, Any]] = []
        self.responses: list[ResponseRecord] = []
        self.truncations: list[Truncation] = []
        self.function_outputs: list[FunctionOutput] = []
        self.errors_sent: list[dict[str, Any]] = []
        self.tool_calls: collections.deque[ScriptedToolCall] = collections.deque()
        self.closed = asyncio.Event()
        self._ids = itertools.count(1)
        self._prefix = f"{index:04x}"
        self._changed = asyncio.Event()
        self._response: dict[str, Any] | None = None
        self._audio_head = ""
        self._audio_out = False
        self._buffered = False
        self._by_id: dict[str, dict[str, Any]] = {}
        self._audio_items: dict[str, ResponseRecord] = {}
        self._call_ids: set[str] = set()
        self._input_bytes = 0  # caller audio received this session (decoded size)
        # the previous response's input (text, audio tokens): the provider's prompt cache holds
        # that prefix, so the next response reports it as cached
        self._cached_prefix = (0, 0)
        self._next_metadata: Any = None  # response.metadata of the response.create being served
        self._since_turn = 0  # appends counted towards the next caller turn (talk mode)
        self._turn_start_bytes = 0
        self._barge_count = 0  # appends heard during a response (talk mode, barge_in_after_appends)
        self._speaking: str | None = None  # the user item id between speech_started and stopped
        self._talk_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._expiring = False
        self.session = _default_session(self._id("sess"), model, server.session_max_s)

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
        error = {"type": error_type, "code": code, "message": message, "param": param,
                 "event_id": event_id}
        self.errors_sent.append(error)
        await self.send({"type": "error", "error": dict(error)})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection from the server side, with a close frame (``code``, ``reason``)."""
        await self.ws.close(code, reason)

    async def drop(self, *, timeout: float = 10.0) -> None:
        """Abort the TCP connection with no close frame, as a network failure does: the client
        sees close code 1006. Returns once the connection has ended on this side.

        Raises:
            TimeoutError: the connection had not ended within ``timeout`` seconds.
        """
        self._stop_talking()
        self.ws.transport.abort()
        async with asyncio.timeout(timeout):
            await self.closed.wait()

    async def expire(self) -> None:
        """End the session as the real server does at its maximum duration: an ``error`` with
        code ``session_expired``, then a close with code 1001 (going away).

        Called by the server ``session_max_s`` seconds after ``session.created``; tests may call it
        at any time. A response in progress just stops (no ``response.done``), as the server
        gives none before it closes.
        """
        if self._expiring:
            return
        self._expiring = True
        self._stop_talking()
        lifetime = self.server.session_max_s or SESSION_SECONDS
        await self.send_error(f"Your session hit the maximum duration of "
                              f"{_duration_words(lifetime)}.", code="session_expired")
        await self.close(EXPIRED_CLOSE_CODE, "session_expired")

    # -- state (for tests) -----------------------------------------------------------------------

    @property
    def response_active(self) -> bool:
        """Whether an assistant audio response is open (created and not yet ``response.done``)."""
        return self._response is not None

    @property
    def audio_sent(self) -> bool:
        """Whether any assistant audio was sent on this connection (the voice is then locked)."""
        return self._audio_out

    def item(self, item_id: str) -> dict[str, Any]:
        """The conversation item ``item_id``.

        Raises:
            KeyError: no such item in the conversation.
        """
        return self._by_id[item_id]

    def dialogue(self) -> list[tuple[str, str]]:
        """The conversation in a form easy to compare, one pair per item, in order.

        A message gives ``(role, text)``, its parts' ``text`` or ``transcript`` joined (an audio
        part with no transcript adds nothing); a function call gives
        ``("function_call", "name(arguments)")``; an output gives ``("function_call_output",
        output)``.
        """
        out: list[tuple[str, str]] = []
        for item in self.items:
            kind = item["type"]
            if kind == "message":
                text = "".join(part.get("text") or part.get("transcript") or ""
                               for part in item["content"])
                out.append((item["role"], text))
            elif kind == "function_call":
                out.append(("function_call", f"{item['name']}({item['arguments']})"))
            elif kind == "function_call_output":
                out.append(("function_call_output", item["output"]))
            else:  # pragma: no cover - only the kinds above are ever held
                out.append((kind, ""))
        return out

    def script_tool_call(self, name: str, arguments: str = "{}",
                         call_id: str | None = None) -> str:
        """Make the next response of this connection a call of function ``name`` instead of audio.

        Calls queue up: each response takes the next one. The client is expected to answer with a
        ``function_call_output`` item and a ``response.create``, which the fake answers with a
        normal (talk, or echo) response.

        Returns:
            the ``call_id`` the call will carry (``call_id`` when given).
        """
        call_id = call_id or self._id("call")
        self.tool_calls.append(ScriptedToolCall(name, arguments, call_id))
        return call_id

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
        return await self._speech_started(audio_start_ms)

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
        """One ``response.output_audio.delta`` in the open response (opening one if needed).
        ``b64`` is put in the event verbatim (it must be base64: no JSON escaping is done)."""
        if self._response is None:
            await self._open_response()
        await self._send_delta(b64)

    async def push_delta(self, delta: Any) -> None:
        """A ``response.output_audio.delta`` of the open response (opening one if needed) whose
        ``delta`` is any JSON value, properly encoded: a hostile or broken server's
        (``'abc"},"event":"clear'``, ``12345``, ``None``, a string holding far too much audio).
        Counts as no audio in :attr:`responses`."""
        if self._response is None:
            await self._open_response()
        response = self._response
        assert response is not None
        await self.send({"type": "response.output_audio.delta", "response_id": response["id"],
                         "item_id": response["item_id"], "output_index": 0, "content_index": 0,
                         "delta": delta})

    async def finish_response(self, transcript: str = "", usage: Mapping[str, Any] | None = None) -> str:
        """Complete the open response: audio/transcript/part/item ``.done`` then ``response.done``
        with ``status: completed`` and ``usage``. A talk stream in progress stops where it is.

        Returns:
            the response id.
        """
        if self._response is None:
            await self._open_response()
        assert self._response is not None
        self._response["transcript"] = transcript
        return await self._finish_response("completed", usage=usage)

    async def create_response(self) -> None:
        """Produce a response as if the client had sent ``response.create`` (the next scripted
        function call, else audio as the mode does it; nothing in silent mode)."""
        await self._create_response()

    # -- the conversation ------------------------------------------------------------------------

    def _insert_item(self, item: dict[str, Any], after: str | None = None) -> str | None:
        """Add ``item`` to the conversation after item ``after`` (``"root"``: first; ``None``:
        last). Returns the id of the item now before it, if any."""
        if after is None:
            previous = self.items[-1]["id"] if self.items else None
            self.items.append(item)
        elif after == "root":
            previous = None
            self.items.insert(0, item)
        else:
            position = self.items.index(self._by_id[after]) + 1
            previous = after
            self.items.insert(position, item)
        self._by_id[item["id"]] = item
        return previous

    async def _announce_item(self, item: dict[str, Any], previous: str | None) -> None:
        shown = _strip_audio(item)
        await self.send({"type": "conversation.item.added", "previous_item_id": previous,
                         "item": shown})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous,
                         "item": shown})

    async def _add_user_audio_item(self, item_id: str) -> None:
        """The user item a commit (by the client, or by the server VAD) creates."""
        self._buffered = False
        item = {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
                "role": "user", "content": [{"type": "input_audio", "transcript": None}]}
        previous = self._insert_item(item)
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id,
                         "previous_item_id": previous})
        await self._announce_item(item, previous)

    # -- the protocol: responses -----------------------------------------------------------------

    def _next_tool_call(self) -> ScriptedToolCall | None:
        if self.tool_calls:
            return self.tool_calls.popleft()
        if self.server.next_tool_calls:
            return self.server.next_tool_calls.popleft()
        return None

    async def _create_response(self) -> None:
        call = self._next_tool_call()
        if call is not None:
            await self._function_call_response(call)
        elif self.server.mode == "talk":
            await self._open_response()
            assert self._response is not None
            self._response["talk"] = True
            self._talk_task = asyncio.create_task(self._talk(self._response),
                                                  name=f"fake-realtime-talk-{self._response['id']}")
        elif self.server.mode == "echo":
            await self._open_response()

    def _response_created(self, response_id: str, metadata: Any = None) -> dict[str, Any]:
        out = self.session["audio"]["output"]
        return {"type": "response.created", "response": {
            "object": "realtime.response", "id": response_id, "status": "in_progress",
            "status_details": None, "output": [], "conversation_id": self._id("conv"),
            "output_modalities": self.session["output_modalities"],
            "max_output_tokens": self.session["max_output_tokens"],
            "audio": {"output": {"format": out["format"], "voice": out["voice"]}},
            "usage": None, "metadata": metadata,
        }}

    def _new_record(self, kind: Literal["audio", "function_call"], response_id: str, item_id: str,
                    call_id: str | None = None) -> ResponseRecord:
        record: ResponseRecord = {
            "id": response_id, "number": len(self.responses) + 1, "kind": kind,
            "status": "in_progress", "reason": None, "item_id": item_id, "call_id": call_id,
            "audio_bytes": 0, "audio_ms": 0,
            "bytes_per_ms": _bytes_per_ms(self.session["audio"]["output"]["format"]),
        }
        self.responses.append(record)
        return record

    async def _open_response(self) -> None:
        response_id, item_id = self._id("resp"), self._id("item")
        record = self._new_record("audio", response_id, item_id)
        item = self._item(item_id, "in_progress", "")
        self._insert_item(item)
        self._audio_items[item_id] = record
        metadata, self._next_metadata = self._next_metadata, None
        self._response = {"id": response_id, "item_id": item_id, "transcript": "",
                          "record": record, "item": item, "talk": False, "metadata": metadata}
        self._audio_head = ('{"type":"response.output_audio.delta","response_id":"' + response_id
                            + '","item_id":"' + item_id
                            + '","output_index":0,"content_index":0,"event_id":"')
        await self.send(self._response_created(response_id, metadata))
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

    async def _send_delta(self, b64: str, size: int | None = None) -> None:
        """One delta of the open response: ``b64`` holds ``size`` bytes (computed when
        ``None``)."""
        # The hot path of the echo mode: built by concatenation, the client's base64 verbatim.
        self._audio_out = True
        response = self._response
        if response is not None:
            record = response["record"]
            total = record["audio_bytes"] + (_b64_size(b64) if size is None else size)
            record["audio_bytes"] = total
            record["audio_ms"] = total // record["bytes_per_ms"]
        try:
            await self.ws.send(self._audio_head + self._id("event") + '","delta":"' + b64 + '"}')
        except ConnectionClosed:
            pass

    async def _talk(self, response: dict[str, Any]) -> None:
        """Stream a talk response's audio and transcript, then complete it (one task per
        response; stops as soon as the response is no longer the open one)."""
        try:
            record: ResponseRecord = response["record"]
            per_ms = record["bytes_per_ms"]
            audio = talk_audio(record["number"], self.server.response_audio_ms * per_ms)
            step = max(1, self.server.delta_ms * per_ms)
            words = f"Response {record['number']}.".split(" ")
            texts = [w + " " for w in words[:-1]] + words[-1:]
            speed = self.server.talk_speed
            loop = asyncio.get_running_loop()
            start = loop.time()
            common = {"response_id": response["id"], "item_id": response["item_id"],
                      "output_index": 0, "content_index": 0}
            for k, offset in enumerate(range(0, len(audio), step)):
                if speed > 0:
                    delay = start + offset / per_ms / 1000 / speed - loop.time()
                    await asyncio.sleep(max(0.0, delay))
                else:
                    await asyncio.sleep(0)  # let a cancel in
                if self._response is not response:
                    return
                await self._send_delta(base64.b64encode(audio[offset:offset + step]).decode())
                if k < len(texts):
                    response["transcript"] += texts[k]
                    await self.send({"type": "response.output_audio_transcript.delta", **common,
                                     "delta": texts[k]})
            for text in texts[len(range(0, len(audio), step)):]:
                if self._response is not response:
                    return
                response["transcript"] += text
                await self.send({"type": "response.output_audio_transcript.delta", **common,
                                 "delta": text})
            if self._response is response:
                await self._finish_response("completed")
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - a bug in the fake; say so rather than hang a test
            logger.exception("fake realtime: talk response {} failed", response["id"])

    def _stop_talking(self) -> asyncio.Task[None] | None:
        """Cancel the talk stream task, if any (from outside it); returns it to be awaited."""
        task, self._talk_task = self._talk_task, None
        if task is None or task is asyncio.current_task() or task.done():
            return None
        task.cancel()
        return task

    def _usage(self, response: dict[str, Any]) -> dict[str, Any]:
        """Plausible, deterministic usage: assistant audio 1 token / 50 ms, caller audio
        1 token / 100 ms, one text token per word."""
        record: ResponseRecord = response["record"]
        out_audio = record["audio_ms"] // 50
        out_text = len(response["transcript"].split())
        in_audio = self._input_bytes // _bytes_per_ms(self.session["audio"]["input"]["format"]) // 100
        in_text = len(str(self.session.get("instructions") or "").split()) + sum(
            len(str(part.get("text") or "").split())
            for item in self.items for part in item.get("content") or ())
        # what the previous response already read is cached now (a subset of the input)
        cached_text = min(in_text, self._cached_prefix[0])
        cached_audio = min(in_audio, self._cached_prefix[1])
        self._cached_prefix = (in_text, in_audio)
        return {
            "total_tokens": in_audio + in_text + out_audio + out_text,
            "input_tokens": in_audio + in_text, "output_tokens": out_audio + out_text,
            "input_token_details": {"text_tokens": in_text, "audio_tokens": in_audio,
                                    "image_tokens": 0, "cached_tokens": cached_text + cached_audio,
                                    "cached_tokens_details": {"text_tokens": cached_text,
                                                              "audio_tokens": cached_audio,
                                                              "image_tokens": 0}},
            "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
        }

    async def _finish_response(self, status: Literal["completed", "cancelled"], *,
                               reason: str | None = None,
                               usage: Mapping[str, Any] | None = None) -> str:
        response = self._response
        assert response is not None
        self._response = None
        task = self._stop_talking()
        if task is not None:
            await asyncio.wait({task})  # no delta of this response goes out after this point
        self._since_turn = self._barge_count = 0
        record: ResponseRecord = response["record"]
        record["status"] = status
        record["reason"] = reason
        rid: str = response["id"]
        item_id: str = response["item_id"]
        transcript: str = response["transcript"]
        item_status = "completed" if status == "completed" else "incomplete"
        held = response["item"]
        held["status"] = item_status
        held["content"] = [{"type": "output_audio", "transcript": transcript}]
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
        if usage is None:
            usage = self._usage(response) if response["talk"] else {
                "total_tokens": 0, "input_tokens": 0, "output_tokens": 0,
                "input_token_details": {"text_tokens": 0, "audio_tokens": 0, "cached_tokens": 0},
                "output_token_details": {"text_tokens": 0, "audio_tokens": 0},
            }
        await self.send({"type": "response.done", "response": {
            "object": "realtime.response", "id": rid, "status": status,
            "status_details": details, "output": [item],
            "output_modalities": self.session["output_modalities"],
            "usage": dict(usage), "metadata": response.get("metadata"),
        }})
        return rid

    async def _function_call_response(self, call: ScriptedToolCall) -> None:
        """A whole response that calls a function instead of speaking (sent in one go, so no
        client event is handled in its middle)."""
        response_id, item_id = self._id("resp"), self._id("item")
        record = self._new_record("function_call", response_id, item_id, call.call_id)
        self._call_ids.add(call.call_id)
        item = {"id": item_id, "object": "realtime.item", "type": "function_call",
                "status": "in_progress", "name": call.name, "call_id": call.call_id,
                "arguments": ""}
        self._insert_item(item)
        common = {"response_id": response_id, "item_id": item_id, "output_index": 0,
                  "call_id": call.call_id}
        await self.send(self._response_created(response_id))
        await self.send({"type": "response.output_item.added", "response_id": response_id,
                         "output_index": 0, "item": dict(item)})
        half = len(call.arguments) // 2
        for delta in (call.arguments[:half], call.arguments[half:]):
            if delta:
                await self.send({"type": "response.function_call_arguments.delta", **common,
                                 "delta": delta})
        await self.send({"type": "response.function_call_arguments.done", **common,
                         "name": call.name, "arguments": call.arguments})
        item["status"], item["arguments"] = "completed", call.arguments
        await self.send({"type": "response.output_item.done", "response_id": response_id,
                         "output_index": 0, "item": dict(item)})
        record["status"] = "completed"
        self._since_turn = self._barge_count = 0
        usage = self._usage({"record": record, "transcript": call.arguments})
        await self.send({"type": "response.done", "response": {
            "object": "realtime.response", "id": response_id, "status": "completed",
            "status_details": None, "output": [dict(item)],
            "output_modalities": self.session["output_modalities"],
            "usage": usage, "metadata": None,
        }})

    # -- the protocol: the caller's turns (talk mode) --------------------------------------------

    def _input_ms(self, size: int) -> int:
        return size // _bytes_per_ms(self.session["audio"]["input"]["format"])

    async def _speech_started(self, audio_start_ms: int) -> str:
        item_id = self._id("item")
        self._speaking = item_id
        await self.send({"type": "input_audio_buffer.speech_started",
                         "audio_start_ms": audio_start_ms, "item_id": item_id})
        turn = self.session["audio"]["input"].get("turn_detection") or {}
        if self._response is not None and turn.get("interrupt_response", True):
            await self._finish_response("cancelled", reason="turn_detected")
        return item_id

    async def _caller_turn(self, turn: Mapping[str, Any]) -> None:
        """The caller stopped speaking: VAD events, the committed user item, then a response."""
        if self._speaking is None:
            padding = int(turn.get("prefix_padding_ms") or 0)
            await self._speech_started(max(0, self._input_ms(self._turn_start_bytes) - padding))
        item_id, self._speaking = self._speaking, None
        assert item_id is not None
        self._since_turn = 0
        await self.send({"type": "input_audio_buffer.speech_stopped",
                         "audio_end_ms": self._input_ms(self._input_bytes), "item_id": item_id})
        await self._add_user_audio_item(item_id)
        if turn.get("create_response", True) and self._response is None:
            await self._create_response()

    async def _talk_on_append(self, size: int) -> None:
        turn = self.session["audio"]["input"].get("turn_detection")
        if turn is None:
            return  # no VAD: the client commits and asks for responses itself
        if self._response is not None:
            barge = self.server.barge_in_after_appends
            if barge is not None and self._speaking is None:
                self._barge_count += 1
                if self._barge_count >= barge:
                    self._turn_start_bytes = self._input_bytes - size
                    padding = int(turn.get("prefix_padding_ms") or 0)
                    await self._speech_started(
                        max(0, self._input_ms(self._turn_start_bytes) - padding))
            return
        if self._since_turn == 0 and self._speaking is None:
            self._turn_start_bytes = self._input_bytes - size
        self._since_turn += 1
        if self._since_turn >= self.server.talk_after_appends:
            await self._caller_turn(turn)


    # -- the protocol: client events -------------------------------------------------------------

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
            elif kind == "conversation.item.truncate":
                await self._on_truncate(event)
            elif kind == "conversation.item.create":
                await self._on_item_create(event)
            elif kind == "input_audio_buffer.commit":
                await self._on_commit(event)
            elif kind == "input_audio_buffer.clear":
                self._buffered = False
                await self.send({"type": "input_audio_buffer.cleared"})
            elif kind == "conversation.item.delete":
                await self._on_item_delete(event)
            elif kind == "conversation.item.retrieve":
                await self._on_item_retrieve(event)
            elif kind in _CLIENT_EVENTS:
                pass  # accepted and recorded (output_audio_buffer.clear: WebRTC/SIP only)
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
        size = len(audio) // 4 * 3 - audio[-2:].count("=")  # _b64_size, inlined: hot path
        self._input_bytes += size
        mode = self.server.mode
        if mode == "echo":
            if self._response is None:
                await self._open_response()
            await self._send_delta(audio, size)
        elif mode == "talk":
            await self._talk_on_append(size)

    async def _on_session_update(self, event: dict[str, Any]) -> None:
        session = _validate_session_update(event.get("session"))
        model = session.get("model")
        if model is not None and model != self.model:
            raise _RequestError("The model of a session cannot be changed.",
                                code="invalid_value", param="session.model")
        voice = ((session.get("audio") or {}).get("output") or {}).get("voice")
        if voice is not None and self._audio_out and voice != self.session["audio"]["output"]["voice"]:
            raise _RequestError(VOICE_LOCKED_MESSAGE, code="cannot_update_voice",
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
        response = event.get("response")
        if response is not None and not isinstance(response, Mapping):
            raise _RequestError(f"Invalid type for 'response': expected an object, but got "
                                f"{type(response).__name__} instead.", code="invalid_type",
                                param="response")
        # the server echoes a response's metadata in its response.created and response.done
        self._next_metadata = (response or {}).get("metadata")
        await self._create_response()
        self._next_metadata = None

    async def _on_commit(self, event: dict[str, Any]) -> None:
        if not self._buffered:
            raise _RequestError("Error committing input audio buffer: buffer too small.",
                                code="input_audio_buffer_commit_empty")
        item_id, self._speaking = self._speaking or self._id("item"), None
        self._since_turn = 0
        await self._add_user_audio_item(item_id)

    def _known_item(self, event: Mapping[str, Any], verb: str) -> tuple[str, dict[str, Any]]:
        """The ``item_id`` of an item event and the item it names.

        Raises:
            _RequestError: it is missing (``missing_required_parameter``), or not in the
                conversation (``item_<verb>_invalid_item_id``, as ``retrieve`` answers).
        """
        item_id = event.get("item_id")
        if item_id is None:
            raise _RequestError("Missing required parameter: 'item_id'.",
                                code="missing_required_parameter", param="item_id")
        item = self._by_id.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            raise _RequestError(f"Item with item_id not found: {item_id}",
                                code=f"item_{verb}_invalid_item_id", param="item_id")
        return item_id, item

    async def _on_truncate(self, event: dict[str, Any]) -> None:
        item_id, item = self._known_item(event, "truncate")
        record = self._audio_items.get(item_id)
        if record is None or item.get("role") != "assistant":
            raise _RequestError(f"Invalid value: '{item_id}'. Only assistant messages with audio "
                                "can be truncated.", code="invalid_value", param="item_id")
        content_index = event.get("content_index")
        if content_index is None:
            raise _RequestError("Missing required parameter: 'content_index'.",
                                code="missing_required_parameter", param="content_index")
        if content_index != 0 or isinstance(content_index, bool):
            raise _RequestError(f"Invalid value: {content_index!r}. Item {item_id} has one "
                                "content part: content_index must be 0.", code="invalid_value",
                                param="content_index")
        end = event.get("audio_end_ms")
        if end is None:
            raise _RequestError("Missing required parameter: 'audio_end_ms'.",
                                code="missing_required_parameter", param="audio_end_ms")
        if not isinstance(end, int) or isinstance(end, bool):
            raise _RequestError(f"Invalid type for 'audio_end_ms': expected an integer, but got "
                                f"{type(end).__name__} instead.", code="invalid_type",
                                param="audio_end_ms")
        if end < 0:
            raise _RequestError(f"Invalid 'audio_end_ms': integer below minimum value. Expected "
                                f"a value >= 0, but got {end} instead.", code="invalid_value",
                                param="audio_end_ms")
        if end * record["bytes_per_ms"] > record["audio_bytes"]:
            raise _RequestError(f"Audio content of {record['audio_ms']}ms is already shorter "
                                f"than {end}ms", code="invalid_value", param="audio_end_ms")
        # Truncating drops the audio after the cut and the transcript, so that no text the
        # caller did not hear stays in the context.
        record["audio_bytes"] = end * record["bytes_per_ms"]
        record["audio_ms"] = end
        for part in item["content"]:
            part["transcript"] = ""
        self.truncations.append({"item_id": item_id, "content_index": 0, "audio_end_ms": end})
        await self.send({"type": "conversation.item.truncated", "item_id": item_id,
                         "content_index": 0, "audio_end_ms": end})

    async def _on_item_create(self, event: dict[str, Any]) -> None:
        item = _validate_item(event.get("item"))
        after = event.get("previous_item_id")
        if after is not None and after != "root" and after not in self._by_id:
            raise _RequestError(f"Invalid value: '{after}'. No item with this id in the "
                                "conversation.", code="invalid_value", param="previous_item_id")
        item_id = item.setdefault("id", self._id("item"))
        if item_id in self._by_id:
            raise _RequestError(f"Invalid value: '{item_id}'. An item with this id already "
                                "exists in the conversation.", code="invalid_value",
                                param="item.id")
        if item["type"] == "function_call_output":
            if item["call_id"] not in self._call_ids:
                raise _RequestError(f"Invalid value: '{item['call_id']}'. No function call with "
                                    "this call_id in the conversation.", code="invalid_value",
                                    param="item.call_id")
            self.function_outputs.append({"call_id": item["call_id"], "output": item["output"],
                                          "item_id": item_id})
        elif item["type"] == "function_call":
            self._call_ids.add(item["call_id"])
        previous = self._insert_item(item, after)
        await self._announce_item(item, previous)

    async def _on_item_delete(self, event: dict[str, Any]) -> None:
        item_id, item = self._known_item(event, "delete")
        if self._response is not None and self._response["item_id"] == item_id:
            raise _RequestError(f"Invalid value: '{item_id}'. The item is being generated by "
                                "the active response.", code="invalid_value", param="item_id")
        self.items.remove(item)
        del self._by_id[item_id]
        self._audio_items.pop(item_id, None)
        await self.send({"type": "conversation.item.deleted", "item_id": item_id})

    async def _on_item_retrieve(self, event: dict[str, Any]) -> None:
        _, item = self._known_item(event, "retrieve")
        await self.send({"type": "conversation.item.retrieved", "item": copy.deepcopy(item)})


class FakeRealtimeServer:
    """A fake OpenAI Realtime GA server on ``127.0.0.1``.

    Use as ``async with FakeRealtimeServer(mode="talk") as server: …server.url…``, or call
    :meth:`start` / :meth:`stop`.

    Args:
        mode: ``"echo"``, ``"silent"`` or ``"talk"`` (see the module docstring).
        host: the address to bind.
        port: the port; ``0`` picks a free one.
        api_key: when set, a client presenting another key gets ``invalid_api_key`` and is closed.
        session_overrides: merged into the effective session after every ``session.update``, to
            play a server that ignores part of the request (``{"audio": {"output": {"format":
            {"type": "audio/pcm", "rate": 24000}}}}`` plays one that will not speak mu-law).
        record: keep every client event in :attr:`received` (turn off for long load runs).
        talk_after_appends: talk mode: appends since the last response ended (or the last caller
            turn) after which the caller "stopped speaking" (25 = 0.5 s of 20 ms frames).
        response_audio_ms: talk mode: the length of each spoken response.
        delta_ms: talk mode: the audio in each ``response.output_audio.delta``.
        talk_speed: talk mode: pace of the deltas, as a multiple of real time; ``0`` sends them
            as fast as possible (still letting client events in between).
        barge_in_after_appends: talk mode: when set, this many appends arriving while a response
            is open make the fake hear the caller (``speech_started``, which cancels the response
            with ``turn_detected`` if ``interrupt_response`` is on); ``None``: never.
        session_max_s: when set, each session ends this many seconds after ``session.created``
            with ``session_expired`` and close code 1001 (:meth:`FakeConnection.expire`); its
            ``expires_at`` says so. ``None``: the real 60 minutes are announced, never enforced.

    Attributes:
        received: every client event from every connection, parsed, in arrival order.
        connections: every connection accepted, in order.
        next_tool_calls: function calls scripted for the next responses of any connection (a
            connection's own :attr:`FakeConnection.tool_calls` go first).
    """

    #: The class of each accepted connection (a dialect's fake subclasses it).
    connection_class: type[FakeConnection] = FakeConnection

    def __init__(self, *, mode: str = "echo", host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, session_overrides: Mapping[str, Any] | None = None,
                 record: bool = True, talk_after_appends: int = 25, response_audio_ms: int = 2000,
                 delta_ms: int = 100, talk_speed: float = 1.0,
                 barge_in_after_appends: int | None = None,
                 session_max_s: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"FakeRealtimeServer mode must be one of {MODES}, not {mode!r}")
        for name, value, least in (("talk_after_appends", talk_after_appends, 1),
                                   ("response_audio_ms", response_audio_ms, 0),
                                   ("delta_ms", delta_ms, 1)):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"FakeRealtimeServer {name} must be an integer >= {least}, "
                                 f"not {value!r}")
        if barge_in_after_appends is not None and (not isinstance(barge_in_after_appends, int)
                                                   or barge_in_after_appends < 1):
            raise ValueError("FakeRealtimeServer barge_in_after_appends must be None or an "
                             f"integer >= 1, not {barge_in_after_appends!r}")
        if not talk_speed >= 0 or math.isinf(talk_speed):
            raise ValueError(f"FakeRealtimeServer talk_speed must be a finite number >= 0, not "
                             f"{talk_speed!r}")
        if session_max_s is not None and not session_max_s > 0:
            raise ValueError(f"FakeRealtimeServer session_max_s must be None or > 0, not "
                             f"{session_max_s!r}")
        self.mode = mode
        self.host = host
        self.port = port
        self.api_key = api_key
        self.session_overrides = session_overrides
        self.record = record
        self.talk_after_appends = talk_after_appends
        self.response_audio_ms = response_audio_ms
        self.delta_ms = delta_ms
        self.talk_speed = talk_speed
        self.barge_in_after_appends = barge_in_after_appends
        self.session_max_s = session_max_s
        self.received: list[dict[str, Any]] = []
        self.connections: list[FakeConnection] = []
        self.next_tool_calls: collections.deque[ScriptedToolCall] = collections.deque()
        self._server: Server | None = None
        self._new_connection = asyncio.Event()
        self._call_ids = itertools.count(1)

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
                                   compression=None, max_size=16 * 1024 * 1024,
                                   create_connection=LeanServerConnection)
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

    def script_tool_call(self, name: str, arguments: str = "{}",
                         call_id: str | None = None) -> str:
        """Queue a function call on :attr:`next_tool_calls`: the next response of whichever
        connection responds next calls ``name`` instead of speaking.

        Returns:
            the ``call_id`` the call will carry.
        """
        call_id = call_id or f"call_srv{next(self._call_ids):08x}"
        self.next_tool_calls.append(ScriptedToolCall(name, arguments, call_id))
        return call_id

    async def drop_all(self) -> None:
        """Abort every open connection with no close frame (:meth:`FakeConnection.drop`)."""
        await asyncio.gather(*(conn.drop() for conn in self.connections
                               if not conn.closed.is_set()))

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
        conn = self.connection_class(self, ws, model, len(self.connections))
        self.connections.append(conn)
        self._new_connection.set()
        try:
            if await self._refuse(conn, request):
                return
            await self._greet(conn)
            if self.session_max_s is not None:
                conn._expiry_task = asyncio.create_task(self._expire_later(conn, self.session_max_s))
            while True:
                await conn._handle(await ws.recv())
        except ConnectionClosed:
            pass
        finally:
            conn._stop_talking()
            expiry = conn._expiry_task
            if expiry is not None and not conn._expiring:
                expiry.cancel()
            conn.closed.set()

    async def _greet(self, conn: FakeConnection) -> None:
        """The server's first events on an accepted connection: ``session.created``."""
        await conn.send({"type": "session.created", "session": copy.deepcopy(conn.session)})

    @staticmethod
    async def _expire_later(conn: FakeConnection, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await conn.expire()

    async def _refuse(self, conn: FakeConnection, request: Request) -> bool:
        """Apply the real server's connection-level checks; ``True`` when the client was refused."""
        auth = request.headers.get("Authorization", "")
        azure_key = request.headers.get("api-key", "").strip()  # Azure OpenAI's header
        if azure_key and not auth:
            auth = "Bearer " + azure_key
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
    parser.add_argument("--mode", choices=MODES, default="echo",
                        help="echo (default), silent or talk")
    parser.add_argument("--api-key", default=None, help="refuse clients presenting another key")
    parser.add_argument("--no-record", action="store_true",
                        help="do not keep received events in memory (long load runs)")
    parser.add_argument("--talk-ms", type=int, default=2000, metavar="MS",
                        help="talk mode: length of each spoken response (default 2000)")
    parser.add_argument("--delta-ms", type=int, default=100, metavar="MS",
                        help="talk mode: audio per output delta (default 100)")
    parser.add_argument("--talk-speed", type=float, default=1.0, metavar="X",
                        help="talk mode: pace as a multiple of real time; 0 = unpaced (default 1)")
    parser.add_argument("--talk-after-appends", type=int, default=25, metavar="N",
                        help="talk mode: appends after which the caller stopped speaking "
                             "(default 25)")
    parser.add_argument("--barge-in-after-appends", type=int, default=None, metavar="N",
                        help="talk mode: appends during a response after which the caller "
                             "barges in (default: never)")
    parser.add_argument("--session-max-s", type=float, default=None, metavar="S",
                        help="end each session with session_expired after S seconds "
                             "(default: never)")
    args = parser.parse_args(list(argv) if argv is not None else None)

    async def run() -> None:
        server = FakeRealtimeServer(
            mode=args.mode, host=args.host, port=args.port, api_key=args.api_key,
            record=not args.no_record, talk_after_appends=args.talk_after_appends,
            response_audio_ms=args.talk_ms, delta_ms=args.delta_ms, talk_speed=args.talk_speed,
            barge_in_after_appends=args.barge_in_after_appends,
            session_max_s=args.session_max_s)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            print(server.url, flush=True)
            await stop.wait()

    try:
        asyncio.run(run())
    except ValueError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
