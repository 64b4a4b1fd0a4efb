"""A local fake of xAI's Grok Voice Agent WebSocket server, for testing the ``xai`` provider.

Depends on ``telewire.testing.fake_realtime`` (the GA fake it specialises) and ``telewire.jsonfast``.

:class:`FakeXAIServer` is a :class:`~telewire.testing.fake_realtime.FakeRealtimeServer` (same
modes, helpers and records) that behaves as xAI's documentation says where xAI differs from
Realtime GA (docs/providers/xai.md):

* It opens each connection with ``conversation.created`` (then ``session.created`` and a
  ``ping``), takes the model from ``?model=`` (default ``grok-voice-latest``) and refuses models
  that are not Grok voice models, wants ``Authorization: Bearer`` (no ``api-key`` header).
* ``session.update`` is xAI's shape, checked strictly: ``instructions``, ``voice``,
  ``turn_detection`` (``server_vad`` with ``threshold`` / ``silence_duration_ms`` /
  ``prefix_padding_ms`` / ``idle_timeout_ms``, or ``null``), ``audio.input`` (``format``,
  ``transcription``, ``transport``), ``audio.output`` (``format``, ``speed``, ``transport``),
  ``tools``, ``reasoning``, ``resumption``, ``replace``. GA's ``type``, ``model``,
  ``output_modalities``, ``tool_choice``, ``audio.output.voice``, ``audio.input.turn_detection``,
  ``semantic_vad``, ``create_response`` … are refused as unknown parameters. ``session.updated``
  reports xAI's shape. The voice is not locked once audio was sent (xAI documents no lock).
* ``response.create`` takes ``response.instructions`` / ``modalities`` only (no ``metadata``);
  ``response.cancel`` takes no ``response_id``; ``conversation.item.retrieve`` and
  ``output_audio_buffer.clear`` are unknown events; ``pong`` is accepted.
* ``response.created`` / ``response.done`` carry no ``metadata``, and usage as xAI sends it
  (``total_tokens`` / ``input_tokens`` / ``output_tokens``); no ``conversation.item.done``;
  ``response.output_audio_transcript.done`` without ``transcript`` (the guide's example).
* The two benign races (cancel with nothing active, a create while a response is active) come
  with the GA messages and no GA ``code``: pipecat's xAI client notes that xAI's codes differ.
* Session resumption: a connection whose ``session.update`` has ``resumption.enabled`` keeps its
  conversation under its id; a later connection with ``?conversation_id=`` that id and
  ``resumption.enabled`` gets it back, replayed as ``conversation.item.added`` events. An
  unknown id starts a new conversation (with a new id).

What no public source settles (exact error codes, whether unknown fields are refused or ignored)
is played strictly here, and said so in docs/providers/xai.md.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Mapping
from urllib.parse import parse_qs, urlsplit

from websockets.http11 import Request

from telewire import jsonfast
from telewire.testing.fake_realtime import (POLICY_CLOSE_CODE, FakeConnection,
                                            FakeRealtimeServer, _check_keys, _merge,
                                            _RequestError, _strip_audio)

__all__ = ["FakeXAIConnection", "FakeXAIServer", "XAI_MODELS"]

#: The model names the fake accepts (docs.x.ai; litellm's xAI realtime page).
XAI_MODELS = frozenset({"grok-voice-latest", "grok-voice-think-fast-2.0",
                        "grok-voice-think-fast-1.0", "grok-voice-fast-1.0"})
DEFAULT_MODEL = "grok-voice-latest"
_SESSION_KEYS = frozenset({"instructions", "voice", "turn_detection", "audio", "tools", "reasoning",
                           "resumption", "replace"})
_TURN_KEYS = frozenset({"type", "threshold", "silence_duration_ms", "prefix_padding_ms",
                        "idle_timeout_ms"})
_INPUT_KEYS = frozenset({"format", "transcription", "transport"})
_OUTPUT_KEYS = frozenset({"format", "speed", "transport"})
_TRANSCRIPTION_KEYS = frozenset({"model", "language_hint", "keyterms"})
_PCM_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
_RESPONSE_KEYS = frozenset({"instructions", "modalities"})
#: GA client events xAI does not have.
_UNSUPPORTED = frozenset({"conversation.item.retrieve", "output_audio_buffer.clear"})
#: GA error codes xAI does not send (the message is kept).
_GA_ONLY_CODES = frozenset({"response_cancel_not_active",
                            "conversation_already_has_active_response"})


def _check_xai_format(fmt: Any, path: str) -> None:
    _check_keys(fmt, frozenset({"type", "rate"}), path)
    kind, rate = fmt.get("type"), fmt.get("rate")
    if kind == "audio/pcm":
        if rate is not None and rate not in _PCM_RATES:
            raise _RequestError(f"Invalid value: {rate!r}. Supported rates for 'audio/pcm' are "
                                f"{', '.join(map(str, _PCM_RATES))}.", code="invalid_value",
                                param=f"{path}.rate")
    elif kind in ("audio/pcmu", "audio/pcma"):
        if rate is not None and rate != 8000:
            raise _RequestError(f"Invalid value: {rate!r}. '{kind}' is 8000 Hz.",
                                code="invalid_value", param=f"{path}.rate")
    else:
        raise _RequestError(f"Invalid value: '{kind}'. Supported values are: 'audio/pcm', "
                            "'audio/pcmu', and 'audio/pcma'.", code="invalid_value",
                            param=f"{path}.type")


def validate_xai_session(session: Any) -> Mapping[str, Any]:
    """Check an xAI ``session.update`` payload strictly.

    Raises:
        _RequestError: the first problem, named by its parameter path (``session.…``).
    """
    if not isinstance(session, Mapping):
        raise _RequestError("Missing required parameter: 'session'.",
                            code="missing_required_parameter", param="session")
    _check_keys(session, _SESSION_KEYS, "session")
    turn = session.get("turn_detection")
    if turn is not None:
        _check_keys(turn, _TURN_KEYS, "session.turn_detection")
        if turn.get("type") not in ("server_vad", None):
            raise _RequestError(f"Invalid value: '{turn.get('type')}'. Supported values are: "
                                "'server_vad' and null.", code="invalid_value",
                                param="session.turn_detection.type")
    audio = session.get("audio")
    if audio is not None:
        _check_keys(audio, frozenset({"input", "output"}), "session.audio")
        for side, keys in (("input", _INPUT_KEYS), ("output", _OUTPUT_KEYS)):
            part = audio.get(side)
            if part is None:
                continue
            path = f"session.audio.{side}"
            _check_keys(part, keys, path)
            if "format" in part:
                _check_xai_format(part["format"], f"{path}.format")
            if part.get("transcription") is not None:
                _check_keys(part["transcription"], _TRANSCRIPTION_KEYS, f"{path}.transcription")
            if part.get("transport") not in (None, "json", "binary"):
                raise _RequestError(f"Invalid value: '{part['transport']}'. Supported values "
                                    "are: 'json' and 'binary'.", code="invalid_value",
                                    param=f"{path}.transport")
    resumption = session.get("resumption")
    if resumption is not None:
        _check_keys(resumption, frozenset({"enabled"}), "session.resumption")
    return session


def _default_xai_session(session_id: str, model: str) -> dict[str, Any]:
    """xAI's session before any ``session.update``: 24 kHz PCM, server VAD, voice ``eve``."""
    return {
        "id": session_id, "object": "realtime.session", "model": model,
        "instructions": "", "voice": "eve",
        "turn_detection": {"type": "server_vad", "threshold": 0.85, "silence_duration_ms": 500,
                           "prefix_padding_ms": 333},
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}},
                  "output": {"format": {"type": "audio/pcm", "rate": 24000}}},
        "tools": [],
    }


class FakeXAIConnection(FakeConnection):
    """One client connection to :class:`FakeXAIServer` (a :class:`FakeConnection` speaking xAI).

    Attributes:
        xai_session: the effective session in xAI's shape (what ``session.updated`` reported).
        conversation_id: this connection's conversation (``conversation.created``).
        requested_conversation: the ``?conversation_id=`` it asked for (``None``: none).
        resumed: whether it got an earlier connection's conversation back.
        pongs: the ``pong`` events received.
    """

    server: "FakeXAIServer"

    def __init__(self, server: FakeRealtimeServer, ws: Any, model: str, index: int) -> None:
        super().__init__(server, ws, model or DEFAULT_MODEL, index)
        self.xai_session = _default_xai_session(self.session["id"], self.model)
        # the GA-shaped session the shared machinery reads, set to xAI's defaults
        self.session["audio"]["output"]["voice"] = "eve"
        self.session["instructions"] = ""
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        self.requested_conversation: str | None = (query.get("conversation_id") or [None])[0]
        known = self.requested_conversation in server.conversations  # type: ignore[attr-defined]
        self.conversation_id = (self.requested_conversation if known
                                else self._id("conv"))
        self.resumed = False
        self.pongs: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any]) -> None:
        """Send one server event in xAI's shape (see the module docstring)."""
        kind = event.get("type")
        if kind == "conversation.item.done":
            return
        if kind == "response.output_audio_transcript.done":
            event = {k: v for k, v in event.items() if k != "transcript"}
        if kind in ("response.created", "response.done"):
            response = {k: v for k, v in event["response"].items()
                        if k not in ("metadata", "conversation_id", "output_modalities",
                                     "max_output_tokens", "audio")}
            usage = response.get("usage")
            if isinstance(usage, Mapping):
                response["usage"] = {k: usage.get(k, 0) for k in
                                     ("total_tokens", "input_tokens", "output_tokens")}
            event = {**event, "response": response}
        await super().send(event)

    async def send_error(self, message: str, *, code: str | None,
                         error_type: str = "invalid_request_error", param: str | None = None,
                         event_id: str | None = None) -> None:
        """As :meth:`FakeConnection.send_error`, without the GA codes xAI does not send."""
        await super().send_error(message, code=None if code in _GA_ONLY_CODES else code,
                                 error_type=error_type, param=param, event_id=event_id)

    async def _handle(self, raw: str | bytes) -> None:
        if isinstance(raw, str) and ('"pong"' in raw or '.retrieve"' in raw
                                     or 'output_audio_buffer.clear' in raw):
            try:
                event = jsonfast.loads(raw)
            except ValueError:
                event = None
            kind = event.get("type") if isinstance(event, dict) else None
            if kind == "pong" or kind in _UNSUPPORTED:
                self.received.append(event)  # type: ignore[arg-type]
                self.server.received.append(event)  # type: ignore[arg-type]
            if kind == "pong":
                self.pongs.append(event)  # type: ignore[arg-type]
                return
            if kind in _UNSUPPORTED:
                await self.send_error(f"Invalid value: '{kind}'. Unknown client event type.",
                                      code="invalid_value", param="type",
                                      event_id=event.get("event_id"))  # type: ignore[union-attr]
                return
        await super()._handle(raw)

    async def _on_session_update(self, event: dict[str, Any]) -> None:
        session = validate_xai_session(event.get("session"))
        _merge(self.xai_session, {k: v for k, v in session.items() if k != "turn_detection"})
        if "turn_detection" in session:
            self.xai_session["turn_detection"] = copy.deepcopy(session["turn_detection"])
        ga = self.session
        if "instructions" in session:
            ga["instructions"] = session["instructions"]
        if "voice" in session:
            ga["audio"]["output"]["voice"] = session["voice"]
        if "tools" in session:
            ga["tools"] = copy.deepcopy(session["tools"])
        if "turn_detection" in session:
            turn = session["turn_detection"]
            ga["audio"]["input"]["turn_detection"] = None if turn is None else {
                **turn, "type": "server_vad", "create_response": True, "interrupt_response": True}
        for side in ("input", "output"):
            fmt = ((session.get("audio") or {}).get(side) or {}).get("format")
            if fmt is not None:
                ga["audio"][side]["format"] = copy.deepcopy(dict(fmt))
        if self.server.session_overrides:
            _merge(self.xai_session, self.server.session_overrides)
            _merge(ga, self.server.session_overrides)
        await self.send({"type": "session.updated", "session": copy.deepcopy(self.xai_session)})
        if (self.xai_session.get("resumption") or {}).get("enabled"):
            await self._keep_conversation()

    async def _keep_conversation(self) -> None:
        """Resumption is on: resume the requested conversation (once) and keep this one."""
        server = self.server
        earlier = server.conversations.get(self.conversation_id)
        if earlier is not None and earlier is not self and not self.resumed:
            self.resumed = True
            for item in earlier.items:
                held = copy.deepcopy(item)
                previous = self._insert_item(held)
                if held.get("type") == "function_call":
                    self._call_ids.add(held["call_id"])
                await self.send({"type": "conversation.item.added", "previous_item_id": previous,
                                 "item": _strip_audio(held)})
        server.conversations[self.conversation_id] = self

    async def _on_response_create(self, event: dict[str, Any]) -> None:
        response = event.get("response")
        if isinstance(response, Mapping):
            _check_keys(response, _RESPONSE_KEYS, "response")
        await super()._on_response_create(event)

    async def _on_cancel(self, event: dict[str, Any]) -> None:
        _check_keys(event, frozenset({"type", "event_id"}), "")
        await super()._on_cancel(event)


class FakeXAIServer(FakeRealtimeServer):
    """A fake Grok Voice Agent server on ``127.0.0.1`` (see the module docstring).

    Same arguments as :class:`FakeRealtimeServer`.

    Attributes:
        conversations: the conversations kept for resumption, by id (the connection holding
            each one last).
    """

    connection_class = FakeXAIConnection

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conversations: dict[str, FakeXAIConnection] = {}

    @property
    def xai_connections(self) -> list[FakeXAIConnection]:
        """:attr:`connections`, typed."""
        return self.connections  # type: ignore[return-value]

    async def _greet(self, conn: FakeConnection) -> None:
        assert isinstance(conn, FakeXAIConnection)
        await conn.send({"type": "conversation.created", "conversation": {
            "id": conn.conversation_id, "object": "realtime.conversation"}})
        await conn.send({"type": "session.created", "session": copy.deepcopy(conn.xai_session)})
        await conn.send({"type": "ping", "timestamp": int(time.time() * 1000)})

    async def _refuse(self, conn: FakeConnection, request: Request) -> bool:
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
        if conn.model not in XAI_MODELS:
            await conn.send_error(f"The model '{conn.model}' does not exist or you do not have "
                                  "access to it.", code="model_not_found")
            await conn.close(POLICY_CLOSE_CODE, "model_not_found")
            return True
        return False
