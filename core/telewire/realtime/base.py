"""The realtime provider contract: the session interface, its declared capabilities, and the
lookup of providers through entry-point group ``telewire.providers``.

Depends on ``telewire.frames``, ``telewire.errors``, ``telewire.plugins`` and
``telewire.transfer``. Provider modules depend on this one; this one knows none of them.

A provider is a :class:`RealtimeSession` subclass registered as an entry point in group
``telewire.providers`` (the name is what ``rt.config.provider`` says). It declares what it can do
in :attr:`RealtimeSession.capabilities` (:class:`ProviderCapabilities`) and its own settings in
:attr:`RealtimeSession.Options` (``rt.config.options``). The ``realtime_agent`` node creates one
session per call, ``start``s it with the call's :class:`~telewire.frames.StartFrame` and a sink,
then feeds it caller audio. The session pushes what the model says back into the sink as
frames: agent :class:`~telewire.frames.AudioFrame`s (mu-law wire form, untouched), transcripts,
usage, interrupts (the model heard the caller start talking), and at most one
:class:`~telewire.frames.EndFrame` when the session cannot continue.

See ``docs/reference/providers.md``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, ClassVar, Literal, Mapping

from loguru import logger
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, ValidationError,
                      field_validator, model_validator)

from telewire.errors import ConfigError
from telewire.plugins import PluginSet, load_group
from telewire.frames import AudioFrame, DTMFFrame, Frame, InterruptFrame, StartFrame, SteerFrame
from telewire.transfer import check_patterns

__all__ = ["FrameSink", "PROVIDER_GROUP", "ProviderCapabilities", "ProviderConfig",
           "RealtimeSession", "ToolSpec", "TurnDetection", "create_session", "provider_class",
           "providers"]

FrameSink = Callable[[Frame], Awaitable[None]]
PROVIDER_GROUP = "telewire.providers"


@dataclass(frozen=True, slots=True)
class ProviderCapabilities:
    """What a provider can do, declared once per provider class.

    The ``realtime_agent`` node reads these when a graph loads (a graph that needs what the
    provider lacks fails, naming node, provider and capability) and when it drives a call (what
    a barge-in does, whether a goodbye can be spoken).

    Attributes:
        audio_formats: the ``(codec, sample_rate)`` pairs the provider takes and speaks on the
            wire unchanged (``("pcmu", 8000)`` for G.711 mu-law). A call whose carrier speaks
            none of them is refused at start.
        turn_model: ``"turn_based"``: the model answers in discrete responses that can be
            cancelled and truncated (Realtime GA); ``"full_duplex"``: it listens and speaks at
            once and decides itself when to stop (GPT-Live, Deepgram's agent).
        cancel: a reply can be stopped on request (``interrupt()`` stops it).
        truncate: the model's memory of a reply can be cut at what the caller heard.
        interruption: the provider notices the caller talking over it and reports it (an
            :class:`~telewire.frames.InterruptFrame` from the session).
        tools: function tools (``rt.config.tools``, ``end_call``, ``transfer_call``).
        instructions_change: instructions can be changed mid-call (a steer).
        voice_change: ``"never"``, ``"between_responses"`` (deferred until the reply in
            progress is done) or ``"anytime"``.
        dtmf: keypad digits reach the model (as text).
        say: the model can be asked to speak now (the budget goodbye).
        transcripts: caller and agent transcripts come back as frames.
        session_max_s: the provider's own limit on one session's length; ``None``: none known.
        resume: a dropped connection is reopened with the conversation kept (replayed or
            resumed by the provider).
        billing: ``"tokens"`` (usage in tokens), ``"duration"`` (seconds of session), or
            ``"none"`` (nothing to pay).
        key_env: the environment variable the API key is read from, when one is needed.
    """

    audio_formats: frozenset[tuple[str, int]] = frozenset({("pcmu", 8000)})
    turn_model: Literal["turn_based", "full_duplex"] = "turn_based"
    cancel: bool = False
    truncate: bool = False
    interruption: bool = False
    tools: bool = False
    instructions_change: bool = False
    voice_change: Literal["never", "between_responses", "anytime"] = "never"
    dtmf: bool = False
    say: bool = False
    transcripts: bool = False
    session_max_s: float | None = None
    resume: bool = False
    billing: Literal["tokens", "duration", "none"] = "none"
    key_env: str | None = None

    def supports(self, codec: str, sample_rate: int) -> bool:
        """Whether audio of this codec and rate passes to the provider unchanged."""
        return (codec, sample_rate) in self.audio_formats


class TurnDetection(BaseModel):
    """``rt.config.turn_detection``: who decides when the caller has finished a turn.

    ``server_vad`` uses ``threshold``/``prefix_padding_ms``/``silence_duration_ms``/
    ``idle_timeout_ms``; ``semantic_vad`` uses ``eagerness``; ``none`` turns detection off.
    ``interrupt_response`` lets the provider cancel its own response when the caller starts
    talking (telewire still clears the carrier and truncates at what was heard).
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["server_vad", "semantic_vad", "none"] = "server_vad"
    threshold: float = Field(default=0.5, ge=0, le=1)
    prefix_padding_ms: int = Field(default=300, ge=0)
    silence_duration_ms: int = Field(default=500, ge=0)
    idle_timeout_ms: int | None = Field(default=None, gt=0)
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    create_response: bool = True
    interrupt_response: bool = True

    def wire(self) -> dict[str, Any] | None:
        """The GA ``audio.input.turn_detection`` object (``None`` for ``type = "none"``)."""
        if self.type == "none":
            return None
        out: dict[str, Any] = {"type": self.type, "create_response": self.create_response,
                               "interrupt_response": self.interrupt_response}
        if self.type == "server_vad":
            out.update(threshold=self.threshold, prefix_padding_ms=self.prefix_padding_ms,
                       silence_duration_ms=self.silence_duration_ms)
            if self.idle_timeout_ms is not None:
                out["idle_timeout_ms"] = self.idle_timeout_ms
        else:
            out["eagerness"] = self.eagerness
        return out


class ToolSpec(BaseModel):
    """One function tool offered to the model (``[[nodes.rt.config.tools]]``).

    Attributes:
        name: the function name the model calls.
        description: what it does, for the model.
        parameters: JSON Schema of its arguments.
        function: ``"package.module:callable"``, or the name of an entry point in group
            ``telewire.tools``. Called with the parsed arguments as keywords (sync or async);
            its return value (JSON-serialisable) goes back to the model.
        timeout_s: the call is abandoned after this long and the model told so.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    function: str
    timeout_s: float = Field(default=10.0, gt=0)


class ProviderConfig(BaseModel):
    """``rt.config`` of the graph: which provider and how to reach it.

    Attributes:
        provider: ``echo`` (loops caller audio back), ``openai`` (OpenAI Realtime GA and any
            compatible endpoint, ``Authorization: Bearer``) or ``azure`` (Azure OpenAI's GA
            endpoint ``https://RESOURCE.openai.azure.com/openai/v1/realtime``, ``api-key`` header,
            key from ``AZURE_OPENAI_API_KEY``; ``model`` is the deployment name).
        url: the realtime WebSocket URL (``wss://api.openai.com/v1/realtime``); ``model`` is added
            as a query parameter.
        model: the model name.
        voice: the output voice.
        system_prompt: the session instructions.
        api_key: the key; when unset, ``OPENAI_API_KEY`` (``AZURE_OPENAI_API_KEY`` for
            ``azure``) from the environment or ``.env`` (:class:`telewire.settings.ProviderKeys`).
        transcription_model: the model that transcribes the caller's audio into transcript
            frames (``audio.input.transcription``); ``""`` turns caller transcription off.
        turn_detection: see :class:`TurnDetection`.
        tools: function tools offered to the model (see :class:`ToolSpec`).
        builtin_tools: telewire's own tools offered to the model: ``end_call`` (hang up once the
            last audio has played) and ``transfer_call`` (where the carrier can transfer).
        transfer_targets: the only targets ``transfer_call`` may dial: E.164 numbers or
            ``sip:`` addresses, exact or as globs (``+1555*``, ``sip:*@pbx.example.com``; see
            :mod:`telewire.transfer`). Empty (the default) refuses every transfer; loading a
            graph that offers ``transfer_call`` with none logs a warning.
        session_max_s: hand the call over to a fresh provider session (conversation replayed)
            at the first turn boundary after this long, before the provider's own limit (60 min
            for OpenAI) ends it.
        reconnect_attempts: reconnections tried after the provider closes mid-call (1000/1001/
            1006/1011/1012/1013), with backoff doubling from 0.1 s up to
            ``reconnect_max_backoff_s``.
        connect_timeout_s: how long to wait for the connection and ``session.created``.
        max_message_bytes: the largest message accepted from the provider.
        max_audio_delta_ms: an audio delta from the provider holding more audio than this is
            dropped (and counted), like one that is not base64.
        history_max_items / history_max_chars: the conversation kept for replay on a reconnect
            or a handover, in items and in characters of text; the oldest items go first.
        options: the provider's own settings, checked against its ``Options`` model
            (Deepgram's listen and speak models, for example); a provider without one takes
            none. The validated model is ``provider_options``.
    """

    model_config = ConfigDict(extra="forbid")

    provider: str = "echo"
    turn_detection: TurnDetection = Field(default_factory=TurnDetection)
    tools: list[ToolSpec] = Field(default_factory=list)
    builtin_tools: list[Literal["end_call", "transfer_call"]] = Field(
        default_factory=lambda: ["end_call"])
    transfer_targets: list[str] = Field(default_factory=list)
    session_max_s: float = Field(default=3300.0, gt=0)
    reconnect_attempts: int = Field(default=6, ge=0)
    reconnect_max_backoff_s: float = Field(default=2.0, gt=0)
    url: str = "wss://api.openai.com/v1/realtime"
    model: str = "gpt-realtime"
    voice: str = "marin"
    system_prompt: str = "You are a helpful, concise voice assistant on a phone call."
    api_key: SecretStr | None = None
    transcription_model: str = "gpt-4o-mini-transcribe"
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_audio_delta_ms: int = Field(default=10_000, gt=0)
    history_max_items: int = Field(default=200, gt=0)
    history_max_chars: int = Field(default=50_000, gt=0)

    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, v: str) -> str:
        found = providers()
        if v not in found.loaded:
            raise ValueError(found.unknown("provider", v))
        return v

    @model_validator(mode="after")
    def _provider_options(self) -> "ProviderConfig":
        cls = provider_class(self.provider)
        for name, value in cls.defaults.items():
            if name not in type(self).model_fields:
                raise ValueError(f"provider {self.provider!r} declares a default for "
                                 f"{name!r}, which rt.config does not have")
            if name not in self.model_fields_set:
                self.__dict__[name] = value  # still unset: the provider's default
        options_model = cls.Options
        if options_model is None:
            if self.options:
                raise ValueError(f"provider {self.provider!r} takes no options; got "
                                 f"{', '.join(sorted(self.options))}")
            return self
        try:
            self._options = options_model.model_validate(self.options)
        except ValidationError as exc:
            problems = "; ".join(
                f"options.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"provider {self.provider!r}: {problems}") from None
        return self

    _transfer_patterns = field_validator("transfer_targets")(
        classmethod(lambda cls, v: check_patterns(v)))

    _options: Any = PrivateAttr(default=None)

    @property
    def provider_options(self) -> Any:
        """``options`` validated by the provider's ``Options`` model (``None`` without one)."""
        return self._options

    @model_validator(mode="after")
    def _warn_transfer_without_targets(self) -> "ProviderConfig":
        if "transfer_call" in self.builtin_tools and not self.transfer_targets:
            logger.warning("rt.config.builtin_tools offers transfer_call but transfer_targets "
                           "is empty, so every transfer will be refused; list the numbers or "
                           "sip: addresses calls may go to")
        return self


class RealtimeSession(abc.ABC):
    """One call's connection to a realtime model.

    Subclasses set :attr:`name`, :attr:`capabilities` and, when they take settings of their
    own, :attr:`Options`. The constructor is called as ``cls(config, sink, log=..., tools=...)``
    (``log``: the call's bound logger; ``tools``: the call's :class:`~telewire.tools.ToolBox`,
    ``None`` when the provider declares no tools).
    """

    #: Provider name used in config (``rt.config.provider``).
    name: str = ""
    #: What the provider can do (see :class:`ProviderCapabilities`).
    capabilities: ClassVar[ProviderCapabilities] = ProviderCapabilities()
    #: The pydantic model of ``rt.config.options``; ``None``: the provider takes no options.
    Options: ClassVar[type[BaseModel] | None] = None
    #: The provider's values for ``rt.config`` fields a graph leaves unset (``url``, ``model``,
    #: ``voice`` …), in place of :class:`ProviderConfig`'s, which are OpenAI Realtime's.
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: ProviderConfig, sink: FrameSink, *, log: Any = None,
                 tools: Any = None) -> None:
        self.config = config
        self.sink = sink
        self.log = log if log is not None else logger.bind(provider=self.name)
        self.tools = tools

    @abc.abstractmethod
    async def start(self, start: StartFrame) -> None:
        """Open the session for this call. Raises ``ProviderError`` when the provider refuses."""

    @abc.abstractmethod
    async def send_audio(self, frame: AudioFrame) -> None:
        """Forward caller audio (wire form untouched). Must not block on the model."""

    async def send_dtmf(self, frame: DTMFFrame) -> None:
        """A keypad digit the caller pressed (default: ignored)."""

    async def interrupt(self, frame: InterruptFrame) -> None:
        """Stop the current response (barge-in) (default: nothing to stop)."""

    async def steer(self, frame: SteerFrame) -> None:
        """Change instructions or voice mid-call (default: ignored)."""

    async def say(self, instructions: str, *, tag: str = "say") -> bool:
        """Have the model speak now as ``instructions`` say (a goodbye before hanging up), and
        return once that response is done: ``True`` when it completed, ``False`` when it did not
        or the provider cannot be asked (the default: returns ``False`` at once). The caller
        bounds the wait."""
        return False

    def counters(self) -> dict[str, int]:
        """What the session counted this call (reconnections, bad input dropped …), by name;
        the ``realtime_agent`` node logs the non-zero ones when the call ends (default: none)."""
        return {}

    def samples(self) -> dict[str, list[float]]:
        """Histogram samples of this call (``model_first_audio_seconds``: seconds from a
        response's start to its first audio), read once when the call ends (default: none)."""
        return {}

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the session; idempotent."""


def providers() -> PluginSet[type[RealtimeSession]]:
    """Every installed provider, by name: entry points in group ``telewire.providers`` (the
    built-in ``echo``, ``openai`` … are entry points of the ``telewire`` distribution), with the
    ones that failed to load and why."""
    return load_group(PROVIDER_GROUP, base=RealtimeSession, check=_check_provider)


def _check_provider(name: str, cls: Any) -> str | None:
    caps = getattr(cls, "capabilities", None)
    if not isinstance(caps, ProviderCapabilities):
        return (f"TypeError: {cls.__module__}.{cls.__qualname__}.capabilities is "
                f"{type(caps).__name__}, not a telewire.ProviderCapabilities")
    if not caps.audio_formats:
        return f"ValueError: provider {name!r} declares no audio format"
    options = getattr(cls, "Options", None)
    if options is not None and not (isinstance(options, type) and issubclass(options, BaseModel)):
        return f"TypeError: provider {name!r}: Options is not a pydantic model"
    return None


def provider_class(name: str) -> type[RealtimeSession]:
    """The session class of provider ``name``.

    Raises:
        ConfigError: no such provider; the message lists the installed ones, and the load
            error when ``name`` is installed but broken.
    """
    found = providers()
    cls = found.loaded.get(name)
    if cls is None:
        raise ConfigError(f"rt.config.provider: {found.unknown('provider', name)}")
    return cls


def create_session(config: ProviderConfig, sink: FrameSink, **kwargs: Any) -> RealtimeSession:
    """Build the session for ``config.provider`` (``kwargs`` go to its constructor).

    Raises:
        ConfigError: the provider is unknown (the message lists the known ones).
    """
    return provider_class(config.provider)(config, sink, **kwargs)
