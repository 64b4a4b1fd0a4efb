"""The __provider__ provider's session: one call's WebSocket to the model, mu-law both ways.

Depends on telewire's public API (``telewire``), ``websockets``, ``pydantic`` and
``pydantic-settings``; the call's tools arrive as the session's ``tools`` (a
``telewire.tools.ToolBox``).

It speaks the template's **example protocol**: JSON text messages, one object each, with its
``type`` in ``"type"``. Replace it with your model's (``protocol.schema.json`` says the same in
JSON Schema, and the kit's fake checks every message this session sends against it).

=================  ==========================================================================
client → model     fields
=================  ==========================================================================
``hello``          the first message: ``model``, ``instructions``, ``voice``, ``temperature``,
                   ``audio`` (``{"input": {"codec": "pcmu", "rate": 8000}, "output": …}``),
                   ``tools`` (``[{"name", "description", "parameters"}]``)
``audio``          ``audio``: base64 of caller mu-law
``text``           ``text``: a note added to the conversation as the caller's (a key press)
``update``         ``instructions`` and/or ``voice``, in force at once
``cancel``         ``reply_id``: stop that reply now (nothing more of it is sent)
``tool_result``    ``call_id``, ``output`` (text), ``respond`` (whether the model answers it)
=================  ==========================================================================

=================  ==========================================================================
model → client     fields
=================  ==========================================================================
``ready``          the answer to ``hello``: ``session_id``, ``audio`` as the model accepted it
``reply_started``  ``reply_id``
``audio``          ``reply_id``, ``audio``: base64 of agent mu-law
``reply_done``     ``reply_id``, ``status`` (``completed`` or ``cancelled``)
``transcript``     ``role`` (``caller`` or ``agent``), ``text``, ``reply_id`` (agent)
``speech_started`` the caller started talking; the model waits to be told to cancel
``tool_call``      ``call_id``, ``name``, ``arguments`` (JSON text)
``usage``          ``reply_id``, ``input_audio_tokens``, ``input_text_tokens``,
                   ``output_audio_tokens``, ``output_text_tokens``
``error``          ``code``, ``message``, ``fatal`` (the session cannot go on)
=================  ==========================================================================

The key goes in ``Authorization: Bearer KEY`` on the WebSocket handshake.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import SettingsConfigDict
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from telewire import (
    AudioFrame,
    CarrierSettings,
    ConfigError,
    DTMFFrame,
    EndFrame,
    ErrorFrame,
    FrameSink,
    InterruptFrame,
    ProviderCapabilities,
    ProviderConfig,
    ProviderError,
    RealtimeSession,
    StartFrame,
    SteerFrame,
    TranscriptFrame,
    UsageFrame,
    read_settings,
)
from telewire.realtime.common import (
    COMPLAINT_INTERVAL_S,
    HARD_LIMIT_FACTOR,
    LOOPBACK_HOSTS,
    clean,
    close_text,
)

if TYPE_CHECKING:
    from telewire.tools import ToolBox

__all__ = ["DEFAULT_MODEL", "DEFAULT_URL", "DEFAULT_VOICE", "__Provider__Keys",
           "__Provider__Session"]

#: Where the model lives, and what it is called, when ``rt.config`` does not say (telewire's
#: own defaults there name OpenAI's endpoint, model and voice, so they are replaced too).
DEFAULT_URL = "wss://voice.example.com/v1/session"
DEFAULT_MODEL = "voice-1"
DEFAULT_VOICE = "aria"
#: Replies whose late audio is dropped after a cancel; older ones are forgotten, so a model
#: inventing reply ids cannot grow the session without bound.
_DROPPED_KEPT = 64
_PLACEHOLDER_KEY = "telewire-loopback"
#: ``error.code`` values after which the session cannot go on, whatever ``fatal`` says.
_FATAL_CODES = frozenset({"unauthorized", "quota_exceeded", "bad_hello"})

# The hot path: one audio message is built by concatenation around the carrier's base64 text.
_AUDIO_HEAD = '{"type":"audio","audio":"'
_AUDIO_TAIL = '"}'
_B64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


class __Provider__Keys(CarrierSettings):
    """The API key: ``TELEWIRE___PROVIDER___API_KEY`` or ``__PROVIDER___API_KEY``, from the
    environment or ``.env`` (a blank value counts as unset)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices(
        "TELEWIRE___PROVIDER___API_KEY", "__PROVIDER___API_KEY"))


def _key_from_settings() -> str | None:
    """``__PROVIDER___API_KEY`` from the environment or ``.env``, read now (``None``: unset)."""
    keys = read_settings(__Provider__Keys, title="__provider__ provider keys")
    return keys.api_key.get_secret_value() if keys.api_key is not None else None


async def _not_started(message: str) -> None:
    raise RuntimeError("__Provider__Session: send_audio() called before start()")


class __Provider__Session(RealtimeSession):
    """One call's session with the __provider__ model.

    Turn-based: the model speaks in replies, each with an id, and a reply can be cancelled.
    A barge-in is reported (``speech_started`` → ``InterruptFrame(source="model")``); when the
    ``realtime_agent`` node then calls :meth:`interrupt`, the reply is cancelled and any of its
    audio still arriving is dropped. The protocol cannot cut the model's memory of a reply at
    what the caller heard, so ``truncate`` is not declared. A dropped connection ends the call
    (``resume`` is not declared either).
    """

    name = "__provider__"
    capabilities = ProviderCapabilities(
        audio_formats=frozenset({("pcmu", 8000)}), turn_model="turn_based", cancel=True,
        truncate=False, interruption=True, tools=True, instructions_change=True,
        voice_change="anytime", dtmf=True, say=False, transcripts=True, session_max_s=None,
        resume=False, billing="tokens", key_env="__PROVIDER___API_KEY")
    #: what rt.config's url, model and voice are when a graph leaves them unset
    defaults = {"url": DEFAULT_URL, "model": DEFAULT_MODEL, "voice": DEFAULT_VOICE}

    class Options(BaseModel):
        """``rt.config.options`` of the __provider__ provider (checked when the graph loads).

        Attributes:
            temperature: sampling temperature of the model's replies.
        """

        model_config = ConfigDict(extra="forbid")

        temperature: float = Field(default=0.8, ge=0.0, le=2.0)

    # (Inside this class, a name starting with two underscores would be mangled: the
    # unrendered template reaches module-level ``__Provider__…`` names only through helpers.)

    def __init__(self, config: ProviderConfig, sink: FrameSink, *, log: Any = None,
                 tools: ToolBox | None = None) -> None:
        super().__init__(config, sink, log=log, tools=tools)
        self._bound_log = log is not None
        self.options = config.provider_options or self.Options()
        self.url = config.url  # DEFAULT_URL etc. when the graph leaves them unset (defaults)
        self.model = config.model
        self.voice = config.voice
        self.instructions = config.system_prompt
        self._ws: ClientConnection | None = None
        self._send: Callable[[str], Awaitable[None]] = _not_started
        self._reader: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = self._closed = self._ended = False
        self._reply: str | None = None  # the reply being spoken
        self._dropped: dict[str, None] = {}  # cancelled replies, oldest first
        # base64 characters of max_audio_delta_ms of mu-law (8 bytes a millisecond)
        self._max_audio_chars = -(-config.max_audio_delta_ms * 8 // 3) * 4
        self._complaints: dict[str, float] = {}
        #: Audio messages dropped because they were not base64 text, or held too much audio.
        self.bad_audio = 0
        #: Messages from the model dropped as unusable (not JSON, unknown type, bad field).
        self.bad_messages = 0
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "reply_started": self._on_reply_started,
            "reply_done": self._on_reply_done,
            "speech_started": self._on_speech_started,
            "transcript": self._on_transcript,
            "tool_call": self._on_tool_call,
            "usage": self._on_usage,
            "error": self._on_error,
            "ready": self._ignore,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, start: StartFrame) -> None:
        """Connect, say ``hello`` (mu-law 8 kHz both ways), wait for ``ready``, start reading.

        Raises:
            ConfigError: no API key for a non-local URL, or a URL that is not ws:// / wss://.
            ProviderError: the model refused the connection or the ``hello``, did not answer
                within ``connect_timeout_s``, or did not accept mu-law 8 kHz both ways.
            RuntimeError: ``start`` was called twice.
        """
        if self._started:
            raise RuntimeError("__Provider__Session.start() called twice")
        self._started = True
        parts = urlsplit(self.url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError(f"rt.config.url: expected a ws:// or wss:// URL, not {self.url!r}")
        where = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"  # no query
        if not self._bound_log:
            self.log = self.log.bind(carrier=start.carrier, call_sid=start.call_id,
                                     stream_sid=start.stream_id)
        key = self._resolve_key(where)
        timeout = self.config.connect_timeout_s
        try:
            async with asyncio.timeout(timeout):
                ws = await connect(self.url, additional_headers={"Authorization": "Bearer " + key},
                                   max_size=self.config.max_message_bytes * HARD_LIMIT_FACTOR,
                                   compression=None, open_timeout=None)
                try:
                    try:
                        await ws.send(json.dumps(self._hello()))
                    except ConnectionClosed:
                        pass  # refused at once: the reason it sent first is read next
                    await self._await_ready(ws, where)
                except BaseException:
                    await ws.close()
                    raise
        except TimeoutError:
            raise ProviderError(f"{self.name}: no ready answer from {where} within {timeout:g}s "
                                "(rt.config.connect_timeout_s)") from None
        except InvalidStatus as exc:
            raise ProviderError(f"{self.name}: {where} refused the WebSocket handshake with HTTP "
                                f"{exc.response.status_code}") from None
        except ConnectionClosed as exc:
            raise ProviderError(f"{self.name}: {where} closed the connection during set-up "
                                f"({close_text(exc)})") from None
        except (InvalidHandshake, OSError) as exc:
            raise ProviderError(f"{self.name}: cannot connect to {where}: "
                                f"{clean(str(exc))}") from None
        self._ws = ws
        self._send = ws.send
        self._reader = asyncio.create_task(self._read(ws), name=f"{self.name}-reader")
        self.log.info("{}: session open at {} (model {})", self.name, where, self.model)

    async def close(self) -> None:
        """Stop reading and close the socket. Idempotent; emits no frame."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        for task in [*self._tasks, self._reader]:
            if task is not None and task is not current and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    if current is not None and current.cancelling():
                        raise
                except Exception:  # noqa: BLE001 - a tool task failing while we close
                    pass
        if self._ws is not None:
            await self._ws.close()

    def counters(self) -> dict[str, int]:
        """Bad audio messages and other unusable messages from the model, dropped."""
        return {"bad_audio_deltas": self.bad_audio, "bad_provider_messages": self.bad_messages}

    def _hello(self) -> dict[str, Any]:
        mulaw = {"codec": "pcmu", "rate": 8000}
        tools = []
        if self.tools:
            tools = [{"name": t["name"], "description": t.get("description", ""),
                      "parameters": t.get("parameters") or {"type": "object", "properties": {}}}
                     for t in self.tools.definitions()]
        return {"type": "hello", "model": self.model, "instructions": self.instructions,
                "voice": self.voice, "temperature": self.options.temperature,
                "audio": {"input": mulaw, "output": mulaw}, "tools": tools}

    async def _await_ready(self, ws: ClientConnection, where: str) -> None:
        """Wait for ``ready`` and check the model took mu-law 8 kHz both ways."""
        while True:
            event = _parse(await ws.recv())
            kind = event.get("type") if event is not None else None
            if kind == "ready":
                audio = event.get("audio") or {}  # type: ignore[union-attr]
                for side in ("input", "output"):
                    fmt = audio.get(side) if isinstance(audio, dict) else None
                    if not isinstance(fmt, dict) or (fmt.get("codec"), fmt.get("rate")) != (
                            "pcmu", 8000):
                        raise ProviderError(f"{self.name}: {where} did not accept mu-law 8 kHz "
                                            f"for {side} audio (ready says {clean(repr(fmt))})")
                return
            if kind == "error":
                code, message = _error_fields(event)  # type: ignore[arg-type]
                raise ProviderError(f"{self.name}: {where} refused the session: {code}: "
                                    f"{message}", code=code)
            self.log.debug("{}: ignoring {!r} before ready", self.name, clean(str(kind), 40))

    def _resolve_key(self, where: str) -> str:
        """``rt.config.api_key``, else ``__PROVIDER___API_KEY`` (environment or ``.env``, read
        once, here), else a placeholder for a loopback URL."""
        if self.config.api_key is not None and self.config.api_key.get_secret_value():
            return self.config.api_key.get_secret_value()
        key = _key_from_settings()
        if key is not None:
            return key
        if urlsplit(self.url).hostname in LOOPBACK_HOSTS:
            return _PLACEHOLDER_KEY
        raise ConfigError(f"rt.config.api_key is not set and __PROVIDER___API_KEY is not in the "
                          f"environment or .env; {where} needs an API key")

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.name}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- caller to model ---------------------------------------------------------------------

    async def send_audio(self, frame: AudioFrame) -> None:
        """Send caller audio, the carrier's base64 text untouched (checked where it entered).
        Audio sent after the model closed is dropped: the reader reports the end."""
        try:
            await self._send(_AUDIO_HEAD + frame.b64 + _AUDIO_TAIL)
        except ConnectionClosed:
            pass

    async def send_dtmf(self, frame: DTMFFrame) -> None:
        """Tell the model the caller pressed a key (as a ``text`` note)."""
        await self._send_event({"type": "text",
                                "text": f"[The caller pressed the key {frame.digit}]"})

    async def interrupt(self, frame: InterruptFrame) -> None:
        """Barge-in: cancel the reply being spoken; its audio still arriving is dropped.
        (``heard_ms`` is not used: the protocol cannot truncate the model's memory.)"""
        reply = self._reply
        if reply is None or reply in self._dropped:
            return
        self._drop(reply)
        await self._send_event({"type": "cancel", "reply_id": reply})
        self.log.info("{}: cancelled reply {!r}", self.name, reply)

    async def steer(self, frame: SteerFrame) -> None:
        """New instructions and/or voice, in force at once (``update``)."""
        update: dict[str, Any] = {"type": "update"}
        if frame.instructions is not None:
            self.instructions = update["instructions"] = frame.instructions
        if frame.voice is not None:
            self.voice = update["voice"] = frame.voice
        if len(update) > 1:
            await self._send_event(update)

    async def _send_event(self, event: dict[str, Any]) -> None:
        try:
            await self._send(json.dumps(event))
        except ConnectionClosed:
            self.log.debug("{}: {} not sent, the connection is closed", self.name, event["type"])

    # -- model to caller ---------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        """Parse each message once and turn it into frames; drop (and log) what is unusable."""
        limit = self.config.max_message_bytes
        max_chars = self._max_audio_chars
        sink = self.sink
        handlers = self._handlers
        dropped = self._dropped
        try:
            while True:
                raw = await ws.recv()
                if len(raw) > limit:
                    self._complain("oversize", "dropped a {}-byte message (rt.config."
                                   "max_message_bytes is {})", len(raw), limit)
                    continue
                event = _parse(raw)
                if event is None:
                    self._complain("json", "dropped a message that is not a JSON object: {!r}",
                                   clean(str(raw[:120])))
                    continue
                kind = event.get("type")
                try:
                    if kind == "audio":
                        reply = event.get("reply_id")
                        if reply in dropped:
                            continue  # late audio of a cancelled reply
                        audio = event["audio"]
                        # spliced verbatim into the carrier's envelope: it must be base64
                        if type(audio) is not str or len(audio) > max_chars or len(audio) % 4 \
                                or not _B64_RE.fullmatch(audio):
                            self.bad_audio += 1
                            self._complain("audio", "dropped an audio message that is not "
                                           "base64 or holds more than rt.config."
                                           "max_audio_delta_ms ({} this call)", self.bad_audio)
                            continue
                        await sink(AudioFrame(payload=audio, track="outbound",
                                              item_id=reply if type(reply) is str else None))
                        continue
                    handler = handlers.get(kind) if type(kind) is str else None
                    if handler is None:
                        self._complain("type", "ignored a message of unknown type {}",
                                       clean(repr(kind), 60))
                        continue
                    await handler(event)
                except (KeyError, TypeError, ValueError) as exc:
                    self._complain("field", "dropped a {} message without a usable field "
                                   "({}: {})", clean(repr(kind), 60), type(exc).__name__,
                                   clean(str(exc), 120))
                if self._ended:
                    return
        except ConnectionClosed as exc:
            if not self._closed:
                await self._end("provider_closed",
                                f"the model closed the connection ({close_text(exc)})")
        except Exception as exc:  # a bug below us (the sink): the call must not hang silently
            self.log.exception("{}: the session reader failed", self.name)
            if not self._closed:
                await self._end("session_error", f"the session reader failed: "
                                f"{type(exc).__name__}: {clean(str(exc))}")

    async def _ignore(self, event: dict[str, Any]) -> None:
        pass

    async def _on_reply_started(self, event: dict[str, Any]) -> None:
        self._reply = _text(event, "reply_id")

    async def _on_reply_done(self, event: dict[str, Any]) -> None:
        reply = _text(event, "reply_id")
        if self._reply == reply:
            self._reply = None
        self._dropped.pop(reply, None)

    async def _on_speech_started(self, event: dict[str, Any]) -> None:
        await self.sink(InterruptFrame(source="model", reason="speech_started",
                                       item_id=self._reply))

    async def _on_transcript(self, event: dict[str, Any]) -> None:
        role = event["role"]
        if role not in ("caller", "agent"):
            raise ValueError(f"role {clean(repr(role), 40)}")
        reply = event.get("reply_id")
        await self.sink(TranscriptFrame(role=role, text=_text(event, "text"),
                                        item_id=reply if type(reply) is str else None))

    async def _on_tool_call(self, event: dict[str, Any]) -> None:
        call_id, name = _text(event, "call_id"), _text(event, "name")
        arguments = _text(event, "arguments")
        self._spawn(self._run_tool(call_id, name, arguments), "tool")

    async def _run_tool(self, call_id: str, name: str, arguments: str) -> None:
        """Run one tool call (the ``ToolBox`` never raises) and send its result."""
        if self.tools is None:
            output, respond = '{"error": "no tools are configured"}', True
        else:
            outcome = await self.tools.run(name, arguments)
            output, respond = outcome.output, outcome.respond
        self.log.info("{}: tool {!r} -> {!r}", self.name, clean(name, 80), clean(output, 200))
        await self._send_event({"type": "tool_result", "call_id": call_id, "output": output,
                                "respond": respond})

    async def _on_usage(self, event: dict[str, Any]) -> None:
        reply = event.get("reply_id")
        await self.sink(UsageFrame(
            provider=self.name, model=self.model,
            response_id=reply if type(reply) is str else None,
            input_audio_tokens=_tokens(event.get("input_audio_tokens")),
            input_text_tokens=_tokens(event.get("input_text_tokens")),
            output_audio_tokens=_tokens(event.get("output_audio_tokens")),
            output_text_tokens=_tokens(event.get("output_text_tokens"))))

    async def _on_error(self, event: dict[str, Any]) -> None:
        code, message = _error_fields(event)
        if event.get("fatal") is True or code in _FATAL_CODES:
            detail = f"{code}: {message}"
            self.log.error("{}: fatal model error {}", self.name, detail)
            await self.sink(ErrorFrame(source=self.name, message=detail, fatal=True))
            await self._end("provider_error", detail)
        else:
            self._complain("error", "model error {}: {!r}", code, message, level="WARNING")

    # -- internals ---------------------------------------------------------------------------

    def _drop(self, reply: str) -> None:
        if len(self._dropped) >= _DROPPED_KEPT:
            del self._dropped[next(iter(self._dropped))]
        self._dropped[reply] = None

    def _complain(self, kind: str, message: str, *args: Any, level: str = "ERROR") -> None:
        """Log a bad message from the model: at most one line per ``kind`` every
        ``COMPLAINT_INTERVAL_S``. (Model text in ``args`` is passed through :func:`clean`.)"""
        if kind != "error":
            self.bad_messages += 1
        now = time.monotonic()
        if now < self._complaints.get(kind, 0.0):
            return
        self._complaints[kind] = now + COMPLAINT_INTERVAL_S
        self.log.log(level, "{}: " + message, self.name, *args)

    async def _end(self, reason: str, detail: str) -> None:
        """Emit the session's one :class:`EndFrame` and hang up on the model."""
        if self._ended:
            return
        self._ended = True
        self._reply = None
        await self.sink(EndFrame(reason=reason, detail=detail))
        if self._ws is not None:
            await self._ws.close()


def _parse(raw: str | bytes) -> dict[str, Any] | None:
    """One JSON object, or ``None`` for anything else (not JSON, not an object)."""
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return event if type(event) is dict else None


def _text(event: dict[str, Any], key: str) -> str:
    """The string field ``key`` of ``event``; raises ``KeyError`` / ``TypeError`` otherwise."""
    value = event[key]
    if type(value) is not str:
        raise TypeError(f"{key} is {type(value).__name__}, not a string")
    return value


def _tokens(value: Any) -> int:
    """A token count: a non-negative int, anything else 0."""
    return value if type(value) is int and value > 0 else 0


def _error_fields(event: dict[str, Any]) -> tuple[str, str]:
    return (clean(str(event.get("code") or "unknown_error"), 80),
            clean(str(event.get("message") or "")))
