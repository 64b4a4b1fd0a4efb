"""envelope_spec: a declarative description of a carrier's JSON envelopes, compiled once.

Depends on ``telewire.frames``, ``telewire.carrier`` and ``telewire.errors`` (pydantic validates
the spec at load time; the compiled form uses no pydantic).

An :class:`EnvelopeSpec` says where each inbound event keeps its fields (dotted paths); a
:class:`ResponseEnvelopeSpec` gives string templates for outbound media, mark and clear, with
``${name}`` placeholders. :func:`compile_envelope` turns both into a :class:`CompiledEnvelope`
whose ``parse`` does one JSON parse per message and whose ``media`` is two string concatenations
per frame (call-level fields are rendered once per call).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from telewire import jsonfast
from telewire.carrier import CallContext
from telewire.errors import CarrierProtocolError, ConfigError
from telewire.frames import (
    AudioFrame,
    DTMFFrame,
    EndFrame,
    Frame,
    MarkFrame,
    MediaFormat,
    StartFrame,
)

__all__ = [
    "CompiledEnvelope",
    "EnvelopeSpec",
    "ResponseEnvelopeSpec",
    "compile_envelope",
    "load_envelope_file",
]

EventKind = Literal["start", "media", "dtmf", "mark", "stop", "ignore"]
_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")
_PLACEHOLDER_RE = re.compile(r"\$\{([a-z_]+)\}")
_B64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_MISSING = object()


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


class EnvelopeSpec(_Strict):
    """How to read a carrier's inbound JSON messages.

    Attributes:
        format: only ``"json"`` for now.
        event: dotted path of the field naming the event type (``"event"``, ``"eventType"``).
        events: wire event name to kind (``start``, ``media``, ``dtmf``, ``mark``, ``stop`` or
            ``ignore``). An event not listed is an error naming it.
        start / media / dtmf / mark / stop: field paths per kind.
        encodings: wire encoding name to codec (``"audio/x-mulaw" = "pcmu"``).
        default_encoding / default_sample_rate: used when the start event names none.
    """

    format: Literal["json"] = "json"
    event: str = "event"
    events: dict[str, EventKind]
    start: StartFields
    media: MediaFields
    dtmf: DigitFields | None = None
    mark: MarkFields | None = None
    stop: StopFields = Field(default_factory=StopFields)
    encodings: dict[str, Literal["pcmu", "pcma", "l16"]] = Field(
        default_factory=lambda: {"audio/x-mulaw": "pcmu", "audio/pcmu": "pcmu", "pcmu": "pcmu"}
    )
    default_encoding: Literal["pcmu", "pcma", "l16"] = "pcmu"
    default_sample_rate: int = Field(default=8000, gt=0)

    @field_validator("event")
    @classmethod
    def _event_path(cls, v: str) -> str:
        return _check_path(v)  # type: ignore[return-value]

    @model_validator(mode="after")
    def _kinds_have_fields(self) -> "EnvelopeSpec":
        kinds = set(self.events.values())
        for needed in ("start", "media"):
            if needed not in kinds:
                raise ValueError(f"events must map some wire event to {needed!r}")
        if "dtmf" in kinds and self.dtmf is None:
            raise ValueError("events maps a wire event to 'dtmf' but there is no [dtmf] table")
        if "mark" in kinds and self.mark is None:
            raise ValueError("events maps a wire event to 'mark' but there is no [mark] table")
        return self


_TEMPLATE_FIELDS = {
    "media": ("stream_id", "call_id", "payload"),
    "mark": ("stream_id", "call_id", "name"),
    "clear": ("stream_id", "call_id"),
}


class ResponseEnvelopeSpec(_Strict):
    """How to write a carrier's outbound JSON messages, as templates with ``${name}`` fields.

    ``media`` may use ``${stream_id}``, ``${call_id}``, ``${payload}``; ``mark`` may use
    ``${stream_id}``, ``${call_id}``, ``${name}``; ``clear`` may use ``${stream_id}`` and
    ``${call_id}``. Placeholders must sit inside JSON strings. ``mark``/``clear`` left out mean
    the carrier has none.
    """

    format: Literal["json"] = "json"
    media: str
    mark: str | None = None
    clear: str | None = None

    @model_validator(mode="after")
    def _templates_are_json(self) -> "ResponseEnvelopeSpec":
        for name in ("media", "mark", "clear"):
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


def _as_int(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError


@dataclass(frozen=True, slots=True)
class _Fields:
    """Compiled accessor tuples for one event kind (absent optional fields are ``None``)."""

    paths: Mapping[str, tuple[str, ...] | None]


class CompiledEnvelope:
    """An envelope spec pair compiled into accessors and templates. Immutable, shared by calls.

    ``parse`` is the body of a carrier's ``telewire_parse_inbound`` hook; ``media``, ``mark``
    and ``clear`` are the bodies of the outbound hooks.
    """

    def __init__(self, carrier: str, spec: EnvelopeSpec, response: ResponseEnvelopeSpec) -> None:
        self.carrier = carrier
        self.spec = spec
        self.response = response
        self._event = _accessor(spec.event)
        self._event_path = spec.event
        self._events = dict(spec.events)
        self._start = {k: _accessor(v) for k, v in spec.start.model_dump().items() if v}
        m = spec.media
        self._payload = _accessor(m.payload)
        self._payload_path = m.payload
        self._ts = _accessor(m.timestamp) if m.timestamp else None
        self._seq = _accessor(m.sequence) if m.sequence else None
        self._track = _accessor(m.track) if m.track else None
        self._media_sid = _accessor(m.stream_id) if m.stream_id else None
        self._digit = _accessor(spec.dtmf.digit) if spec.dtmf else None
        self._duration = _accessor(spec.dtmf.duration) if spec.dtmf and spec.dtmf.duration else None
        self._mark = _accessor(spec.mark.name) if spec.mark else None
        self._stop_reason = _accessor(spec.stop.reason) if spec.stop.reason else None
        self._media_t = _Template("media", response.media)
        self._mark_t = _Template("mark", response.mark) if response.mark else None
        self._clear_t = _Template("clear", response.clear) if response.clear else None
        self.has_marks = self._mark_t is not None and self._mark is not None
        self.has_clear = self._clear_t is not None
        self.has_dtmf = self._digit is not None

    # ----------------------------------------------------------------------------- inbound

    def _error(self, msg: str, *, event: str | None = None, field: str | None = None,
               fatal: bool = False) -> CarrierProtocolError:
        where = f" in {event!r} event" if event else ""
        return CarrierProtocolError(
            f"{self.carrier}: {msg}{where}", carrier=self.carrier, event=event, field=field,
            fatal=fatal,
        )

    def parse(self, call: CallContext, message: str | bytes) -> list[Frame]:
        """Parse one inbound message. See ``telewire_parse_inbound`` for the contract."""
        try:
            doc = jsonfast.loads(message)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            snippet = message[:60] if isinstance(message, str) else repr(message[:60])
            raise self._error(f"message is not JSON ({exc}); starts with {snippet!r}") from None
        if type(doc) is not dict:
            raise self._error(f"message is a JSON {type(doc).__name__}, not an object")
        event = _get(doc, self._event)
        if event is _MISSING:
            raise self._error(f"message has no {self._event_path!r} field", field=self._event_path)
        kind = self._events.get(event) if isinstance(event, str) else None
        if kind == "media":
            return [self._parse_media(call, doc, event)]
        if kind is None:
            known = ", ".join(sorted(self._events))
            raise self._error(
                f"unknown event {event!r} (field {self._event_path!r}); known: {known}",
                field=self._event_path,
            )
        if kind == "ignore":
            return []
        if kind == "start":
            return [self._parse_start(call, doc, event)]
        if not call.started:
            raise self._error("received before the start event", event=event)
        if kind == "dtmf":
            digit = self._need(doc, self._digit, event, "digit")
            dur = None
            if self._duration is not None:
                raw = _get(doc, self._duration)
                if raw is not _MISSING and raw is not None:
                    dur = self._int(raw, event, ".".join(self._duration))
            try:
                return [DTMFFrame(digit=str(digit), duration_ms=dur)]
            except ValueError as exc:
                path = ".".join(self._digit)
                raise self._error(f"{exc} (field {path!r})", event=event, field=path) from None
        if kind == "mark":
            name = self._need(doc, self._mark, event, "name")
            if not isinstance(name, str) or not name:
                raise self._error(f"mark name must be a non-empty string, not {name!r} "
                                  f"(field {'.'.join(self._mark)!r})",
                                  event=event, field=".".join(self._mark))
            return [MarkFrame(name=name)]
        # stop
        reason = "carrier_stop"
        detail = ""
        if self._stop_reason is not None:
            raw = _get(doc, self._stop_reason)
            if isinstance(raw, str) and raw:
                detail = raw
        call.stopped = True
        return [EndFrame(reason=reason, detail=detail)]

    def _need(self, doc: dict, keys: tuple[str, ...] | None, event: str, what: str) -> Any:
        assert keys is not None
        value = _get(doc, keys)
        if value is _MISSING:
            path = ".".join(keys)
            raise self._error(f"missing field {path!r} ({what})", event=event, field=path)
        return value

    def _int(self, raw: Any, event: str, path: str) -> int:
        try:
            return _as_int(raw)
        except ValueError:
            raise self._error(f"field {path!r} must be a whole number, not {raw!r}",
                              event=event, field=path) from None

    def _parse_media(self, call: CallContext, doc: dict, event: str) -> AudioFrame:
        if not call.started:
            raise self._error("media received before the start event", event=event)
        payload = _get(doc, self._payload)
        if type(payload) is not str:
            if payload is _MISSING:
                raise self._error(f"missing field {self._payload_path!r}", event=event,
                                  field=self._payload_path)
            raise self._error(f"field {self._payload_path!r} must be a base64 string, not "
                              f"{type(payload).__name__}", event=event, field=self._payload_path)
        if len(payload) % 4 or not _B64_RE.fullmatch(payload):
            raise self._error(f"field {self._payload_path!r} is not valid base64 "
                              f"(length {len(payload)}, starts {payload[:16]!r})",
                              event=event, field=self._payload_path)
        if self._media_sid is not None:
            sid = _get(doc, self._media_sid)
            if sid is not _MISSING and sid != call.stream_id:
                raise self._error(f"stream id {sid!r} does not match this call's "
                                  f"{call.stream_id!r} (field {'.'.join(self._media_sid)!r})",
                                  event=event,
                                  field=".".join(self._media_sid))
        ts = seq = None
        if self._ts is not None:
            raw = _get(doc, self._ts)
            if raw is not _MISSING:
                ts = self._int(raw, event, ".".join(self._ts))
        if self._seq is not None:
            raw = _get(doc, self._seq)
            if raw is not _MISSING:
                seq = self._int(raw, event, ".".join(self._seq))
        track = "inbound"
        if self._track is not None:
            raw = _get(doc, self._track)
            if isinstance(raw, str) and raw.startswith("outbound"):
                track = "outbound"
        fmt = call.media_format
        return AudioFrame(payload=payload, codec=fmt.codec, sample_rate=fmt.sample_rate,
                          timestamp_ms=ts, sequence=seq, track=track)

    def _parse_start(self, call: CallContext, doc: dict, event: str) -> StartFrame:
        values: dict[str, Any] = {}
        for name, keys in self._start.items():
            v = _get(doc, keys)
            if v is not _MISSING and v is not None:
                values[name] = v
        sid = values.get("stream_id")
        if not isinstance(sid, str) or not sid:
            path = ".".join(self._start["stream_id"])
            raise self._error(f"missing or empty field {path!r} (stream id)", event=event,
                              field=path, fatal=not call.started)
        if call.started:
            raise self._error(f"second start event (stream {sid!r}) ignored; this call is "
                              f"{call.stream_id!r}", event=event, fatal=sid != call.stream_id)
        for name in ("call_id", "account_id"):
            if name in values and not isinstance(values[name], str):
                path = ".".join(self._start[name])
                raise self._error(f"field {path!r} must be a string, not {values[name]!r}",
                                  event=event, field=path, fatal=True)
        params = values.get("custom_parameters", {})
        if not isinstance(params, dict):
            path = ".".join(self._start["custom_parameters"])
            raise self._error(f"field {path!r} must be an object, not {params!r}", event=event,
                              field=path, fatal=True)
        codec = self.spec.default_encoding
        if "encoding" in values:
            enc = values["encoding"]
            codec = self.spec.encodings.get(enc) if isinstance(enc, str) else None
            if codec is None:
                path = ".".join(self._start["encoding"])
                raise self._error(f"unsupported encoding {enc!r} in {path!r}; supported: "
                                  f"{sorted(self.spec.encodings)}", event=event, field=path,
                                  fatal=True)
        rate = self.spec.default_sample_rate
        if "sample_rate" in values:
            rate = self._int(values["sample_rate"], event, ".".join(self._start["sample_rate"]))
        channels = 1
        if "channels" in values:
            channels = self._int(values["channels"], event, ".".join(self._start["channels"]))
        try:
            fmt = MediaFormat(codec=codec, sample_rate=rate, channels=channels)
        except ValueError as exc:
            raise self._error(str(exc), event=event, fatal=True) from None
        tracks = values.get("tracks", ("inbound",))
        if isinstance(tracks, list):
            tracks = tuple(t if isinstance(t, str) else str(t.get("name", t)) if isinstance(t, dict)
                           else str(t) for t in tracks)
        else:
            tracks = ("inbound",)
        frame = StartFrame(
            carrier=self.carrier,
            stream_id=sid,
            call_id=values.get("call_id", ""),
            account_id=values.get("account_id", ""),
            custom_parameters={str(k): str(v) for k, v in params.items()},
            media_format=fmt,
            tracks=tracks,
        )
        call.apply_start(frame)
        return frame

    # ----------------------------------------------------------------------------- outbound

    def _call_values(self, call: CallContext) -> dict[str, str]:
        return {"stream_id": _json_escape(call.stream_id), "call_id": _json_escape(call.call_id)}

    def media(self, call: CallContext, frame: AudioFrame) -> str:
        """Wrap agent audio; the per-call prefix and suffix are rendered once per call."""
        bound = call.state.get("_envelope_media")
        if bound is None or bound[0] != call.stream_id:
            parts = self._media_t.bind(self._call_values(call), "payload")
            bound = (call.stream_id, parts[0], parts[1])
            call.state["_envelope_media"] = bound
        return bound[1] + frame.b64 + bound[2]

    def mark(self, call: CallContext, name: str) -> str | None:
        if self._mark_t is None:
            return None
        return self._mark_t.render({**self._call_values(call), "name": _json_escape(name)})

    def clear(self, call: CallContext) -> str | None:
        if self._clear_t is None:
            return None
        return self._clear_t.render(self._call_values(call))


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


def load_envelope_file(carrier: str, path: str | Path) -> CompiledEnvelope:
    """Load a TOML file with ``[envelope_spec]`` and ``[response_envelope_spec]`` tables."""
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
    return compile_envelope(carrier, data["envelope_spec"], data["response_envelope_spec"],
                            source=str(p))


_ = MappingProxyType, Callable  # re-exported types used in annotations above
