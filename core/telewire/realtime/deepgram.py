"""The ``deepgram`` provider: Deepgram's Voice Agent API over a WebSocket, G.711 mu-law both ways.

Depends on ``telewire.realtime.base``, ``telewire.realtime.openai`` (its logging and close-code
helpers), ``telewire.realtime.wsclient``, ``telewire.frames``, ``telewire.errors``,
``telewire.jsonfast``, ``telewire.settings``, ``websockets`` and ``loguru``. It never imports the
``deepgram`` SDK (the fake server of :mod:`telewire.testing.fake_deepgram` checks against it).

The Voice Agent (``wss://agent.deepgram.com/v1/agent/converse``, ``Authorization: Token KEY``)
is a full-duplex pipeline: Deepgram listens, thinks and speaks, and decides itself when to talk
and when to stop. The session sends one ``Settings`` message (``audio.input`` and
``audio.output`` ``mulaw`` at 8000 Hz, ``container: none``), waits for ``SettingsApplied``, then
streams the caller's mu-law as binary frames; the agent's mu-law comes back as binary frames and
goes to the carrier byte for byte. Caller audio is the carrier's base64 decoded once into the
bytes the protocol carries; nothing is transcoded or resampled either way.

Barge-in: Deepgram stops speaking by itself when it hears the caller and says so with
``UserStartedSpeaking``; its documentation asks the client to stop playback and discard every
buffered agent byte. The session emits an :class:`~telewire.frames.InterruptFrame` (telewire then
clears the carrier's buffer) and drops any binary audio still arriving for the abandoned reply,
until the next ``AgentStartedSpeaking`` opens a new one. Nothing can be truncated: the protocol
has no message for it. docs/providers/deepgram.md gives the whole mapping with sources.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal
from urllib.parse import urlsplit

import loguru
from pydantic import BaseModel, ConfigDict, Field
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from telewire import jsonfast
from telewire.errors import ConfigError, ProviderError
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
from telewire.realtime.base import FrameSink, ProviderCapabilities, ProviderConfig, RealtimeSession
# Shared with the openai provider (see the report: these belong in a common module).
from telewire.realtime.common import (
    COMPLAINT_INTERVAL_S,
    HARD_LIMIT_FACTOR,
    LOOPBACK_HOSTS,
    RECONNECT_CLOSE_CODES,
    Throttle,
    clean,
    close_text,
    describe,
)
from telewire.realtime.wsclient import ModelConnection
from telewire.settings import provider_keys

if TYPE_CHECKING:
    from loguru import Logger

    from telewire.tools import ToolBox

__all__ = ["DEFAULT_MODEL", "DEFAULT_URL", "DeepgramOptions", "DeepgramSession",
           "FATAL_ERROR_CODES"]

logger = loguru.logger

#: The Voice Agent endpoint (developers.deepgram.com/reference/voice-agent/agent).
DEFAULT_URL = "wss://agent.deepgram.com/v1/agent/converse"
#: ``rt.config.model`` when unset: what the price table knows the Voice Agent by. Deepgram has no
#: single model (listen, think and speak are chosen in ``rt.config.options``).
DEFAULT_MODEL = "voice-agent"
#: Deepgram closes every session at two hours (developers.deepgram.com/docs/agent-keep-alive).
_SESSION_MAX_S = 7200.0
#: ``Error.code`` values a fresh connection with the same settings would only repeat: the call
#: ends. ``UNPARSABLE_CLIENT_MESSAGE`` (developers.deepgram.com/docs/voice-agent-errors-warnings);
#: ``INVALID_SETTINGS`` and ``FAILED_TO_SPEAK`` (a refused setting, as the SDK's docstrings name
#: them). Others (``INTERNAL_SERVER_ERROR``, ``CLIENT_MESSAGE_TIMEOUT`` …) reconnect. A refused
#: key is an HTTP 401 at the handshake, before any ``Error``.
FATAL_ERROR_CODES = frozenset({"INVALID_SETTINGS", "UNPARSABLE_CLIENT_MESSAGE",
                               "FAILED_TO_SPEAK"})
_PLACEHOLDER_KEY = "telewire-loopback"
_MULAW = "mulaw"
_BYTES_PER_MS = 8  # mu-law at 8 kHz
#: Server messages the session has nothing to do with (besides logging them at debug level).
_IGNORED = frozenset({"Welcome", "SettingsApplied", "AgentThinking", "PromptUpdated",
                      "SpeakUpdated", "ThinkUpdated", "ListenUpdated", "ThinkLiveUpdated",
                      "History", "LatencyReport", "FunctionCallCancelled", "FrustrationDetected",
                      "FunctionCallResponse", "CustomFromThinkProvider"})


class DeepgramOptions(BaseModel):
    """``rt.config.options`` of the ``deepgram`` provider: the agent's three stages.

    ``rt.config.system_prompt`` is ``agent.think.prompt``. ``rt.config.voice`` is not used (it
    names OpenAI voices, and the default graph sets one): the voice is ``speak_model``, and a
    steer's ``voice`` replaces it mid-call (``UpdateSpeak``).

    Attributes:
        listen_model: the speech-to-text model (``agent.listen.provider.model``).
        language: the caller's language (``agent.listen.provider.language``).
        keyterms: words to listen for (Nova-3 keyterm prompting).
        think_provider: the LLM provider (``agent.think.provider.type``: ``open_ai``,
            ``anthropic``, ``google``, ``groq``, ``deepgram`` …).
        think_model: the LLM (``agent.think.provider.model``).
        think_temperature: the LLM's temperature; unset: the provider's default.
        speak_provider: the text-to-speech provider (``agent.speak.provider.type``).
        speak_model: the voice (``agent.speak.provider.model``).
        greeting: what the agent says first (``agent.greeting``); unset: it waits for the caller.
            Not repeated after a reconnection.
        tags: ``Settings.tags``, for filtering usage in Deepgram's console.
        mip_opt_out: opt out of Deepgram's Model Improvement Program.
        auth_scheme: ``token`` (an API key: ``Authorization: Token KEY``) or ``bearer`` (a
            temporary token from Deepgram's token API).
        keepalive_s: a ``KeepAlive`` is sent after this long without caller audio (Deepgram
            closes an idle connection; its docs ask for one every 8 s while idle).
        say_with: what :meth:`DeepgramSession.say` sends: ``inject_user_message`` has the LLM act
            on the instruction (the budget goodbye is an instruction, not the words to say);
            ``inject_agent_message`` has the agent speak the text as it is.
    """

    model_config = ConfigDict(extra="forbid")

    listen_model: str = "nova-3"
    language: str = "en"
    keyterms: list[str] = Field(default_factory=list)
    think_provider: str = "open_ai"
    think_model: str = "gpt-4o-mini"
    think_temperature: float | None = Field(default=None, ge=0, le=2)
    speak_provider: str = "deepgram"
    speak_model: str = "aura-2-thalia-en"
    greeting: str | None = None
    tags: list[str] = Field(default_factory=list)
    mip_opt_out: bool = False
    auth_scheme: Literal["token", "bearer"] = "token"
    keepalive_s: float = Field(default=5.0, gt=0, le=8.0)
    say_with: Literal["inject_user_message", "inject_agent_message"] = "inject_user_message"


async def _not_started(message: Any) -> None:
    raise RuntimeError("DeepgramSession: send_audio() called before start()")


class DeepgramSession(RealtimeSession):
    """One call's Deepgram Voice Agent session, which survives dropped connections.

    The session keeps the conversation (``ConversationText`` of both sides, DTMF notes, client
    function calls with their results) as Deepgram ``History`` messages. When the connection
    drops abnormally, or Deepgram reports an ``Error`` (which its docs say ends the session), it
    reconnects with backoff and sends them back in ``agent.context.messages`` of the new
    ``Settings``; caller audio arriving meanwhile is held (10 s at most) and sent in order once
    the new settings are applied.

    ``rt.config`` fields left unset take Deepgram's values: ``url``
    ``wss://agent.deepgram.com/v1/agent/converse``, ``model`` ``voice-agent`` (only a name for
    usage frames: every model has the same price-table entry). The voice is the ``speak_model``
    option, not ``rt.config.voice``. The key comes from ``rt.config.api_key`` or
    ``DEEPGRAM_API_KEY`` (environment or ``.env``).
    """

    name = "deepgram"
    capabilities = ProviderCapabilities(
        audio_formats=frozenset({("pcmu", 8000)}), turn_model="full_duplex", cancel=False,
        truncate=False, interruption=True, tools=True, instructions_change=True,
        voice_change="anytime", dtmf=True, say=True, transcripts=True,
        session_max_s=_SESSION_MAX_S, resume=True, billing="duration",
        key_env="DEEPGRAM_API_KEY")
    Options = DeepgramOptions
    defaults = {"url": DEFAULT_URL, "model": DEFAULT_MODEL}

    def __init__(self, config: ProviderConfig, sink: FrameSink, *, log: Logger | None = None,
                 tools: ToolBox | None = None) -> None:
        options = config.provider_options
        if options is None:
            options = DeepgramOptions()
        given = config.model_fields_set
        defaults = {"url": DEFAULT_URL, "model": DEFAULT_MODEL}
        update = {k: v for k, v in defaults.items() if k not in given}
        if update:
            config = config.model_copy(update=update)
        super().__init__(config, sink)
        self.options: DeepgramOptions = options
        self.tools = tools
        self._log: Logger = log if log is not None else logger.bind(provider=self.name)
        self._bound_log = log is not None
        self._ws: ClientConnection | None = None
        self._send: Callable[[Any], Awaitable[None]] = _not_started
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = self._closed = self._ended = self._switching = False
        self._key = ""
        self._instructions = config.system_prompt
        self._voice = options.speak_model  # rt.config.voice names OpenAI voices (the default
        # graph sets "marin"); Deepgram's voice is the speak model, steered by SteerFrame.voice
        self._held: list[bytes] = []
        self._held_limit = 500  # 10 s of 20 ms frames
        self._last_sent = 0.0  # monotonic time of the last message sent (KeepAlive timing)
        self._max_audio = config.max_audio_delta_ms * _BYTES_PER_MS
        # barge-in: audio of the reply the caller interrupted is dropped until a new one starts
        self._discarding = False
        self._reply = 0
        self._reply_started: float | None = None
        self._speaking = False
        # billing: seconds of connection not yet reported in a UsageFrame
        self._billed_from: float | None = None
        # say(): the waiter resolved at the end of the reply that answers it
        self._say_waiter: asyncio.Future[bool] | None = None
        self._say_armed = False  # the reply now playing (or next) answers say()
        self._say_refused = False
        self._say_reply: int | None = None  # the reply that answers say(), once it started
        self._replies_done = 0
        self._injected: collections.deque[str] = collections.deque()
        self._complaints: dict[str, Throttle] = {}
        self._productive = False
        self._barren = 0
        #: The conversation as Deepgram ``History`` messages, replayed on a reconnection.
        self.history: collections.deque[dict[str, Any]] = collections.deque()
        self._history_chars = 0
        self.history_dropped = 0
        self.reconnects = 0
        #: Binary agent audio dropped: too large (``max_audio_delta_ms``) or empty.
        self.bad_audio_deltas = 0
        #: Agent audio bytes dropped because the caller had barged in on their reply.
        self.barged_in_bytes = 0
        self.keepalives = 0
        self.first_audio_s: list[float] = []
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "ConversationText": self._on_conversation_text,
            "UserStartedSpeaking": self._on_user_started_speaking,
            "AgentStartedSpeaking": self._on_agent_started_speaking,
            "AgentAudioDone": self._on_agent_audio_done,
            "FunctionCallRequest": self._on_function_call_request,
            "InjectionRefused": self._on_injection_refused,
            "Error": self._on_error,
            "Warning": self._on_warning,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Reconnections, bad audio frames dropped, barged-in bytes dropped, keep-alives sent,
        history items dropped."""
        return {"reconnects": self.reconnects, "bad_audio_deltas": self.bad_audio_deltas,
                "barged_in_bytes": self.barged_in_bytes, "keepalives": self.keepalives,
                "history_dropped": self.history_dropped}

    def samples(self) -> dict[str, list[float]]:
        """Time from ``AgentStartedSpeaking`` to that reply's first audio frame, per reply."""
        return {"model_first_audio_seconds": self.first_audio_s}

    async def start(self, start: StartFrame) -> None:
        """Connect, send ``Settings`` (mu-law 8 kHz both ways), wait for ``SettingsApplied``.

        Raises:
            ConfigError: no API key for a non-local URL, or a URL that is not ws:// / wss://.
            ProviderError: the handshake was refused, no ``SettingsApplied`` came within
                ``connect_timeout_s``, or Deepgram answered the settings with an ``Error``.
            RuntimeError: ``start`` was called twice.
        """
        if self._started:
            raise RuntimeError("DeepgramSession.start() called twice")
        self._started = True
        if not self._bound_log:
            self._log = logger.bind(provider=self.name, carrier=start.carrier,
                                    call_sid=start.call_id, stream_sid=start.stream_id)
        self._url()  # a wrong URL is said before a missing key
        self._key = self._resolve_key()
        ws = await self._connect(greet=True)
        self._attach(ws)
        self._log.info("{}: session open at {} (listen {}, think {}/{}, speak {})", self.name,
                       self._where(), self.options.listen_model, self.options.think_provider,
                       self.options.think_model, self._voice)

    async def close(self) -> None:
        """Report the connection time not yet billed, stop reading, close the socket.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._report_usage()
        self._resolve_say(False)
        current = asyncio.current_task()
        for task in [*self._tasks, self._keepalive, self._reader]:
            if task is not None and task is not current and not task.done():
                task.cancel()
        reader = self._reader
        if reader is not None and reader is not current:
            try:
                await reader
            except asyncio.CancelledError:
                if current is not None and current.cancelling():
                    raise
            except Exception:  # noqa: BLE001 - already logged by the reader
                pass
        if self._ws is not None:
            await self._ws.close()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.name}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connecting ------------------------------------------------------------------------------

    def _where(self) -> str:
        parts = urlsplit(self.config.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"

    def _url(self) -> str:
        parts = urlsplit(self.config.url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError(f"rt.config.url: expected a ws:// or wss:// URL, not "
                              f"{self.config.url!r}")
        if parts.hostname == "api.openai.com":
            raise ConfigError("rt.config.url: the deepgram provider needs Deepgram's endpoint, "
                              f"{DEFAULT_URL}")
        return self.config.url

    def _resolve_key(self) -> str:
        """``rt.config.api_key``, else ``DEEPGRAM_API_KEY`` (environment or ``.env``, read once
        per session), else a placeholder for a loopback URL."""
        if self.config.api_key is not None and self.config.api_key.get_secret_value():
            return self.config.api_key.get_secret_value()
        keys = provider_keys()
        if keys.deepgram_api_key is not None:
            return keys.deepgram_api_key.get_secret_value()
        if urlsplit(self.config.url).hostname in LOOPBACK_HOSTS:
            return _PLACEHOLDER_KEY
        raise ConfigError("rt.config.api_key is not set and DEEPGRAM_API_KEY is not in the "
                          f"environment or .env; {self._where()} needs an API key")

    def _auth_headers(self) -> dict[str, str]:
        scheme = "Token" if self.options.auth_scheme == "token" else "Bearer"
        return {"Authorization": f"{scheme} {self._key}"}

    async def _connect(self, *, greet: bool) -> ClientConnection:
        """Open a connection, send ``Settings`` (with the history) and wait until applied."""
        url, where, timeout = self._url(), self._where(), self.config.connect_timeout_s
        try:
            async with asyncio.timeout(timeout):
                ws = await connect(url, additional_headers=self._auth_headers(),
                                   max_size=self.config.max_message_bytes * HARD_LIMIT_FACTOR,
                                   compression=None, open_timeout=None,
                                   create_connection=ModelConnection)
        except TimeoutError:
            raise ProviderError(f"{self.name}: no connection to {where} within {timeout:g}s "
                                "(rt.config.connect_timeout_s)", code=None) from None
        except InvalidStatus as exc:
            raise ProviderError(f"{self.name}: {where} refused the WebSocket handshake with HTTP "
                                f"{exc.response.status_code}", code=None) from None
        except (InvalidHandshake, OSError) as exc:
            raise ProviderError(f"{self.name}: cannot connect to {where}: {clean(str(exc))}",
                                code=None) from None
        try:
            await ws.send(jsonfast.dumps(self.settings(greet=greet)))
            async with asyncio.timeout(timeout):
                await self._await_applied(ws, where)
        except TimeoutError:
            await ws.close()
            raise ProviderError(f"{self.name}: {where} sent no SettingsApplied within "
                                f"{timeout:g}s", code=None) from None
        except ConnectionClosed as exc:
            raise ProviderError(f"{self.name}: {where} closed the connection during set-up "
                                f"({close_text(exc)})", code=None) from None
        except BaseException:
            await ws.close()
            raise
        return ws

    async def _await_applied(self, ws: ClientConnection, where: str) -> None:
        while True:
            raw = await ws.recv()
            if isinstance(raw, bytes):
                continue  # no audio is due before the settings apply
            try:
                event = jsonfast.loads(raw)
            except ValueError:
                self._complain("json", "{}: non-JSON message during set-up: {!r}", self.name,
                               raw[:120])
                continue
            kind = event.get("type") if isinstance(event, dict) else None
            if kind == "SettingsApplied":
                return
            if kind == "Error":
                code, description = error_fields(event)
                raise ProviderError(f"{self.name}: {where} refused the settings: {code}: "
                                    f"{description}", code=code)
            if kind == "Welcome":
                self._log.debug("{}: welcome, request_id {!r}", self.name,
                                clean(str(event.get("request_id", "")), 80))

    def _attach(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._send = ws.send
        self._productive = False
        self._discarding = self._speaking = False
        self._billed_from = self._last_sent = time.monotonic()
        self._reader = asyncio.create_task(self._read(ws), name=f"{self.name}-reader")
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = asyncio.create_task(self._keep_alive(),
                                                  name=f"{self.name}-keepalive")

    async def _hold(self, message: Any) -> None:
        """The sender while no connection is live: keep caller audio (bounded), drop the rest."""
        if isinstance(message, bytes):
            if len(self._held) >= self._held_limit:
                self._held.pop(0)
            self._held.append(message)

    async def _reconnect(self, why: str) -> None:
        """Reconnect with bounded backoff, the conversation in ``agent.context``; end the call
        when every attempt fails."""
        if self._switching or self._closed or self._ended:
            return
        self._switching = True
        self._send = self._hold
        old = self._ws
        await self._report_usage()
        self._billed_from = None
        if old is not None:
            await old.close()
        try:
            if self._barren > 1:  # the provider keeps closing at once: do not hammer it
                await asyncio.sleep(min(0.1 * 2 ** (self._barren - 2),
                                        self.config.reconnect_max_backoff_s))
            delay, attempts = 0.1, self.config.reconnect_attempts
            for attempt in range(1, attempts + 1):
                if self._closed:
                    return
                try:
                    ws = await self._connect(greet=False)
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
                for chunk in held:
                    await ws.send(chunk)
                self._attach(ws)
                self._log.info("{}: reconnected after {} ({} history messages replayed)",
                               self.name, why, len(self.history))
                return
            await self._end("provider_closed", f"{why}; {attempts} reconnection attempts failed")
        finally:
            self._switching = False

    async def _keep_alive(self) -> None:
        """Send ``KeepAlive`` whenever no message went out for ``keepalive_s``."""
        interval = self.options.keepalive_s
        while not self._closed and not self._ended:
            wait = self._last_sent + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if not self._switching:
                self.keepalives += 1
                await self._send_event({"type": "KeepAlive"})
            self._last_sent = time.monotonic()

    # -- the settings ------------------------------------------------------------------------------

    def settings(self, *, greet: bool = True) -> dict[str, Any]:
        """The ``Settings`` message: mu-law 8 kHz in and out, the three stages, the tools, and
        the conversation so far (``agent.context.messages``) on a reconnection."""
        opts = self.options
        listen: dict[str, Any] = {"type": "deepgram", "model": opts.listen_model,
                                  "language": opts.language}
        if opts.keyterms:
            listen["keyterms"] = list(opts.keyterms)
        think_provider: dict[str, Any] = {"type": opts.think_provider, "model": opts.think_model}
        if opts.think_temperature is not None:
            think_provider["temperature"] = opts.think_temperature
        think: dict[str, Any] = {"provider": think_provider, "prompt": self._instructions}
        if self.tools:
            think["functions"] = [
                {"name": d["name"], "description": d.get("description", ""),
                 "parameters": d.get("parameters") or {"type": "object", "properties": {}}}
                for d in self.tools.definitions()]
        agent: dict[str, Any] = {
            "listen": {"provider": listen},
            "think": think,
            "speak": {"provider": self._speak_provider(self._voice)},
        }
        if greet and opts.greeting:
            agent["greeting"] = opts.greeting
        if self.history:
            agent["context"] = {"messages": list(self.history)}
        message: dict[str, Any] = {
            "type": "Settings",
            "audio": {
                "input": {"encoding": _MULAW, "sample_rate": 8000},
                "output": {"encoding": _MULAW, "sample_rate": 8000, "container": "none"},
            },
            "agent": agent,
        }
        if opts.tags:
            message["tags"] = list(opts.tags)
        if opts.mip_opt_out:
            message["mip_opt_out"] = True
        return message

    def _speak_provider(self, voice: str) -> dict[str, Any]:
        return {"type": self.options.speak_provider, "model": voice}

    # -- caller to model -------------------------------------------------------------------------

    async def send_audio(self, frame: AudioFrame) -> None:
        """Send caller mu-law as one binary frame (the carrier's bytes, decoded from base64 once
        when it arrived as text). Audio sent after the provider closed is dropped."""
        try:
            await self._send(frame.data)
            self._last_sent = time.monotonic()
        except ConnectionClosed:
            pass

    async def send_dtmf(self, frame: DTMFFrame) -> None:
        """Tell the agent about a keypad digit with ``InjectUserMessage`` (it answers it)."""
        text = f"[The caller pressed the key {frame.digit}]"
        self._remember({"type": "History", "role": "user", "content": text})
        await self._inject_user(text)

    async def _inject_user(self, text: str) -> None:
        """Send ``InjectUserMessage``; the ``ConversationText`` Deepgram may report it back as is
        neither a caller transcript nor kept twice in the history."""
        if len(self._injected) >= 16:
            self._injected.popleft()
        self._injected.append(text)
        await self._send_event({"type": "InjectUserMessage", "content": text})

    async def interrupt(self, frame: InterruptFrame) -> None:
        """A barge-in telewire noticed itself (a DTMF digit, local VAD): the reply's remaining
        audio is dropped. Deepgram has no message to stop or truncate a reply on request; its
        own VAD (``UserStartedSpeaking``) is what stops it."""
        if frame.source != "model" and self._speaking:
            self._discarding = True

    async def steer(self, frame: SteerFrame) -> None:
        """``UpdatePrompt`` for new instructions, ``UpdateSpeak`` for a new voice (both apply at
        once, and to any later reconnection)."""
        if frame.instructions is not None and frame.instructions != self._instructions:
            self._instructions = frame.instructions
            await self._send_event({"type": "UpdatePrompt", "prompt": frame.instructions})
        if frame.voice is not None and frame.voice != self._voice:
            self._voice = frame.voice
            await self._send_event({"type": "UpdateSpeak",
                                    "speak": {"provider": self._speak_provider(frame.voice)}})

    async def say(self, instructions: str, *, tag: str = "say") -> bool:
        """Have the agent speak now, and wait until that reply's audio is done.

        With ``say_with = "inject_user_message"`` (the default) the instruction goes to the LLM
        as an ``InjectUserMessage`` marked as coming from the system, and the agent's answer is
        spoken; with ``"inject_agent_message"`` the text is spoken as it is
        (``InjectAgentMessage``). A reply in progress is let finish first; an injection Deepgram
        refuses (``InjectionRefused``: someone is mid-turn) is tried again when the turn is over,
        up to five times. Returns ``True`` once the reply's ``AgentAudioDone`` came, ``False``
        when the session ended first; the caller bounds the wait.
        """
        for _ in range(5):
            while self._speaking and not (self._ended or self._closed):
                await asyncio.sleep(0.02)
            if self._ended or self._closed:
                return False
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._say_waiter, self._say_armed, self._say_refused = waiter, True, False
            self._say_reply = None
            if self.options.say_with == "inject_agent_message":
                await self._send_event({"type": "InjectAgentMessage", "message": instructions})
            else:
                await self._inject_user(
                    f"[Instruction from the system, not the caller: {instructions}]")
            try:
                while not waiter.done() and not self._say_refused:
                    await asyncio.wait({waiter}, timeout=0.05)
            finally:
                if self._say_waiter is waiter:
                    self._say_waiter, self._say_armed = None, False
            if waiter.done():
                return waiter.result()
            # refused: someone is mid-turn; try again once the agent's next reply is done
            done = self._replies_done
            while self._replies_done == done and not (self._ended or self._closed):
                await asyncio.sleep(0.02)
        return False

    def _resolve_say(self, result: bool) -> None:
        waiter, self._say_waiter, self._say_armed = self._say_waiter, None, False
        self._say_reply = None
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    # -- model to caller -------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        """One connection's reader: binary frames are agent audio, text frames are events."""
        limit, max_audio, sink, handlers = (self.config.max_message_bytes, self._max_audio,
                                            self.sink, self._handlers)
        try:
            while True:
                raw = await ws.recv()
                if isinstance(raw, bytes):
                    size = len(raw)
                    if self._discarding:
                        self.barged_in_bytes += size
                        continue
                    if size == 0 or size > max_audio:
                        self._bad_audio(size)
                        continue
                    started = self._reply_started
                    if started is not None:
                        self._reply_started = None
                        if len(self.first_audio_s) < 1000:
                            self.first_audio_s.append(time.monotonic() - started)
                    await sink(audio_frame(raw, "pcmu", 8000, None, None, "outbound",
                                           f"dg-reply-{self._reply}"))
                    continue
                if len(raw) > limit:
                    self._complain("oversize", "{}: dropped a {}-character message from the "
                                   "provider (rt.config.max_message_bytes is {})", self.name,
                                   len(raw), limit)
                    continue
                try:
                    event = jsonfast.loads(raw)
                    kind = event["type"]
                    handler = handlers.get(kind)
                    if handler is not None:
                        await handler(event)
                    elif kind in _IGNORED:
                        self._log.debug("{}: {}", self.name, kind)
                    else:
                        self._complain("unknown", "{}: ignored a message of unknown type {!r}",
                                       self.name, clean(str(kind), 80), level="WARNING")
                except (jsonfast.JSONDecodeError, UnicodeDecodeError) as exc:
                    self._complain("json", "{}: dropped a provider message that is not JSON "
                                   "({}): {!r}", self.name, exc, raw[:120])
                except (KeyError, TypeError, AttributeError, ValueError) as exc:
                    self._complain("field", "{}: dropped a provider message without a usable "
                                   "field ({}): {!r}", self.name, describe(exc), raw[:200])
                if self._ended or ws is not self._ws:
                    return
        except ConnectionClosed as exc:
            if self._closed or ws is not self._ws or self._switching:
                return
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
                                "closed before any reply")
            else:
                await self._end("provider_closed", why)
        except Exception as exc:  # a bug below us (the sink); the call must not hang silently
            self._log.exception("{}: the session reader failed", self.name)
            if not self._closed:
                await self._end("session_error", f"the session reader failed: {describe(exc)}")

    async def _on_conversation_text(self, event: dict[str, Any]) -> None:
        role, content = event["role"], event["content"]
        if role not in ("user", "assistant") or type(content) is not str:
            raise ValueError(f"ConversationText role {clean(str(role), 20)!r}")
        if role == "user" and content in self._injected:
            self._injected.remove(content)  # our own InjectUserMessage, reported back
            return
        if content:
            self._remember({"type": "History", "role": role, "content": content})
        await self.sink(TranscriptFrame(role="caller" if role == "user" else "agent",
                                        text=content))

    async def _on_user_started_speaking(self, event: dict[str, Any]) -> None:
        """Deepgram heard the caller: it stops the reply; we drop what is still on its way and
        have telewire clear the carrier."""
        if self._speaking:
            self._discarding = True
        item = f"dg-reply-{self._reply}" if self._speaking else None
        await self.sink(InterruptFrame(source="model", reason="user_started_speaking",
                                       item_id=item))

    async def _on_agent_started_speaking(self, event: dict[str, Any]) -> None:
        self._reply += 1
        self._speaking = True
        self._discarding = False
        self._productive = True
        self._reply_started = time.monotonic()
        if self._say_armed and self._say_reply is None:
            self._say_reply = self._reply  # the first reply after the injection answers it

    async def _on_agent_audio_done(self, event: dict[str, Any]) -> None:
        self._speaking = False
        self._discarding = False
        self._reply_started = None
        self._replies_done += 1
        if self._say_armed and self._say_reply == self._reply:
            self._resolve_say(True)
        await self._report_usage()

    async def _on_function_call_request(self, event: dict[str, Any]) -> None:
        functions = event["functions"]
        if not isinstance(functions, list):
            raise TypeError("FunctionCallRequest.functions is not a list")
        calls = [f for f in functions if isinstance(f, dict) and f.get("client_side") is not False]
        if calls:
            self._spawn(self._run_tools(calls), "tools")

    async def _run_tools(self, calls: list[dict[str, Any]]) -> None:
        """Run the client-side functions Deepgram asked for and send each result back as a
        ``FunctionCallResponse`` (its ``id`` answers the request's)."""
        for call in calls:
            name, call_id = str(call.get("name", "")), str(call.get("id", ""))
            arguments = call.get("arguments")
            arguments = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
            if self.tools is None:
                output = '{"error": "no tools are configured"}'
            else:
                output = (await self.tools.run(name, arguments)).output
            self._log.info("{}: tool {!r}({!r}) -> {!r}", self.name, clean(name, 80),
                           clean(arguments, 200), clean(output, 200))
            self._remember({"type": "History", "function_calls": [
                {"id": call_id, "name": name, "client_side": True, "arguments": arguments,
                 "response": output}]})
            await self._send_event({"type": "FunctionCallResponse", "id": call_id,
                                    "name": name, "content": output})

    async def _on_injection_refused(self, event: dict[str, Any]) -> None:
        self._log.info("{}: injection refused: {!r}", self.name,
                       clean(str(event.get("message", ""))))
        if self._say_armed:
            self._say_refused = True

    async def _on_error(self, event: dict[str, Any]) -> None:
        """Deepgram's ``Error`` ends its session (its docs): reconnect with the conversation,
        unless a fresh connection would only hear the same refusal."""
        code, description = error_fields(event)
        if code in FATAL_ERROR_CODES or self.config.reconnect_attempts == 0:
            detail = f"{code}: {description}"
            self._log.error("{}: fatal provider error {}", self.name, detail)
            await self.sink(ErrorFrame(source=self.name, message=detail, fatal=True))
            await self._end("provider_error", detail)
            return
        self._log.warning("{}: provider error {}: {!r}; reconnecting", self.name, code,
                          description)
        self._spawn(self._reconnect(f"provider error {code}"), "reconnect")

    async def _on_warning(self, event: dict[str, Any]) -> None:
        code, description = error_fields(event)
        self._complain("warning:" + code, "{}: provider warning {}: {!r}", self.name, code,
                       description, level="WARNING")

    # -- internals -------------------------------------------------------------------------------

    async def _report_usage(self) -> None:
        """One :class:`UsageFrame` for the connection time since the last one (Deepgram bills
        the Voice Agent per minute of connection)."""
        since = self._billed_from
        if since is None:
            return
        now = time.monotonic()
        self._billed_from = now
        seconds = now - since
        if seconds <= 0:
            return
        try:
            await self.sink(UsageFrame(provider=self.name, model=self.config.model,
                                       response_id=f"dg-reply-{self._reply}",
                                       billing="seconds", seconds=seconds))
        except Exception:  # noqa: BLE001 - at hang-up the sink may be gone; never fail close()
            self._log.debug("{}: the last usage could not be reported", self.name)

    def _remember(self, item: dict[str, Any]) -> None:
        """Add a ``History`` message, dropping the oldest beyond ``history_max_items`` /
        ``history_max_chars``."""
        max_chars = self.config.history_max_chars
        size = _history_size(item)
        if size > max_chars and "content" in item:
            item = {**item, "content": item["content"][:max_chars]}
            size = max_chars
        self.history.append(item)
        self._history_chars += size
        while (len(self.history) > self.config.history_max_items
               or self._history_chars > max_chars) and self.history:
            self._history_chars -= _history_size(self.history.popleft())
            self.history_dropped += 1

    async def _send_event(self, event: dict[str, Any]) -> None:
        try:
            await self._send(jsonfast.dumps(event))
            self._last_sent = time.monotonic()
        except ConnectionClosed:
            self._log.debug("{}: {} not sent, the connection is closed", self.name, event["type"])

    def _bad_audio(self, size: int) -> None:
        self.bad_audio_deltas += 1
        what = "empty" if size == 0 else (f"{size} bytes, more than rt.config.max_audio_delta_ms "
                                          f"({self.config.max_audio_delta_ms} ms) of mu-law")
        self._complain("audio", "{}: dropped an agent audio frame: {} ({} this call)", self.name,
                       what, self.bad_audio_deltas)

    def _complain(self, kind: str, message: str, *args: Any, level: str = "ERROR") -> None:
        """Log a bad provider message: at most one line per ``kind`` every
        ``COMPLAINT_INTERVAL_S``, saying how many were held back since."""
        throttle = self._complaints.get(kind)
        if throttle is None:
            if len(self._complaints) > 64:  # kinds named by provider text: keep them bounded
                kind, throttle = "other", self._complaints.setdefault(
                    "other", Throttle(COMPLAINT_INTERVAL_S))
            else:
                throttle = self._complaints[kind] = Throttle(COMPLAINT_INTERVAL_S)
        held = throttle.held_back()
        if held is None:
            return
        if held:
            message += " ({} more like it not logged)"
            args = (*args, held)
        self._log.log(level, message, *args)

    async def _end(self, reason: str, detail: str) -> None:
        """Emit the session's one :class:`EndFrame` and hang up on the provider."""
        if self._ended:
            return
        await self._report_usage()
        self._billed_from = None  # the connection is closed from here on: nothing more to bill
        self._ended = True
        self._resolve_say(False)
        await self.sink(EndFrame(reason=reason, detail=detail))
        if self._ws is not None:
            await self._ws.close()


def _history_size(item: dict[str, Any]) -> int:
    if "content" in item:
        return len(item["content"])
    return sum(len(c["name"]) + len(c["arguments"]) + len(c["response"])
               for c in item.get("function_calls", ()))


def error_fields(event: dict[str, Any]) -> tuple[str, str]:
    """``code`` and ``description`` of an ``Error`` / ``Warning`` message, cleaned for logs."""
    code = event.get("code") or "UNKNOWN"
    return clean(str(code), 80), clean(str(event.get("description", "")))
