"""The realtime provider interface and the provider lookup.

Depends on ``telewire.frames`` and ``telewire.errors``. Provider modules depend on this one.

A provider is a :class:`RealtimeSession` subclass: the ``realtime_agent`` node creates one per
call, ``start``s it with the call's :class:`~telewire.frames.StartFrame` and a sink, then feeds it
caller audio. The session pushes what the model says back into the sink as frames: agent
:class:`~telewire.frames.AudioFrame`s (mu-law wire form, untouched), transcripts, usage,
interrupts (the model heard the caller start talking), and at most one
:class:`~telewire.frames.EndFrame` when the session cannot continue.
"""

from __future__ import annotations

import abc
from typing import Any, Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from telewire.errors import ConfigError
from telewire.frames import AudioFrame, DTMFFrame, Frame, InterruptFrame, StartFrame, SteerFrame

__all__ = ["FrameSink", "ProviderConfig", "RealtimeSession", "create_session", "PROVIDERS"]

FrameSink = Callable[[Frame], Awaitable[None]]


class ProviderConfig(BaseModel):
    """``rt.config`` of the graph: which provider and how to reach it.

    Attributes:
        provider: ``echo`` (loops caller audio back) or ``openai`` (OpenAI Realtime GA and any
            compatible endpoint).
        url: the realtime WebSocket URL (``wss://api.openai.com/v1/realtime``); ``model`` is added
            as a query parameter.
        model: the model name.
        voice: the output voice.
        system_prompt: the session instructions.
        api_key: the key; when unset, ``OPENAI_API_KEY`` from the environment.
        transcription_model: the model that transcribes the caller's audio into transcript
            frames (``audio.input.transcription``); ``""`` turns caller transcription off.
        connect_timeout_s: how long to wait for the connection and ``session.created``.
        max_message_bytes: the largest message accepted from the provider.
    """

    model_config = ConfigDict(extra="forbid")

    provider: str = "echo"
    url: str = "wss://api.openai.com/v1/realtime"
    model: str = "gpt-realtime"
    voice: str = "marin"
    system_prompt: str = "You are a helpful, concise voice assistant on a phone call."
    api_key: SecretStr | None = None
    transcription_model: str = "gpt-4o-mini-transcribe"
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0)

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, v: str) -> str:
        if v not in PROVIDERS:
            raise ValueError(f"unknown provider {v!r}; known: {', '.join(PROVIDERS)}")
        return v


class RealtimeSession(abc.ABC):
    """One call's connection to a realtime model."""

    #: Provider name used in config (``rt.config.provider``).
    name: str = ""

    def __init__(self, config: ProviderConfig, sink: FrameSink) -> None:
        self.config = config
        self.sink = sink

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

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the session; idempotent."""


def _providers() -> dict[str, type[RealtimeSession]]:
    from telewire.realtime.echo import EchoSession
    from telewire.realtime.openai import OpenAISession

    return {EchoSession.name: EchoSession, OpenAISession.name: OpenAISession}


PROVIDERS = ("echo", "openai")


def create_session(config: ProviderConfig, sink: FrameSink, **kwargs: Any) -> RealtimeSession:
    """Build the session for ``config.provider``.

    Raises:
        ConfigError: the provider is unknown (the message lists the known ones).
    """
    providers = _providers()
    cls = providers.get(config.provider)
    if cls is None:
        raise ConfigError(f"rt.config.provider: unknown provider {config.provider!r}; "
                          f"known: {', '.join(sorted(providers))}")
    return cls(config, sink, **kwargs)
