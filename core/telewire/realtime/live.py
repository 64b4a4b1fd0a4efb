"""The ``openai_live`` and ``azure_live`` providers: OpenAI GPT-Live over its primary WebSocket,
G.711 mu-law 8 kHz both ways.

Depends on ``telewire.realtime.base``, ``telewire.realtime.openai`` (its key policy and its log
and close-code helpers), ``telewire.realtime.wsclient``, ``telewire.frames``, ``telewire.errors``,
``telewire.jsonfast``, ``telewire.envelope`` (its base64 check), ``websockets`` and ``loguru``. It
never imports the ``openai`` package.

GPT-Live is not the Realtime API: the client opens ``/v1/live/sessions`` with no query string,
sends ``session.start`` (model, instructions, ``audio.format`` ``{"type": "audio/pcmu", "rate":
8000}`` for input and output alike, voice, delegation) and waits for ``session.started``. The
model listens and speaks at once and decides by itself when to yield to the caller: there is no
response to cancel and no item to truncate, and the primary WebSocket streams the model's audio
continuously at real-time pace (silence included) without timestamps or item ids. What telewire
can do about a barge-in is therefore to notice it and keep the carrier's unplayed audio short;
see :class:`OpenAILiveSession` and ``docs/providers/openai_live.md``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ClassVar, Mapping
from urllib.parse import urlsplit

import loguru
from pydantic import BaseModel, ConfigDict, Field
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
    RECONNECT_CLOSE_CODES,
    Throttle,
    clean,
    close_text,
    describe,
    error_fields,
)
from telewire.realtime.openai import FATAL_ERROR_CODES, OpenAISession
from telewire.realtime.wsclient import ModelConnection
from telewire.settings import ProviderKeys

if TYPE_CHECKING:
    from loguru import Logger

    from telewire.tools import ToolBox

__all__ = ["AzureLiveSession", "LiveOptions", "OpenAILiveSession"]

logger = loguru.logger

#: Where GPT-Live's primary WebSocket is, and its model, when ``rt.config`` does not say.
DEFAULT_URL = "wss://api.openai.com/v1/live/sessions"
DEFAULT_MODEL = "gpt-live-1"
#: The one audio format of a session, input and output alike (``session.audio.format``).
PCMU_8K = {"type": "audio/pcmu", "rate": 8000}
#: The socket refuses messages this many times ``max_message_bytes`` (close 1009); messages between
#: the two limits are dropped with a log line and the session goes on.
HARD_LIMIT_FACTOR = 4
# The hot path: one append event is built by concatenation around the carrier's base64 text.
_APPEND_HEAD = '{"type":"session.input_audio.append","audio":"'
_APPEND_TAIL = '"}'
_AUDIO_DELTA = "session.output_audio.delta"
_START_EVENT_ID = "telewire_session_start"
_SAY_PREFIX = "telewire-say-"
#: ``session.closed`` reasons after which a fresh session carries the call on (conversation
#: replayed as startup ``input``); the others (``content``, ``remote_hangup``) end it.
_RESUMABLE_CLOSE_REASONS = frozenset({"expired", "connection_lost"})
#: GPT-Live accepts at most 128 startup ``input`` messages (SessionConfig.input).
_INPUT_MAX_ITEMS = 128
#: ... and about 8,192 rendered tokens of them by default: keep the replay well under it.
_INPUT_MAX_CHARS = 24_000
#: One ``session.*.append`` carries at most 500 tokens: text beyond this is cut.
_APPEND_MAX_CHARS = 1_800
#: The longest transcript kept of one turn (a provider that never pauses cannot grow it).
_TURN_MAX_CHARS = 20_000
#: How long close() waits for ``session.closed`` (the final usage) after ``session.close``.
_CLOSE_WAIT_S = 2.0
#: Server events of the published GPT-Live protocol this session has no use for (logged at debug).
_KNOWN_UNUSED = frozenset({
    "session.updated", "session.input_audio.muted", "session.input_audio.unmuted",
    "session.output_audio.fixture.playing", "session.output_audio.fixture.played",
    "session.instructions.appended", "session.thinking.appended", "decision.event",
    "decision.item.created", "decision.item.deleted", "info",
    "session.input_audio.append", "transport.dtmf.received", "transport.dtmf.send",
    "transport.dtmf.sent", "transport.ringing", "transport.answered", "transport.failed",
})


class LiveOptions(BaseModel):
    """``rt.config.options`` of ``openai_live`` / ``azure_live``.

    Attributes:
        delegation_model: the Responses model that GPT-Live delegates tool use to (Responses
            delegation, used when the call has tools; on Azure, a deployment name).
        delegation_instructions: the backend prompt of that model (business rules, tool
            workflow); unset: the server's default.
        acknowledgement_delay_ms: how long GPT-Live waits before a spoken acknowledgement of a
            delegation; unset: the server's default.
        turn_gap_ms: quiet (no transcript fragment) that ends a caller or agent turn: a turn's
            transcript is emitted then, and a barge-in is judged against the agent turn open.
            GPT-Live emits fragments on 200 ms boundaries, so it must be longer than that.
    """

    model_config = ConfigDict(extra="forbid")

    delegation_model: str = "gpt-5.5"
    delegation_instructions: str | None = None
    acknowledgement_delay_ms: int | None = Field(default=None, ge=0)
    turn_gap_ms: int = Field(default=800, ge=250, le=10_000)


@dataclasses.dataclass(slots=True)
class _Turn:
    """One speaker's turn, assembled from timed transcript fragments."""

    role: str
    text: str = ""
    open: bool = False
    started_ms: int = 0  # session-timeline start of its first fragment
    last_at: float = 0.0  # time.monotonic() of its latest fragment
    timer: asyncio.TimerHandle | None = None


@dataclasses.dataclass(slots=True)
class _Delegated:
    """A delegated Responses response: its function calls not yet answered."""

    calls: set[str] = dataclasses.field(default_factory=set)
    finished: bool = False
    respond: bool = False
    had_calls: bool = False


def _is_default(config: ProviderConfig, field: str) -> bool:
    """``rt.config.FIELD`` is unset or still ProviderConfig's default (a Realtime API value)."""
    return (field not in config.model_fields_set
            or getattr(config, field) == ProviderConfig.model_fields[field].default)


async def _not_started(message: str) -> None:
    raise RuntimeError("OpenAILiveSession: send_audio() called before start()")


class OpenAILiveSession(RealtimeSession):
    """One call's GPT-Live session over the primary WebSocket.

    Audio: caller audio goes out as ``session.input_audio.append`` with the carrier's base64
    untouched; each ``session.output_audio.delta`` comes back as an agent audio frame, untouched
    once it has been checked to be base64 of at most ``max_audio_delta_ms``.

    Barge-in: the model yields by itself and says nothing about it; the server paces its audio
    at real time, so the carrier never holds more than the network's jitter of it. The session
    reports the caller talking over the agent as an :class:`InterruptFrame` (``source="model"``)
    when a caller transcript fragment that began after the agent's current turn began arrives
    while that turn is open (its latest fragment less than ``turn_gap_ms`` ago), once per agent
    turn; the node then clears the carrier, so what the model abandons is cut at the carrier
    too. An interrupt from elsewhere (a keypad digit, local VAD) cannot stop the model, so the
    session drops the agent audio of the turn in progress until that turn falls quiet, and
    tells the model (silent context) that the caller did not hear the rest.

    Tools go through Responses delegation: the call's tools are the backend model's function
    tools; each ``function_call`` item of a delegated response runs in the call's ToolBox, its
    output goes back with ``response.item.create`` and, once every call of that response is
    answered and the response is finished, one ``response.create`` continues it.

    Steering appends instructions (``session.instructions.append``): GPT-Live's startup
    instructions and voice are immutable. Usage is the session's cumulative billed duration
    (``session.usage.updated``); each increase becomes a ``UsageFrame(billing="seconds")``.

    A connection that closes abnormally (1000/1001/1006/1011/1012/1013) or a session that ends
    ``expired`` / ``connection_lost`` is replaced by a new session with the conversation so far
    (transcripts, keypad notes, steering) as its startup ``input``.
    """

    name = "openai_live"
    capabilities: ClassVar[ProviderCapabilities] = ProviderCapabilities(
        audio_formats=frozenset({("pcmu", 8000)}), turn_model="full_duplex", cancel=False,
        truncate=False, interruption=True, tools=True, instructions_change=True,
        voice_change="never", dtmf=True, say=True, transcripts=True, session_max_s=None,
        resume=True, billing="duration", key_env="OPENAI_API_KEY")
    Options: ClassVar[type[BaseModel] | None] = LiveOptions
    defaults: ClassVar[Mapping[str, Any]] = {"url": DEFAULT_URL, "model": DEFAULT_MODEL}

    #: The standard name of this provider's key (:class:`telewire.settings.ProviderKeys`).
    key_name = "OPENAI_API_KEY"
    # The same key policy as the Realtime provider: rt.config.api_key, then the environment or
    # .env, then a placeholder for a loopback URL (it reads config, key_name, _settings_key).
    _resolve_key = OpenAISession._resolve_key

    def __init__(self, config: ProviderConfig, sink: FrameSink, *, log: Logger | None = None,
                 tools: ToolBox | None = None) -> None:
        super().__init__(config, sink, log=log, tools=tools)
        self.options: LiveOptions = config.provider_options or LiveOptions()
        self._log: Logger = log if log is not None else logger.bind(provider=self.name)
        self._bound_log = log is not None
        # ProviderConfig's defaults name the Realtime API's model and URL: GPT-Live has its own.
        self.model = DEFAULT_MODEL if _is_default(config, "model") else config.model
        self._gap_s = self.options.turn_gap_ms / 1000.0
        self._ws: ClientConnection | None = None
        self._send: Callable[[str], Awaitable[None]] = _not_started
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = self._closed = self._ended = self._switching = False
        self._key = ""
        self._max_delta_chars = -(-config.max_audio_delta_ms * 8 // 3) * 4
        self._held: list[str] = []
        self._held_limit = 500  # 10 s of 20 ms frames
        self._steers: list[str] = []  # instructions appended so far (replayed at startup)
        self.history: collections.deque[dict[str, Any]] = collections.deque()
        self._history_chars = 0
        self._caller = _Turn("caller")
        self._agent = _Turn("agent")
        self._agent_interrupted = False  # this agent turn was already reported as interrupted
        self._mute = False  # drop agent audio until the agent turn falls quiet
        self._delegated: dict[str, _Delegated] = {}
        self._say_waiters: dict[str, asyncio.Future[bool]] = {}
        self._say_spoken: dict[str, bool] = {}  # accepted say() tag -> the agent spoke since
        self._billed = 0.0  # seconds billed on the current connection, as last reported
        self._session_closed = asyncio.Event()  # the live connection's session.closed came
        self._complaints: dict[str, Throttle] = {}
        self._productive = False
        self._barren = 0
        self.reconnects = 0
        self.bad_audio_deltas = 0
        self.bad_events = 0
        self.interrupts = 0
        self.muted_deltas = 0
        self.tool_calls = 0
        self.history_dropped = 0
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "session.input_transcript.delta": self._on_caller_fragment,
            "session.output_transcript.delta": self._on_agent_fragment,
            "session.usage.updated": self._on_usage,
            "session.closed": self._on_closed,
            "session.delegation.created": self._on_delegation,
            "session.commentary.appended": self._on_commentary_appended,
            "response.event": self._on_response_event,
            "error": self._on_error,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Reconnections, bad provider messages dropped, barge-ins reported, agent audio dropped
        after an interrupt, tool calls run, history items dropped."""
        return {"reconnects": self.reconnects, "bad_audio_deltas": self.bad_audio_deltas,
                "bad_events": self.bad_events, "interrupts": self.interrupts,
                "muted_audio_deltas": self.muted_deltas, "tool_calls": self.tool_calls,
                "history_dropped": self.history_dropped}

    async def start(self, start: StartFrame) -> None:
        """Connect, send ``session.start`` (mu-law 8 kHz both ways), wait for
        ``session.started``, start reading.

        Raises:
            ConfigError: no API key for a non-local URL, or a URL that is not ws:// / wss://.
            ProviderError: the provider refused the connection or the session, did not answer
                within ``connect_timeout_s``, or started it with another audio format.
            RuntimeError: ``start`` was called twice.
        """
        if self._started:
            raise RuntimeError("OpenAILiveSession.start() called twice")
        self._started = True
        if not self._bound_log:
            self._log = logger.bind(provider=self.name, carrier=start.carrier,
                                    call_sid=start.call_id, stream_sid=start.stream_id)
        self._key = self._resolve_key(self._where())
        ws = await self._connect()
        self._attach(ws)
        self._log.info("{}: session open at {} (model {})", self.name, self._where(), self.model)

    async def close(self) -> None:
        """Ask the server to close the session (``session.close``) and wait (at most 2 s) for
        its ``session.closed``, whose final usage still becomes a UsageFrame; then stop reading
        and close the socket. Idempotent; emits no other frame."""
        if self._closed:
            return
        self._closed = True
        for turn in (self._caller, self._agent):
            if turn.timer is not None:
                turn.timer.cancel()
        for waiter in self._say_waiters.values():
            if not waiter.done():
                waiter.set_result(False)
        ws = self._ws
        if ws is not None and not self._ended and self._reader is not None:
            # The server finalizes the session, and its billing, on session.close; its
            # session.closed carries the final usage, which the reader still turns into a frame.
            try:
                await ws.send('{"type":"session.close"}')
                async with asyncio.timeout(_CLOSE_WAIT_S):
                    await self._session_closed.wait()
            except (ConnectionClosed, TimeoutError):
                pass
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
        if ws is not None:
            await ws.close()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.name}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connecting ------------------------------------------------------------------------------

    def _session_url(self) -> tuple[str, str]:
        """The URL to dial and its loggable ``scheme://host/path`` form (no query string)."""
        raw = DEFAULT_URL if _is_default(self.config, "url") else self.config.url
        parts = urlsplit(raw)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError(f"rt.config.url: expected a ws:// or wss:// URL, not {raw!r}")
        port = f":{parts.port}" if parts.port else ""
        return raw, f"{parts.scheme}://{parts.hostname}{port}{parts.path}"

    def _where(self) -> str:
        return self._session_url()[1]

    @staticmethod
    def _settings_key(keys: ProviderKeys) -> str:
        return keys.openai_api_key.get_secret_value() if keys.openai_api_key else ""

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + (self._key or self._resolve_key(self._where()))}

    def session_config(self, *, replay: bool = False) -> dict[str, Any]:
        """The ``session`` object of ``session.start`` (with the conversation as ``input`` on a
        replacement session)."""
        instructions = "\n\n".join([self.config.system_prompt, *self._steers])
        session: dict[str, Any] = {
            "model": self.model,
            "instructions": instructions,
            "audio": {"format": dict(PCMU_8K), "output": {"voice": self.config.voice}},
        }
        if self.tools:
            responses: dict[str, Any] = {"model": self.options.delegation_model,
                                         "tools": self.tools.definitions(),
                                         "tool_choice": "auto"}
            if self.options.delegation_instructions:
                responses["instructions"] = self.options.delegation_instructions
            delegation: dict[str, Any] = {"type": "responses", "responses": responses}
        else:
            delegation = {"type": "client"}
        if self.options.acknowledgement_delay_ms is not None:
            delegation["acknowledgement_delay_ms"] = self.options.acknowledgement_delay_ms
        session["delegation"] = delegation
        if replay and self.history:
            session["input"] = list(self.history)
        return session

    async def _connect(self, *, replay: bool = False) -> ClientConnection:
        """Open a connection and start a session configured for this call."""
        url, where = self._session_url()
        timeout = self.config.connect_timeout_s
        try:
            async with asyncio.timeout(timeout):
                ws = await connect(
                    url, additional_headers=self._auth_headers(),
                    max_size=self.config.max_message_bytes * HARD_LIMIT_FACTOR,
                    compression=None, open_timeout=None, create_connection=ModelConnection)
        except TimeoutError:
            raise ProviderError(f"{self.name}: no connection to {where} within {timeout:g}s "
                                "(rt.config.connect_timeout_s)", code=None) from None
        except InvalidStatus as exc:
            raise ProviderError(f"{self.name}: {where} refused the WebSocket handshake with HTTP "
                                f"{exc.response.status_code}", code=None) from None
        except (InvalidHandshake, OSError) as exc:
            raise ProviderError(f"{self.name}: cannot connect to {where}: {exc}",
                                code=None) from None
        try:
            await ws.send(jsonfast.dumps({"type": "session.start", "event_id": _START_EVENT_ID,
                                          "session": self.session_config(replay=replay)}))
            async with asyncio.timeout(timeout):
                await self._await_started(ws, where)
        except TimeoutError:
            await ws.close()
            raise ProviderError(f"{self.name}: {where} sent no session.started within "
                                f"{timeout:g}s", code=None) from None
        except ConnectionClosed as exc:
            raise ProviderError(f"{self.name}: {where} closed the connection during set-up "
                                f"({close_text(exc)})", code=None) from None
        except BaseException:
            await ws.close()
            raise
        return ws

    async def _await_started(self, ws: ClientConnection, where: str) -> None:
        while True:
            raw = await ws.recv(decode=False)
            try:
                event = jsonfast.loads(raw)
            except ValueError as exc:
                raise ProviderProtocolError(f"{self.name}: {where} sent non-JSON before "
                                            f"session.started: {exc}") from None
            kind = event.get("type") if isinstance(event, dict) else None
            if kind == "session.started":
                session = event.get("session")
                fmt = ((session.get("audio") or {}).get("format")
                       if isinstance(session, dict) else None)
                if fmt is not None and fmt != PCMU_8K:
                    raise ProviderError(f"{self.name}: {where} started the session with audio "
                                        f"format {clean(repr(fmt), 120)}, not audio/pcmu at "
                                        "8000 Hz; mu-law pass-through is not possible",
                                        code=None)
                return
            if kind == "error":
                code, message = error_fields(event)
                raise ProviderError(f"{self.name}: {where} refused the session: {code}: "
                                    f"{message}", code=code)
            self._log.debug("{}: ignoring {!r} before session.started", self.name, kind)

    def _attach(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._send = ws.send
        self._billed = 0.0
        self._session_closed = asyncio.Event()
        self._productive = False
        self._reader = asyncio.create_task(self._read(ws), name=f"{self.name}-reader")
        tracing.model_session(self.name, self.model, reconnects=self.reconnects, handovers=0)

    async def _hold(self, message: str) -> None:
        """The sender while no connection is live: keep caller audio (bounded), drop the rest."""
        if message.startswith(_APPEND_HEAD):
            if len(self._held) >= self._held_limit:
                self._held.pop(0)
            self._held.append(message)

    async def _reconnect(self, why: str) -> None:
        """Open a replacement session (conversation replayed), with bounded backoff; end the
        call when none can be had."""
        if self._switching or self._closed or self._ended:
            return
        self._switching = True
        self._send = self._hold
        self._delegated.clear()  # a new session's backend knows nothing of the old calls
        try:
            delay = 0.1
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
                held, self._held = self._held, []
                for message in held:
                    await ws.send(message)
                self._attach(ws)
                self._log.info("{}: reconnected after {} ({} conversation items replayed)",
                               self.name, why, len(self.history))
                return
            await self._end("provider_closed", f"{why}; {attempts} reconnection attempts failed")
        finally:
            self._switching = False

    # -- caller to model -------------------------------------------------------------------------

    async def send_audio(self, frame: AudioFrame) -> None:
        """Append caller audio, base64 text untouched (validated where it entered)."""
        try:
            await self._send(_APPEND_HEAD + frame.b64 + _APPEND_TAIL)
        except ConnectionClosed:
            pass

    async def send_dtmf(self, frame: DTMFFrame) -> None:
        """Tell the model about a keypad digit (``session.instructions.append``)."""
        text = f"The caller pressed the key {frame.digit} on their phone's keypad."
        self._remember("developer", text)
        await self._append("session.instructions.append", text)

    async def interrupt(self, frame: InterruptFrame) -> None:
        """An interrupt reached the session.

        One the session itself reported (``source="model"``, coming back from the carrier side)
        needs nothing more: the model heard the caller and decides. Any other (keypad, local
        VAD, operator) cannot stop the model, which has no cancel: the agent audio of the turn
        in progress is dropped until that turn falls quiet, and the model is told, as silent
        context, that the caller did not hear the rest of it.
        """
        if frame.source == "model" or not self._agent_open():
            return
        self._mute = True
        note = (f"The caller interrupted you ({clean(frame.reason or frame.source, 80)}) and did "
                "not hear the rest of what you were saying; stop and listen.")
        self._remember("developer", note)
        await self._append("session.thinking.append", note)
        self._log.info("{}: {} interrupt: the agent's audio is dropped until its turn ends",
                       self.name, frame.source)

    async def steer(self, frame: SteerFrame) -> None:
        """Append instructions (``session.instructions.append``); GPT-Live fixes its startup
        instructions and its voice, so a voice change is refused (logged)."""
        if frame.instructions:
            text = frame.instructions[:_APPEND_MAX_CHARS]
            self._steers.append(text)
            await self._append("session.instructions.append", text)
        if frame.voice is not None and frame.voice != self.config.voice:
            self._log.warning("{}: GPT-Live cannot change the voice of a running session; "
                              "voice {!r} ignored", self.name, clean(frame.voice, 40))

    async def say(self, instructions: str, *, tag: str = "say") -> bool:
        """Ask the model to speak now (``session.commentary.append``, the protocol's way to have
        the model say something) and wait until it has: ``True`` once the commentary was
        accepted and an agent turn begun after it has ended; ``False`` when the provider
        refused it or the session ended. The caller bounds the wait."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._say_waiters[tag] = waiter
        try:
            if self._ended or self._closed:
                return False
            await self._append("session.commentary.append", instructions,
                               event_id=_SAY_PREFIX + tag)
            return await waiter
        finally:
            self._say_waiters.pop(tag, None)
            self._say_spoken.pop(tag, None)

    async def _append(self, kind: str, text: str, *, event_id: str | None = None,
                      delegation_id: str | None = None) -> None:
        event: dict[str, Any] = {"type": kind, "content": text[:_APPEND_MAX_CHARS],
                                 "delegation_id": delegation_id}
        if event_id is not None:
            event["event_id"] = event_id
        await self._send_event(event)

    # -- model to caller -------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        """One connection's reader: parse each event once and turn it into frames."""
        limit = self.config.max_message_bytes
        max_delta = self._max_delta_chars
        is_b64 = _is_base64
        sink = self.sink
        handlers = self._handlers
        try:
            while True:
                raw = await ws.recv(decode=False)
                if len(raw) > limit:
                    self.bad_events += 1
                    self._complain("oversize", "{}: dropped a {}-byte message from the provider "
                                   "(rt.config.max_message_bytes is {})", self.name, len(raw),
                                   limit)
                    continue
                try:
                    event = jsonfast.loads(raw)
                    kind = event["type"]
                    if kind == _AUDIO_DELTA:
                        delta = event["delta"]
                        # Spliced verbatim into the carrier's envelope: it must be base64.
                        if type(delta) is not str or len(delta) > max_delta or not is_b64(delta):
                            self._bad_delta(delta)
                            continue
                        if self._mute:
                            if self._agent_open():
                                self.muted_deltas += 1
                                continue
                            self._mute = False
                        self._productive = True
                        await sink(audio_frame(delta, "pcmu", 8000, None, None, "outbound", None))
                        continue
                    handler = handlers.get(kind)
                    if handler is not None:
                        await handler(event)
                    elif kind in _KNOWN_UNUSED:
                        self._log.debug("{}: {}", self.name, kind)
                    else:
                        self.bad_events += 1
                        self._complain("unknown", "{}: ignored an unknown provider event type "
                                       "{!r}", self.name, clean(str(kind), 80), level="WARNING")
                except (jsonfast.JSONDecodeError, UnicodeDecodeError) as exc:
                    self.bad_events += 1
                    self._complain("json", "{}: dropped a provider message that is not JSON "
                                   "({}): {!r}", self.name, exc, raw[:120])
                except (KeyError, TypeError, AttributeError, ValueError) as exc:
                    self.bad_events += 1
                    self._complain("field", "{}: dropped a provider event without a usable "
                                   "field ({!r}): {!r}", self.name, describe(exc), raw[:200])
                if self._ended or ws is not self._ws:
                    return
        except ConnectionClosed as exc:
            if self._closed or ws is not self._ws or self._switching or self._ended:
                return
            close = exc.rcvd or exc.sent
            code = close.code if close is not None else 1006
            why = f"the provider closed the connection ({close_text(exc)})"
            self._barren = 0 if self._productive else self._barren + 1
            attempts = self.config.reconnect_attempts
            if code in RECONNECT_CLOSE_CODES and attempts > 0 and self._barren <= attempts:
                self._log.warning("{}: {}; starting a new session", self.name, why)
                self._spawn(self._reconnect(why), "reconnect")
            else:
                await self._end("provider_closed", why)
        except Exception as exc:  # a bug below us (the sink); the call must not hang silently
            self._log.exception("{}: the session reader failed", self.name)
            if not self._closed:
                await self._end("session_error", f"the session reader failed: {describe(exc)}")

    def _bad_delta(self, delta: Any) -> None:
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
        """Log a bad provider message, at most one line per ``kind`` every 10 s."""
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

    # -- turns and barge-in ----------------------------------------------------------------------

    def _agent_open(self) -> bool:
        agent = self._agent
        return agent.open and time.monotonic() - agent.last_at < self._gap_s

    async def _on_caller_fragment(self, event: dict[str, Any]) -> None:
        start_ms = int(event["start_ms"])
        delta = event["delta"]
        if type(delta) is not str:
            raise TypeError(f"transcript delta is a {type(delta).__name__}")
        if (self._agent_open() and not self._agent_interrupted
                and start_ms >= self._agent.started_ms):
            # The caller began talking while the agent's turn was under way: the model heard
            # it (and decides itself whether to yield); the carrier's queue is cut now.
            self._agent_interrupted = True
            self.interrupts += 1
            await self.sink(InterruptFrame(source="model", reason="caller speech"))
        self._fragment(self._caller, delta, start_ms)

    async def _on_agent_fragment(self, event: dict[str, Any]) -> None:
        self._productive = True
        for tag in self._say_spoken:
            self._say_spoken[tag] = True
        self._fragment(self._agent, event["delta"], int(event["start_ms"]))

    def _fragment(self, turn: _Turn, delta: Any, start_ms: int) -> None:
        if type(delta) is not str:
            raise TypeError(f"transcript delta is a {type(delta).__name__}")
        if not turn.open:
            turn.open, turn.text, turn.started_ms = True, "", start_ms
        if len(turn.text) < _TURN_MAX_CHARS:  # a turn that never pauses is cut, not grown
            turn.text += delta[:_TURN_MAX_CHARS - len(turn.text)]
        turn.last_at = time.monotonic()
        if turn.timer is not None:
            turn.timer.cancel()
        turn.timer = asyncio.get_running_loop().call_later(
            self._gap_s, lambda: self._spawn(self._end_turn(turn), "turn"))

    async def _end_turn(self, turn: _Turn) -> None:
        if not turn.open or self._closed:
            return
        turn.open, turn.timer = False, None
        text, turn.text = turn.text.strip(), ""
        if turn is self._agent:
            self._agent_interrupted = False
            self._mute = False
            for tag, spoke in list(self._say_spoken.items()):
                waiter = self._say_waiters.get(tag)
                if spoke and waiter is not None and not waiter.done():
                    waiter.set_result(True)
        if text:
            self._remember("assistant" if turn is self._agent else "user", text)
            await self.sink(TranscriptFrame(role=turn.role, text=text))

    # -- other server events ---------------------------------------------------------------------

    async def _on_usage(self, event: dict[str, Any]) -> None:
        await self._billed_to(event["usage"]["seconds"])

    async def _billed_to(self, seconds: Any) -> None:
        """The current connection's session has billed ``seconds`` in all: emit the increase."""
        if type(seconds) not in (int, float) or not 0 <= seconds < 10 ** 7:
            raise ValueError(f"usage.seconds is {seconds!r}")
        more = float(seconds) - self._billed
        if more <= 0:
            return
        self._billed = float(seconds)
        await self.sink(UsageFrame(provider=self.name, model=self.model, billing="seconds",
                                   seconds=more))

    async def _on_closed(self, event: dict[str, Any]) -> None:
        usage = event.get("usage")
        if isinstance(usage, dict) and "seconds" in usage:
            await self._billed_to(usage["seconds"])
        reason = clean(str(event.get("reason")), 40)
        self._session_closed.set()
        if self._closed or reason == "close_requested":
            return
        if reason in _RESUMABLE_CLOSE_REASONS and self.config.reconnect_attempts > 0:
            self._log.warning("{}: the session ended ({}); starting a new one", self.name, reason)
            self._spawn(self._reconnect(f"session.closed ({reason})"), "reconnect")
        else:
            await self._end("provider_closed", f"the provider closed the session ({reason})")

    async def _on_delegation(self, event: dict[str, Any]) -> None:
        delegation = event["delegation"]
        if delegation.get("target") != "client":
            return  # Responses delegation: its function calls arrive as response.event
        # Client delegation names no task; this session has no backend of its own, so the
        # model is told at once rather than left waiting for a result.
        await self._append("session.commentary.append",
                           "No backend is available for that in this call.",
                           delegation_id=str(delegation["id"]))

    async def _on_commentary_appended(self, event: dict[str, Any]) -> None:
        sent = str(event.get("client_event_id") or "")
        if sent.startswith(_SAY_PREFIX) and sent[len(_SAY_PREFIX):] in self._say_waiters:
            self._say_spoken[sent[len(_SAY_PREFIX):]] = False

    async def _on_response_event(self, event: dict[str, Any]) -> None:
        """A delegated Responses event: collect function calls, continue once answered."""
        inner = event["event"]
        kind = inner["type"]
        key = str(event.get("delegation_id") or "uncorrelated")
        if kind == "response.output_item.done":
            item = inner["item"]
            if (item.get("type") != "function_call"
                    or item.get("status", "completed") != "completed"):
                return
            call_id, name = str(item["call_id"]), str(item["name"])
            pending = self._delegated.setdefault(key, _Delegated())
            if call_id in pending.calls:
                return
            pending.calls.add(call_id)
            pending.had_calls = True
            self._spawn(self._run_tool(key, call_id, name, str(item.get("arguments") or "")),
                        "tool")
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            if kind != "response.completed":
                self._log.warning("{}: a delegated response ended {}", self.name,
                                  kind.removeprefix("response."))
            pending = self._delegated.get(key)
            if pending is not None:
                pending.finished = True
                await self._continue(key)

    async def _run_tool(self, key: str, call_id: str, name: str, arguments: str) -> None:
        self.tool_calls += 1
        traced = tracing.tool_started(name, call_id, arguments)
        if self.tools is None:
            from telewire.tools import ToolOutcome

            outcome = ToolOutcome('{"error": "no tools are configured"}')
        else:
            outcome = await self.tools.run(name, arguments)
        tracing.tool_ended(traced, outcome.output)
        self._log.info("{}: tool {!r}({!r}) -> {!r}", self.name, clean(name, 80),
                       clean(arguments, 200), clean(outcome.output, 200))
        await self._send_event({"type": "response.item.create", "item": {
            "type": "function_call_output", "call_id": call_id, "output": outcome.output}})
        pending = self._delegated.get(key)
        if pending is not None:
            pending.calls.discard(call_id)
            pending.respond = pending.respond or outcome.respond
            await self._continue(key)

    async def _continue(self, key: str) -> None:
        """Continue a delegated response once it is finished and every call of it answered."""
        pending = self._delegated.get(key)
        if pending is None or not pending.finished or pending.calls or not pending.had_calls:
            return
        del self._delegated[key]
        if pending.respond and not self._ended:
            await self._send_event({"type": "response.create"})

    async def _on_error(self, event: dict[str, Any]) -> None:
        code, message = error_fields(event)
        error = event["error"]
        sent = str(error.get("client_event_id") or event.get("client_event_id") or "")
        waiter = self._say_waiters.get(sent[len(_SAY_PREFIX):]) if sent.startswith(
            _SAY_PREFIX) else None
        if waiter is not None and not waiter.done():
            waiter.set_result(False)
        if code in FATAL_ERROR_CODES:
            self._log.error("{}: fatal provider error {}: {!r}", self.name, code, message)
            await self.sink(ErrorFrame(source=self.name, message=f"{code}: {message}",
                                       fatal=True))
            await self._end("provider_error", f"{code}: {message}")
        else:
            self._complain("error", "{}: provider error {}: {!r} (param {!r})", self.name, code,
                           message, clean(str(error.get("param")), 80), level="WARNING")

    # -- internals -------------------------------------------------------------------------------

    def _remember(self, role: str, text: str) -> None:
        """Keep a message for a replacement session's startup ``input`` (capped)."""
        kind = "output_text" if role == "assistant" else "input_text"
        text = text[:_INPUT_MAX_CHARS]
        history = self.history
        history.append({"type": "message", "role": role,
                        "content": [{"type": kind, "text": text}]})
        self._history_chars += len(text)
        max_items = min(self.config.history_max_items, _INPUT_MAX_ITEMS)
        max_chars = min(self.config.history_max_chars, _INPUT_MAX_CHARS)
        while len(history) > max_items or self._history_chars > max_chars:
            self._history_chars -= len(history.popleft()["content"][0]["text"])
            self.history_dropped += 1

    async def _send_event(self, event: dict[str, Any]) -> None:
        try:
            await self._send(jsonfast.dumps(event))
        except ConnectionClosed:
            self._log.debug("{}: {} not sent, the connection is closed", self.name, event["type"])

    async def _end(self, reason: str, detail: str) -> None:
        """Emit the session's one :class:`EndFrame` and hang up on the provider."""
        if self._ended:
            return
        self._ended = True
        for waiter in self._say_waiters.values():
            if not waiter.done():
                waiter.set_result(False)
        await self.sink(EndFrame(reason=reason, detail=detail))
        if self._ws is not None:
            await self._ws.close()


class AzureLiveSession(OpenAILiveSession):
    """GPT-Live on Azure OpenAI: the same protocol at the resource's endpoint, ``api-key`` header.

    ``rt.config.url`` is ``https://RESOURCE.openai.azure.com/openai/v1/live/sessions`` (``wss://``
    is dialled), ``rt.config.model`` the deployment name (``gpt-live-1`` when unset), and the key
    comes from ``rt.config.api_key`` or ``AZURE_OPENAI_API_KEY`` (environment or ``.env``).
    """

    name = "azure_live"
    key_name = "AZURE_OPENAI_API_KEY"
    defaults: ClassVar[Mapping[str, Any]] = {"model": DEFAULT_MODEL}  # the URL names a resource
    capabilities: ClassVar[ProviderCapabilities] = dataclasses.replace(
        OpenAILiveSession.capabilities, key_env="AZURE_OPENAI_API_KEY")

    @staticmethod
    def _settings_key(keys: ProviderKeys) -> str:
        return keys.azure_openai_api_key.get_secret_value() if keys.azure_openai_api_key else ""

    def _session_url(self) -> tuple[str, str]:
        url = self.config.url
        if _is_default(self.config, "url") or urlsplit(url).hostname == "api.openai.com":
            raise ConfigError("rt.config.url: the azure_live provider needs your resource's "
                              "endpoint, e.g. https://RESOURCE.openai.azure.com/openai/v1/live/"
                              "sessions")
        if url.startswith("https://"):
            url = "wss://" + url[len("https://"):]
        elif url.startswith("http://"):
            url = "ws://" + url[len("http://"):]
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError(f"rt.config.url: expected an https:// or wss:// URL, not {url!r}")
        port = f":{parts.port}" if parts.port else ""
        return url, f"{parts.scheme}://{parts.hostname}{port}{parts.path}"

    def _auth_headers(self) -> dict[str, str]:
        return {"api-key": self._key or self._resolve_key(self._where())}
