"""The ``openai`` provider: OpenAI Realtime (GA shape) over a WebSocket, G.711 mu-law both ways.

Depends on ``telewire.realtime.base``, ``telewire.frames``, ``telewire.errors``, ``telewire.jsonfast``,
``websockets`` and ``loguru``. It never imports the ``openai`` package.

Caller audio goes to the model as ``audio/pcmu`` with the carrier's base64 text untouched; the
model's ``response.output_audio.delta`` base64 comes back as agent audio frames, untouched.
Works against api.openai.com, Azure OpenAI's GA endpoint and any GA-compatible server (for example
:class:`telewire.testing.fake_realtime.FakeRealtimeServer`).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import loguru
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from telewire import jsonfast
from telewire.errors import ConfigError, ProviderError, ProviderProtocolError
from telewire.frames import (
    AudioFrame,
    EndFrame,
    ErrorFrame,
    InterruptFrame,
    StartFrame,
    SteerFrame,
    TranscriptFrame,
    UsageFrame,
)
from telewire.realtime.base import FrameSink, ProviderConfig, RealtimeSession

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["FATAL_ERROR_CODES", "BENIGN_ERROR_CODES", "OpenAISession", "TURN_DETECTION"]

logger = loguru.logger

#: ``error.code`` values after which the session cannot go on: the call ends with
#: ``EndFrame(reason="provider_error")``.
FATAL_ERROR_CODES = frozenset({
    "invalid_api_key",
    "insufficient_quota",
    "model_not_found",
    "beta_api_shape_disabled",
    "session_expired",
    "account_deactivated",
    "billing_hard_limit_reached",
})
#: ``error.code`` values that are expected races, logged at debug level only.
BENIGN_ERROR_CODES = frozenset({
    "response_cancel_not_active",
    "conversation_already_has_active_response",
    "input_audio_buffer_commit_empty",
})
#: Server VAD settings sent in ``session.update`` (the GA defaults, spelled out so the
#: effective behaviour does not change if the provider's defaults do).
TURN_DETECTION: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}
#: The only audio format this provider speaks, both ways.
PCMU = "audio/pcmu"
#: Hosts on which a missing API key is replaced by a placeholder (local fake servers).
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_PLACEHOLDER_KEY = "sk-telewire-loopback"
#: The socket itself refuses messages this many times ``max_message_bytes`` (close 1009); messages
#: between the two limits are dropped with an error log and the session goes on.
_HARD_LIMIT_FACTOR = 4

# The hot path: one append event is built by concatenation around the carrier's base64 text.
_APPEND_HEAD = '{"type":"input_audio_buffer.append","audio":"'
_APPEND_TAIL = '"}'
_AUDIO_DELTA = "response.output_audio.delta"
#: ``event_id`` of the first ``session.update``: an ``error`` naming it means the provider refused
#: the mu-law set-up as a whole, and the session cannot go on.
_SETUP_EVENT_ID = "telewire_session_setup"


async def _not_started(event: str) -> None:
    """The sender of a session that has not started: sending is a usage error."""
    raise RuntimeError("OpenAISession: send_audio() called before start()")


class OpenAISession(RealtimeSession):
    """One call's OpenAI Realtime GA session.

    Args:
        config: ``rt.config``: URL, model, voice, instructions, key, limits.
        sink: receives the frames the model produces.
        log: a logger already bound to the call (``carrier``, ``call_sid`` …); when omitted one is
            bound at :meth:`start` from the :class:`StartFrame`.
    """

    name = "openai"

    def __init__(
        self,
        config: ProviderConfig,
        sink: FrameSink,
        *,
        log: Logger | None = None,
    ) -> None:
        super().__init__(config, sink)
        self.transcription_model = config.transcription_model or None
        self._log: Logger = log if log is not None else logger.bind(provider=self.name)
        self._bound_log = log is not None
        self._ws: ClientConnection | None = None
        self._send: Callable[[str], Awaitable[None]] = _not_started
        self._reader: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self._ended = False
        self._response_id: str | None = None
        self._audio_heard = False
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "session.updated": self._on_session_updated,
            "response.created": self._on_response_created,
            "response.done": self._on_response_done,
            "input_audio_buffer.speech_started": self._on_speech_started,
            "conversation.item.input_audio_transcription.completed": self._on_caller_transcript,
            "response.output_audio_transcript.done": self._on_agent_transcript,
            "error": self._on_error,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def response_active(self) -> bool:
        """``True`` between ``response.created`` and ``response.done``."""
        return self._response_id is not None

    async def start(self, start: StartFrame) -> None:
        """Connect, wait for ``session.created``, configure mu-law in and out, start reading.

        Args:
            start: the call that this session serves (used to bind the log).

        Raises:
            ConfigError: no API key (``rt.config.api_key`` / ``OPENAI_API_KEY``) for a non-local
                URL, or a URL that is not ``ws://`` / ``wss://``.
            ProviderError: the provider refused the connection, did not answer within
                ``connect_timeout_s``, or sent an ``error`` instead of ``session.created``.
            RuntimeError: ``start`` was called twice.
        """
        if self._started:
            raise RuntimeError("OpenAISession.start() called twice")
        self._started = True
        if not self._bound_log:
            self._log = logger.bind(provider=self.name, carrier=start.carrier,
                                    call_sid=start.call_id, stream_sid=start.stream_id)
        url, where = self._session_url()
        key = self._api_key(where)
        timeout = self.config.connect_timeout_s
        try:
            async with asyncio.timeout(timeout):
                ws = await connect(
                    url,
                    additional_headers={"Authorization": "Bearer " + key},
                    max_size=self.config.max_message_bytes * _HARD_LIMIT_FACTOR,
                    compression=None,  # base64 audio barely compresses; deflate costs CPU per frame
                    open_timeout=None,  # bounded by the enclosing timeout
                )
        except TimeoutError:
            raise ProviderError(f"openai: no connection to {where} within {timeout:g}s "
                                "(rt.config.connect_timeout_s)", code=None) from None
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ProviderError(f"openai: {where} refused the WebSocket handshake with HTTP {status}",
                                code=None) from None
        except (InvalidHandshake, OSError) as exc:
            raise ProviderError(f"openai: cannot connect to {where}: {exc}", code=None) from None
        self._ws = ws
        try:
            async with asyncio.timeout(timeout):
                await self._await_session_created(ws, where)
            await ws.send(jsonfast.dumps({"type": "session.update", "event_id": _SETUP_EVENT_ID,
                                          "session": self.session_config()}))
        except TimeoutError:
            await ws.close()
            raise ProviderError(f"openai: {where} sent no session.created within {timeout:g}s",
                                code=None) from None
        except ConnectionClosed as exc:
            raise ProviderError(f"openai: {where} closed the connection during set-up "
                                f"({_close_text(exc)})", code=None) from None
        except BaseException:
            await ws.close()
            raise
        self._send = ws.send
        self._reader = asyncio.create_task(self._read(ws), name=f"openai-reader-{start.stream_id}")
        self._log.info("openai: session open at {} (model {})", where, self.config.model)

    async def close(self) -> None:
        """Stop reading and close the socket. Idempotent; emits no frame."""
        if self._closed:
            return
        self._closed = True
        reader = self._reader
        if reader is not None and not reader.done() and reader is not asyncio.current_task():
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise
        if self._ws is not None:
            await self._ws.close()

    # -- caller to model -------------------------------------------------------------------------

    async def send_audio(self, frame: AudioFrame) -> None:
        """Append caller audio to the model's input buffer, base64 text untouched.

        The payload must be the carrier's base64 (validated where it entered); it is placed in the
        event verbatim. Audio sent after the provider closed is dropped: the reader reports the end.
        """
        try:
            await self._send(_APPEND_HEAD + frame.b64 + _APPEND_TAIL)
        except ConnectionClosed:
            pass

    async def interrupt(self, frame: InterruptFrame) -> None:
        """Barge-in: cancel the response the model is speaking, if any.

        An interrupt that came from the model itself (``source="model"``: its VAD heard the
        caller) needs no cancel: server VAD with ``interrupt_response`` has already cancelled it.
        """
        if frame.source == "model" or self._response_id is None:
            return
        await self._cancel_response(self._response_id)

    async def steer(self, frame: SteerFrame) -> None:
        """Change the instructions (and the voice, while no agent audio has been produced).

        The provider locks the voice once the model has spoken and rejects the *whole*
        ``session.update`` that tries to change it, so after the first audio a voice change is
        dropped with a warning and only the instructions are sent.
        """
        session: dict[str, Any] = {"type": "realtime"}
        if frame.instructions is not None:
            session["instructions"] = frame.instructions
        if frame.voice is not None:
            if self._audio_heard:
                self._log.warning("openai: voice change to {!r} ignored: the voice is locked once "
                                  "the model has spoken", frame.voice)
            else:
                session["audio"] = {"output": {"voice": frame.voice}}
        if len(session) > 1:
            await self._send_event({"type": "session.update", "session": session})

    # -- session configuration -------------------------------------------------------------------

    def session_config(self) -> dict[str, Any]:
        """The GA ``session`` object sent in the first ``session.update``."""
        audio_input: dict[str, Any] = {
            "format": {"type": PCMU},
            "turn_detection": dict(TURN_DETECTION),
        }
        if self.transcription_model is not None:
            audio_input["transcription"] = {"model": self.transcription_model}
        return {
            "type": "realtime",
            "model": self.config.model,
            "output_modalities": ["audio"],
            "instructions": self.config.system_prompt,
            "audio": {
                "input": audio_input,
                "output": {"format": {"type": PCMU}, "voice": self.config.voice},
            },
        }

    def _session_url(self) -> tuple[str, str]:
        """Return the URL to dial (``model`` set, other query parameters kept) and a loggable
        ``scheme://host/path`` form without the query."""
        parts = urlsplit(self.config.url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError(f"rt.config.url: expected a ws:// or wss:// URL, not {self.config.url!r}")
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "model"]
        query.append(("model", self.config.model))
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
        port = f":{parts.port}" if parts.port else ""
        return url, f"{parts.scheme}://{parts.hostname}{port}{parts.path}"

    def _api_key(self, where: str) -> str:
        if self.config.api_key is not None:
            key = self.config.api_key.get_secret_value()
            if key:
                return key
        key = os.environ.get("OPENAI_API_KEY", "")
        if key:
            return key
        if urlsplit(self.config.url).hostname in _LOOPBACK_HOSTS:
            return _PLACEHOLDER_KEY
        raise ConfigError(f"rt.config.api_key is not set and OPENAI_API_KEY is not in the "
                          f"environment; {where} needs an API key")

    async def _await_session_created(self, ws: ClientConnection, where: str) -> None:
        while True:
            raw = await ws.recv(decode=False)
            try:
                event = jsonfast.loads(raw)
            except ValueError as exc:
                raise ProviderProtocolError(f"openai: {where} sent non-JSON before session.created: "
                                            f"{exc}") from None
            kind = event.get("type") if isinstance(event, dict) else None
            if kind == "session.created":
                return
            if kind == "error":
                code, message = _error_fields(event)
                raise ProviderError(f"openai: {where} refused the session: {code}: {message}",
                                    code=code)
            self._log.debug("openai: ignoring {!r} before session.created", kind)

    # -- model to caller -------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        """The session's one reader: parse each event once and turn it into frames."""
        limit = self.config.max_message_bytes
        sink = self.sink
        handlers = self._handlers
        try:
            while True:
                raw = await ws.recv(decode=False)
                if len(raw) > limit:
                    self._log.error("openai: dropped a {}-byte message from the provider "
                                    "(rt.config.max_message_bytes is {})", len(raw), limit)
                    continue
                try:
                    event = jsonfast.loads(raw)
                    kind = event["type"]
                    if kind == _AUDIO_DELTA:
                        self._audio_heard = True
                        await sink(AudioFrame(payload=event["delta"], track="outbound",
                                              item_id=event.get("item_id"), codec="pcmu",
                                              sample_rate=8000))
                        continue
                    handler = handlers.get(kind)
                    if handler is not None:
                        await handler(event)
                except (jsonfast.JSONDecodeError, UnicodeDecodeError) as exc:
                    self._log.error("openai: dropped a provider message that is not JSON ({}): {!r}",
                                    exc, raw[:120])
                except (KeyError, TypeError, AttributeError) as exc:
                    self._log.error("openai: dropped a provider event without a usable field "
                                    "({}): {!r}", _describe(exc), raw[:200])
                if self._ended:
                    return
        except ConnectionClosed as exc:
            if not self._closed:
                await self._end("provider_closed", f"the provider closed the connection "
                                                   f"({_close_text(exc)})")
        except Exception as exc:  # a bug below us (the sink); the call must not hang silently
            self._log.exception("openai: the session reader failed")
            if not self._closed:
                await self._end("session_error", f"the session reader failed: {_describe(exc)}")

    async def _on_response_created(self, event: dict[str, Any]) -> None:
        self._response_id = event["response"].get("id") or ""

    async def _on_response_done(self, event: dict[str, Any]) -> None:
        response = event["response"]
        self._response_id = None
        usage = response.get("usage")
        if not usage:
            return
        details_in = usage.get("input_token_details") or {}
        details_out = usage.get("output_token_details") or {}
        await self.sink(UsageFrame(
            provider=self.name,
            model=self.config.model,
            response_id=response.get("id"),
            input_text_tokens=details_in.get("text_tokens") or 0,
            input_audio_tokens=details_in.get("audio_tokens") or 0,
            input_cached_tokens=details_in.get("cached_tokens") or 0,
            output_text_tokens=details_out.get("text_tokens") or 0,
            output_audio_tokens=details_out.get("audio_tokens") or 0,
        ))

    async def _on_speech_started(self, event: dict[str, Any]) -> None:
        await self.sink(InterruptFrame(source="model", reason="speech_started"))

    async def _on_caller_transcript(self, event: dict[str, Any]) -> None:
        await self.sink(TranscriptFrame(role="caller", text=event["transcript"],
                                        item_id=event.get("item_id")))

    async def _on_agent_transcript(self, event: dict[str, Any]) -> None:
        await self.sink(TranscriptFrame(role="agent", text=event["transcript"],
                                        item_id=event.get("item_id")))

    async def _on_session_updated(self, event: dict[str, Any]) -> None:
        audio = event["session"].get("audio") or {}
        wrong = []
        for side in ("input", "output"):
            fmt = ((audio.get(side) or {}).get("format") or {}).get("type")
            if fmt != PCMU:
                wrong.append(f"audio.{side}.format.type is {fmt!r}")
        if wrong:
            await self._fail(f"session.updated: {' and '.join(wrong)}, expected {PCMU!r}; "
                             "the provider did not accept mu-law pass-through")

    async def _on_error(self, event: dict[str, Any]) -> None:
        code, message = _error_fields(event)
        if event["error"].get("event_id") == _SETUP_EVENT_ID:
            await self._fail(f"the provider refused the session set-up: {code}: {message}")
        elif code in FATAL_ERROR_CODES:
            self._log.error("openai: fatal provider error {}: {}", code, message)
            await self._end("provider_error", f"{code}: {message}")
        elif code in BENIGN_ERROR_CODES:
            self._log.debug("openai: provider error {}: {}", code, message)
        else:
            self._log.warning("openai: provider error {}: {} (param {})", code, message,
                              event["error"].get("param"))

    # -- internals -------------------------------------------------------------------------------

    async def _cancel_response(self, response_id: str) -> None:
        """Send ``response.cancel`` for the response being spoken.

        Barge-in also has to truncate the assistant item at the carrier's playout position
        (``conversation.item.truncate``) so unheard text leaves the context; that needs the
        playout position from the carrier's marks and is added next to this cancel.
        """
        event: dict[str, Any] = {"type": "response.cancel"}
        if response_id:
            event["response_id"] = response_id
        await self._send_event(event)

    async def _send_event(self, event: dict[str, Any]) -> None:
        try:
            await self._send(jsonfast.dumps(event))
        except ConnectionClosed:
            self._log.debug("openai: {} not sent, the connection is closed", event["type"])

    async def _fail(self, detail: str) -> None:
        """A fatal protocol problem: report it loudly and end the session."""
        self._log.error("openai: {}", detail)
        await self.sink(ErrorFrame(source=self.name, message=detail, fatal=True))
        await self._end("provider_error", detail)

    async def _end(self, reason: str, detail: str) -> None:
        """Emit the session's one :class:`EndFrame` and hang up on the provider."""
        if self._ended:
            return
        self._ended = True
        self._response_id = None
        await self.sink(EndFrame(reason=reason, detail=detail))
        if self._ws is not None:
            await self._ws.close()


def _error_fields(event: dict[str, Any]) -> tuple[str, str]:
    error = event.get("error") or {}
    return str(error.get("code") or error.get("type") or "unknown_error"), str(error.get("message", ""))


def _close_text(exc: ConnectionClosed) -> str:
    close = exc.rcvd or exc.sent
    if close is None:
        return "no close frame"
    return f"close code {close.code}" + (f": {close.reason}" if close.reason else "")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
