"""The ``openai`` provider: OpenAI Realtime (GA shape) over a WebSocket, G.711 mu-law both ways.

Depends on ``telewire.realtime.base``, ``telewire.frames``, ``telewire.errors``, ``telewire.jsonfast``,
``telewire.envelope`` (its base64 check), ``telewire.settings`` (provider keys), ``websockets`` and
``loguru``. It never imports the ``openai`` package.

Caller audio goes to the model as ``audio/pcmu`` with the carrier's base64 text untouched; the
model's ``response.output_audio.delta`` base64 comes back as agent audio frames, untouched once it
has been checked to be base64 (a delta is spliced verbatim into the carrier's envelope, so one that
is not, such as ``abc"},"event":"clear``, would forge carrier commands; it is dropped and counted).
Text the provider sends (error messages, close reasons, tool arguments) is escaped before it is
logged, so it cannot forge log lines.
Works against api.openai.com, Azure OpenAI's GA endpoint and any GA-compatible server (for example
:class:`telewire.testing.fake_realtime.FakeRealtimeServer`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import collections
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import loguru
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from telewire import jsonfast, tracing
from telewire.envelope import _is_base64
from telewire.errors import ConfigError, ProviderError, ProviderProtocolError
from telewire.frames import (
    AudioFrame,
    DTMFFrame,
    EndFrame,
    ErrorFrame,
    InterruptFrame,
    StartFrame,
    SteerFrame,
    TranscriptFrame,
    UsageFrame,
    audio_frame,
)
from telewire.realtime.base import (FrameSink, ProviderCapabilities, ProviderConfig,
                                    RealtimeSession)
from telewire.realtime.common import (
    COMPLAINT_INTERVAL_S,
    HARD_LIMIT_FACTOR,
    LOOPBACK_HOSTS,
    RECONNECT_CLOSE_CODES,
    Throttle,
    clean,
    close_text,
    describe,
    error_fields,
)
from telewire.realtime.wsclient import ModelConnection
from telewire.settings import ProviderKeys, provider_keys

if TYPE_CHECKING:
    from loguru import Logger

    from telewire.tools import ToolBox

__all__ = ["AzureSession", "BENIGN_ERROR_CODES", "FATAL_ERROR_CODES", "OpenAISession",
           "RECONNECT_CLOSE_CODES"]

logger = loguru.logger

#: ``error.code`` values after which the session cannot go on: the call ends with
#: ``EndFrame(reason="provider_error")``.
FATAL_ERROR_CODES = frozenset({
    "invalid_api_key",
    "insufficient_quota",
    "model_not_found",
    "beta_api_shape_disabled",
    "account_deactivated",
    "billing_hard_limit_reached",
})
#: ``error.code`` values that are expected races, logged at debug level only.
BENIGN_ERROR_CODES = frozenset({
    "response_cancel_not_active",
    "conversation_already_has_active_response",
    "input_audio_buffer_commit_empty",
})
#: Errors that end this provider session but not the call: reconnect and replay.
_REPLAYABLE_ERROR_CODES = frozenset({"session_expired"})
#: The only audio format this provider speaks, both ways.
PCMU = "audio/pcmu"
_PLACEHOLDER_KEY = "sk-telewire-loopback"

# The hot path: one append event is built by concatenation around the carrier's base64 text.
_APPEND_HEAD = '{"type":"input_audio_buffer.append","audio":"'
_APPEND_TAIL = '"}'
_AUDIO_DELTA = "response.output_audio.delta"
#: ``event_id`` of the first ``session.update``: an ``error`` naming it means the provider refused
#: the mu-law set-up as a whole, and the session cannot go on.
_SETUP_EVENT_ID = "telewire_session_setup"
#: Agent items whose received audio is remembered (for truncation at barge-in); older ones are
#: forgotten, so a provider inventing item ids cannot grow the session without bound.
_ITEMS_KEPT = 64
#: A ``response.create`` we sent that has seen no ``response.created`` after this long no longer
#: holds back the next one.
_CREATE_WAIT_S = 10.0


async def _not_started(event: str) -> None:
    """The sender of a session that has not started: sending is a usage error."""
    raise RuntimeError("OpenAISession: send_audio() called before start()")


class OpenAISession(RealtimeSession):
    """One call's OpenAI Realtime GA session, which survives provider restarts and voice swaps.

    The session keeps the conversation as replayable items (caller and agent transcripts,
    DTMF notes, tool calls and outputs). When the provider drops the connection abnormally it
    reconnects with backoff and replays them; when the voice must change after the model has
    spoken (the provider locks it) or the session nears the provider's age limit, it opens a
    fresh session at the next turn boundary, replays the conversation, and switches over. Caller
    audio arriving meanwhile is held and sent to the new session in order.

    Args:
        config: ``rt.config``: URL, model, voice, instructions, key, limits, turn detection.
        sink: receives the frames the model produces.
        log: a logger already bound to the call; when omitted one is bound at :meth:`start`.
        tools: the call's tools (``end_call`` …); ``None`` offers none.
    """

    name = "openai"
    capabilities = ProviderCapabilities(
        audio_formats=frozenset({("pcmu", 8000)}), turn_model="turn_based", cancel=True, truncate=True, interruption=True, tools=True,
        instructions_change=True, voice_change="between_responses", dtmf=True, say=True,
        transcripts=True, session_max_s=3600.0, resume=True, billing="tokens",
        key_env="OPENAI_API_KEY")

    def __init__(self, config: ProviderConfig, sink: FrameSink, *, log: Logger | None = None,
                 tools: ToolBox | None = None) -> None:
        super().__init__(config, sink)
        self.transcription_model = config.transcription_model or None
        self.tools = tools
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
        self._voice = config.voice
        self._instructions = config.system_prompt
        self._pending_voice: str | None = None
        self._opened_at = 0.0
        self._switching = False
        self._held: list[str] = []
        self._held_limit = 500  # 10 s of 20 ms frames
        self._dropped: set[str] = set()
        self._item_chars: dict[str, int] = {}
        self._agent_items: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._key = ""  # read once, at start(); reconnects and handovers reuse it
        # base64 characters of max_audio_delta_ms of mu-law (8 bytes a millisecond)
        self._max_delta_chars = -(-config.max_audio_delta_ms * 8 // 3) * 4
        #: The conversation as replayable ``conversation.item.create`` items, in order, capped
        #: at ``history_max_items`` items and ``history_max_chars`` characters (oldest out first).
        self.history: collections.deque[dict[str, Any]] = collections.deque()
        self._history_chars = 0
        # DTMF answers: when a response.create we sent awaits response.created, and whether a
        # digit arrived that no response has seen yet (answered once the current one is done).
        self._create_sent_at: float | None = None
        self._unanswered = False
        #: say(): the response.create we sent with metadata {"telewire": TAG}, by TAG, resolved
        #: at that response's response.done (True when it completed)
        self._say_waiters: dict[str, asyncio.Future[bool]] = {}
        self._say_refused: set[str] = set()  # ... whose create the provider refused (busy)
        self._productive = False  # the live connection has produced a response
        self._barren = 0  # consecutive connections the provider closed before any response
        self._complaints: dict[str, Throttle] = {}
        self.reconnects = 0
        self.handovers = 0
        #: Audio deltas dropped because they were not base64 text, or held too much audio.
        self.bad_audio_deltas = 0
        self.first_audio_s: list[float] = []  # response.created -> first audio, per response
        self._response_started: float | None = None
        #: Conversation items dropped from :attr:`history` by its caps.
        self.history_dropped = 0
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

    def counters(self) -> dict[str, int]:
        """Reconnections, handovers, bad audio deltas dropped, history items dropped."""
        return {"reconnects": self.reconnects, "handovers": self.handovers,
                "bad_audio_deltas": self.bad_audio_deltas,
                "history_dropped": self.history_dropped}

    async def start(self, start: StartFrame) -> None:
        """Connect, wait for ``session.created``, configure mu-law in and out, start reading.

        Raises:
            ConfigError: no API key for a non-local URL, or a URL that is not ws:// / wss://.
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
        self._key = self._resolve_key(self._where())
        ws = await self._connect()
        self._attach(ws)
        self._log.info("{}: session open at {} (model {})", self.name, self._where(),
                       self.config.model)

    async def close(self) -> None:
        """Stop reading and close the socket. Idempotent; emits no frame."""
        if self._closed:
            return
        self._closed = True
        for waiter in self._say_waiters.values():
            if not waiter.done():
                waiter.set_result(False)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        reader = self._reader
        if reader is not None and not reader.done() and reader is not current:
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                if current is not None and current.cancelling():
                    raise
        if self._ws is not None:
            await self._ws.close()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.name}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connecting ------------------------------------------------------------------------------

    def _where(self) -> str:
        return self._session_url()[1]

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + (self._key or self._resolve_key(self._where()))}

    async def _connect(self, *, replay: bool = False) -> ClientConnection:
        """Open a provider session configured for this call (and replay the conversation)."""
        url, where = self._session_url()
        headers = self._auth_headers()
        timeout = self.config.connect_timeout_s
        try:
            async with asyncio.timeout(timeout):
                ws = await connect(
                    url,
                    additional_headers=headers,
                    max_size=self.config.max_message_bytes * HARD_LIMIT_FACTOR,
                    compression=None,  # base64 audio barely compresses; deflate costs CPU per frame
                    open_timeout=None,  # bounded by the enclosing timeout
                    create_connection=ModelConnection,  # the lean per-message path
                )
        except TimeoutError:
            raise ProviderError(f"{self.name}: no connection to {where} within {timeout:g}s "
                                "(rt.config.connect_timeout_s)", code=None) from None
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ProviderError(f"{self.name}: {where} refused the WebSocket handshake with HTTP "
                                f"{status}", code=None) from None
        except (InvalidHandshake, OSError) as exc:
            raise ProviderError(f"{self.name}: cannot connect to {where}: {exc}", code=None) from None
        try:
            async with asyncio.timeout(timeout):
                await self._await_session_created(ws, where)
            await ws.send(jsonfast.dumps({"type": "session.update", "event_id": _SETUP_EVENT_ID,
                                          "session": self.session_config()}))
            if replay:
                for item in self._replayable():
                    await ws.send(jsonfast.dumps({"type": "conversation.item.create",
                                                  "item": item}))
        except TimeoutError:
            await ws.close()
            raise ProviderError(f"{self.name}: {where} sent no session.created within "
                                f"{timeout:g}s", code=None) from None
        except ConnectionClosed as exc:
            raise ProviderError(f"{self.name}: {where} closed the connection during set-up "
                                f"({close_text(exc)})", code=None) from None
        except BaseException:
            await ws.close()
            raise
        return ws

    def _attach(self, ws: ClientConnection) -> None:
        """Make ``ws`` the live connection: start its reader, release held caller audio."""
        self._ws = ws
        self._send = ws.send
        self._opened_at = time.monotonic()
        self._productive = False
        self._audio_heard = False if self.handovers or self.reconnects else self._audio_heard
        self._reader = asyncio.create_task(self._read(ws), name=f"{self.name}-reader")
        tracing.model_session(self.name, self.config.model, reconnects=self.reconnects,
                              handovers=self.handovers)

    async def _hold(self, message: str) -> None:
        """The sender while no connection is live: keep caller audio (bounded), drop the rest."""
        if message.startswith(_APPEND_HEAD):
            if len(self._held) >= self._held_limit:
                self._held.pop(0)
            self._held.append(message)

    async def _release_held(self, ws: ClientConnection) -> None:
        held, self._held = self._held, []
        for message in held:
            await ws.send(message)

    async def _reconnect(self, why: str) -> None:
        """Reconnect with bounded backoff, replaying the conversation; end the call if it fails."""
        if self._switching:
            return
        self._switching = True
        try:
            await self._reconnect_now(why)
        finally:
            self._switching = False

    async def _reconnect_now(self, why: str) -> None:
        self._send = self._hold
        self._response_id = None
        self._create_sent_at = None
        delay = 0.1
        if self._barren > 1:  # the provider keeps closing at once: do not hammer it
            await asyncio.sleep(min(0.1 * 2 ** (self._barren - 2),
                                    self.config.reconnect_max_backoff_s))
        attempts = self.config.reconnect_attempts
        for attempt in range(1, attempts + 1):
            if self._closed:
                return
            try:
                ws = await self._connect(replay=True)
            except (ProviderError, ConfigError) as exc:
                self._log.warning("{}: reconnect {} of {} failed: {}", self.name, attempt,
                                  attempts, clean(str(exc)))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.reconnect_max_backoff_s)
                continue
            if self._closed:
                await ws.close()
                return
            self.reconnects += 1
            await self._release_held(ws)
            self._attach(ws)
            self._log.info("{}: reconnected after {} ({} conversation items replayed)",
                           self.name, why, len(self.history))
            return
        await self._end("provider_closed", f"{why}; {attempts} reconnection attempts failed")

    async def _handover(self, why: str) -> None:
        """Switch to a fresh provider session at a turn boundary, conversation replayed."""
        if self._switching or self._closed or self._ended:
            return
        self._switching = True
        old = self._ws
        self._send = self._hold
        try:
            ws = await self._connect(replay=True)
        except (ProviderError, ConfigError) as exc:
            self._log.error("{}: handover ({}) failed, keeping the current session: {}",
                            self.name, why, exc)
            self._switching = False
            if old is not None and old.close_code is None:
                self._send = old.send
                await self._release_held(old)
            else:  # the old session closed meanwhile (an expiry): reconnect instead
                self._spawn(self._reconnect(f"handover ({why}) failed"), "reconnect")
            return
        self.handovers += 1
        await self._release_held(ws)
        self._attach(ws)
        self._switching = False
        self._log.info("{}: handed over to a fresh session ({}; {} items replayed)", self.name,
                       why, len(self.history))
        if old is not None:
            await old.close()

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

    async def send_dtmf(self, frame: DTMFFrame) -> None:
        """Offer a keypad digit to the model as text, and let it answer.

        Every digit reaches the conversation, but a burst asks for few answers: no
        ``response.create`` is sent while one we sent awaits ``response.created`` or while a
        response is active; digits arriving meanwhile are answered by one ``response.create``
        once that response is done.
        """
        item = _message("user", f"[The caller pressed the key {frame.digit}]")
        self._remember(item)
        await self._send_event({"type": "conversation.item.create", "item": item})
        if self._response_id is None and not self._create_pending():
            await self._request_response()
        else:
            self._unanswered = True

    def _create_pending(self) -> bool:
        sent = self._create_sent_at
        return sent is not None and time.monotonic() - sent < _CREATE_WAIT_S

    async def _request_response(self) -> None:
        """Send ``response.create``; digits so far are answered by it."""
        self._create_sent_at = time.monotonic()
        self._unanswered = False
        await self._send_event({"type": "response.create"})

    async def interrupt(self, frame: InterruptFrame) -> None:
        """Barge-in: cancel the response being spoken and truncate at what the caller heard.

        ``response.cancel`` is sent when a response is active, unless the model's own VAD raised
        the interrupt with ``interrupt_response`` on (then the provider has cancelled it). Any
        late delta of that response is dropped. When the carrier side reports the playing item
        and ``heard_ms``, the item is truncated there, clamped to the audio received for it.
        """
        rid = self._response_id
        if rid is not None:
            self._dropped.add(rid)
            if not self._provider_cancelled(frame):
                await self._send_event(self._cancel_event(rid))
        item = frame.item_id
        if item is None or frame.heard_ms is None or item not in self._item_chars:
            return
        received_ms = self._item_chars[item] * 3 // 4 / 8.0
        end_ms = int(max(0.0, min(frame.heard_ms, received_ms)))
        await self._send_event({"type": "conversation.item.truncate", "item_id": item,
                                "content_index": 0, "audio_end_ms": end_ms})
        if received_ms > 0:
            if len(self._agent_items) >= _ITEMS_KEPT:
                del self._agent_items[next(iter(self._agent_items))]
            self._agent_items[item] = end_ms
        self._log.info("{}: truncated {!r} at {} of {:.0f} ms", self.name, item, end_ms,
                       received_ms)

    def _session_patch(self, instructions: str | None, voice: str | None) -> dict[str, Any]:
        """The ``session`` of a mid-call ``session.update`` changing what is not ``None``."""
        session: dict[str, Any] = {"type": "realtime"}
        if instructions is not None:
            session["instructions"] = instructions
        if voice is not None:
            session["audio"] = {"output": {"voice": voice}}
        return session

    def _provider_cancelled(self, frame: InterruptFrame) -> bool:
        """Whether the provider has itself cancelled the response this interrupt stops (its
        VAD heard the caller, with ``interrupt_response`` on), so no ``response.cancel`` is due."""
        return frame.source == "model" and self.config.turn_detection.interrupt_response

    def _cancel_event(self, response_id: str) -> dict[str, Any]:
        """The ``response.cancel`` event that stops response ``response_id``."""
        return {"type": "response.cancel", "response_id": response_id}

    async def steer(self, frame: SteerFrame) -> None:
        """Change instructions now; change the voice at the next turn boundary.

        Instructions go out in a ``session.update`` at once. The provider locks the voice once
        the model has spoken (``cannot_update_voice`` rejects the whole update), so a later voice
        change waits for ``response.done`` and then hands the call over to a fresh session with
        the conversation replayed.
        """
        voice = None
        if frame.instructions is not None:
            self._instructions = frame.instructions
        swap = frame.voice is not None and frame.voice != self._voice
        if swap and not self._audio_heard:
            self._voice = voice = frame.voice
            swap = False
        if frame.instructions is not None or voice is not None:
            await self._send_event({"type": "session.update",
                                    "session": self._session_patch(frame.instructions, voice)})
        if not swap:
            return
        if self._response_id is not None:
            self._pending_voice = frame.voice
            self._log.info("{}: voice {!r} will apply after the current response", self.name,
                           frame.voice)
        else:
            self._voice = frame.voice  # type: ignore[assignment]
            await self._handover(f"voice {frame.voice!r}")

    async def say(self, instructions: str, *, tag: str = "say") -> bool:
        """Have the model speak now as ``instructions`` say (a goodbye), and wait for it.

        A response being spoken is let finish first (a ``response.create`` during it would be
        refused). Then one ``response.create`` goes out with ``response.instructions`` and
        ``response.metadata`` ``{"telewire": tag}``, which the provider echoes in that
        response's ``response.done``. Returns ``True`` once that response completed, ``False``
        when it did not (cancelled, failed, or the session ended); the caller bounds the wait.
        """
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._say_waiters[tag] = waiter
        try:
            for _ in range(5):  # a create refused because a response had just started: again
                while self._response_id is not None and not self._ended:
                    await asyncio.sleep(0.02)
                if self._ended or self._closed:
                    return False
                self._say_refused.discard(tag)
                await self._send_event({
                    "type": "response.create", "event_id": _SAY_EVENT_PREFIX + tag,
                    "response": self._say_response(instructions, tag)})
                while not waiter.done() and tag not in self._say_refused:
                    await asyncio.wait({waiter}, timeout=0.05)
                if waiter.done():
                    return waiter.result()
            return False
        finally:
            self._say_waiters.pop(tag, None)
            self._say_refused.discard(tag)

    def _say_response(self, instructions: str, tag: str) -> dict[str, Any]:
        """The ``response`` object of say()'s ``response.create``: the provider echoes its
        ``metadata`` in that response's ``response.done`` (see :meth:`_say_tag`)."""
        return {"instructions": instructions, "metadata": {"telewire": tag}}

    def _say_tag(self, response: dict[str, Any]) -> str:
        """The say() tag a finished response answers (``""``: none), from ``response.done``."""
        return (response.get("metadata") or {}).get("telewire") or ""

    # -- session configuration -------------------------------------------------------------------

    def session_config(self) -> dict[str, Any]:
        """The GA ``session`` object sent in each connection's first ``session.update``."""
        audio_input: dict[str, Any] = {
            "format": {"type": PCMU},
            "turn_detection": self.config.turn_detection.wire(),
        }
        if self.transcription_model is not None:
            audio_input["transcription"] = {"model": self.transcription_model}
        session: dict[str, Any] = {
            "type": "realtime",
            "model": self.config.model,
            "output_modalities": ["audio"],
            "instructions": self._instructions,
            "audio": {
                "input": audio_input,
                "output": {"format": {"type": PCMU}, "voice": self._voice},
            },
        }
        if self.tools:
            session["tools"] = self.tools.definitions()
            session["tool_choice"] = "auto"
        return session

    def _session_url(self) -> tuple[str, str]:
        """Return the URL to dial (``model`` set, other query parameters kept) and a loggable
        ``scheme://host/path`` form without the query."""
        return self._session_url_for(self.config.url)

    def _session_url_for(self, raw: str) -> tuple[str, str]:
        parts = urlsplit(raw)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError(f"rt.config.url: expected a ws:// or wss:// URL, not {raw!r}")
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "model"]
        query.append(("model", self.config.model))
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
        port = f":{parts.port}" if parts.port else ""
        return url, f"{parts.scheme}://{parts.hostname}{port}{parts.path}"

    #: The standard name of this provider's key (:class:`telewire.settings.ProviderKeys`).
    key_name = "OPENAI_API_KEY"

    @staticmethod
    def _settings_key(keys: ProviderKeys) -> str:
        return keys.openai_api_key.get_secret_value() if keys.openai_api_key else ""

    def _resolve_key(self, where: str) -> str:
        """The API key: ``rt.config.api_key``, else the provider's key from the environment or
        ``.env`` (read here, once per session), else a placeholder for a loopback URL."""
        if self.config.api_key is not None:
            key = self.config.api_key.get_secret_value()
            if key:
                return key
        key = self._settings_key(provider_keys())
        if key:
            return key
        if urlsplit(self.config.url).hostname in LOOPBACK_HOSTS:
            return _PLACEHOLDER_KEY
        raise ConfigError(f"rt.config.api_key is not set and {self.key_name} is not in the "
                          f"environment or .env; {where} needs an API key")

    #: The server events that say a new connection's session is ready to be configured.
    _created_events: frozenset[str] = frozenset({"session.created"})

    def _on_created(self, event: dict[str, Any]) -> None:
        """The event of :attr:`_created_events` that opened a connection (default: nothing to
        keep from it)."""

    async def _await_session_created(self, ws: ClientConnection, where: str) -> None:
        while True:
            raw = await ws.recv(decode=False)
            try:
                event = jsonfast.loads(raw)
            except ValueError as exc:
                raise ProviderProtocolError(f"openai: {where} sent non-JSON before session.created: "
                                            f"{exc}") from None
            kind = event.get("type") if isinstance(event, dict) else None
            if kind in self._created_events:
                self._on_created(event)
                return
            if kind == "error":
                code, message = error_fields(event)
                raise ProviderError(f"openai: {where} refused the session: {code}: {message}",
                                    code=code)
            self._log.debug("openai: ignoring {!r} before session.created", kind)

    # -- model to caller -------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        """One connection's reader: parse each event once and turn it into frames."""
        limit = self.config.max_message_bytes
        max_delta = self._max_delta_chars
        is_b64 = _is_base64
        sink = self.sink
        handlers = self._handlers
        dropped = self._dropped
        chars = self._item_chars
        try:
            while True:
                raw = await ws.recv(decode=False)
                if len(raw) > limit:
                    self._complain("oversize", "{}: dropped a {}-byte message from the provider "
                                   "(rt.config.max_message_bytes is {})", self.name, len(raw),
                                   limit)
                    continue
                try:
                    event = jsonfast.loads(raw)
                    kind = event["type"]
                    if kind == _AUDIO_DELTA:
                        if dropped and event.get("response_id") in dropped:
                            continue  # a late delta of a response cancelled by barge-in
                        delta = event["delta"]
                        # Spliced verbatim into the carrier's envelope: it must be base64.
                        if type(delta) is not str or len(delta) > max_delta or not is_b64(delta):
                            self._bad_delta(delta)
                            continue
                        item = event.get("item_id")
                        sent = chars.get(item)
                        if sent is None:  # an item's first audio
                            if len(chars) >= _ITEMS_KEPT:
                                del chars[next(iter(chars))]
                            sent = 0
                            self._first_audio()
                        chars[item] = sent + len(delta)
                        self._audio_heard = True
                        await sink(audio_frame(delta, "pcmu", 8000, None, None, "outbound", item))
                        continue
                    handler = handlers.get(kind)
                    if handler is not None:
                        await handler(event)
                except (jsonfast.JSONDecodeError, UnicodeDecodeError) as exc:
                    self._complain("json", "{}: dropped a provider message that is not JSON "
                                   "({}): {!r}", self.name, exc, raw[:120])
                except (KeyError, TypeError, AttributeError) as exc:
                    self._complain("field", "{}: dropped a provider event without a usable "
                                   "field ({!r}): {!r}", self.name, describe(exc), raw[:200])
                if self._ended or ws is not self._ws:
                    return
        except ConnectionClosed as exc:
            if self._closed or ws is not self._ws or self._switching:
                return  # we closed it (hang-up or handover), or a handover is replacing it
            close = exc.rcvd or exc.sent
            code = close.code if close is not None else 1006
            why = f"the provider closed the connection ({close_text(exc)})"
            self._barren = 0 if self._productive else self._barren + 1
            attempts = self.config.reconnect_attempts
            if code in RECONNECT_CLOSE_CODES and attempts > 0 and self._barren <= attempts:
                self._log.warning("{}: {}; reconnecting", self.name, why)
                self._spawn(self._reconnect(why), "reconnect")
            elif code in RECONNECT_CLOSE_CODES and attempts > 0:
                await self._end("provider_closed", f"{why}; the last {self._barren} connections "
                                "closed before any response")
            else:
                await self._end("provider_closed", why)
        except Exception as exc:  # a bug below us (the sink); the call must not hang silently
            self._log.exception("{}: the session reader failed", self.name)
            if not self._closed:
                await self._end("session_error", f"the session reader failed: {describe(exc)}")

    def _bad_delta(self, delta: Any) -> None:
        """Count an audio delta that cannot go to the carrier; log it (rate-limited)."""
        self.bad_audio_deltas += 1
        if type(delta) is not str:
            what = f"a {type(delta).__name__}, not base64 text"
        elif len(delta) > self._max_delta_chars:
            what = (f"{len(delta)} characters, more than rt.config.max_audio_delta_ms "
                    f"({self.config.max_audio_delta_ms} ms) of audio")
        else:
            what = f"not base64 (length {len(delta)}, starts {delta[:24]!r})"
        self._complain("delta", "{}: dropped an audio delta from the provider: {} ({} this call)",
                       self.name, what, self.bad_audio_deltas)

    def _complain(self, kind: str, message: str, *args: Any, level: str = "ERROR") -> None:
        """Log a bad provider message: at most one line per ``kind`` every
        ``COMPLAINT_INTERVAL_S``, saying how many were held back since."""
        throttle = self._complaints.get(kind)
        if throttle is None:
            throttle = self._complaints[kind] = Throttle(COMPLAINT_INTERVAL_S)
        held = throttle.held_back()
        if held is None:
            return
        if held:
            message += " ({} more like it not logged)"
            args = (*args, held)
        self._log.log(level, message, *args)

    def _first_audio(self) -> None:
        """The first audio of the current response arrived: keep its delay (for metrics)."""
        started, self._response_started = self._response_started, None
        if started is not None and len(self.first_audio_s) < 1000:
            self.first_audio_s.append(time.monotonic() - started)

    def samples(self) -> dict[str, list[float]]:
        """Time from ``response.created`` to the response's first audio, per response."""
        return {"model_first_audio_seconds": self.first_audio_s}

    async def _on_response_created(self, event: dict[str, Any]) -> None:
        self._response_started = time.monotonic()
        self._response_id = event["response"].get("id") or ""
        tracing.response_created(self.name, self.config.model, self._response_id)
        # (digits sent since our last response.create stay unanswered: the provider took its
        # snapshot of the conversation when that create arrived, before them)
        self._create_sent_at = None
        self._productive = True

    async def _on_response_done(self, event: dict[str, Any]) -> None:
        response = event["response"]
        self._response_id = None
        self._create_sent_at = None
        self._dropped.discard(response.get("id") or "")
        calls = [o for o in response.get("output") or ()
                 if isinstance(o, dict) and o.get("type") == "function_call"]
        usage = response.get("usage")
        if isinstance(usage, dict) and usage:
            # GA RealtimeResponseUsage: cached tokens are a subset of the input tokens, split by
            # modality in input_token_details.cached_tokens_details
            details_in = usage.get("input_token_details") or {}
            details_out = usage.get("output_token_details") or {}
            cached = details_in.get("cached_tokens_details") or {}
            await self.sink(UsageFrame(
                provider=self.name,
                model=self.config.model,
                response_id=response.get("id"),
                input_text_tokens=_tokens(details_in.get("text_tokens")),
                input_audio_tokens=_tokens(details_in.get("audio_tokens")),
                input_image_tokens=_tokens(details_in.get("image_tokens")),
                input_cached_tokens=_tokens(details_in.get("cached_tokens")),
                input_cached_text_tokens=_tokens(cached.get("text_tokens")),
                input_cached_audio_tokens=_tokens(cached.get("audio_tokens")),
                input_cached_image_tokens=_tokens(cached.get("image_tokens")),
                output_text_tokens=_tokens(details_out.get("text_tokens")),
                output_audio_tokens=_tokens(details_out.get("audio_tokens")),
            ))
        say = self._say_waiters.pop(self._say_tag(response), None)
        if say is not None and not say.done():
            say.set_result(response.get("status") == "completed")
        if calls and response.get("status") == "completed":
            self._spawn(self._run_tools(calls), "tools")
        elif self._unanswered and not self._ended:  # digits pressed while it spoke
            await self._request_response()
        if self._pending_voice is not None:
            self._voice, self._pending_voice = self._pending_voice, None
            self._spawn(self._handover(f"voice {self._voice!r}"), "handover")
        elif time.monotonic() - self._opened_at > self.config.session_max_s:
            self._spawn(self._handover(f"session older than {self.config.session_max_s:g} s"),
                        "handover")

    async def _run_tools(self, calls: list[dict[str, Any]]) -> None:
        """Run the model's function calls, send their outputs, then one ``response.create``."""
        respond = False
        for call in calls:
            name, call_id = str(call.get("name", "")), str(call.get("call_id", ""))
            arguments = str(call.get("arguments") or "")
            self._remember({"type": "function_call", "call_id": call_id, "name": name,
                            "arguments": arguments})
            traced = tracing.tool_started(name, call_id, arguments)
            if self.tools is None:
                from telewire.tools import ToolOutcome

                outcome = ToolOutcome('{"error": "no tools are configured"}')
            else:
                outcome = await self.tools.run(name, arguments)
            tracing.tool_ended(traced, outcome.output)
            self._log.info("{}: tool {!r}({!r}) -> {!r}", self.name, name[:80], arguments[:200],
                           outcome.output[:200])
            item = {"type": "function_call_output", "call_id": call_id, "output": outcome.output}
            self._remember(item)
            await self._send_event({"type": "conversation.item.create", "item": item})
            respond = respond or outcome.respond
        if respond and not self._ended:
            await self._request_response()

    async def _on_speech_started(self, event: dict[str, Any]) -> None:
        if self._response_id is not None and self.config.turn_detection.interrupt_response:
            self._dropped.add(self._response_id)
        await self.sink(InterruptFrame(source="model", reason="speech_started"))

    async def _on_caller_transcript(self, event: dict[str, Any]) -> None:
        text = event["transcript"]
        if text:
            self._remember(_message("user", text))
        await self.sink(TranscriptFrame(role="caller", text=text, item_id=event.get("item_id")))

    async def _on_agent_transcript(self, event: dict[str, Any]) -> None:
        text = event["transcript"]
        item = event.get("item_id")
        heard_ms = self._agent_items.get(item) if item else None
        if heard_ms is not None and item in self._item_chars:
            # The provider cut its own copy at the truncation; keep the part the caller heard.
            sent_ms = self._item_chars[item] * 3 // 4 / 8.0
            if sent_ms > 0:
                words = text.split()
                text = " ".join(words[: round(len(words) * min(1.0, heard_ms / sent_ms))])
        if text:
            self._remember(_message("assistant", text))
        await self.sink(TranscriptFrame(role="agent", text=event["transcript"], item_id=item))

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
        code, message = error_fields(event)
        if event["error"].get("event_id") == _SETUP_EVENT_ID:
            await self._fail(f"the provider refused the session set-up: {code}: {message}")
        elif code in _REPLAYABLE_ERROR_CODES and self.config.reconnect_attempts > 0:
            self._log.warning("{}: {}: {!r}; moving to a fresh session", self.name, code, message)
            self._spawn(self._handover(code), "handover")
        elif code in FATAL_ERROR_CODES or code in _REPLAYABLE_ERROR_CODES:
            self._log.error("{}: fatal provider error {}: {!r}", self.name, code, message)
            await self._end("provider_error", f"{code}: {message}")
        elif code == "cannot_update_voice" and self.config.reconnect_attempts > 0:
            # the model spoke before our voice change arrived: swap at the next turn boundary
            self._log.info("{}: voice {!r} refused (the model has spoken); it will apply in a "
                           "fresh session", self.name, self._voice)
            self._audio_heard = True
            if self._response_id is not None:
                self._pending_voice = self._voice
            else:
                self._spawn(self._handover(f"voice {self._voice!r}"), "handover")
        elif code in BENIGN_ERROR_CODES:
            sent = str(event["error"].get("event_id") or "")
            if (code == "conversation_already_has_active_response"
                    and sent.startswith(_SAY_EVENT_PREFIX)):
                # say()'s create lost a race with a response the provider started: say() sends
                # it again once that response is done
                self._say_refused.add(sent[len(_SAY_EVENT_PREFIX):])
            elif code == "conversation_already_has_active_response" and self._create_sent_at:
                # our response.create lost a race with one the provider started itself: answer
                # the digits once that one is done
                self._create_sent_at = None
                self._unanswered = True
            self._log.debug("{}: provider error {}: {!r}", self.name, code, message)
        else:
            self._complain("error", "{}: provider error {}: {!r} (param {!r})", self.name, code,
                           message, event["error"].get("param"), level="WARNING")

    # -- internals -------------------------------------------------------------------------------

    def _remember(self, item: dict[str, Any]) -> None:
        """Add ``item`` to the replayable history, dropping the oldest items beyond the caps
        (an item longer than ``history_max_chars`` on its own is clipped to it)."""
        max_chars = self.config.history_max_chars
        size = _text_size(item)
        if size > max_chars:
            item, size = _clipped(item, max_chars), max_chars
        history = self.history
        history.append(item)
        self._history_chars += size
        max_items = self.config.history_max_items
        while len(history) > max_items or self._history_chars > max_chars:
            self._history_chars -= _text_size(history.popleft())
            self.history_dropped += 1

    def _replayable(self) -> list[dict[str, Any]]:
        """The history to replay: a tool output whose call the caps dropped is left out (the
        provider refuses an output for a call it does not know)."""
        calls = {i.get("call_id") for i in self.history if i.get("type") == "function_call"}
        return [i for i in self.history
                if i.get("type") != "function_call_output" or i.get("call_id") in calls]

    async def _send_event(self, event: dict[str, Any]) -> None:
        try:
            await self._send(jsonfast.dumps(event))
        except ConnectionClosed:
            self._log.debug("{}: {} not sent, the connection is closed", self.name, event["type"])

    async def _fail(self, detail: str) -> None:
        """A fatal protocol problem: report it loudly and end the session. (``detail`` quotes
        provider text only through :func:`error_fields` or ``!r``: it is safe to log.)"""
        self._log.error("{}: {}", self.name, detail)
        await self.sink(ErrorFrame(source=self.name, message=detail, fatal=True))
        await self._end("provider_error", detail)

    async def _end(self, reason: str, detail: str) -> None:
        """Emit the session's one :class:`EndFrame` and hang up on the provider."""
        if self._ended:
            return
        self._ended = True
        self._response_id = None
        for waiter in self._say_waiters.values():
            if not waiter.done():
                waiter.set_result(False)
        await self.sink(EndFrame(reason=reason, detail=detail))
        if self._ws is not None:
            await self._ws.close()


class AzureSession(OpenAISession):
    """Azure OpenAI's GA realtime endpoint: same protocol, ``api-key`` header.

    ``rt.config.url`` is the resource's ``https://RESOURCE.openai.azure.com/openai/v1/realtime``
    (``wss://`` is used), ``rt.config.model`` the deployment name, and the key comes from
    ``rt.config.api_key`` or ``AZURE_OPENAI_API_KEY`` (environment or ``.env``).
    """

    name = "azure"
    key_name = "AZURE_OPENAI_API_KEY"
    capabilities = dataclasses.replace(OpenAISession.capabilities, key_env="AZURE_OPENAI_API_KEY")

    @staticmethod
    def _settings_key(keys: ProviderKeys) -> str:
        return keys.azure_openai_api_key.get_secret_value() if keys.azure_openai_api_key else ""

    def _session_url(self) -> tuple[str, str]:
        if urlsplit(self.config.url).hostname == "api.openai.com":
            raise ConfigError("rt.config.url: the azure provider needs your resource's endpoint, "
                              "e.g. wss://RESOURCE.openai.azure.com/openai/v1/realtime")
        url = self.config.url
        if url.startswith("https://"):
            url = "wss://" + url[len("https://"):]
        return super()._session_url_for(url)

    def _auth_headers(self) -> dict[str, str]:
        return {"api-key": self._key or self._resolve_key(self._where())}


def _message(role: str, text: str) -> dict[str, Any]:
    """A replayable conversation message item."""
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


def _text_size(item: dict[str, Any]) -> int:
    """Characters of text in a history item (what the caps count)."""
    kind = item.get("type")
    if kind == "message":
        return sum(len(part.get("text", "")) for part in item["content"])
    if kind == "function_call":
        return len(item["name"]) + len(item["arguments"])
    return len(item.get("output", ""))


def _clipped(item: dict[str, Any], chars: int) -> dict[str, Any]:
    """A copy of a history item with its text cut to ``chars`` characters in all."""
    kind = item.get("type")
    if kind == "message":
        parts, left = [], chars
        for part in item["content"]:
            text = part.get("text", "")[:left]
            left -= len(text)
            parts.append({**part, "text": text})
        return {**item, "content": parts}
    if kind == "function_call":
        return {**item, "arguments": item["arguments"][:max(0, chars - len(item["name"]))]}
    return {**item, "output": item.get("output", "")[:chars]}


def _tokens(value: Any) -> int:
    """A token count from a provider's usage object: a non-negative int, anything else 0."""
    return value if type(value) is int and value > 0 else 0


#: ``event_id`` prefix of say()'s ``response.create`` (its refusal names it)
_SAY_EVENT_PREFIX = "telewire-say-"
