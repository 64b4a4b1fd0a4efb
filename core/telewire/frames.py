"""Typed frames: the small immutable values that flow along a call's graph.

Depends only on the standard library and ``telewire.errors``; everything else depends on it.

Frames are created 50+ times a second per call, so they are plain slotted dataclasses validated in
``__post_init__`` (no pydantic here). An :class:`AudioFrame` keeps the wire form it arrived in
(base64 text or raw bytes) and converts only when a consumer asks, so the pass-through path never
decodes.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping

__all__ = [
    "ANSWERED_BY",
    "AUDIO_CODECS",
    "DTMF_DIGITS",
    "AnsweredByFrame",
    "AudioFrame",
    "DTMFFrame",
    "EndFrame",
    "ErrorFrame",
    "Frame",
    "InterruptFrame",
    "MarkFrame",
    "MediaFormat",
    "StartFrame",
    "SteerFrame",
    "TranscriptFrame",
    "UsageFrame",
    "audio_frame",
    "bytes_per_ms",
]

#: Codecs a frame may carry. ``pcmu`` is G.711 mu-law, ``pcma`` G.711 A-law, ``l16`` 16-bit
#: little-endian linear PCM.
AUDIO_CODECS = frozenset({"pcmu", "pcma", "l16"})
#: Every digit a telephone keypad can send (RFC 4733 events 0-15).
DTMF_DIGITS = frozenset("0123456789*#ABCD")

_EMPTY: Mapping[str, str] = MappingProxyType({})


def bytes_per_ms(codec: str, sample_rate: int, channels: int = 1) -> float:
    """Return how many bytes of ``codec`` audio make one millisecond."""
    width = 2 if codec == "l16" else 1
    return sample_rate * width * channels / 1000.0


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """The audio format on one side of a call: codec, sample rate, channels."""

    codec: str = "pcmu"
    sample_rate: int = 8000
    channels: int = 1

    def __post_init__(self) -> None:
        if self.codec not in AUDIO_CODECS:
            raise ValueError(f"codec must be one of {sorted(AUDIO_CODECS)}, not {self.codec!r}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, not {self.sample_rate!r}")
        if self.channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {self.channels!r}")


PCMU_8K = MediaFormat()


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """Base of every frame. ``kind`` is a short stable name used in logs and event archives."""

    kind: ClassVar[str] = "frame"


@dataclass(frozen=True, slots=True, kw_only=True)
class StartFrame(Frame):
    """The call has started: who, where, and in which audio format.

    Attributes:
        carrier: carrier name (``"twilio"``).
        stream_id: the carrier's media stream id (Twilio ``streamSid``).
        call_id: the carrier's call id (Twilio ``callSid``).
        account_id: the carrier account (Twilio ``accountSid``), when sent.
        custom_parameters: string parameters passed from the answer document.
        media_format: the caller audio's format.
        tracks: the tracks the carrier will send.
    """

    kind: ClassVar[str] = "start"
    carrier: str
    stream_id: str
    call_id: str = ""
    account_id: str = ""
    custom_parameters: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    media_format: MediaFormat = PCMU_8K
    tracks: tuple[str, ...] = ("inbound",)

    def __post_init__(self) -> None:
        if not self.stream_id:
            raise ValueError("StartFrame.stream_id must not be empty")
        if not isinstance(self.custom_parameters, MappingProxyType):
            object.__setattr__(
                self, "custom_parameters", MappingProxyType(dict(self.custom_parameters))
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioFrame(Frame):
    """A chunk of audio in its wire form.

    ``payload`` is whatever arrived: base64 text (JSON carriers, the realtime API) or raw bytes
    (binary carriers). :attr:`b64` and :attr:`data` convert on demand; nothing is converted
    otherwise.

    Attributes:
        payload: base64 ``str`` or raw ``bytes``.
        codec: one of :data:`AUDIO_CODECS`.
        sample_rate: samples per second.
        timestamp_ms: the carrier's media time of the first sample, when it gave one.
        sequence: the carrier's chunk counter, when it gave one.
        track: ``"inbound"`` (caller) or ``"outbound"`` (agent).
        item_id: for agent audio, the model's conversation item it belongs to.
    """

    kind: ClassVar[str] = "audio"
    payload: str | bytes
    codec: str = "pcmu"
    sample_rate: int = 8000
    timestamp_ms: int | None = None
    sequence: int | None = None
    track: str = "inbound"
    item_id: str | None = None

    def __post_init__(self) -> None:
        if self.codec not in AUDIO_CODECS:
            raise ValueError(f"AudioFrame.codec must be one of {sorted(AUDIO_CODECS)}, not {self.codec!r}")
        if self.sample_rate <= 0:
            raise ValueError(f"AudioFrame.sample_rate must be positive, not {self.sample_rate!r}")

    @property
    def b64(self) -> str:
        """The audio as base64 text (no work when it arrived as text)."""
        p = self.payload
        return p if isinstance(p, str) else base64.b64encode(p).decode("ascii")

    @property
    def data(self) -> bytes:
        """The audio as raw bytes (decodes base64 when it arrived as text)."""
        p = self.payload
        if isinstance(p, bytes):
            return p
        try:
            return binascii.a2b_base64(p, strict_mode=True)
        except binascii.Error as exc:  # validated at the edge; this is a bug upstream
            raise ValueError(f"AudioFrame payload is not valid base64: {exc}") from None

    @property
    def byte_length(self) -> int:
        """Length of the raw audio in bytes, computed without decoding base64."""
        p = self.payload
        if isinstance(p, bytes):
            return len(p)
        n = len(p)
        if n == 0:
            return 0
        return n * 3 // 4 - (2 if p.endswith("==") else 1 if p.endswith("=") else 0)

    @property
    def duration_ms(self) -> float:
        """How long this audio plays, in milliseconds."""
        return self.byte_length / bytes_per_ms(self.codec, self.sample_rate)


def _audio_frame_maker() -> Callable[..., AudioFrame]:
    new = object.__new__
    slots = AudioFrame.__dict__
    set_payload, set_codec, set_rate, set_ts, set_seq, set_track, set_item = (
        slots[name].__set__ for name in ("payload", "codec", "sample_rate", "timestamp_ms",
                                         "sequence", "track", "item_id"))

    def audio_frame(payload: str | bytes, codec: str, sample_rate: int, timestamp_ms: int | None,
                    sequence: int | None, track: str, item_id: str | None, /) -> AudioFrame:
        """An :class:`AudioFrame` built without re-validating ``codec`` and ``sample_rate``.

        For the per-frame paths only (carrier parsing, provider audio), whose codec and rate come
        from a validated :class:`MediaFormat` or are constants: it skips the generated keyword
        ``__init__`` and ``__post_init__`` (about 0.6 µs a frame). Anything else should call
        ``AudioFrame(...)``.
        """
        frame = new(AudioFrame)
        set_payload(frame, payload)
        set_codec(frame, codec)
        set_rate(frame, sample_rate)
        set_ts(frame, timestamp_ms)
        set_seq(frame, sequence)
        set_track(frame, track)
        set_item(frame, item_id)
        return frame

    return audio_frame


audio_frame = _audio_frame_maker()


@dataclass(frozen=True, slots=True, kw_only=True)
class DTMFFrame(Frame):
    """A keypad digit pressed by the caller."""

    kind: ClassVar[str] = "dtmf"
    digit: str
    duration_ms: int | None = None

    def __post_init__(self) -> None:
        if self.digit not in DTMF_DIGITS:
            raise ValueError(f"DTMF digit must be one of 0-9 * # A-D, not {self.digit!r}")


#: Who answered an outbound call, as answering-machine detection reports it (Twilio's
#: ``AnsweredBy`` values): a person, a machine (``machine_start``: detected at the greeting's
#: start; ``machine_end_beep`` / ``_silence`` / ``_other``: at its end, so a message left now is
#: recorded), a fax, or ``unknown`` (detection gave up).
ANSWERED_BY = frozenset({"human", "machine_start", "machine_end_beep", "machine_end_silence",
                         "machine_end_other", "fax", "unknown"})


@dataclass(frozen=True, slots=True, kw_only=True)
class AnsweredByFrame(Frame):
    """The answering-machine detection result of an outbound call (``telewire dial
    --machine-detection``), delivered by the carrier's status webhook while the call streams.

    It leaves ``tel_in`` on port ``answered_by``, so a graph can leave a message after the beep
    (``machine_end_beep``) or hang up on a machine.

    Attributes:
        result: one of :data:`ANSWERED_BY`.
        detection_ms: how long detection took, when the carrier says.
    """

    kind: ClassVar[str] = "answered_by"
    result: str
    detection_ms: int | None = None

    def __post_init__(self) -> None:
        if self.result not in ANSWERED_BY:
            raise ValueError(f"AnsweredByFrame.result must be one of {sorted(ANSWERED_BY)}, "
                             f"not {self.result!r}")
        if self.detection_ms is not None and self.detection_ms < 0:
            raise ValueError(f"AnsweredByFrame.detection_ms must be >= 0, not "
                             f"{self.detection_ms!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkFrame(Frame):
    """A playback mark: sent to the carrier after audio, echoed back when that audio has played
    (or was cleared)."""

    kind: ClassVar[str] = "mark"
    name: str

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("MarkFrame.name must not be empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class InterruptFrame(Frame):
    """Stop the agent talking now (barge-in). ``source`` says who asked: ``"dtmf"``, ``"vad"``,
    ``"model"`` or ``"operator"``.

    Once the carrier side has cleared its buffer it passes the frame on with ``item_id`` (the
    agent item that was playing) and ``heard_ms`` (how much of it the caller heard), so the model
    can be truncated at what was actually heard.
    """

    kind: ClassVar[str] = "interrupt"
    source: str
    reason: str = ""
    item_id: str | None = None
    heard_ms: float | None = None
    #: when the interrupt was raised (``time.monotonic()``), for the barge-in reaction time;
    #: process-local, so it is neither compared nor recorded
    raised_at: float = field(default_factory=time.monotonic, compare=False, repr=False,
                             metadata={"record": False})


@dataclass(frozen=True, slots=True, kw_only=True)
class SteerFrame(Frame):
    """Change the agent mid-call. ``None`` fields are left as they are."""

    kind: ClassVar[str] = "steer"
    instructions: str | None = None
    voice: str | None = None

    def __post_init__(self) -> None:
        if self.instructions is None and self.voice is None:
            raise ValueError("SteerFrame needs instructions or voice")


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptFrame(Frame):
    """Text of what was said. ``role`` is ``"caller"`` or ``"agent"``; ``final`` marks a
    completed transcript as opposed to a delta."""

    kind: ClassVar[str] = "transcript"
    role: str
    text: str
    item_id: str | None = None
    final: bool = True

    def __post_init__(self) -> None:
        if self.role not in ("caller", "agent"):
            raise ValueError(f"TranscriptFrame.role must be 'caller' or 'agent', not {self.role!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageFrame(Frame):
    """Usage of one model response, as the provider reported it.

    ``billing`` is the provider's unit: ``"tokens"`` (the token fields are billed) or
    ``"seconds"`` (``seconds`` is billed, for duration-priced providers). ``input_cached_tokens``
    is the cached part of the input tokens (a subset, not in addition);
    ``input_cached_text_tokens`` / ``_audio_`` / ``_image_`` split it where the provider does.
    ``cost_usd`` (this response) and ``call_cost_usd`` (the call so far) are filled by the
    ``realtime_agent`` node from its price table; ``None`` when not priced or unknown (the exact
    figure is the node's :class:`telewire.cost.CallCost`).
    """

    kind: ClassVar[str] = "usage"
    provider: str
    model: str = ""
    response_id: str | None = None
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    input_cached_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0
    billing: str = "tokens"
    input_image_tokens: int = 0
    input_cached_text_tokens: int = 0
    input_cached_audio_tokens: int = 0
    input_cached_image_tokens: int = 0
    seconds: float = 0.0
    cost_usd: float | None = None
    call_cost_usd: float | None = None

    def __post_init__(self) -> None:
        if self.billing not in ("tokens", "seconds"):
            raise ValueError(f"UsageFrame.billing must be 'tokens' or 'seconds', "
                             f"not {self.billing!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class EndFrame(Frame):
    """The call is over. ``reason`` is short and stable (``"carrier_stop"``, ``"hangup"``,
    ``"socket_closed"``, ``"provider_error"`` …); ``detail`` is free text."""

    kind: ClassVar[str] = "end"
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorFrame(Frame):
    """Something went wrong that the graph should know about. ``fatal`` errors end the call."""

    kind: ClassVar[str] = "error"
    source: str
    message: str
    fatal: bool = False
    details: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
