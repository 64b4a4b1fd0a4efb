"""Twilio Media Streams messages as Twilio sends them, for telewire's carrier conformance kit.

Depends on ``telewire.testing.conformance`` (so on pytest); only tests import it, never the plugin.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from typing import Any, Mapping, Sequence

from telewire.testing.conformance import CarrierFixtures, Malformed

__all__ = ["ACCOUNT_SID", "RECORDED_CALL", "TwilioFixtures", "sid"]

ACCOUNT_SID = "AC" + "0" * 32


def sid(prefix: str, seed: str) -> str:
    """A Twilio-shaped SID (``prefix`` + 32 hex digits), the same for the same ``seed``."""
    return prefix + hashlib.sha256(seed.encode()).hexdigest()[:32]

_MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}

_SIDS = ('"accountSid":"AC9f3c2b1a0e8d7c6b5a4f3e2d1c0b9a8f",'
         '"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
         '"callSid":"CA4e8d2f7a9b3c1d5e6f7a8b9c0d1e2f3a"')
_STREAM = '"streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"'
#: One bidirectional ``<Connect><Stream>`` call, message by message as Twilio puts them on the
#: socket: compact JSON, Twilio's field order, string counters, the ``connected`` greeting, the
#: caller pressing 1 and a mark echoed after the agent's reply. SIDs are examples and the audio
#: is three 20 ms chunks of a 440 Hz tone; both are shaped exactly as Twilio sends them.
RECORDED_CALL: tuple[str, ...] = (
    '{"event":"connected","protocol":"Call","version":"1.0.0"}',
    '{"event":"start","sequenceNumber":"1","start":{' + _SIDS + ',"tracks":["inbound"],'
    '"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},'
    '"customParameters":{"caller":"+15005550006","tenant":"acme"}},' + _STREAM + '}',
    '{"event":"media","sequenceNumber":"2","media":{"track":"inbound","chunk":"1",'
    '"timestamp":"5","payload":"/7+xq6ioqq+960AyKygoKi88YMOzrKioqq672kY0LCgoKS45VMm1rKmoqa24z0w3'
    'LSkoKS03TM+4ramoqay1yVQ5LikoKCw0Rtq7rqqoqKyzw2A8LyooKCsyQOu9r6qoqKuxv/8/MSsoKCovPWzAsquoqKq'
    'vvOBDMywoKCouO1rGtKyoqKmuudRJNSwpKCktOE/Mt62pqKmtt8xPOC0pKA=="},' + _STREAM + '}',
    '{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"2",'
    '"timestamp":"25","payload":"KSw1SdS5rqmoqKy0xlo7LiooKCwzQ+C8r6qoqKuywGw9LyooKCsxP/+/sauoqKq'
    'vvetAMisoKCovPGDDs6yoqKquu9pGNCwoKCkuOVTJtaypqKmtuM9MNy0pKCktN0zPuK2pqKmstclUOS4pKCgsNEbau6'
    '6qqKiss8NgPC8qKCgrMkDrva+qqKirsb//PzErKCgqLz1swLKrqKiqr7zgQw=="},' + _STREAM + '}',
    '{"event":"dtmf","' + _STREAM[1:] + ',"sequenceNumber":"4",'
    '"dtmf":{"track":"inbound_track","digit":"1"}}',
    '{"event":"media","sequenceNumber":"5","media":{"track":"inbound","chunk":"3",'
    '"timestamp":"45","payload":"MywoKCouO1rGtKyoqKmuudRJNSwpKCktOE/Mt62pqKmtt8xPOC0pKCksNUnUua6'
    'pqKistMZaOy4qKCgsM0PgvK+qqKirssBsPS8qKCgrMT//v7GrqKiqr73rQDIrKCgqLzxgw7OsqKiqrrvaRjQsKCgpLj'
    'lUybWsqaiprbjPTDctKSgpLTdMz7itqaiprLXJVDkuKSgoLDRG2ruuqqiorA=="},' + _STREAM + '}',
    '{"event":"mark","sequenceNumber":"6",' + _STREAM + ',"mark":{"name":"resp-1-end"}}',
    '{"event":"stop","sequenceNumber":"7",' + _STREAM + ',"stop":{'
    '"accountSid":"AC9f3c2b1a0e8d7c6b5a4f3e2d1c0b9a8f",'
    '"callSid":"CA4e8d2f7a9b3c1d5e6f7a8b9c0d1e2f3a"}}',
)


class TwilioFixtures(CarrierFixtures):
    """Inbound messages shaped like Twilio's (string counters, ``sequenceNumber`` on every
    message, SIDs of ``MZ``/``CA``/``AC`` + 32 hex digits) and decoders for the ``media``/
    ``mark``/``clear`` messages sent back."""

    _sequence = itertools.count(1)
    stream_a = sid("MZ", "stream-a")
    stream_b = sid("MZ", "stream-b")
    call_1 = sid("CA", "call-1")

    def call_id_for(self, stream_id: str) -> str:
        return sid("CA", stream_id)

    def _message(self, event: str, stream_id: str | None, **body: Any) -> str:
        doc: dict[str, Any] = {"event": event, "sequenceNumber": str(next(self._sequence))}
        if stream_id is not None:
            doc["streamSid"] = stream_id
        doc.update(body)
        return json.dumps(doc, ensure_ascii=False)

    def carrier_name(self) -> str:
        return "twilio"

    def start_message(self, *, stream_id: str, call_id: str,
                      custom_parameters: Mapping[str, str]) -> str:
        return self._message("start", stream_id, start={
            "accountSid": ACCOUNT_SID, "streamSid": stream_id, "callSid": call_id,
            "tracks": ["inbound"], "customParameters": dict(custom_parameters),
            "mediaFormat": _MEDIA_FORMAT,
        })

    def media_message(self, payload: bytes, *, stream_id: str, sequence: int) -> str:
        return self._message("media", stream_id, media={
            "track": "inbound", "chunk": str(sequence), "timestamp": str((sequence - 1) * 20),
            "payload": base64.b64encode(payload).decode("ascii"),
        })

    def dtmf_message(self, digit: str, *, stream_id: str) -> str:
        return self._message("dtmf", stream_id, dtmf={"track": "inbound_track", "digit": digit})

    def mark_message(self, name: str, *, stream_id: str) -> str:
        return self._message("mark", stream_id, mark={"name": name})

    def stop_message(self, *, stream_id: str) -> str:
        return self._message("stop", stream_id, stop={"accountSid": ACCOUNT_SID,
                                                      "callSid": self.call_id_for(stream_id)})

    def recorded_session(self) -> Sequence[str]:
        return RECORDED_CALL

    def malformed_messages(self, *, stream_id: str) -> Mapping[str, Malformed]:
        def media(**fields: Any) -> str:
            return self._message("media", stream_id, media={"track": "inbound", "chunk": "1",
                                                            "timestamp": "0", **fields})

        def start(**fields: Any) -> str:
            body = {"accountSid": ACCOUNT_SID, "streamSid": stream_id, "callSid": self.call_1,
                    "tracks": ["inbound"], "customParameters": {}, "mediaFormat": _MEDIA_FORMAT}
            return self._message("start", stream_id, start={**body, **fields})

        other, second = sid("MZ", "other"), sid("MZ", "second")
        return {
            "unknown_event": Malformed(self._message("dance", stream_id), field="event",
                                       mentions=("'dance'",)),
            "missing_event": Malformed(json.dumps({"streamSid": stream_id}), field="event"),
            "missing_field": Malformed(media(), field="media.payload", event="media"),
            "wrong_type": Malformed(media(payload=12345), field="media.payload", event="media"),
            "bad_payload": Malformed(media(payload="not*base64!"), field="media.payload",
                                     event="media"),
            "bad_padding": Malformed(media(payload="AAA"), field="media.payload", event="media"),
            "chunk_not_a_number": Malformed(media(payload="AAAA", chunk="one"),
                                            field="media.chunk", mentions=("'one'",)),
            "foreign_stream": Malformed(self.media_message(b"\xff", stream_id=other,
                                                           sequence=1),
                                        field="streamSid", mentions=(other,)),
            "dtmf_without_digit": Malformed(self._message("dtmf", stream_id, dtmf={}),
                                            field="dtmf.digit", event="dtmf"),
            "mark_name_empty": Malformed(self.mark_message("", stream_id=stream_id),
                                         field="mark.name", event="mark"),
            "mark_before_start": Malformed(self.mark_message("m", stream_id=stream_id),
                                           event="mark", after_start=False, fatal=False),
            "start_without_stream_sid": Malformed(start(streamSid=""), field="start.streamSid",
                                                  after_start=False, fatal=True),
            "custom_parameters_not_object": Malformed(start(customParameters=["a"]),
                                                      field="start.customParameters",
                                                      after_start=False, fatal=True),
            "unsupported_encoding": Malformed(
                start(mediaFormat={**_MEDIA_FORMAT, "encoding": "audio/x-alaw"}),
                field="start.mediaFormat.encoding", mentions=("audio/x-alaw",),
                after_start=False, fatal=True),
            "second_start_other_stream": Malformed(
                self.start_message(stream_id=second, call_id=sid("CA", "second"),
                                   custom_parameters={}),
                event="start", mentions=(second,), fatal=True),
            "call_sid_not_a_sid": Malformed(start(callSid="CA1"), field="start.callSid",
                                            mentions=("'CA1'", "CA[0-9a-fA-F]{32}"),
                                            after_start=False, fatal=True),
            "call_sid_missing": Malformed(start(callSid=None), field="start.callSid",
                                          after_start=False, fatal=True),
            "call_sid_path": Malformed(start(callSid=self.call_1 + "/../x"),
                                       field="start.callSid", after_start=False, fatal=True),
            "stream_sid_not_a_sid": Malformed(start(streamSid="MZ-1"), field="start.streamSid",
                                              mentions=("'MZ-1'",), after_start=False,
                                              fatal=True),
            "account_sid_not_a_sid": Malformed(start(accountSid="AC1"),
                                               field="start.accountSid", after_start=False,
                                               fatal=True),
            "binary_frame": Malformed(b'{"event":"connected"}', mentions=("binary", "text")),
        }

    def outbound_media_payload(self, message: str | bytes) -> str:
        doc = self._outbound(message, "media")
        return doc["media"]["payload"]

    def is_clear(self, message: str | bytes) -> bool:
        return json.loads(message).get("event") == "clear"

    def outbound_mark_name(self, message: str | bytes) -> str:
        return self._outbound(message, "mark")["mark"]["name"]

    def outbound_stream_id(self, message: str | bytes) -> str:
        return json.loads(message)["streamSid"]

    @staticmethod
    def _outbound(message: str | bytes, event: str) -> dict[str, Any]:
        assert isinstance(message, str), f"Twilio messages are text, got {type(message).__name__}"
        doc = json.loads(message)
        assert doc.get("event") == event, f"expected a {event!r} message, got {message!r}"
        assert set(doc) == {"event", "streamSid", event}, f"unexpected keys in {message!r}"
        return doc
