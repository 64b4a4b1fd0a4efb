"""The provider kit's :class:`~telewire.testing.provider_kit.ProviderFake` for the Realtime fakes.

Depends on ``telewire.testing.provider_kit``, ``telewire.testing.fake_realtime`` and
``telewire.testing.fake_xai``; ``openai`` (the package's published GA types, a test-only
dependency) is imported when :meth:`RealtimeFake.client_errors` is first called.

:class:`RealtimeFake` drives a :class:`~telewire.testing.fake_realtime.FakeRealtimeServer` (the
``openai`` provider; also right for any GA-compatible endpoint), :class:`XAIRealtimeFake` a
:class:`~telewire.testing.fake_xai.FakeXAIServer` (the ``xai`` provider). Modes: ``"echo"`` is
the fake's echo mode, ``"quiet"`` its silent mode.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, Mapping, get_args

from telewire.testing.fake_realtime import FakeConnection, FakeRealtimeServer, talk_audio
from telewire.testing.fake_xai import FakeXAIServer
from telewire.testing.provider_kit import ProviderFake

__all__ = ["AzureRealtimeFake", "RealtimeFake", "XAIRealtimeFake"]

_MODES = {"echo": "echo", "quiet": "silent"}
_CHUNK_MS = 20
_FORMATS = {"audio/pcmu": "pcmu", "audio/pcma": "pcma", "audio/pcm": "pcm16"}
#: The client events that ask a reply to stop (barge-in).
_STOP_EVENTS = ("response.cancel", "conversation.item.truncate")


class RealtimeFake(ProviderFake):
    """A Realtime GA fake server for the provider kit (``provider = "openai"``).

    Args:
        mode: ``"echo"`` or ``"quiet"``.
        **server_args: passed to the fake server (``talk_speed``, ``session_max_s`` …).
    """

    provider = "openai"
    model = "gpt-realtime"
    server_class: type[FakeRealtimeServer] = FakeRealtimeServer

    def __init__(self, *, mode: str = "echo", **server_args: Any) -> None:
        if mode not in _MODES:
            raise ValueError(f"{type(self).__name__} mode must be one of {sorted(_MODES)}, "
                             f"not {mode!r}")
        super().__init__(mode=mode)
        self.server = self.server_class(mode=_MODES[mode], **server_args)
        self._after_stop_ms = 0.0
        self._slow: asyncio.Task[None] | None = None
        self._spoken = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        if self._slow is not None:
            self._slow.cancel()
        await self.server.stop()

    def rt_config(self) -> dict[str, Any]:
        return {"provider": self.provider, "url": self.server.url, "api_key": "test-key",
                "model": self.model}

    # -- observing -------------------------------------------------------------------------------

    async def wait_connected(self, count: int = 1, *, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            for index in range(count):
                conn = await self.server.wait_for_connection(index, timeout=timeout)
                (first, *_) = await conn.wait_for("session.update", timeout=timeout)
                refused = [e for e in conn.errors_sent if e.get("event_id") == first.get("event_id")
                           and first.get("event_id")]
                if refused:
                    raise AssertionError(f"connection {index}: the fake refused the first "
                                         f"session.update: {refused[0]['message']}")

    @property
    def connections(self) -> int:
        return len(self.server.connections)

    @property
    def latest(self) -> FakeConnection:
        """The latest connection.

        Raises:
            AssertionError: none yet.
        """
        assert self.server.connections, "no connection to the fake yet"
        return self.server.connections[-1]

    def audio_format(self) -> tuple[str, int, str, int]:
        audio = self.latest.session["audio"]
        out: list[Any] = []
        for side in ("input", "output"):
            fmt = audio[side]["format"]
            codec = _FORMATS.get(fmt.get("type"), str(fmt.get("type")))
            out += [codec, 8000 if codec in ("pcmu", "pcma") else int(fmt.get("rate", 24000))]
        return (out[0], out[1], out[2], out[3])

    def caller_audio(self) -> bytes:
        return b"".join(base64.b64decode(e["audio"]) for e in self.server.received
                        if e.get("type") == "input_audio_buffer.append")

    def instructions(self) -> str:
        return str(self.latest.session.get("instructions") or "")

    def voice(self) -> str | None:
        return self.latest.session["audio"]["output"].get("voice")

    def client_errors(self) -> list[str]:
        """Every client event that is not a published GA event (the ``openai`` package's
        types), and every one the fake refused with an ``error``."""
        problems = [f"{e.get('type')}: {why}" for e in self.server.received
                    if (why := self._reference_problem(e)) is not None]
        for conn in self.server.connections:
            problems += [f"refused: {e['code']}: {e['message']}" for e in conn.errors_sent
                         if e["code"] not in _RACES]
        return problems

    def _reference_problem(self, event: Mapping[str, Any]) -> str | None:
        return ga_problem(event)

    def texts_received(self) -> list[str]:
        out = []
        for event in self.server.received:
            item = event.get("item") if event.get("type") == "conversation.item.create" else None
            if isinstance(item, dict) and item.get("type") == "message":
                out += [p.get("text", "") for p in item.get("content") or ()
                        if isinstance(p, dict) and p.get("type") == "input_text"]
        return out

    # -- driving ---------------------------------------------------------------------------------

    def _audio(self, ms: int) -> bytes:
        self._spoken += 1
        return talk_audio(self._spoken, ms * 8)

    async def speak(self, ms: int, *, transcript: str = "") -> None:
        conn = self.latest
        audio = self._audio(ms)
        await conn.start_response()
        step = _CHUNK_MS * 8
        for offset in range(0, len(audio), step):
            await conn.push_audio(base64.b64encode(audio[offset:offset + step]).decode())
        await conn.finish_response(transcript, usage=_usage(ms, transcript))

    async def speak_slowly(self, ms: int) -> None:
        conn = self.latest
        audio = self._audio(ms)
        await conn.start_response()
        self._slow = asyncio.create_task(self._stream(conn, audio), name="realtime-fake-slow")

    async def _stream(self, conn: FakeConnection, audio: bytes) -> None:
        stops = _stops(conn)
        step = _CHUNK_MS * 8
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k, offset in enumerate(range(0, len(audio), step)):
            await asyncio.sleep(max(0.0, start + k * _CHUNK_MS / 1000 - loop.time()))
            if not conn.response_active or conn.closed.is_set():
                return  # cancelled (by the client, or by the fake's own VAD)
            asked = _stops(conn) > stops
            await conn.push_audio(base64.b64encode(audio[offset:offset + step]).decode())
            if asked:
                self._after_stop_ms += _CHUNK_MS
        if conn.response_active:
            await conn.finish_response()

    async def barge_in(self) -> None:
        await self.latest.push_speech_started()

    def audio_after_barge_in_ms(self) -> float:
        return self._after_stop_ms

    async def call_tool(self, name: str, arguments: dict[str, Any], *,
                        timeout: float = 10.0) -> Any:
        conn = self.latest
        call_id = conn.script_tool_call(name, json.dumps(arguments))
        await conn.create_response()
        async with asyncio.timeout(timeout):
            while True:
                for out in conn.function_outputs:
                    if out["call_id"] == call_id:
                        try:
                            return json.loads(out["output"])
                        except ValueError:
                            return out["output"]
                seen = len(conn.events("conversation.item.create"))
                await conn.wait_for("conversation.item.create", seen + 1, timeout=timeout)

    async def drop(self) -> None:
        await self.latest.drop()

    async def send_raw(self, message: str | bytes) -> None:
        await self.latest.ws.send(message)


def _usage(ms: int, transcript: str) -> dict[str, Any]:
    """GA usage of a spoken reply: 1 audio token per 50 ms, 1 text token per word."""
    audio, text = ms // 50, len(transcript.split())
    return {"total_tokens": audio + text, "input_tokens": 0, "output_tokens": audio + text,
            "input_token_details": {"text_tokens": 0, "audio_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": text, "audio_tokens": audio}}


def _stops(conn: FakeConnection) -> int:
    return sum(len(conn.events(kind)) for kind in _STOP_EVENTS)


class AzureRealtimeFake(RealtimeFake):
    """The GA fake as an Azure OpenAI resource for the provider kit (``provider = "azure"``):
    ``rt.config.model`` is the deployment name and the key goes in the ``api-key`` header,
    which the fake accepts as it accepts a bearer key."""

    provider = "azure"
    model = "my-realtime-deployment"


class XAIRealtimeFake(RealtimeFake):
    """xAI's Grok Voice Agent fake for the provider kit (``provider = "xai"``).

    :meth:`client_errors` checks each client event against the ``openai`` package's GA types
    where xAI is GA-shaped; ``session.update`` (xAI's own shape, see docs/providers/xai.md) is
    checked by the fake itself, and anything it refused is reported.
    """

    provider = "xai"
    model = "grok-voice-latest"
    server_class = FakeXAIServer

    def _reference_problem(self, event: Mapping[str, Any]) -> str | None:
        if event.get("type") in ("session.update", "pong"):
            return None  # not GA-shaped on xAI; the fake validates these itself
        return ga_problem(event)


#: Refusals a correct client may cause by a race it recovers from: a cancel or a create
#: crossing the end or start of a reply, a voice change crossing the model's first audio (the
#: xAI fake sends the first two without a code).
_RACES = frozenset({"response_cancel_not_active", "conversation_already_has_active_response",
                    "cannot_update_voice", None})

_CLIENT_TYPES: dict[str, Any] | None = None


def ga_problem(event: Mapping[str, Any]) -> str | None:
    """Why ``event`` is not exactly a published GA client event (``None`` when it is): its
    type is unknown to the ``openai`` package, it fails the type's model, it carries a field the
    model does not know, or the model does not give it back unchanged."""
    global _CLIENT_TYPES
    import pydantic

    if _CLIENT_TYPES is None:
        from openai.types.realtime.realtime_client_event import RealtimeClientEvent

        members = get_args(get_args(RealtimeClientEvent)[0])
        _CLIENT_TYPES = {get_args(m.model_fields["type"].annotation)[0]: m for m in members}
    model = _CLIENT_TYPES.get(str(event.get("type")))
    if model is None:
        return "not a GA client event type"
    try:
        obj = model.model_validate(event)
    except pydantic.ValidationError as exc:
        return f"invalid: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
    extras = _extras(obj, "")
    if extras:
        return f"fields unknown to openai's types: {extras}"
    if obj.model_dump(mode="json", exclude_unset=True) != dict(event):
        return "does not round-trip through openai's types"
    return None


def _extras(value: Any, path: str) -> list[str]:
    import pydantic

    found: list[str] = []
    if isinstance(value, pydantic.BaseModel):
        found += [f"{path}.{key}" for key in (value.model_extra or {})]
        for name in type(value).model_fields:
            found += _extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found += _extras(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _extras(item, f"{path}.{key}")
    return found
