"""The ``xai`` provider: xAI's Grok Voice Agent API, G.711 mu-law both ways, on the Realtime GA code.

Depends on ``telewire.realtime.openai`` (the session it specialises), ``telewire.realtime.base``,
``telewire.frames``, ``telewire.errors`` and ``telewire.settings``.

xAI's API (``wss://api.x.ai/v1/realtime``, ``Authorization: Bearer``) speaks the Realtime GA event
names, so :class:`XAISession` is an :class:`~telewire.realtime.openai.OpenAISession` that overrides
only where xAI differs (docs/providers/xai.md lists every difference with its source):

* ``session.update``: no ``type``, ``model``, ``output_modalities`` or ``tool_choice``; ``voice``
  and ``turn_detection`` at the top of ``session`` (not under ``audio``); ``server_vad`` only,
  without ``create_response`` / ``interrupt_response``; ``resumption: {enabled: true}``.
* A connection opens with ``conversation.created`` (its id is what a reconnection resumes); a
  ``session.created`` may come too, and either one starts the set-up.
* ``response.cancel`` carries no ``response_id``, and is sent at every barge-in (xAI does not
  document that its VAD cancels the reply). ``response.create`` carries no ``metadata``, so
  say() knows its reply by the ``response.created`` that follows its request.
* ``response.output_audio_transcript.done`` carries no ``transcript``: the deltas make it.
* Errors: xAI's codes differ from OpenAI's; the known races are recognised by their message.
* Billing is by minutes of audio, so usage is reported in seconds: at each ``response.done``,
  the longer of the caller audio sent and the reply audio received since the last report.
* A dropped connection is resumed with ``?conversation_id=`` (the server replays the turns); the
  conversation is replayed by the client only when the server does not resume it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from loguru import logger

from telewire.errors import ConfigError, ProviderError
from telewire.frames import AudioFrame, InterruptFrame, UsageFrame
from telewire.realtime.base import FrameSink, ProviderConfig
from telewire.realtime.openai import PCMU, OpenAISession
from telewire.settings import ProviderKeys

if TYPE_CHECKING:
    from loguru import Logger

    from telewire.tools import ToolBox

__all__ = ["DEFAULT_MODEL", "DEFAULT_URL", "DEFAULT_VOICE", "XAISession"]

#: The endpoint, the model alias that follows xAI's newest voice model, and xAI's default voice.
DEFAULT_URL = "wss://api.x.ai/v1/realtime"
DEFAULT_MODEL = "grok-voice-latest"
DEFAULT_VOICE = "eve"
#: The caller-transcription model that emits ``conversation.item.input_audio_transcription.*``.
DEFAULT_TRANSCRIPTION_MODEL = "grok-transcribe"
#: xAI ends a session after 120 minutes (docs.x.ai/developers/models/realtime-api); telewire
#: hands the call over to a fresh session five minutes before, at a turn boundary.
_SESSION_MAX_S = 7200.0
_HANDOVER_AT_S = _SESSION_MAX_S - 300.0
#: ``error.message`` fragments of xAI's benign races, and the GA code each one stands for
#: (xAI's codes differ from OpenAI's; pipecat's xAI service matches the messages the same way).
_BENIGN_MESSAGES = (
    ("no active response", "response_cancel_not_active"),
    ("already has an active response", "conversation_already_has_active_response"),
)
#: xAI's error codes that end a session at its age limit: hand over to a fresh one.
_EXPIRY_CODES = frozenset({"max_duration", "session_expired"})
#: Agent items whose transcript deltas are kept, and the most text kept for one.
_ITEMS_KEPT = 64
_TRANSCRIPT_MAX_CHARS = 20_000
#: The turn-detection fields xAI takes (besides ``type``).
_TURN_FIELDS = ("threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms")


#: OpenAI's Realtime voices: a graph naming one (the default graph does) was written for OpenAI.
_OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse",
                            "marin", "cedar"})
_warned: set[tuple[str, str]] = set()


def _openai_name(field: str, value: str) -> bool:
    """Whether ``value`` of ``rt.config.<field>`` names an OpenAI model or voice."""
    if field == "voice":
        return value.lower() in _OPENAI_VOICES
    return value.startswith(("gpt-", "whisper"))


def _for_xai(config: ProviderConfig, log: Logger) -> ProviderConfig:
    """``config`` with xAI's values for the fields left unset, or set to OpenAI's models and
    voices (the default graph names ``gpt-realtime`` and ``marin``; xAI has neither); a field set
    to an OpenAI name is logged once, as it is replaced."""
    given = config.model_fields_set
    defaults = {"url": DEFAULT_URL, "model": DEFAULT_MODEL, "voice": DEFAULT_VOICE,
                "transcription_model": DEFAULT_TRANSCRIPTION_MODEL,
                "session_max_s": _HANDOVER_AT_S}
    update: dict[str, Any] = {}
    for field, value in defaults.items():
        current = getattr(config, field)
        if field not in given:
            update[field] = value
        elif field in ("model", "voice", "transcription_model") and current and \
                _openai_name(field, current):
            update[field] = value
            if (field, current) not in _warned:
                _warned.add((field, current))
                log.warning("rt.config.{} {!r} is OpenAI's; the xai provider uses {!r} "
                               "(set rt.config.{} to choose)", field, current, value, field)
    return config.model_copy(update=update) if update else config


class XAISession(OpenAISession):
    """One call's Grok Voice Agent session (see the module docstring for what differs from GA).

    ``rt.config`` fields left unset take xAI's values: ``url`` ``wss://api.x.ai/v1/realtime``,
    ``model`` ``grok-voice-latest``, ``voice`` ``eve``, ``transcription_model``
    ``grok-transcribe``, ``session_max_s`` 6900 (xAI's limit is 120 minutes). The key comes from
    ``rt.config.api_key`` or ``XAI_API_KEY`` (environment or ``.env``).

    Raises:
        ConfigError: (from the constructor) a turn detection xAI does not offer: ``semantic_vad``,
            or ``create_response`` / ``interrupt_response`` turned off.
    """

    name = "xai"
    key_name = "XAI_API_KEY"
    #: As OpenAI's, but billed by the minute, with xAI's session limit and key.
    capabilities = dataclasses.replace(OpenAISession.capabilities, billing="duration",
                                       session_max_s=_SESSION_MAX_S, key_env="XAI_API_KEY")
    defaults = {"url": DEFAULT_URL, "model": DEFAULT_MODEL, "voice": DEFAULT_VOICE,
                "transcription_model": DEFAULT_TRANSCRIPTION_MODEL,
                "session_max_s": _HANDOVER_AT_S}

    _created_events = frozenset({"conversation.created", "session.created"})

    def __init__(self, config: ProviderConfig, sink: FrameSink, *, log: Logger | None = None,
                 tools: ToolBox | None = None) -> None:
        turn = config.turn_detection
        if turn.type == "semantic_vad":
            raise ConfigError("rt.config.turn_detection.type: xAI offers \"server_vad\" or "
                              "\"none\", not \"semantic_vad\"")
        if turn.type == "server_vad" and not (turn.create_response and turn.interrupt_response):
            raise ConfigError("rt.config.turn_detection: xAI's server VAD has no create_response "
                              "or interrupt_response switch, so neither can be turned off (use "
                              "type = \"none\" to turn the VAD off)")
        config = _for_xai(config, log if log is not None else logger)
        super().__init__(config, sink, log=log, tools=tools)
        #: ``conversation.created.conversation.id`` of the live connection.
        self.conversation_id: str | None = None
        self._resume: str | None = None  # the conversation a reconnection is resuming
        self._say_next: str | None = None  # say()'s tag, until its response.created
        self._say_by_response: dict[str, str] = {}
        self._audio_bytes = 0  # caller audio sent and not yet reported as usage
        #: Connections that resumed the provider's conversation (no client replay needed).
        self.resumptions = 0
        #: ``conversation.item.create`` messages sent (xAI bills each text item, see docs).
        self.text_items = 0
        self._transcripts: dict[str, str] = {}  # agent transcript deltas so far, by item
        self._handlers["conversation.created"] = self._on_conversation_created
        self._handlers["response.output_audio_transcript.delta"] = self._on_transcript_delta
        self._calls: dict[str, dict[str, Any]] = {}  # function calls announced, by call_id
        self._handlers["response.function_call_arguments.done"] = self._on_call_arguments

    # -- connecting ------------------------------------------------------------------------------

    @staticmethod
    def _settings_key(keys: ProviderKeys) -> str:
        return keys.xai_api_key.get_secret_value() if keys.xai_api_key else ""

    def _session_url(self) -> tuple[str, str]:
        if urlsplit(self.config.url).hostname == "api.openai.com":
            raise ConfigError(f"rt.config.url: the xai provider dials xAI, e.g. {DEFAULT_URL}")
        url, where = self._session_url_for(self.config.url)
        if self._resume is not None:
            parts = urlsplit(url)
            query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                     if k != "conversation_id"]
            query.append(("conversation_id", self._resume))
            url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
        return url, where

    def _on_created(self, event: dict[str, Any]) -> None:
        if event.get("type") == "conversation.created":
            self._conversation_created(event)

    async def _on_conversation_created(self, event: dict[str, Any]) -> None:
        self._conversation_created(event)

    def _conversation_created(self, event: dict[str, Any]) -> None:
        conversation = event.get("conversation")
        cid = conversation.get("id") if isinstance(conversation, dict) else None
        if not isinstance(cid, str) or not cid:
            return
        if self._resume is not None and cid != self._resume:
            # the provider started a new conversation instead: replay it from here
            self._log.info("{}: conversation {!r} was not resumed (new one {!r}); replaying it",
                           self.name, self._resume[:64], cid[:64])
            self._resume = None
        self.conversation_id = cid

    async def _reconnect(self, why: str) -> None:
        """Reconnect resuming the provider's conversation (``?conversation_id=``), so the server
        replays it; when that fails, the next attempts replay it from telewire's history."""
        self._resume = self.conversation_id
        try:
            await super()._reconnect(why)
        finally:
            self._resume = None

    async def _connect(self, *, replay: bool = False) -> Any:
        resuming = self._resume
        try:
            ws = await super()._connect(replay=replay)
        except ProviderError:
            if resuming is not None:
                self._resume = None  # the next attempt starts afresh and replays
            raise
        if replay and self._resume is not None:
            self.resumptions += 1
        return ws

    def _replayable(self) -> list[dict[str, Any]]:
        if self._resume is not None:
            return []  # the provider replays its own conversation
        items = super()._replayable()
        self.text_items += sum(1 for i in items if i.get("type") == "message")
        return items

    # -- session configuration -------------------------------------------------------------------

    def session_config(self) -> dict[str, Any]:
        """xAI's ``session`` object: mu-law both ways, voice and turn detection at the top."""
        audio_input: dict[str, Any] = {"format": {"type": PCMU}}
        if self.transcription_model is not None:
            audio_input["transcription"] = {"model": self.transcription_model}
        session: dict[str, Any] = {
            "instructions": self._instructions,
            "voice": self._voice,
            "turn_detection": self._turn_detection(),
            "audio": {"input": audio_input, "output": {"format": {"type": PCMU}}},
            "resumption": {"enabled": True},
        }
        if self.tools:
            session["tools"] = self.tools.definitions()
        return session

    def _turn_detection(self) -> dict[str, Any] | None:
        """``server_vad`` with only the fields the graph set (xAI's defaults otherwise:
        threshold 0.85), or ``None`` (the client commits and asks for responses)."""
        turn = self.config.turn_detection
        if turn.type == "none":
            return None
        out: dict[str, Any] = {"type": "server_vad"}
        for field in _TURN_FIELDS:
            value = getattr(turn, field)
            if field in turn.model_fields_set and value is not None:
                out[field] = value
        return out

    def _session_patch(self, instructions: str | None, voice: str | None) -> dict[str, Any]:
        session: dict[str, Any] = {}
        if instructions is not None:
            session["instructions"] = instructions
        if voice is not None:
            session["voice"] = voice
        return session

    async def _on_session_updated(self, event: dict[str, Any]) -> None:
        # xAI's session.updated may leave the audio formats out; one it names must be mu-law.
        audio = event["session"].get("audio") or {}
        wrong = []
        for side in ("input", "output"):
            fmt = ((audio.get(side) or {}).get("format") or {}).get("type")
            if fmt is not None and fmt != PCMU:
                wrong.append(f"audio.{side}.format.type is {fmt!r}")
        if wrong:
            await self._fail(f"session.updated: {' and '.join(wrong)}, expected {PCMU!r}; "
                             "the provider did not accept mu-law pass-through")

    # -- caller to model -------------------------------------------------------------------------

    async def send_audio(self, frame: AudioFrame) -> None:
        """As :meth:`OpenAISession.send_audio`, counting the audio (xAI bills its minutes)."""
        b64 = frame.b64
        self._audio_bytes += len(b64) // 4 * 3 - (2 if b64[-2:] == "==" else b64[-1:] == "=")
        await super().send_audio(frame)

    async def _send_event(self, event: dict[str, Any]) -> None:
        if event["type"] == "conversation.item.create" and event["item"].get("type") == "message":
            self.text_items += 1
        await super()._send_event(event)

    def _provider_cancelled(self, frame: InterruptFrame) -> bool:
        return False  # xAI does not document that its VAD cancels the reply: always cancel

    def _cancel_event(self, response_id: str) -> dict[str, Any]:
        return {"type": "response.cancel"}  # xAI's cancel names no response

    # -- say() -----------------------------------------------------------------------------------

    async def say(self, instructions: str, *, tag: str = "say") -> bool:
        """As :meth:`OpenAISession.say`; xAI echoes no ``metadata``, so the reply is the
        response created next after the request."""
        try:
            return await super().say(instructions, tag=tag)
        finally:
            if self._say_next == tag:
                self._say_next = None
            for rid in [r for r, t in self._say_by_response.items() if t == tag]:
                del self._say_by_response[rid]

    def _say_response(self, instructions: str, tag: str) -> dict[str, Any]:
        self._say_next = tag
        return {"instructions": instructions}

    async def _on_response_created(self, event: dict[str, Any]) -> None:
        await super()._on_response_created(event)
        if self._say_next is not None and self._response_id:
            self._say_by_response[self._response_id] = self._say_next
            self._say_next = None

    def _say_tag(self, response: dict[str, Any]) -> str:
        return self._say_by_response.pop(str(response.get("id") or ""), "")

    # -- model to caller -------------------------------------------------------------------------

    async def _on_call_arguments(self, event: dict[str, Any]) -> None:
        call_id, name = event.get("call_id"), event.get("name")
        if isinstance(call_id, str) and isinstance(name, str) and len(self._calls) < _ITEMS_KEPT:
            self._calls[call_id] = {"type": "function_call", "call_id": call_id, "name": name,
                                    "arguments": str(event.get("arguments") or "")}

    async def _on_response_done(self, event: dict[str, Any]) -> None:
        response = event["response"]
        calls, self._calls = self._calls, {}
        output = [o for o in response.get("output") or () if isinstance(o, dict)]
        listed = {o.get("call_id") for o in output if o.get("type") == "function_call"}
        missing = [c for cid, c in calls.items() if cid not in listed]
        # xAI sends the function call events "alongside response.done" and documents
        # response.done without its output: a call announced but not listed still runs
        fixed = {k: v for k, v in response.items() if k != "usage"}  # (tokens are not billed)
        if missing:
            fixed["output"] = [*output, *missing]
        event = {**event, "response": fixed}
        # the reply's audio received (base64 characters per item, counted as it came)
        received = sum(self._item_chars.get(o.get("id"), 0) for o in response.get("output") or ()
                       if isinstance(o, dict)) * 3 // 4
        await super()._on_response_done(event)
        sent, self._audio_bytes = self._audio_bytes, 0
        # xAI bills minutes of audio "sent or received" ($3.00 an hour): the stretch since the
        # last report lasted at least as long as the longer of the two (mu-law: 8000 bytes a s)
        billed = max(sent, received)
        if billed:
            await self.sink(UsageFrame(provider=self.name, model=self.config.model,
                                       response_id=response.get("id"), billing="seconds",
                                       seconds=billed / 8000))

    async def _on_transcript_delta(self, event: dict[str, Any]) -> None:
        item, delta = event.get("item_id"), event.get("delta")
        if not isinstance(item, str) or not isinstance(delta, str):
            return
        text = self._transcripts.get(item)
        if text is None and len(self._transcripts) >= _ITEMS_KEPT:
            del self._transcripts[next(iter(self._transcripts))]
        if len(text or "") < _TRANSCRIPT_MAX_CHARS:
            self._transcripts[item] = (text or "") + delta

    async def _on_agent_transcript(self, event: dict[str, Any]) -> None:
        # xAI's response.output_audio_transcript.done carries no transcript: the deltas make it
        text = self._transcripts.pop(str(event.get("item_id")), "")
        if not isinstance(event.get("transcript"), str):
            event = {**event, "transcript": text}
        await super()._on_agent_transcript(event)

    async def _on_error(self, event: dict[str, Any]) -> None:
        error = event.get("error")
        if not isinstance(error, dict):
            return await super()._on_error(event)
        code = error.get("code")
        message = str(error.get("message") or "").lower()
        if code in _EXPIRY_CODES and self.config.reconnect_attempts > 0:
            self._log.warning("{}: session at its age limit ({}); moving to a fresh session",
                              self.name, code)
            self.conversation_id = None  # a fresh conversation: resuming it would not help
            self._spawn(self._handover(str(code)), "handover")
            return
        for fragment, ga_code in _BENIGN_MESSAGES:
            if code != ga_code and fragment in message:
                event = {**event, "error": {**error, "code": ga_code}}
                break
        await super()._on_error(event)
        for tag in self._say_refused:  # a say() refused: the response it was bound to is not its
            for rid in [r for r, t in self._say_by_response.items() if t == tag]:
                del self._say_by_response[rid]

    def counters(self) -> dict[str, int]:
        """As :meth:`OpenAISession.counters`, with resumptions and billed text items."""
        return {**super().counters(), "resumptions": self.resumptions,
                "text_items": self.text_items}

