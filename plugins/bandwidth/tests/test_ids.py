"""Bandwidth's ids are checked where they enter: the media ``start`` and the event webhooks.

Bandwidth documents ``callId``, ``streamId`` and ``accountId`` only as strings (its examples look
like ``c-15ac29a2-…`` and ``9900000``), so the safe charset and length are the whole check.
"""

from __future__ import annotations

import json
import re
from types import MappingProxyType

import pytest

from telewire.carrier import HttpRequest
from telewire.errors import CarrierProtocolError
from telewire.registry import Carrier, CarrierRegistry
from telewire.testing.conformance import HOSTILE_IDS
from telewire_bandwidth.testing import dtmf_event, start_message

CALL_ID = "c-95ac8d6e-1a31c52e-b38f-4198-93c1-51633ec68f8d"
STREAM_ID = "b4d5f6a7-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@pytest.fixture
def bandwidth(carrier_registry: CarrierRegistry) -> Carrier:
    return carrier_registry.get("bandwidth")


def webhook(body: dict) -> HttpRequest:
    return HttpRequest(method="POST", url="https://app.example.com/events/bandwidth",
                       headers=MappingProxyType({"content-type": "application/json"}),
                       body=json.dumps(body).encode())


@pytest.mark.parametrize("bad", list(HOSTILE_IDS.values()), ids=list(HOSTILE_IDS))
@pytest.mark.parametrize("event", ["dtmf", "mediaStreamStarted"])
def test_webhook_call_id_must_be_a_safe_id(bandwidth: Carrier, bad: str, event: str) -> None:
    body = {**dtmf_event(bad, "5"), "eventType": event}
    with pytest.raises(CarrierProtocolError) as caught:
        bandwidth.parse_webhook(webhook(body))
    err = caught.value
    assert err.field == "callId" and "(call id)" in str(err)
    assert not CONTROL.search(str(err)) and len(str(err)) < 400


def test_a_real_shaped_call_id_is_accepted(bandwidth: Carrier) -> None:
    event = bandwidth.parse_webhook(webhook(dtmf_event(CALL_ID, "5")))
    assert event is not None and event.call_id == CALL_ID


@pytest.mark.parametrize("field", ["accountId", "callId", "streamId"])
@pytest.mark.parametrize("bad", ["9900000/../x", "c-1?x=1", "..", "c-1 2", "c-1\n", "c" * 129])
def test_start_ids_must_be_safe(bandwidth: Carrier, field: str, bad: str) -> None:
    doc = json.loads(start_message(stream_id=STREAM_ID, call_id=CALL_ID))
    doc["metadata"][field] = bad
    call = bandwidth.new_call()
    with pytest.raises(CarrierProtocolError) as caught:
        bandwidth.parse_inbound(call, json.dumps(doc))
    assert caught.value.fatal and caught.value.field == f"metadata.{field}"
    assert not call.started and call.call_id == ""


def test_documented_looking_ids_are_accepted(bandwidth: Carrier) -> None:
    call = bandwidth.new_call()
    (start,) = bandwidth.parse_inbound(call, start_message(
        stream_id=STREAM_ID, call_id="c-15ac29a2-1331029c-2cb0-4a07-b215-b22865662d85"))
    assert start.call_id == (  # type: ignore[attr-defined]
        "c-15ac29a2-1331029c-2cb0-4a07-b215-b22865662d85")
    assert start.account_id == "9900000"  # type: ignore[attr-defined]


@pytest.mark.parametrize("params", [
    {"token": "a\nb"},
    {f"p{i}": "x" for i in range(33)},
    {"token": "x" * 2049},
])
def test_stream_params_are_bounded_and_printable(bandwidth: Carrier, params: dict) -> None:
    call = bandwidth.new_call()
    with pytest.raises(CarrierProtocolError) as caught:
        bandwidth.parse_inbound(call, start_message(stream_id=STREAM_ID, call_id=CALL_ID,
                                                    stream_params=params))
    assert caught.value.fatal and (caught.value.field or "").startswith("streamParams")


def test_documented_stream_param_limits_are_accepted(bandwidth: Carrier) -> None:
    """Bandwidth allows 12 ``<StreamParam>``s, names up to 256 and values up to 2048
    characters; a start carrying all of them at their longest is accepted."""
    params = {f"{i:02d}" + "n" * 254: "v" * 2048 for i in range(12)}
    call = bandwidth.new_call()
    (start,) = bandwidth.parse_inbound(call, start_message(stream_id=STREAM_ID, call_id=CALL_ID,
                                                           stream_params=params))
    assert dict(start.custom_parameters) == params  # type: ignore[attr-defined]
