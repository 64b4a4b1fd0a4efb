"""envelope_spec: a declarative description of carrier envelopes (JSON, binary audio), compiled once.

Depends on ``telewire.frames``, ``telewire.carrier``, ``telewire.g711`` and ``telewire.errors``
(pydantic validates the spec at load time; the compiled form uses no pydantic).

An :class:`EnvelopeSpec` says where each inbound event keeps its fields (dotted paths) and, for
bridges that stream audio in binary WebSocket messages (Asterisk chan_websocket, jambonz,
FreeSWITCH), which codec those carry (``binary_media``). A :class:`ResponseEnvelopeSpec` gives
string templates for outbound media, mark and clear, with ``${name}`` placeholders, or says that
outbound audio goes as binary messages (``media_format = "binary"``). :func:`compile_envelope`
turns both into a :class:`CompiledEnvelope` whose ``parse`` does one JSON parse per text message
and none per binary message, and whose ``media`` is two string concatenations per frame (call-level
fields are rendered once per call) or the audio bytes themselves.

mu-law on the wire passes through untouched. A bridge that carries L16 (16-bit little-endian PCM)
at 8 kHz is converted at this edge with :mod:`telewire.g711`: caller L16 becomes mu-law frames
for the graph, agent mu-law becomes L16 for the bridge. L16 at any other rate is refused (at
load time when the spec fixes the rate, at the start event when the bridge announces it):
telewire never resamples.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from telewire import jsonfast
from telewire.carrier import CallContext, Capabilities
from telewire.errors import CarrierProtocolError, ConfigError
from telewire.frames import (
    AudioFrame,
    DTMFFrame,
    EndFrame,
    Frame,
    MarkFrame,
    MediaFormat,
    StartFrame,
    audio_frame,
)
from telewire.g711 import ulaw_decode, ulaw_encode

__all__ = [
    "MAX_ID_LENGTH",
    "BinaryMedia",
    "CompiledEnvelope",
    "EnvelopeSpec",
    "IdRules",
    "ParameterLimits",
    "ResponseEnvelopeSpec",
    "check_id",
    "compile_envelope",
    "id_problem",
    "load_envelope_file",
    "shown",
]

EventKind = Literal["start", "media", "dtmf", "mark", "stop", "ignore"]
Codec = Literal["pcmu", "pcma", "l16"]
#: The only rate at which L16 is accepted: telewire converts L16 to mu-law but never resamples.
L16_RATE = 8000
_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")
_PLACEHOLDER_RE = re.compile(r"\$\{([a-z_]+)\}")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _is_base64(text: str) -> bool:
    """``text`` is padded standard base64: a multiple of 4 characters from the alphabet, with at
    most two ``=`` at the end. (Deleting the alphabet and looking at what is left is twice as
    fast as a regular expression; non-ASCII characters become ``?`` and are left over.)"""
    if len(text) % 4:
        return False
    rest = text.encode("ascii", "replace").translate(None, _B64_ALPHABET)
    return not rest or ((rest == b"=" or rest == b"==") and text.endswith(rest.decode()))


_MISSING = object()

#: The longest id accepted by default (``IdRules.max_length`` may allow up to 256).
MAX_ID_LENGTH = 128
#: A character no carrier id may hold: anything but letters, digits and ``. _ : @ -``. (``@``
#: because a SIP Call-ID is ``word@host``, and bridges pass it as the call id.)
_UNSAFE_ID_CHAR = re.compile(r"[^A-Za-z0-9._:@\-]")
#: Characters that could forge or break a log line: C0 and C1 controls, DEL, the Unicode line
#: and paragraph separators.
_CONTROL_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def shown(value: Any, limit: int = 64) -> str:
    """``repr(value)``, cut to about ``limit`` characters: how a value from the wire appears in an
    error message or a log line (control characters escaped, length bounded)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def id_problem(value: Any, *, max_length: int = MAX_ID_LENGTH,
               pattern: re.Pattern[str] | None = None) -> str | None:
    """Why ``value`` cannot be a carrier id, or ``None`` when it is safe to use as a store key,
    a REST path segment and in a log line.

    Safe means: a string of 1 to ``max_length`` characters, each a letter, a digit or one of
    ``. _ : @ -``, and not ``.`` or ``..``; and, when ``pattern`` is given, matching it whole
    (the carrier's documented shape, such as Twilio's ``CA`` + 32 hex digits).
    """
    if type(value) is not str:
        return f"must be a string, not {type(value).__name__}"
    if not value:
        return "is empty"
    if len(value) > max_length:
        return f"is {len(value)} characters long; an id may have at most {max_length}"
    bad = _UNSAFE_ID_CHAR.search(value)
    if bad is not None:
        return (f"holds {bad.group()!r}, which an id may not (only letters, digits and "
                ". _ : @ - are accepted)")
    if value == "." or value == "..":
        return "is a path step, not an id"
    if pattern is not None and not pattern.fullmatch(value):
        return f"is not shaped as this carrier's ids are ({pattern.pattern})"
    return None


def check_id(value: Any, *, carrier: str, field: str, what: str = "id",
             event: str | None = None, max_length: int = MAX_ID_LENGTH,
             pattern: re.Pattern[str] | None = None, fatal: bool = True) -> str:
    """``value`` when :func:`id_problem` finds nothing wrong with it; the check a carrier runs
    where an id enters (a start event, a webhook body).

    Raises:
        CarrierProtocolError: naming the carrier, the field, what the id is and why it is
            refused, with the value shown by :func:`shown`. Fatal unless ``fatal=False``.
    """
    problem = id_problem(value, max_length=max_length, pattern=pattern)
    if problem is None:
        return value
    where = f" in {event!r} event" if event else ""
    raise CarrierProtocolError(
        f"{carrier}: field {field!r} ({what}) {problem}: {shown(value)}{where}",
        carrier=carrier, event=event, field=field, fatal=fatal)


def _check_path(value: str | None) -> str | None:
    if value is not None and not _PATH_RE.match(value):
        raise ValueError(f"{value!r} is not a dotted field path like 'media.payload'")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartFields(_Strict):
    """Where a start event keeps the call's identity and media format."""

    stream_id: str
    call_id: str | None = None
    account_id: str | None = None
    custom_parameters: str | None = None
    encoding: str | None = None
    sample_rate: str | None = None
    channels: str | None = None
    tracks: str | None = None

    _paths = field_validator("*")(classmethod(lambda cls, v: _check_path(v)))


class MediaFields(_Strict):
    """Where a media event keeps its audio and counters."""

    payload: str
    timestamp: str | None = None
    sequence: str | None = None
    track: str | None = None
    stream_id: str | None = None

    _paths = field_validator("*")(classmethod(lambda cls, v: _check_path(v)))


class DigitFields(_Strict):
    """Where a DTMF event keeps its digit."""

    digit: str
    duration: str | None = None

    _paths = field_validator("*")(classmethod(lambda cls, v: _check_path(v)))


class MarkFields(_Strict):
    """Where a mark event keeps the echoed name."""

    name: str

    _paths = field_validator("*")(classmethod(lambda cls, v: _check_path(v)))


class StopFields(_Strict):
    """Where a stop event keeps its reason, if it has one."""

    reason: str | None = None

    _paths = field_validator("*")(classmethod(lambda cls, v: _check_path(v)))


class IdRules(_Strict):
    """``[envelope_spec.ids]``: what the start event's ids must look like.

    Every id that arrives (stream id, call id, account id) is refused unless it is 1 to
    ``max_length`` characters of letters, digits and ``. _ : @ -``, and not ``.`` or ``..``; so
    no ``/``, ``?``, space or control character reaches a store key, a REST path or a log line.
    A pattern narrows one id further to the carrier's documented shape and makes it required.

    Attributes:
        stream_id / call_id / account_id: a regular expression (Python syntax) the whole id
            must match, such as ``"CA[0-9a-fA-F]{32}"``; unset: the safe charset alone.
        max_length: the longest id accepted (at most 256).
    """

    stream_id: str | None = None
    call_id: str | None = None
    account_id: str | None = None
    max_length: int = Field(default=MAX_ID_LENGTH, ge=1, le=256)

    @field_validator("stream_id", "call_id", "account_id")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"{v!r} is not a regular expression: {exc}") from None
        return v


class ParameterLimits(_Strict):
    """``[envelope_spec.parameter_limits]``: bounds on the start event's custom parameters.

    A start whose custom parameters exceed them, or whose names or values hold a control
    character, is refused (and the call ends).

    Attributes:
        max_count: how many parameters a start may carry.
        max_name_length / max_value_length: the longest name and value (in characters).
    """

    max_count: int = Field(default=32, ge=0, le=1024)
    max_name_length: int = Field(default=256, ge=1, le=65536)
    max_value_length: int = Field(default=2048, ge=1, le=1_048_576)


class BinaryMedia(_Strict):
    """Binary WebSocket messages are raw audio: what they carry when the start event says nothing.

    Attributes:
        codec: ``"pcmu"`` (G.711 mu-law, passed through untouched) or ``"l16"`` (16-bit
            little-endian PCM, converted to and from mu-law at this edge).
        sample_rate: samples per second; must be 8000 (telewire never resamples).
    """

    codec: Literal["pcmu", "l16"] = "pcmu"
    sample_rate: int = L16_RATE

    @field_validator("sample_rate")
    @classmethod
    def _never_resample(cls, v: int) -> int:
        if v != L16_RATE:
            raise ValueError(f"must be {L16_RATE}, not {v!r}: telewire converts L16 to mu-law "
                             "but never resamples; configure the bridge for 8000 Hz")
        return v


class EnvelopeSpec(_Strict):
    """How to read a carrier's inbound messages.

    Attributes:
        format: how text messages are encoded; only ``"json"`` for now.
        event: dotted path of the field naming the event type (``"event"``, ``"eventType"``),
            or a list of paths tried in order (jambonz: ``["event", "type"]``).
        default_event: the wire event name of a JSON message that has none of the ``event``
            fields (jambonz's first message, call metadata with no event field, is the start);
            must be a key of ``events``. Unset: such a message is an error naming the field.
        events: wire event name to kind (``start``, ``media``, ``dtmf``, ``mark``, ``stop`` or
            ``ignore``). An event not listed is an error naming it.
        binary_media: binary WebSocket messages are audio in this codec (no parse at all);
            unset: the bridge sends only text, and a binary message is refused.
        start / media / dtmf / mark / stop: field paths per kind (``media`` only when some wire
            event carries audio inside JSON).
        start_expect: dotted path to the value the start event must have when it has that field
            (``{"mixType" = "mono"}``); another value ends the call with an error naming both.
        encodings: wire encoding name to codec (``"audio/x-mulaw" = "pcmu"``, ``"slin" = "l16"``).
        default_encoding / default_sample_rate: used when the start event names none (for
            binary bridges ``binary_media`` gives them instead).
        subprotocol: the WebSocket subprotocol the bridge requests (``"audio.jambonz.org"``), for
            the server to accept.
        ids: what the start event's ids must look like (see :class:`IdRules`).
        parameter_limits: bounds on its custom parameters (see :class:`ParameterLimits`).
    """

    format: Literal["json"] = "json"
    event: str | list[str] = "event"
    default_event: str | None = None
    events: dict[str, EventKind]
    binary_media: BinaryMedia | None = None
    start: StartFields
    media: MediaFields | None = None
    dtmf: DigitFields | None = None
    mark: MarkFields | None = None
    stop: StopFields = Field(default_factory=StopFields)
    start_expect: dict[str, str | int | bool] = Field(default_factory=dict)
    encodings: dict[str, Codec] = Field(
        default_factory=lambda: {"audio/x-mulaw": "pcmu", "audio/pcmu": "pcmu", "pcmu": "pcmu"}
    )
    default_encoding: Codec = "pcmu"
    default_sample_rate: int = Field(default=8000, gt=0)
    subprotocol: str | None = None
    ids: IdRules = Field(default_factory=IdRules)
    parameter_limits: ParameterLimits = Field(default_factory=ParameterLimits)

    @field_validator("event")
    @classmethod
    def _event_path(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            if not v:
                raise ValueError("must name at least one field path")
            for path in v:
                _check_path(path)
            return v
        return _check_path(v)  # type: ignore[return-value]

    @field_validator("start_expect")
    @classmethod
    def _expect_paths(cls, v: dict[str, Any]) -> dict[str, Any]:
        for path in v:
            _check_path(path)
        return v

    @model_validator(mode="after")
    def _kinds_have_fields(self) -> "EnvelopeSpec":
        kinds = set(self.events.values())
        if "start" not in kinds:
            raise ValueError("events must map some wire event to 'start'")
        if "media" not in kinds and self.binary_media is None:
            raise ValueError("events must map some wire event to 'media' (or set binary_media "
                             "for a bridge that sends audio in binary messages)")
        if "media" in kinds and self.media is None:
            raise ValueError("events maps a wire event to 'media' but there is no [media] table")
        if "dtmf" in kinds and self.dtmf is None:
            raise ValueError("events maps a wire event to 'dtmf' but there is no [dtmf] table")
        if "mark" in kinds and self.mark is None:
            raise ValueError("events maps a wire event to 'mark' but there is no [mark] table")
        for name in ("call_id", "account_id"):
            if getattr(self.ids, name) is not None and getattr(self.start, name) is None:
                raise ValueError(f"ids.{name} gives a pattern, but [start] has no {name} path "
                                 "for the start event's id to be read from")
        if self.default_event is not None and self.default_event not in self.events:
            raise ValueError(f"default_event {self.default_event!r} is not a key of events "
                             f"({', '.join(sorted(self.events))})")
        if self.binary_media is not None:
            both = {"default_encoding", "default_sample_rate"} & self.model_fields_set
            if both:
                raise ValueError(f"set binary_media.codec/sample_rate or {sorted(both)[0]}, not "
                                 "both: binary_media gives the default wire format")
        elif self.default_encoding == "l16" and self.default_sample_rate != L16_RATE:
            raise ValueError(f"default_sample_rate {self.default_sample_rate} with "
                             f"default_encoding 'l16': telewire converts L16 to mu-law only at "
                             f"{L16_RATE} Hz and never resamples")
        return self

    def wire_default(self) -> tuple[str, int]:
        """The wire codec and rate assumed when the start event names none."""
        if self.binary_media is not None:
            return self.binary_media.codec, self.binary_media.sample_rate
        return self.default_encoding, self.default_sample_rate


_TEMPLATE_FIELDS = {
    "media": ("stream_id", "call_id", "payload"),
    "mark": ("stream_id", "call_id", "name"),
    "clear": ("stream_id", "call_id"),
    "hangup": ("stream_id", "call_id"),
}


class ResponseEnvelopeSpec(_Strict):
    """How to write a carrier's outbound messages: audio, and JSON templates with ``${name}``s.

    ``media`` may use ``${stream_id}``, ``${call_id}``, ``${payload}`` (base64 audio); ``mark``
    may use ``${stream_id}``, ``${call_id}``, ``${name}``; ``clear`` may use ``${stream_id}`` and
    ``${call_id}``, and so may ``hangup``. Placeholders must sit inside JSON strings.
    ``mark``/``clear``/``hangup`` left out mean the carrier has none (for ``hangup``: closing the
    socket is the hang-up).

    Attributes:
        format: how text messages are encoded; only ``"json"`` for now.
        media_format: ``"json"``: agent audio goes base64 in the ``media`` template (text
            messages); ``"binary"``: as raw audio bytes in binary messages (no ``media``
            template). Marks and clear are always text messages.
        codec: the audio codec the bridge plays: ``"pcmu"`` or ``"l16"`` (8 kHz, converted from
            the agent's mu-law). Unset: the codec the call's inbound audio arrived in.
        media / mark / clear / hangup: the templates.
    """

    format: Literal["json"] = "json"
    media_format: Literal["json", "binary"] = "json"
    codec: Literal["pcmu", "l16"] | None = None
    media: str | None = None
    mark: str | None = None
    clear: str | None = None
    hangup: str | None = None

    @model_validator(mode="after")
    def _templates_are_json(self) -> "ResponseEnvelopeSpec":
        if self.media_format == "json" and self.media is None:
            raise ValueError("media: a template is required when media_format is 'json' "
                             "(or set media_format = 'binary')")
        if self.media_format == "binary" and self.media is not None:
            raise ValueError("media: no template with media_format 'binary' (audio goes as raw "
                             f"bytes in binary messages), got {self.media!r}")
        for name in ("media", "mark", "clear", "hangup"):
            template = getattr(self, name)
            if template is not None:
                _Template(name, template)  # raises ValueError naming the template and field
        return self


class _Template:
    """A template split at its placeholders; renders by concatenation."""

    __slots__ = ("name", "parts", "fields")

    def __init__(self, name: str, text: str) -> None:
        allowed = _TEMPLATE_FIELDS[name]
        self.name = name
        self.parts: list[str] = []
        self.fields: list[str] = []
        pos = 0
        for m in _PLACEHOLDER_RE.finditer(text):
            if m.group(1) not in allowed:
                raise ValueError(
                    f"{name} template uses ${{{m.group(1)}}}; allowed: "
                    + ", ".join(f"${{{f}}}" for f in allowed)
                )
            self.parts.append(text[pos : m.start()])
            self.fields.append(m.group(1))
            pos = m.end()
        self.parts.append(text[pos:])
        if "${" in "".join(self.parts):
            raise ValueError(f"{name} template has a malformed placeholder: {text!r}")
        probe = self.render({f: f"@@{f}@@" for f in allowed})
        try:
            doc = json.loads(probe)
        except ValueError as exc:
            raise ValueError(f"{name} template is not valid JSON: {exc}: {text!r}") from None
        found = _strings(doc)
        for f in self.fields:
            if f"@@{f}@@" not in found:
                raise ValueError(f"{name} template: ${{{f}}} must be a whole JSON string value")

    def render(self, values: Mapping[str, str]) -> str:
        out = [self.parts[0]]
        for f, part in zip(self.fields, self.parts[1:]):
            out.append(values[f])
            out.append(part)
        return "".join(out)

    def bind(self, values: Mapping[str, str], free: str | None) -> tuple[str, str] | str:
        """Render every field but ``free``; return ``(before, after)`` around it, or the whole
        text when ``free`` is ``None`` or unused."""
        marker = "\x00"  # never in a rendered JSON template
        full = self.render({**values, **({free: marker} if free else {})})
        if free is None or marker not in full:
            return full
        before, _, after = full.partition(marker)
        return before, after


def _strings(doc: Any) -> set[str]:
    out: set[str] = set()
    stack = [doc]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            out.add(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return out


def _json_escape(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)[1:-1]


def _accessor(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _get(doc: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        if type(doc) is not dict:
            return _MISSING
        doc = doc.get(k, _MISSING)
        if doc is _MISSING:
            return _MISSING
    return doc


def _getter(keys: tuple[str, ...]) -> Callable[[Any], Any]:
    """A compiled accessor for ``keys`` (one or two levels are unrolled: the per-frame paths)."""
    if len(keys) == 1:
        (k0,) = keys
        return lambda doc: doc.get(k0, _MISSING)
    if len(keys) == 2:
        k0, k1 = keys

        def two(doc: dict) -> Any:
            inner = doc.get(k0)
            return inner.get(k1, _MISSING) if type(inner) is dict else _MISSING
        return two
    return lambda doc: _get(doc, keys)


def _extractor(paths: Sequence[tuple[str, ...] | None]) -> Callable[[dict], tuple[Any, ...]]:
    """One compiled function returning the values at ``paths`` of a JSON object, in order
    (:data:`_MISSING` where a path is absent or ``None``): each shared parent is looked up once.
    The per-media-message extraction, so it is generated code with the keys inlined."""
    lines = ["def extract(doc):"]
    names: dict[tuple[str, ...], str] = {(): "doc"}
    out: list[str] = []
    for path in paths:
        if not path:
            out.append("MISSING")
            continue
        for depth in range(1, len(path) + 1):
            node = path[:depth]
            if node in names:
                continue
            parent = names[node[:-1]]
            var = names[node] = f"v{len(names)}"
            guard = "" if parent == "doc" else f" if type({parent}) is dict else MISSING"
            lines.append(f"    {var} = {parent}.get({node[-1]!r}, MISSING){guard}")
        out.append(names[path])
    lines.append(f"    return ({', '.join(out)},)")
    namespace: dict[str, Any] = {"MISSING": _MISSING}
    exec("\n".join(lines), namespace)  # keys are embedded with repr(): no injection
    return namespace["extract"]


def _as_int(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError


_WIRE = "_envelope_wire"  # call.state key: the call's inbound wire codec, set by the start event
_OUT = "_envelope_media"  # call.state key: the call's bound outbound media form


class CompiledEnvelope:
    """An envelope spec pair compiled into accessors and templates. Immutable, shared by calls.

    ``parse`` is the body of a carrier's ``telewire_parse_inbound`` hook; ``media``, ``mark``,
    ``clear`` and ``hangup`` are the bodies of the outbound hooks. Errors and start frames name
    the call's carrier (``call.carrier``); ``carrier`` here is the label the spec was compiled under (a
    preset name), used when the call has none.
    """

    def __init__(self, carrier: str, spec: EnvelopeSpec, response: ResponseEnvelopeSpec) -> None:
        self.carrier = carrier
        self.spec = spec
        self.response = response
        paths = [spec.event] if isinstance(spec.event, str) else list(spec.event)
        self._event = _accessor(paths[0])
        self._event_path = paths[0]
        self._more_events = tuple((_accessor(p), p) for p in paths[1:])
        self._default_event = spec.default_event
        self._events = dict(spec.events)
        self._binary = spec.binary_media
        self._start = {k: _accessor(v) for k, v in spec.start.model_dump().items() if v}
        self._id_max = spec.ids.max_length
        #: (name, what it is, path, pattern or None) of each id the start event may carry
        self._ids = tuple(
            (name, what, ".".join(self._start[name]),
             re.compile(getattr(spec.ids, name)) if getattr(spec.ids, name) else None)
            for name, what in (("stream_id", "stream id"), ("call_id", "call id"),
                               ("account_id", "account id"))
            if name in self._start)
        self._limits = spec.parameter_limits
        self._expect = tuple((_accessor(p), p, v) for p, v in spec.start_expect.items())
        m = spec.media
        self._payload = _accessor(m.payload) if m else ()
        self._payload_path = m.payload if m else ""
        self._ts = _accessor(m.timestamp) if m and m.timestamp else None
        self._seq = _accessor(m.sequence) if m and m.sequence else None
        self._track = _accessor(m.track) if m and m.track else None
        self._media_sid = _accessor(m.stream_id) if m and m.stream_id else None
        # compiled accessors of the per-frame fields
        self._media_fields = _extractor((self._payload, self._media_sid, self._ts, self._seq,
                                         self._track))
        self._get_event = _getter(self._event)
        self._digit = _accessor(spec.dtmf.digit) if spec.dtmf else None
        self._duration = _accessor(spec.dtmf.duration) if spec.dtmf and spec.dtmf.duration else None
        self._mark = _accessor(spec.mark.name) if spec.mark else None
        self._stop_reason = _accessor(spec.stop.reason) if spec.stop.reason else None
        self._media_t = _Template("media", response.media) if response.media else None
        self._mark_t = _Template("mark", response.mark) if response.mark else None
        self._clear_t = _Template("clear", response.clear) if response.clear else None
        self._hangup_t = _Template("hangup", response.hangup) if response.hangup else None
        self._wire_default = spec.wire_default()[0]
        self.has_marks = self._mark_t is not None and self._mark is not None
        self.has_clear = self._clear_t is not None
        self.has_dtmf = self._digit is not None
        #: Whether audio travels in binary WebSocket messages in either direction.
        self.binary = self._binary is not None or response.media_format == "binary"

    def capabilities(self, base: Capabilities) -> Capabilities:
        """``base`` narrowed to what this envelope can express: no marks, clear or DTMF where the
        spec has none, binary frames exactly when audio travels in them, and mu-law 8 kHz on
        the graph side (L16 is converted at this edge)."""
        return replace(
            base,
            clear=base.clear and self.has_clear,
            marks=base.marks and self.has_marks,
            dtmf=base.dtmf and self.has_dtmf,
            text_frames_only=not self.binary,
            media_format=MediaFormat(codec="pcmu", sample_rate=L16_RATE, channels=1),
        )

    # ----------------------------------------------------------------------------- inbound

    def _error(self, call: CallContext, msg: str, *, event: str | None = None,
               field: str | None = None, fatal: bool = False) -> CarrierProtocolError:
        carrier = call.carrier or self.carrier
        where = f" in {event!r} event" if event else ""
        return CarrierProtocolError(
            f"{carrier}: {msg}{where}", carrier=carrier, event=event, field=field, fatal=fatal,
        )

    def parse(self, call: CallContext, message: str | bytes) -> list[Frame]:
        """Parse one inbound message. See ``telewire_parse_inbound`` for the contract.

        A binary message, when the spec has ``binary_media``, is audio: mu-law becomes an
        :class:`AudioFrame` whose payload is the very bytes object received; L16 is converted
        to mu-law first. Without ``binary_media`` a binary message is refused (not fatally).
        """
        if type(message) is not str:
            if self._binary is not None:
                return [self._parse_binary(call, message)]
            raise self._error(call, f"binary WebSocket message ({len(message)} bytes) refused: "
                              "this envelope spec has no binary_media, so the bridge sends "
                              "only JSON text messages")
        try:
            doc = jsonfast.loads(message)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            snippet = message[:60] if isinstance(message, str) else repr(message[:60])
            raise self._error(call, f"message is not JSON ({exc}); starts with "
                              f"{snippet!r}") from None
        if type(doc) is not dict:
            raise self._error(call, f"message is a JSON {type(doc).__name__}, not an object")
        event = self._get_event(doc)
        path = self._event_path
        if event is _MISSING:
            event, path = self._other_event(call, doc)
        kind = self._events.get(event) if isinstance(event, str) else None
        if kind == "media":
            return [self._parse_media(call, doc, event)]
        if kind is None:
            known = ", ".join(sorted(self._events))
            raise self._error(call, f"unknown event {shown(event)} (field {path!r}); known: "
                              f"{known}",
                              field=path)
        if kind == "ignore":
            return []
        if kind == "start":
            return [self._parse_start(call, doc, event)]
        if not call.started:
            raise self._error(call, "received before the start event", event=event)
        if kind == "dtmf":
            digit = self._need(call, doc, self._digit, event, "digit")
            dur = None
            if self._duration is not None:
                raw = _get(doc, self._duration)
                if raw is not _MISSING and raw is not None:
                    dur = self._int(call, raw, event, ".".join(self._duration))
            try:
                return [DTMFFrame(digit=str(digit), duration_ms=dur)]
            except ValueError:
                path = ".".join(self._digit)  # type: ignore[arg-type]
                raise self._error(call, f"DTMF digit must be one of 0-9 * # A-D, not "
                                  f"{shown(digit)} (field {path!r})", event=event,
                                  field=path) from None
        if kind == "mark":
            name = self._need(call, doc, self._mark, event, "name")
            if not isinstance(name, str) or not name:
                path = ".".join(self._mark)  # type: ignore[arg-type]
                raise self._error(call, f"mark name must be a non-empty string, not {shown(name)} "
                                  f"(field {path!r})", event=event, field=path)
            return [MarkFrame(name=name)]
        # stop
        detail = ""
        if self._stop_reason is not None:
            raw = _get(doc, self._stop_reason)
            if isinstance(raw, str) and raw:
                detail = raw
        call.stopped = True
        return [EndFrame(reason="carrier_stop", detail=detail)]

    def _other_event(self, call: CallContext, doc: dict) -> tuple[Any, str]:
        """The event of a message without the first event field: a later path, else the
        default event, else an error naming the field."""
        for keys, path in self._more_events:
            event = _get(doc, keys)
            if event is not _MISSING:
                return event, path
        if self._default_event is not None:
            return self._default_event, self._event_path
        paths = (self._event_path, *(p for _, p in self._more_events))
        fields = " or ".join(repr(p) for p in paths)
        raise self._error(call, f"message has no {fields} field", field=self._event_path)

    def _parse_binary(self, call: CallContext, message: bytes) -> AudioFrame:
        if not call.started:
            raise self._error(call, f"binary media ({len(message)} bytes) received before the "
                              "start event")
        wire = call.state.get(_WIRE, self._wire_default)
        if wire == "l16":
            return AudioFrame(payload=self._from_l16(call, message, "binary media"),
                              codec="pcmu", sample_rate=8000)
        if not message:
            raise self._error(call, "empty binary media message (no audio)")
        return AudioFrame(payload=message, codec=wire, sample_rate=8000)

    def _from_l16(self, call: CallContext, pcm: bytes, what: str, event: str | None = None,
                  field: str | None = None) -> bytes:
        if not pcm or len(pcm) % 2:
            raise self._error(call, f"{what} is not 16-bit L16 audio: {len(pcm)} bytes "
                              f"({'empty' if not pcm else 'odd length'})", event=event,
                              field=field)
        return ulaw_encode(pcm)

    def _need(self, call: CallContext, doc: dict, keys: tuple[str, ...] | None, event: str,
              what: str) -> Any:
        assert keys is not None
        value = _get(doc, keys)
        if value is _MISSING:
            path = ".".join(keys)
            raise self._error(call, f"missing field {path!r} ({what})", event=event, field=path)
        return value

    def _int(self, call: CallContext, raw: Any, event: str, path: str, *,
             fatal: bool = False) -> int:
        try:
            return _as_int(raw)
        except ValueError:
            raise self._error(call, f"field {path!r} must be a whole number, not {shown(raw)}",
                              event=event, field=path, fatal=fatal) from None

    def _parse_media(self, call: CallContext, doc: dict, event: str) -> AudioFrame:
        if not call.started:
            raise self._error(call, "media received before the start event", event=event)
        payload, sid, raw_ts, raw_seq, raw_track = self._media_fields(doc)
        if type(payload) is not str:
            if payload is _MISSING:
                raise self._error(call, f"missing field {self._payload_path!r}", event=event,
                                  field=self._payload_path)
            raise self._error(call, f"field {self._payload_path!r} must be a base64 string, "
                              f"not {type(payload).__name__}", event=event,
                              field=self._payload_path)
        if not _is_base64(payload):
            raise self._error(call, f"field {self._payload_path!r} is not valid base64 "
                              f"(length {len(payload)}, starts {payload[:16]!r})",
                              event=event, field=self._payload_path)
        if sid is not _MISSING and sid != call.stream_id:
            path = ".".join(self._media_sid)  # type: ignore[arg-type]
            raise self._error(call, f"stream id {shown(sid)} does not match this call's "
                              f"{call.stream_id!r} (field {path!r})", event=event, field=path)
        ts = seq = None
        if type(raw_ts) is str and raw_ts.isdigit():  # how Twilio sends counters
            ts = int(raw_ts)
        elif raw_ts is not _MISSING:
            ts = self._int(call, raw_ts, event, ".".join(self._ts))  # type: ignore[arg-type]
        if type(raw_seq) is str and raw_seq.isdigit():
            seq = int(raw_seq)
        elif raw_seq is not _MISSING:
            seq = self._int(call, raw_seq, event, ".".join(self._seq))  # type: ignore[arg-type]
        track = "outbound" if type(raw_track) is str and raw_track.startswith("outbound") else "inbound"
        fmt = call.media_format
        audio: str | bytes = payload
        if call.state.get(_WIRE) == "l16":
            audio = self._from_l16(call, binascii.a2b_base64(payload), f"field "
                                   f"{self._payload_path!r}", event, self._payload_path)
        return audio_frame(audio, fmt.codec, fmt.sample_rate, ts, seq, track, None)

    def _parse_start(self, call: CallContext, doc: dict, event: str) -> StartFrame:
        values: dict[str, Any] = {}
        for name, keys in self._start.items():
            v = _get(doc, keys)
            if v is not _MISSING and v is not None:
                values[name] = v
        sid = values.get("stream_id")
        if not isinstance(sid, str) or not sid:
            path = ".".join(self._start["stream_id"])
            problem = (f"missing or empty field {path!r}" if sid is None or sid == ""
                       else f"field {path!r} must be a non-empty string, not {shown(sid)}")
            raise self._error(call, f"{problem} (stream id)", event=event, field=path,
                              fatal=not call.started)
        if call.started:
            raise self._error(call, f"second start event (stream {shown(sid)}) ignored; this "
                              f"call is {call.stream_id!r}", event=event,
                              fatal=sid != call.stream_id)
        self._check_ids(call, values, event)
        params = values.get("custom_parameters", {})
        if not isinstance(params, dict):
            path = ".".join(self._start["custom_parameters"])
            raise self._error(call, f"field {path!r} must be an object, not {shown(params)}",
                              event=event, field=path, fatal=True)
        custom = self._custom_parameters(call, params, event) if params else {}
        for keys, path, expected in self._expect:
            v = _get(doc, keys)
            if v is not _MISSING and v != expected:
                raise self._error(call, f"field {path!r} is {shown(v)}; this envelope spec needs "
                                  f"{expected!r} (start_expect)", event=event, field=path,
                                  fatal=True)
        codec, rate = self.spec.wire_default()
        if "encoding" in values:
            enc = values["encoding"]
            found = self.spec.encodings.get(enc) if isinstance(enc, str) else None
            if found is None:
                path = ".".join(self._start["encoding"])
                raise self._error(call, f"unsupported encoding {shown(enc)} in {path!r}; "
                                  f"supported: {sorted(self.spec.encodings)}", event=event,
                                  field=path, fatal=True)
            codec = found
        if "sample_rate" in values:
            rate = self._int(call, values["sample_rate"], event,
                             ".".join(self._start["sample_rate"]), fatal=True)
        channels = 1
        if "channels" in values:
            channels = self._int(call, values["channels"], event,
                                 ".".join(self._start["channels"]), fatal=True)
        if codec == "l16":
            if rate != L16_RATE:
                path = ".".join(self._start["sample_rate"]) if "sample_rate" in values else None
                where = f"field {path!r} is" if path else "the envelope spec's default rate is"
                raise self._error(call, f"L16 at {rate} Hz: {where} {rate}, but telewire "
                                  f"converts L16 to mu-law only at {L16_RATE} Hz and never "
                                  "resamples; configure the bridge for 8000 Hz", event=event,
                                  field=path, fatal=True)
            if channels != 1:
                path = ".".join(self._start["channels"])
                raise self._error(call, f"L16 with {channels} channels (field {path!r}); only "
                                  "mono is converted", event=event, field=path, fatal=True)
            graph_codec = "pcmu"
        else:
            graph_codec = codec
        try:
            fmt = MediaFormat(codec=graph_codec, sample_rate=rate, channels=channels)
        except ValueError as exc:
            raise self._error(call, str(exc), event=event, fatal=True) from None
        tracks = values.get("tracks", ("inbound",))
        if isinstance(tracks, list):
            tracks = tuple(t if isinstance(t, str) else str(t.get("name", t)) if isinstance(t, dict)
                           else str(t) for t in tracks)
        else:
            tracks = ("inbound",)
        frame = StartFrame(
            carrier=call.carrier or self.carrier,
            stream_id=sid,
            call_id=values.get("call_id", ""),
            account_id=values.get("account_id", ""),
            custom_parameters=custom,
            media_format=fmt,
            tracks=tracks,
        )
        call.apply_start(frame)
        call.state[_WIRE] = codec
        return frame

    def _check_ids(self, call: CallContext, values: dict[str, Any], event: str) -> None:
        """Every id of the start event is safe (and of the carrier's shape where the spec pins
        one), or the start is refused, fatally, naming the field and showing the value."""
        carrier = call.carrier or self.carrier
        for name, what, path, pattern in self._ids:
            value = values.get(name)
            if value is None:
                if pattern is None:
                    continue
                raise self._error(call, f"missing field {path!r} ({what}); this carrier always "
                                  "sends it", event=event, field=path, fatal=True)
            check_id(value, carrier=carrier, field=path, what=what, event=event,
                     max_length=self._id_max, pattern=pattern)

    def _custom_parameters(self, call: CallContext, params: dict, event: str) -> dict[str, str]:
        """The start event's custom parameters as strings, within the spec's limits and free of
        control characters; otherwise the start is refused, fatally, naming the parameter."""
        limits = self._limits
        path = ".".join(self._start["custom_parameters"])
        if len(params) > limits.max_count:
            raise self._error(call, f"field {path!r} has {len(params)} custom parameters; at "
                              f"most {limits.max_count} are accepted", event=event, field=path,
                              fatal=True)
        out: dict[str, str] = {}
        for k, v in params.items():
            name, value = str(k), v if type(v) is str else str(v)
            if not name or len(name) > limits.max_name_length:
                raise self._error(call, f"custom parameter name {shown(name)} in {path!r} must "
                                  f"have 1 to {limits.max_name_length} characters",
                                  event=event, field=path, fatal=True)
            if _CONTROL_CHAR.search(name):
                raise self._error(call, f"custom parameter name {shown(name)} in {path!r} holds "
                                  "a control character", event=event, field=path, fatal=True)
            where = f"{path}.{name}"
            if len(value) > limits.max_value_length:
                raise self._error(call, f"custom parameter {where!r} is {len(value)} characters "
                                  f"long; at most {limits.max_value_length} are accepted",
                                  event=event, field=where, fatal=True)
            if _CONTROL_CHAR.search(value):
                raise self._error(call, f"custom parameter {where!r} holds a control character: "
                                  f"{shown(value)}", event=event, field=where, fatal=True)
            out[name] = value
        return out

    # ----------------------------------------------------------------------------- outbound

    def _call_values(self, call: CallContext) -> dict[str, str]:
        return {"stream_id": _json_escape(call.stream_id), "call_id": _json_escape(call.call_id)}

    def _bind_media(self, call: CallContext) -> tuple[Any, ...]:
        """The call's outbound media form: ``(stream_id, kind, before, after, codec)`` where
        kind is ``json``/``binary`` and ``-pass`` (as it is) or ``-l16`` (converted)."""
        codec = self.response.codec or call.state.get(_WIRE, self._wire_default)
        how = "l16" if codec == "l16" else "pass"
        if self._media_t is None:
            bound: tuple[Any, ...] = (call.stream_id, f"binary-{how}", b"", b"", codec)
        else:
            parts = self._media_t.bind(self._call_values(call), "payload")
            bound = (call.stream_id, f"json-{how}", parts[0], parts[1], codec)
        call.state[_OUT] = bound
        return bound

    def media(self, call: CallContext, frame: AudioFrame) -> str | bytes:
        """Wrap agent audio: a text message from the template (per-call prefix and suffix are
        rendered once per call), or the audio bytes for a binary message.

        mu-law passes through as it is (a bytes payload is returned as the same object); for an
        L16 bridge the mu-law is converted to L16.

        Raises:
            ValueError: the frame's codec cannot be played by this bridge (naming both).
        """
        bound = call.state.get(_OUT)
        if bound is None or bound[0] != call.stream_id:
            bound = self._bind_media(call)
        kind = bound[1]
        if kind == "json-pass":
            return bound[2] + frame.b64 + bound[3]
        wanted = "pcmu" if bound[4] == "l16" else bound[4]
        if frame.codec != wanted:
            raise ValueError(f"cannot send {frame.codec} audio to a bridge that plays "
                             f"{bound[4]} ({self.carrier} envelope; expected {wanted} frames)")
        if kind == "binary-pass":
            payload = frame.payload
            return payload if type(payload) is bytes else frame.data
        pcm = ulaw_decode(frame.data)
        if kind == "binary-l16":
            return pcm
        return bound[2] + base64.b64encode(pcm).decode("ascii") + bound[3]

    def mark(self, call: CallContext, name: str) -> str | None:
        """The mark message for ``name``, or ``None`` when the spec has no mark template."""
        if self._mark_t is None:
            return None
        return self._mark_t.render({**self._call_values(call), "name": _json_escape(name)})

    def clear(self, call: CallContext) -> str | None:
        """The clear message, or ``None`` when the spec has no clear template."""
        if self._clear_t is None:
            return None
        return self._clear_t.render(self._call_values(call))

    def hangup(self, call: CallContext) -> str | None:
        """The hang-up message, or ``None`` when the spec has none (closing the socket ends the
        call)."""
        if self._hangup_t is None:
            return None
        return self._hangup_t.render(self._call_values(call))


def _format_validation(exc: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid envelope spec"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (value {value!r})"
        lines.append(f"  {loc}: {err['msg']}{shown}")
    return "\n".join(lines)


def compile_envelope(
    carrier: str,
    spec: EnvelopeSpec | Mapping[str, Any],
    response: ResponseEnvelopeSpec | Mapping[str, Any],
    *,
    source: str = "<envelope spec>",
) -> CompiledEnvelope:
    """Validate and compile an inbound/outbound spec pair.

    Raises:
        ConfigError: naming ``source``, the field path and the offending value.
    """
    try:
        s = spec if isinstance(spec, EnvelopeSpec) else EnvelopeSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, f"{source} [envelope_spec]")) from None
    try:
        r = (response if isinstance(response, ResponseEnvelopeSpec)
             else ResponseEnvelopeSpec.model_validate(dict(response)))
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, f"{source} [response_envelope_spec]")) from None
    return CompiledEnvelope(carrier, s, r)


def load_envelope_file(carrier: str, path: str | Path, *,
                       ids: Mapping[str, Any] | None = None) -> CompiledEnvelope:
    """Load a TOML file with ``[envelope_spec]`` and ``[response_envelope_spec]`` tables.

    Args:
        carrier: the label the spec is compiled under.
        path: the TOML file.
        ids: replaces the file's ``[envelope_spec.ids]`` (see :class:`IdRules`): a carrier pins
            its own ids' documented shape this way while the file stays a preset that a
            compatible bridge with other ids can use.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read envelope spec: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    for table in ("envelope_spec", "response_envelope_spec"):
        if not isinstance(data.get(table), dict):
            raise ConfigError(f"{p}: missing table [{table}]")
    spec = data["envelope_spec"] if ids is None else {**data["envelope_spec"], "ids": dict(ids)}
    return compile_envelope(carrier, spec, data["response_envelope_spec"], source=str(p))

