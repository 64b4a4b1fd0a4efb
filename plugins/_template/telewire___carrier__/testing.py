"""The __carrier__ carrier's messages as it sends them, for telewire's carrier conformance kit.

Depends on ``telewire.testing.conformance`` (so on pytest); only tests import it, never the plugin.

Every message here must be exactly what the carrier puts on the socket (field names, nesting,
string or number counters). When you change ``envelope.toml`` for your carrier, change these
builders to match its documentation, and replace :data:`RECORDED_CALL` with a real capture.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Mapping, Sequence

from telewire.testing.conformance import CarrierFixtures, Malformed

__all__ = ["RECORDED_CALL", "__Carrier__Fixtures"]

_FORMAT = {"encoding": "pcmu", "sample_rate": 8000, "channels": 1}
#: One call as the carrier sent it, message by message: greeting, start, media, a key press,
#: a mark echo, stop. Capture yours from a real call (log each message as received) and keep
#: a few media chunks; the kit checks it parses in order and its audio round-trips.
RECORDED_CALL: tuple[str, ...] = (
    '{"event":"connected","protocol":"media","version":"1"}',
    '{"event":"start","stream_id":"st-7f3a","start":{"call_id":"c-20240611-0001",'
    '"account_id":"acct-42","parameters":{"tenant":"acme"},'
    '"format":{"encoding":"pcmu","sample_rate":8000,"channels":1}}}',
    '{"event":"media","stream_id":"st-7f3a","media":{"seq":1,"timestamp":0,'
    '"payload":"/7+xq6ioqq+960AyKygoKi88YMOzrKioqq672kY0LCgoKS45VMm1rKmoqa24z0w3LSkoKS03TM+4rami'
    'qay1yVQ5LikoKCw0Rtq7rqqoqKyzw2A8LyooKCsyQOu9r6qoqKuxv/8/MSsoKCovPWzAsquoqKqvvOBDMywoKCouO1r'
    'GtKyoqKmuudRJNSwpKCktOE/Mt62pqKmtt8xPOC0pKA=="}}',
    '{"event":"dtmf","stream_id":"st-7f3a","dtmf":{"digit":"1","duration_ms":120}}',
    '{"event":"media","stream_id":"st-7f3a","media":{"seq":2,"timestamp":20,'
    '"payload":"KSw1SdS5rqmoqKy0xlo7LiooKCwzQ+C8r6qoqKuywGw9LyooKCsxP/+/sauoqKqvvetAMisoKCovPGDDs6'
    'yoqKquu9pGNCwoKCkuOVTJtaypqKmtuM9MNy0pKCktN0zPuK2pqKmstclUOS4pKCgsNEbau66qqKiss8NgPC8qKCgrMk'
    'Drva+qqKirsb//PzErKCgqLz1swLKrqKiqr7zgQw=="}}',
    '{"event":"mark","stream_id":"st-7f3a","mark":{"name":"resp-1-end"}}',
    '{"event":"stop","stream_id":"st-7f3a","stop":{"reason":"hangup"}}',
)


class __Carrier__Fixtures(CarrierFixtures):
    """Inbound messages shaped like the carrier's, and decoders for what the plugin sends."""

    def carrier_name(self) -> str:
        return "__carrier__"

    @staticmethod
    def _message(event: str, stream_id: str, **body: Any) -> str:
        return json.dumps({"event": event, "stream_id": stream_id, **body}, ensure_ascii=False)

    # ------------------------------------------------------------------ inbound messages

    def start_message(self, *, stream_id: str, call_id: str,
                      custom_parameters: Mapping[str, str]) -> str:
        return self._message("start", stream_id, start={
            "call_id": call_id, "account_id": "acct-42",
            "parameters": dict(custom_parameters), "format": _FORMAT,
        })

    def media_message(self, payload: bytes, *, stream_id: str, sequence: int) -> str:
        return self._message("media", stream_id, media={
            "seq": sequence, "timestamp": (sequence - 1) * 20,
            "payload": base64.b64encode(payload).decode("ascii"),
        })

    def dtmf_message(self, digit: str, *, stream_id: str) -> str:
        return self._message("dtmf", stream_id, dtmf={"digit": digit, "duration_ms": 120})

    def mark_message(self, name: str, *, stream_id: str) -> str:
        return self._message("mark", stream_id, mark={"name": name})

    def stop_message(self, *, stream_id: str) -> str:
        return self._message("stop", stream_id, stop={"reason": "hangup"})

    def recorded_session(self) -> Sequence[str]:
        return RECORDED_CALL

    def malformed_messages(self, *, stream_id: str) -> Mapping[str, Malformed]:
        def media(**fields: Any) -> str:
            return self._message("media", stream_id, media={"seq": 1, "timestamp": 0, **fields})

        def start(**fields: Any) -> str:
            body = {"call_id": "c-1", "account_id": "acct-42", "parameters": {},
                    "format": _FORMAT, **fields}
            return self._message("start", stream_id, start=body)

        return {
            "unknown_event": Malformed(self._message("dance", stream_id), field="event",
                                       mentions=("'dance'",)),
            "missing_event": Malformed(json.dumps({"stream_id": stream_id}), field="event"),
            "missing_field": Malformed(media(), field="media.payload", event="media"),
            "wrong_type": Malformed(media(payload=12345), field="media.payload", event="media"),
            "bad_payload": Malformed(media(payload="not*base64!"), field="media.payload",
                                     event="media"),
            "seq_not_a_number": Malformed(media(payload="AAAA", seq="one"), field="media.seq",
                                          mentions=("'one'",)),
            "foreign_stream": Malformed(self.media_message(b"\xff", stream_id="st-other",
                                                           sequence=1),
                                        field="stream_id", mentions=("st-other",)),
            "dtmf_without_digit": Malformed(self._message("dtmf", stream_id, dtmf={}),
                                            field="dtmf.digit", event="dtmf"),
            "mark_before_start": Malformed(self.mark_message("m", stream_id=stream_id),
                                           event="mark", after_start=False, fatal=False),
            "start_without_stream_id": Malformed(
                json.dumps({"event": "start", "start": {"call_id": "c-1"}}),
                field="stream_id", after_start=False, fatal=True),
            "unsupported_encoding": Malformed(
                start(format={**_FORMAT, "encoding": "alaw"}), field="start.format.encoding",
                mentions=("alaw",), after_start=False, fatal=True),
            "binary_frame": Malformed(b'{"event":"connected"}', mentions=("binary", "text")),
        }

    # ------------------------------------------------------------------ outbound decoders

    def outbound_media_payload(self, message: str | bytes) -> str:
        return self._outbound(message, "media")["media"]["payload"]

    def is_clear(self, message: str | bytes) -> bool:
        return json.loads(message).get("event") == "clear"

    def outbound_mark_name(self, message: str | bytes) -> str:
        return self._outbound(message, "mark")["mark"]["name"]

    def outbound_stream_id(self, message: str | bytes) -> str:
        return json.loads(message)["stream_id"]

    @staticmethod
    def _outbound(message: str | bytes, event: str) -> dict[str, Any]:
        assert isinstance(message, str), f"messages are text, got {type(message).__name__}"
        doc = json.loads(message)
        assert doc.get("event") == event, f"expected a {event!r} message, got {message!r}"
        assert set(doc) == {"event", "stream_id", event}, f"unexpected keys in {message!r}"
        return doc
