"""The part of Bandwidth's ``start`` message the envelope spec cannot read: per-track media formats.

Depends on the standard library, ``telewire.carrier``, ``telewire.frames`` and ``telewire.errors``;
runs once per call, never per media message.

Bandwidth's documentation gives ``metadata.tracks`` as a list of objects
``{"name": "inbound", "mediaFormat": {"encoding": "audio/PCMU", "sampleRate": 8000}}``, while
Bandwidth's own pipecat plugin tests send plain names (``["inbound"]``). Both are accepted (the
shape is unverified on a live call). What matters for pass-through is the format: every track
that states one must be mu-law at 8000 Hz, since that is what is relayed back untouched.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from telewire.carrier import CallContext
from telewire.envelope import shown
from telewire.errors import CarrierProtocolError
from telewire.frames import StartFrame

__all__ = ["PCMU_NAMES", "check_start"]

CARRIER = "bandwidth"
#: Encoding names read as G.711 mu-law, compared case-insensitively (Bandwidth documents
#: ``audio/PCMU``; its outbound content type is ``audio/pcmu``).
PCMU_NAMES = frozenset({"audio/pcmu", "audio/x-mulaw", "pcmu"})


def _fail(call: CallContext, message: str, field: str) -> CarrierProtocolError:
    # The envelope applied the start to the call before this check ran; take it back, so a
    # refused start leaves the call as unstarted as it found it.
    call.started = False
    call.stream_id = call.call_id = call.account_id = ""
    call.custom_parameters = {}
    return CarrierProtocolError(f"{CARRIER}: {message} in 'start' event", carrier=CARRIER,
                                event="start", field=field, fatal=True)


def _rate(value: Any) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def check_start(call: CallContext, message: str, start: StartFrame) -> StartFrame:
    """Validate the ``start`` message's tracks and return the start frame to emit.

    Args:
        call: the call, to which the envelope has just applied ``start``.
        message: the raw ``start`` message (parsed again here: once per call).
        start: the frame the envelope built.

    Returns:
        ``start``, with ``tracks`` set to the track names when the envelope could not name them.

    Raises:
        CarrierProtocolError: ``metadata.tracks`` is not a list, a track is neither a name nor
            an object, a track's ``mediaFormat`` is not an object, or its ``encoding`` or
            ``sampleRate`` is not mu-law at 8000 Hz. Always fatal; the field path is indexed
            (``metadata.tracks[0].mediaFormat.encoding``).
    """
    doc = json.loads(message)  # the envelope parsed it already, so it is a JSON object
    metadata = doc.get("metadata")
    tracks = metadata.get("tracks") if isinstance(metadata, dict) else None
    if tracks is None:
        return start
    if not isinstance(tracks, list):
        raise _fail(call, f"field 'metadata.tracks' must be a list, not {shown(tracks)}",
                    "metadata.tracks")
    names: list[str] = []
    for i, track in enumerate(tracks):
        where = f"metadata.tracks[{i}]"
        if isinstance(track, str):
            names.append(track)
            continue
        if not isinstance(track, dict):
            raise _fail(call, f"field {where!r} must be a track name or object, not {shown(track)}",
                        where)
        name = track.get("name")
        names.append(name if isinstance(name, str) and name else "inbound")
        fmt = track.get("mediaFormat")
        if fmt is None:
            continue
        if not isinstance(fmt, dict):
            raise _fail(call, f"field '{where}.mediaFormat' must be an object, not {shown(fmt)}",
                        f"{where}.mediaFormat")
        encoding = fmt.get("encoding")
        if encoding is not None and not (isinstance(encoding, str)
                                         and encoding.lower() in PCMU_NAMES):
            path = f"{where}.mediaFormat.encoding"
            raise _fail(call, f"unsupported encoding {shown(encoding)} in {path!r}; telewire "
                        "relays mu-law untouched and accepts only audio/PCMU", path)
        rate = fmt.get("sampleRate")
        if rate is not None and _rate(rate) != 8000:
            path = f"{where}.mediaFormat.sampleRate"
            raise _fail(call, f"unsupported sample rate {shown(rate)} in {path!r}; only 8000 is "
                        "supported", path)
    clean = tuple(names) or ("inbound",)
    if clean != start.tracks:
        start = dataclasses.replace(start, tracks=clean)
    return start
